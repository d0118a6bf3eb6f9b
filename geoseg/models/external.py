"""Loading models that are not geoseg bundles: ONNX, TorchScript, ``torch.export``, MLM Items.

:func:`load_external` is what :func:`geoseg.models.load_model` calls for a URL or a file
that :func:`is_external` recognises. The format comes from the file's bytes (and, for what
has no magic bytes, its name): a ``torch.save`` pickle or any other pickle is refused
before anything reads it. Finding the files and hashing them is torch-free
(:func:`resolve_external`), so ``geoseg batch`` can tell whether a scene is up to date
without loading the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.mlm import check_multihash, is_url, item_fields, model_asset, read_item, read_ref
from geoseg.models.safety import sniff

__all__ = ["load_external", "is_external", "resolve_external", "format_of", "EXTERNAL_SUFFIXES"]

#: File name endings always read as a foreign model (a pickle with one of them is refused as such).
EXTERNAL_SUFFIXES = (".onnx", ".pt2", ".ts", ".jit", ".torchscript", ".json")

#: A sidecar ``MODEL.geoseg.json`` next to ``MODEL.onnx`` overrides the embedded contract.
SIDECAR_SUFFIX = ".geoseg.json"

_REFUSED = {
    "pickle": "a Python pickle",
    "torch.save": "a torch.save archive (a pickle)",
}


def is_external(path: str | Path) -> bool:
    """Whether a local file is to be loaded as a foreign model rather than as a geoseg bundle.

    By content: a TorchScript archive, a ``.pt2`` program, JSON (an MLM Item), a protobuf that
    starts like an ONNX ``ModelProto``; by name: the :data:`EXTERNAL_SUFFIXES`. Anything else
    (bundles, and pickles under other names) is read as a bundle, which refuses pickles itself.
    """
    path = Path(path)
    if path.suffix.lower() in EXTERNAL_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if head[:2] == b"PK":
        try:
            return sniff(path.read_bytes()) in ("torchscript", "pt2")
        except OSError:
            return False
    if head[8:9] == b"{":  # a safetensors header: a bundle
        return False
    return head[:1] == b"\x08" or head.lstrip()[:1] == b"{"


def format_of(data: bytes, name: str) -> str:
    """``onnx``, ``torchscript``, ``pt2``, ``mlm`` or ``bundle``; refuses pickles (one line)."""
    kind = sniff(data)
    if kind in _REFUSED:
        raise ModelError(
            f"{name} is {_REFUSED[kind]}, which can run arbitrary code when loaded; geoseg never unpickles "
            "model files: export the model to ONNX, TorchScript (torch.jit.save) or torch.export (.pt2)"
        )
    if kind in ("torchscript", "pt2", "safetensors"):
        return "bundle" if kind == "safetensors" else kind
    if kind == "json":
        return "mlm"
    if kind == "zip":
        raise ModelError(f"{name} is a zip archive but neither a TorchScript archive nor a torch.export program")
    return "onnx"


@dataclass
class Resolved:
    """A foreign model's files, read and hashed (no torch involved)."""

    ref: str
    fmt: str  # onnx, torchscript, pt2, bundle
    data: bytes
    name: str  # the model file (path or URL), for messages
    kind: str  # where the contract's missing fields go: onnx, torchscript, torch.export, mlm
    embedded: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_path: Path | None = None
    checksum: str = ""


