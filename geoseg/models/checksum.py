"""A model's identity without loading it: the sha256 of its bundle file (torch-free for files).

``geoseg batch`` decides whether a scene is up to date by comparing this checksum with the
one its manifest recorded; a rerun that skips every scene then never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from geoseg.models.external import is_external, resolve_external
from geoseg.models.refs import DEFAULT_WEIGHTS, is_builtin, is_url, resolve_model_ref

__all__ = ["model_checksum"]


def model_checksum(ref: str | os.PathLike[str]) -> str:
    """The checksum of a model (``ModelBundle.checksum``): sha256 of the bundle file's bytes.

    Files and the ``default`` built-in are hashed without loading torch; other built-ins
    are loaded.
    """
    import hashlib

    ref = resolve_model_ref(ref)
    if is_url(ref) or (not is_builtin(ref) and is_external(ref)):
        return resolve_external(ref).checksum  # ONNX, TorchScript, .pt2, MLM Items (torch-free)
    if ref == "default":
        path = DEFAULT_WEIGHTS
    elif not is_builtin(ref):
        path = Path(ref)
    else:
        from geoseg.models.registry import load_model

        return load_model(ref).checksum
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    except OSError:
        from geoseg.models.registry import load_model

        return load_model(ref).checksum  # raises the registry's error for a missing/bad file
    return h.hexdigest()
