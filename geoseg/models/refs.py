"""Model references: the one resolver from what a user writes to what geoseg loads (torch-free).

A reference is a built-in name (``default``, ``spectral``, ``unet``) or a path. **Built-in
names win**: ``default`` is the built-in model even when a file or folder named ``default``
sits in the working directory; a file is named with a separator or an extension
(``./default``, ``model.safetensors``). Everything that takes a model (``run_scene``,
catalogs, ``geoseg batch``'s skip-if-done (:mod:`geoseg.models.checksum`), the registry) resolves it here, so a reference
means the same thing everywhere and in every process.
"""

from __future__ import annotations

import os
from pathlib import Path

from geoseg.errors import ModelError

__all__ = ["BUILTINS", "BUILTIN_GSD", "DEFAULT_WEIGHTS", "is_builtin", "is_url", "resolve_model_ref"]

#: Where the shipped weights of the ``default`` model live.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.safetensors"

#: The built-in models: name -> one-line description.
BUILTINS: dict[str, str] = {
    "default": "U-Net for 4-band (blue, green, red, nir) imagery: 6 land-cover classes "
    "(water, forest, cropland, bare_soil, building, road) + built_up mask; trained on "
    "synthetic scenes",
    "spectral": "training-free NDWI/NDVI model for bands incl. green, red, nir: classes "
    "water, vegetation, other + water mask",
    "unet": "untrained U-Net architecture family (any bands, classes, mask heads): "
    "geoseg.models.build_unet(...)",
}

#: The ground sample distance each built-in is for, in metres (None: scale-free): the default
#: model is for 10 m Sentinel-2-like data (its shipped file predates the bundle's ``gsd`` field).
BUILTIN_GSD: dict[str, float | None] = {"default": 10.0, "spectral": None}


def is_builtin(ref: object) -> bool:
    """Whether ``ref`` names a built-in model (an exact name, not a path)."""
    return isinstance(ref, str) and ref in BUILTINS


def is_url(ref: object) -> bool:
    """Whether ``ref`` is an ``http(s)`` URL (an MLM Item or model file on a web server)."""
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def resolve_model_ref(ref: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """A model reference in canonical form: a built-in name or URL as is, anything else an absolute path.

    Args:
        ref: a built-in name or a path (``~`` expanded).
        base: directory a relative path is relative to (default: the working directory),
            e.g. the folder of the catalog that names the model.
    """
    if is_builtin(ref) or is_url(ref):
        return str(ref)
    text = os.fspath(ref)
    if not text:
        raise ModelError("empty model reference: give a built-in model name (see `geoseg models`) or a bundle path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base if base is not None else Path.cwd()) / path
    return str(Path(os.path.abspath(path)))