def resolve_external(ref: str) -> Resolved:
    """Read a foreign model's file(s) and its sidecar, and hash them (torch-free).

    The checksum is the sha256 of the model file's bytes, preceded by the MLM Item's when
    it came through one, and followed by the sidecar's when there is one (both shape the
    outputs); for an MLM Item whose asset is a geoseg bundle, the bundle's own checksum.
    """
    data, local = read_ref(ref, "model")
    name = ref if is_url(ref) else local
    fmt = format_of(data, name)
    hasher = hashlib.sha256()
    embedded: dict[str, Any] = {}
    kind = {"onnx": "onnx", "torchscript": "torchscript", "pt2": "torch.export"}.get(fmt, fmt)
    if fmt == "mlm":
        item = read_item(data, name)
        hasher.update(data)
        embedded = item_fields(item["properties"], name)
        href, declared, multihash = model_asset(item, ref, name)
        model_data, _ = read_ref(href, "model asset")
        if multihash:
            check_multihash(model_data, multihash, f"{name} (asset {href})")
        fmt = format_of(model_data, href)
        if fmt == "mlm":
            raise ModelError(f"{name}: the model asset {href} is JSON, not a model file")
        if declared is not None and declared != fmt:
            raise ModelError(f"{name}: 'mlm:artifact_type' says {declared} but {href} is {fmt}")
        if fmt == "bundle":
            return Resolved(ref, "bundle", model_data, href, "mlm", checksum=hashlib.sha256(model_data).hexdigest())
        data, name, kind = model_data, href, "mlm"
    elif fmt == "bundle":
        raise ModelError(f"{name} is a geoseg bundle: load it with geoseg.models.load_model")
    hasher.update(data)
    sidecar, raw, side = {}, b"", None
    if not is_url(ref):
        side = sidecar_path(ref)
        sidecar, raw = read_sidecar(ref)
    hasher.update(raw)
    return Resolved(ref, fmt, data, name, kind, embedded, sidecar, side, hasher.hexdigest())


def sidecar_path(model_path: str) -> Path:
    """``MODEL.geoseg.json`` for ``MODEL.onnx`` (the suffix replaced)."""
    p = Path(model_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX) if p.suffix else p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(model_path: str) -> tuple[dict[str, Any], bytes]:
    """The sidecar's fields and bytes (empty when there is none)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}, b""
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: must be a JSON object of contract fields")
    return data, raw


def _runtime(fmt: str, data: bytes, source: str) -> tuple[Any, dict[str, Any]]:
    if fmt == "onnx":
        from geoseg.models.onnx import load_onnx

        return load_onnx(data, source)
    from geoseg.models.torchscript import load_pt2, load_torchscript

    return (load_torchscript if fmt == "torchscript" else load_pt2)(data, source)


def _check_shapes(runtime: Any, contract: Any, source: str, where: str) -> None:
    channels = getattr(runtime, "channels", None)
    if channels is not None and channels != len(contract.bands):
        raise ModelError(
            f"{source}: the model takes {channels} input bands but its contract names {len(contract.bands)} "
            f"({', '.join(contract.bands)}): fix 'bands' in {where}"
        )
    outs = getattr(runtime, "output_channels", None)
    if outs:
        n = outs[0]
        if not (n is None or n == len(contract.classes) or (n == 1 and len(contract.classes) == 2)):
            raise ModelError(
                f"{source}: the model outputs {n} class channels but its contract has {len(contract.classes)} classes: "
                f"fix 'classes' in {where}"
            )


def load_external(ref: str, cached: Any = None) -> Any:
    """Load a non-bundle model: an ONNX, TorchScript or ``.pt2`` file, or an MLM Item (path or URL).

    Args:
        ref: Path or ``http(s)`` URL.
        cached: ``cached(checksum, make)``: the registry's cache (optional).

    Returns:
        An :class:`~geoseg.models.contract.ExternalModel`, or a
        :class:`~geoseg.models.ModelBundle` when an MLM Item's asset is a geoseg bundle.

    Raises:
        ModelError: One line naming what is wrong (unsafe file, missing contract field, ...).
    """
    r = resolve_external(ref)
    if r.fmt == "bundle":
        from geoseg.models.bundle import bundle_from_bytes

        def make_bundle() -> Any:
            return bundle_from_bytes(r.data, source=r.name, checksum=r.checksum)

        return cached(r.checksum, make_bundle) if cached is not None else make_bundle()

    def make() -> Any:
        from geoseg.models.contract import ExternalModel, build_contract

        runtime, fields = _runtime(r.fmt, r.data, r.name)
        merged = {**fields, **r.embedded, **r.sidecar}
        origin = {k: "sidecar" if k in r.sidecar else "embedded" for k in merged}
        side = r.sidecar_path.name if r.sidecar_path else "a sidecar MODEL.geoseg.json"
        contract = build_contract(merged, r.kind, ref, side)
        _check_shapes(runtime, contract, ref, side)
        return ExternalModel(runtime=runtime, contract=contract, checksum=r.checksum, source=str(ref), origin=origin)

    return cached(r.checksum, make) if cached is not None else make()
