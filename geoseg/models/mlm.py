"""STAC Machine Learning Model (MLM) Items: a model's contract and where its file is.

An Item (local JSON file or ``http(s)://`` URL) is read for:

- the model asset: the asset with role ``mlm:model`` (its ``href`` relative to the Item, a
  local path or a URL; ``mlm:artifact_type`` or the file itself says what it is: ONNX,
  TorchScript, ``torch.export`` or a geoseg bundle; ``torch.save`` pickles are refused);
- ``mlm:input[0]``: ``bands`` (names or objects with ``name``), ``input.shape`` (a fixed
  height/width when positive) and ``value_scaling`` (``z-score``, ``min-max``, ``scale``,
  ``offset``; one entry for all bands or one per band);
- ``mlm:output[0]``: the classes (``classification:classes``: ``value``, ``name``,
  ``color_hint``); further outputs are mask heads (their ``name``);
- ``geoseg:halo``, ``geoseg:downsampling``, ``geoseg:value_range`` (as ``geoseg models show
  --stac`` writes them), ``mlm:hyperparameters`` ``halo``/``downsampling``, ``gsd``.

Remote files are downloaded once into ``$GEOSEG_CACHE`` (default ``~/.cache/geoseg``),
named by the URL's hash, and checked against the asset's ``file:checksum`` when given.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.refs import is_url

__all__ = ["item_fields", "model_asset", "read_ref", "is_url"]

#: ``mlm:artifact_type`` values and the format geoseg reads them as (None: refused).
ARTIFACT_TYPES: dict[str, str | None] = {
    "onnx": "onnx",
    "torch.jit.save": "torchscript",
    "torch.jit.script": "torchscript",
    "torch.jit.trace": "torchscript",
    "torch.export.save": "pt2",
    "torch.export.pt2": "pt2",
    "safetensors.torch.save_file": "bundle",
    "torch.save": None,
}


def cache_dir() -> Path:
    return Path(os.environ.get("GEOSEG_CACHE") or Path.home() / ".cache" / "geoseg") / "models"


def read_ref(ref: str, what: str = "model") -> tuple[bytes, str]:
    """The bytes of a local path or an ``http(s)`` URL (downloaded once, cached).

    Returns ``(data, local_path_or_url)``.
    """
    if not is_url(ref):
        path = Path(ref).expanduser()
        try:
            return path.read_bytes(), str(path)
        except FileNotFoundError:
            raise ModelError(f"{what} file {path} does not exist") from None
        except IsADirectoryError:
            raise ModelError(f"{what} path {path} is a directory, not a file") from None
        except OSError as err:
            raise ModelError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    name = Path(urllib.parse.urlparse(ref).path).name or "model"
    target = cache_dir() / hashlib.sha256(ref.encode()).hexdigest()[:32] / name
    if target.is_file():
        return target.read_bytes(), str(target)
    try:
        with urllib.request.urlopen(ref, timeout=60) as response:  # noqa: S310 - http(s) only
            data = response.read()
    except urllib.error.HTTPError as err:
        raise ModelError(f"cannot download {what} {ref}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ModelError(f"cannot download {what} {ref}: {reason}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return data, str(target)


def _resolve(href: str, base: str) -> str:
    if is_url(href) or Path(href).is_absolute():
        return href
    if href.startswith("file://"):
        return urllib.parse.urlparse(href).path
    if is_url(base):
        return urllib.parse.urljoin(base, href)
    return str(Path(base).parent / href)


def model_asset(item: dict[str, Any], base: str, source: str) -> tuple[str, str | None, str | None]:
    """``(href, format or None, multihash checksum or None)`` of the Item's model asset."""
    assets = item.get("assets")
    if not isinstance(assets, dict) or not assets:
        raise ModelError(f"{source}: the MLM Item has no 'assets': add a model asset with role 'mlm:model'")
    chosen = [a for a in assets.values() if isinstance(a, dict) and "mlm:model" in (a.get("roles") or [])]
    if not chosen:
        raise ModelError(f"{source}: no asset of the MLM Item has the role 'mlm:model': add it to the model file's asset")
    asset = chosen[0]
    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise ModelError(f"{source}: the 'mlm:model' asset has no 'href': add the model file's path or URL")
    kind = asset.get("mlm:artifact_type")
    fmt = None
    if kind is not None:
        if kind not in ARTIFACT_TYPES:
            known = ", ".join(k for k, v in ARTIFACT_TYPES.items() if v)
            raise ModelError(f"{source}: 'mlm:artifact_type' {kind!r} is not one geoseg runs ({known})")
        fmt = ARTIFACT_TYPES[kind]
        if fmt is None:
            raise ModelError(
                f"{source}: the model asset is a torch.save pickle ('mlm:artifact_type': 'torch.save'); geoseg never "
                "unpickles model files: publish it as ONNX, TorchScript or torch.export (.pt2)"
            )
    return _resolve(href, base), fmt, asset.get("file:checksum")


