"""STAC Machine Learning Model (MLM) Items for geoseg model bundles.

:func:`mlm_item` describes a bundle as a STAC 1.1.0 Item with the MLM extension v1.5.2
(https://github.com/stac-extensions/mlm): its input bands and their z-score scaling,
its class output (``classification:classes``) and one output per mask head, the halo
and downsampling factor (``mlm:hyperparameters``, no MLM field exists for them), and the
bundle file as the ``mlm:model`` asset (a safetensors file: ``safetensors.torch.save_file``)
with its size and multihash checksum. ``geoseg models show MODEL --stac`` prints it and
``geoseg export MODEL ITEM.json --format mlm`` writes it (with the bundle next to it when
the model has no file of its own). Torch-free.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from geoseg._files import remove_files, temp_path
from geoseg.classes import class_identifier
from geoseg.errors import OutputError
from geoseg.io.stac import STAC_VERSION

__all__ = ["MLM_SCHEMA", "item_for_model", "mlm_item", "write_mlm_item"]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"

#: eo v1.1.0 common band names (a band named so gets it as ``common_name``).
_COMMON_NAMES = {
    "coastal", "blue", "green", "red", "rededge", "yellow", "pan", "nir", "nir08",
    "nir09", "cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12",
}
_ARCHITECTURES = {"unet": "U-Net", "unet_forest": "U-Net mixed with a random forest", "spectral": "spectral-index (NDWI/NDVI) thresholds"}


def _total_parameters(bundle) -> int:
    return int(sum(p.numel() for p in bundle.module.parameters()))


def _framework_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch").split("+")[0]
    except Exception:  # pragma: no cover
        return ""


def mlm_item(
    bundle,
    href: str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    item_id: str | None = None,
    datetime: str | None = None,
) -> dict[str, Any]:
    """The STAC MLM Item (a dict, JSON-ready) describing ``bundle``.

    Args:
        bundle: A :class:`geoseg.models.ModelBundle`.
        href: Where the bundle file is, relative to the Item or absolute.
        size: The bundle file's size in bytes (``file:size``).
        sha256: The bundle file's sha256 hex digest (``file:checksum`` as a multihash).
        item_id: Item id (default ``geoseg-<name>``).
        datetime: ISO 8601 time (default: now, UTC).
    """
    spec = bundle.spec
    bands = list(spec.bands)
    vr = spec.value_range
    when = datetime or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    input_desc = f"bands {', '.join(bands)}" + (f", raw values {vr[0]:g}..{vr[1]:g}" if vr is not None else "")
    input_desc += "; nodata pixels are set to 0 after scaling"
    classes = [
        {
            "value": i,
            "name": class_identifier(c.name),
            "description": c.name.replace("_", " "),
            "color_hint": c.color.lstrip("#").upper(),
        }
        for i, c in enumerate(spec.classes)
    ]
    post = {
        "format": "python",
        "expression": "geoseg.scene.predict:Predictor.predict",
        "description": "softmax over classes, argmax -> uint8 class id, max probability x 100 -> confidence",
    }
    outputs: list[dict[str, Any]] = [
        {
            "name": "classes",
            "tasks": ["semantic-segmentation"],
            "result": {
                "shape": [-1, len(classes), -1, -1],
                "dim_order": ["batch", "class", "height", "width"],
                "data_type": "float32",
            },
            "classification:classes": classes,
            "post_processing_function": post,
        }
    ]
    for head in spec.mask_heads:
        outputs.append(
            {
                "name": head,
                "tasks": ["semantic-segmentation"],
                "result": {"shape": [-1, 1, -1, -1], "dim_order": ["batch", "class", "height", "width"], "data_type": "float32"},
                "classification:classes": [
                    {"value": 0, "name": class_identifier(f"not_{head}"), "description": f"not {head}"},
                    {"value": 1, "name": class_identifier(head), "description": head},
                ],
                "post_processing_function": {**post, "description": "logit > 0 -> 1"},
            }
        )
    properties: dict[str, Any] = {
        "datetime": when,
        "description": spec.description or f"geoseg model {spec.name}",
        "mlm:name": f"geoseg-{spec.name}",
        "mlm:architecture": _ARCHITECTURES.get(spec.architecture, spec.architecture),
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": _framework_version(),
        "mlm:total_parameters": _total_parameters(bundle),
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:batch_size_suggestion": 1,
        "mlm:input": [
            {
                "name": "bands",
                "description": input_desc,
                "bands": bands,
                "input": {
                    "shape": [-1, len(bands), -1, -1],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": [
                    {"type": "z-score", "mean": float(m), "stddev": float(s)}
                    for m, s in zip(spec.normalization.mean, spec.normalization.std)
                ],
                "resize_type": None,
                "pre_processing_function": None,
            }
        ],
        "mlm:output": outputs,
        "mlm:hyperparameters": {"halo": int(spec.halo), "downsampling": int(spec.downsampling), **{
            f"arch.{k}": v for k, v in sorted(spec.arch_params.items()) if isinstance(v, (int, float, str, bool))
        }},
        "geoseg:halo": int(spec.halo),
        "geoseg:downsampling": int(spec.downsampling),
        "geoseg:architecture": spec.architecture,
    }
    if vr is not None:
        properties["geoseg:value_range"] = [float(vr[0]), float(vr[1])]
    gsd = getattr(spec, "gsd", None) or (spec.training or {}).get("gsd_m")
    if gsd:
        properties["gsd"] = float(gsd)
    model_asset: dict[str, Any] = {
        "href": href,
        "type": "application/octet-stream; framework=pytorch; profile=safetensors",
        "title": "geoseg bundle: safetensors weights + the geoseg contract in __metadata__['geoseg']",
        "roles": ["mlm:model", "mlm:weights", "data"],
        "mlm:artifact_type": "safetensors.torch.save_file",
        # the input bands: STAC 1.1 ``bands``, and eo:bands for 1.0 readers (and MLM's band check)
        "bands": [{"name": b} for b in bands],
        "eo:bands": [{"name": b, **({"common_name": b} if b in _COMMON_NAMES else {})} for b in bands],
    }
    if size is not None:
        model_asset["file:size"] = int(size)
    if sha256:
        model_asset["file:checksum"] = "1220" + sha256
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA, EO_SCHEMA, FILE_SCHEMA],
        "id": item_id or f"geoseg-{spec.name}",
        "geometry": {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]},
        "bbox": [-180, -90, 180, 90],
        "properties": properties,
        "links": [],
        "assets": {
            "model": model_asset,
            "source_code": {
                "href": "https://pypi.org/project/geoseg/",
                "type": "text/html",
                "title": "geoseg (load the bundle with geoseg.load_model)",
                "roles": ["mlm:source_code", "code"],
                "mlm:entrypoint": "geoseg.models:load_model",
            },
        },
    }


def _bundle_file(bundle, model_ref: Any) -> Path | None:
    """The bundle's own file, if it has one (a path, or the default model's weights)."""
    src = str(getattr(bundle, "source", "") or "")
    if src and not src.startswith("builtin:") and Path(src).is_file():
        return Path(src)
    if isinstance(model_ref, (str, os.PathLike)) and Path(os.fspath(model_ref)).is_file():
        return Path(os.fspath(model_ref))
    return None


def item_for_model(bundle, model_ref: Any = None, relative_to: Path | None = None) -> dict[str, Any]:
    """The MLM Item of a loaded model; its asset points at the bundle file (relative to
    ``relative_to`` when given, else absolute), or at ``<name>.safetensors`` when the model
    has no file (write one with ``geoseg export MODEL ITEM.json --format mlm``)."""
    path = _bundle_file(bundle, model_ref)
    if path is None:
        from geoseg.models.bundle import bundle_bytes

        data = bundle_bytes(bundle.module, bundle.spec)
        return mlm_item(bundle, f"./{bundle.name}.safetensors", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    data = path.read_bytes()
    href = _href(path, relative_to)
    return mlm_item(bundle, href, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _href(path: Path, relative_to: Path | None) -> str:
    path = path.resolve()
    if relative_to is not None:
        try:
            return "./" + os.path.relpath(path, relative_to.resolve()).replace(os.sep, "/")
        except ValueError:  # another drive
            pass
    return path.as_uri()


def write_mlm_item(bundle, out: Path, model_ref: Any = None, overwrite: bool = False) -> list[Path]:
    """Write the MLM Item of ``bundle`` to ``out`` (and ``<name>.safetensors`` beside it when
    the model has no file of its own); returns the files written."""
    out = Path(out)
    if not out.parent.is_dir():
        raise OutputError(f"directory {out.parent} does not exist: create it or choose another OUT")
    source = _bundle_file(bundle, model_ref)
    finals = [out]
    if source is None:
        weights = out.parent / f"{bundle.name}.safetensors"
        finals.append(weights)
    existing = [p for p in finals if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{', '.join(str(p) for p in existing)} already exist(s): pass --overwrite to replace")
    tmps: list[tuple[Path, Path]] = []
    try:
        if source is None:
            from geoseg.models.bundle import bundle_bytes

            data = bundle_bytes(bundle.module, bundle.spec)
            tmp_w = temp_path(weights, "bundle-")
            tmp_w.write_bytes(data)
            tmps.append((tmp_w, weights))
            item = mlm_item(bundle, f"./{weights.name}", size=len(data), sha256=hashlib.sha256(data).hexdigest())
        else:
            item = item_for_model(bundle, source, relative_to=out.parent)
        tmp = temp_path(out, "json-")
        tmps.append((tmp, out))
        tmp.write_text(json.dumps(item, indent=2) + "\n")
        for t, final in tmps:
            os.replace(t, final)
    except BaseException:
        remove_files([t for t, _ in tmps])
        raise
    return finals