def check_multihash(data: bytes, checksum: str, source: str) -> None:
    """Compare ``data`` with a ``file:checksum`` multihash (sha2-256, hex ``1220...``)."""
    if checksum.startswith("1220"):
        if hashlib.sha256(data).hexdigest() != checksum[4:].lower():
            raise ModelError(f"{source}: the model file does not match the asset's 'file:checksum' (corrupt or changed download)")


def _names(values: Any) -> list[str]:
    out = []
    for v in values or []:
        out.append(v.get("name") if isinstance(v, dict) else v)
    return [str(v) for v in out]


def _scaling(items: Any, nbands: int, where: str) -> dict[str, list[float]] | None:
    """``value_scaling`` -> per-band mean/std in raw units, or None."""
    if items is None:
        return None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or len(items) not in (1, nbands):
        raise ModelError(f"{where}.value_scaling: give one entry for all bands or one per band ({nbands})")
    if len(items) == 1:
        items = items * nbands
    mean, std = [], []
    for i, s in enumerate(items):
        kind = s.get("type") if isinstance(s, dict) else None
        try:
            if kind == "z-score":
                m, d = float(s["mean"]), float(s["stddev"])
            elif kind == "min-max":
                m, d = float(s["minimum"]), float(s["maximum"]) - float(s["minimum"])
            elif kind == "scale":
                m, d = 0.0, float(s["value"])
            elif kind == "offset":
                m, d = float(s["value"]), 1.0
            else:
                raise ModelError(
                    f"{where}.value_scaling[{i}]: type {kind!r} is not supported (z-score, min-max, scale, offset): "
                    "give 'normalization' in the sidecar MODEL.geoseg.json instead"
                )
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}.value_scaling[{i}]: a {kind} entry needs numeric values (see the MLM spec)") from None
        mean.append(m)
        std.append(d)
    return {"mean": mean, "std": std}


def item_fields(props: dict[str, Any], source: str) -> dict[str, Any]:
    """Contract fields from an MLM Item's ``properties``."""
    fields: dict[str, Any] = {}
    if "mlm:name" in props:
        fields["name"] = str(props["mlm:name"])
    if props.get("description"):
        fields["description"] = str(props["description"])
    inputs = props.get("mlm:input") or []
    if inputs:
        first = inputs[0] if isinstance(inputs, list) else inputs
        bands = _names(first.get("bands"))
        if bands:
            fields["bands"] = bands
        shape = (first.get("input") or {}).get("shape") or []
        if len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape[2:]):
            fields["input_size"] = (shape[2], shape[3])
        channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0 else len(bands)
        norm = _scaling(first.get("value_scaling"), channels, f"{source}: mlm:input[0]")
        if norm is not None:
            fields["normalization"] = norm
    outputs = props.get("mlm:output") or []
    if outputs:
        classes = outputs[0].get("classification:classes")
        if classes:
            ordered = sorted(classes, key=lambda c: c.get("value", 0))
            fields["classes"] = [
                {"name": c.get("name") or f"class_{c.get('value')}", **({"color": "#" + c["color_hint"].lstrip("#")} if c.get("color_hint") else {})}
                for c in ordered
            ]
        fields["mask_heads"] = [str(o.get("name")) for o in outputs[1:]]
    hyper = props.get("mlm:hyperparameters") or {}
    for key in ("halo", "downsampling"):
        value = props.get(f"geoseg:{key}", hyper.get(key) if isinstance(hyper, dict) else None)
        if value is not None:
            fields[key] = value
    if props.get("geoseg:value_range") is not None:
        fields["value_range"] = tuple(props["geoseg:value_range"])
    if props.get("gsd") is not None:
        fields["gsd"] = props["gsd"]
    return fields


def read_item(data: bytes, source: str) -> dict[str, Any]:
    """Parse an Item's JSON; refuse what is not an MLM Item."""
    try:
        item = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{source} is not valid JSON ({err})") from None
    if not isinstance(item, dict) or item.get("type") != "Feature" or "properties" not in item:
        raise ModelError(f"{source} is JSON but not a STAC Item: give a model file or an MLM Item")
    exts = " ".join(item.get("stac_extensions") or [])
    if "/mlm/" not in exts and not any(k.startswith("mlm:") for k in item["properties"]):
        raise ModelError(f"{source} is a STAC Item without the MLM extension: add 'mlm:input', 'mlm:output' and a model asset")
    return item
