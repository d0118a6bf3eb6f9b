"""Export a geoseg model to ONNX, TorchScript or a ``torch.export`` program, with its contract.

- ``onnx``: the conventions of the Deepness QGIS plugin and of GeoDeep, so that the file
  runs in both as it is: one input ``image`` of shape ``(batch, bands, T, T)`` (a fixed
  tile size ``T``, which both tools take from the input shape) holding raw values / 255
  (what both tools feed: 8-bit RGB divided by 255; bands red, green, blue when the model's
  bands are those three, else the model's own order); the graph multiplies by 255,
  normalises with the model's statistics, runs the network and returns class
  probabilities ``probabilities`` ``(batch, classes, T, T)`` (softmax; mask heads are not
  exported: both tools read one output). Its metadata holds the keys the two tools read
  (``model_type``, ``class_names``, ``resolution`` in cm/px, ``tile_size`` and
  ``tiles_size``, ``tiles_overlap`` in percent, ``seg_thresh``, ``seg_small_segment``,
  ``standardization_mean``/``_std``) plus ``geoseg``, the contract of the graph as JSON.
- ``torchscript`` / ``pt2``: the bare network, exactly the bundle's module (normalised
  float32 ``(N, bands, H, W)`` in, class logits - and mask logits - out), traced with
  :func:`torch.jit.trace` / exported with :func:`torch.export.export` (H and W any
  multiple of the downsampling factor, or exactly ``tile_size``), and a sidecar
  ``MODEL.geoseg.json`` (the suffix replaced: ``m.pt2`` -> ``m.geoseg.json``) with the
  contract (:func:`_contract`); the same JSON is stored inside the archive
  (extra file ``geoseg.json``).

Every export is checked before it is committed: the written file is loaded back with its
own runtime and its outputs are compared with the bundle's on a window
(:attr:`ExportResult.max_abs_diff`). Files appear under their final names only once
complete.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoseg._files import remove_files, temp_path
from geoseg.errors import ModelError, OutputError

__all__ = [
    "FORMATS",
    "ExportResult",
    "export_model",
    "onnx_metadata",
    "sidecar_path",
    "tiles_overlap_percent",
]

#: Formats :func:`export_model` writes (``mlm``: a STAC MLM Item, see :mod:`geoseg.models.mlm_item`).
FORMATS = ("onnx", "torchscript", "pt2", "mlm")

#: Default fixed tile size of ONNX exports (Deepness and GeoDeep read it from the input shape).
DEFAULT_ONNX_TILE = 512

_RGB = ("red", "green", "blue")
#: Tolerance of the check of an export against the bundle (float32 reordering only).
_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: The model file (or the MLM Item JSON).
        format: ``onnx``, ``torchscript``, ``pt2`` or ``mlm``.
        files: Every file written (the model, its sidecar, a bundle for an MLM Item).
        input_size: Fixed ``(H, W)`` of the exported input, or None for any multiple of
            the downsampling factor.
        max_abs_diff: Largest difference between the exported model's outputs (through
            its own runtime) and the bundle's, on a test window (None for ``mlm``).
        metadata: The ONNX metadata written (ONNX only).
        notes: Things the user should know (e.g. mask heads not exported to ONNX).
    """

    path: Path
    format: str
    files: list[Path] = field(default_factory=list)
    input_size: tuple[int, int] | None = None
    max_abs_diff: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "files": [str(p) for p in self.files],
            "input_size": list(self.input_size) if self.input_size else None,
            "max_abs_diff": self.max_abs_diff,
            "metadata": dict(self.metadata),
            "notes": list(self.notes),
        }


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """The geoseg sidecar of an exported model file: ``MODEL.geoseg.json`` for ``MODEL.pt2``
    (the suffix replaced, as geoseg's model reader looks for it)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".geoseg.json") if p.suffix else p.with_name(p.name + ".geoseg.json")


def tiles_overlap_percent(tile: int, halo: int, factor: int = 1) -> int:
    """The integer ``tiles_overlap`` (percent of the tile) whose discarded margin covers ``halo``.

    Deepness and GeoDeep overlap neighbouring tiles by ``floor(tile * p / 100)`` pixels and
    drop half of it on each inner side, so seams are exact when that half is >= the halo.
    Among such ``p`` the smallest one whose overlap is also a multiple of ``factor`` is
    preferred (tile origins then stay on the model's downsampling grid).
    """
    if halo <= 0:
        return 0
    need = math.ceil(200 * halo / tile)
    for p in range(need, 100):
        overlap = tile * p // 100
        if overlap // 2 >= halo and overlap % max(factor, 1) == 0 and tile - overlap > 0:
            return p
    return need


def _gsd_m(bundle) -> float | None:
    spec = bundle.spec
    gsd = getattr(spec, "gsd", None)
    if gsd is None:
        gsd = (spec.training or {}).get("gsd_m")
    return float(gsd) if gsd else None


def _contract(bundle, input_size: tuple[int, int] | None, **changes: Any) -> dict[str, Any]:
    """The contract of an exported network, in the fields geoseg's model reader takes from a
    sidecar ``MODEL.geoseg.json``, an archive's ``geoseg.json`` or the ONNX ``geoseg`` key:
    what the exported graph takes (bands in input order, normalisation, value range) and
    gives (classes, mask heads, logits or probabilities), its halo and downsampling factor,
    fixed input size and ground sample distance (metres)."""
    spec = bundle.spec
    out: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "bands": list(spec.bands),
        "normalization": {"mean": list(spec.normalization.mean), "std": list(spec.normalization.std)},
        "value_range": list(spec.value_range) if spec.value_range is not None else None,
        "classes": [{"name": c.name, "color": c.color} for c in spec.classes],
        "mask_heads": list(spec.mask_heads),
        "outputs": "logits",
        "halo": int(spec.halo),
        "downsampling": int(spec.downsampling),
        "input_size": list(input_size) if input_size else None,
    }
    gsd = _gsd_m(bundle)
    if gsd:
        out["gsd"] = gsd
    out.update(changes)
    return out


def _resolution_cm(bundle, resolution: float | None) -> float:
    """cm/px for the ONNX ``resolution`` key: given, or the GSD the model records."""
    if resolution is not None:
        if not resolution > 0:
            raise ModelError(f"resolution must be > 0 cm/px, got {resolution}")
        return float(resolution)
    gsd = _gsd_m(bundle)
    if gsd:
        return round(gsd * 100.0, 4)
    raise ModelError(
        f"model {bundle.name!r} does not record the ground sample distance it was trained at: "
        "pass the resolution of its training imagery in cm per pixel (--resolution CM), which "
        "Deepness and GeoDeep use to rescale scenes"
    )


def _tile(bundle, tile_size: int | None, default: int | None) -> int | None:
    size = tile_size if tile_size is not None else default
    if size is None:
        return None
    f = int(bundle.downsampling)
    size = int(math.ceil(int(size) / f) * f)
    if size <= 2 * bundle.halo:
        raise ModelError(
            f"tile_size {size} leaves no core inside model {bundle.name!r}'s halo of {bundle.halo} px on each "
            f"side: use --tile-size > {2 * bundle.halo}"
        )
    return size


def onnx_metadata(bundle, tile: int, resolution_cm: float, input_bands: list[str]) -> dict[str, str]:
    """The ONNX ``metadata_props`` of an export: Deepness/GeoDeep keys (JSON values) + ``geoseg``."""
    halo, f = int(bundle.halo), int(bundle.downsampling)
    nb = len(input_bands)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): n for i, n in enumerate(bundle.class_names)},
        "resolution": resolution_cm,
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": tiles_overlap_percent(tile, halo, f),
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "standardization_mean": [0.0] * nb,
        "standardization_std": [1.0] * nb,
    }
    out = {k: json.dumps(v) for k, v in meta.items()}
    # the graph takes raw / 255 (the Deepness convention) in the input band order, gives probabilities
    contract = _contract(
        bundle, (tile, tile), bands=input_bands, normalization={"mean": [0.0] * nb, "std": [255.0] * nb},
        outputs="probabilities", mask_heads=[], gsd=resolution_cm / 100.0,
    )
    out["geoseg"] = json.dumps(contract, separators=(",", ":"))
    out["name"] = bundle.name
    out["description"] = bundle.description
    return out


class _OnnxGraph(nn.Module):
    """raw/255 in the input band order -> probabilities: what Deepness and GeoDeep run."""

    def __init__(self, module: nn.Module, mean: list[float], std: list[float], perm: list[int] | None) -> None:
        super().__init__()
        self.module = module
        self.perm = perm
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float64)).float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x[:, self.perm]
        x = (x * 255.0 - self.mean) * self.inv_std
        out = self.module(x)
        logits = out[0] if isinstance(out, tuple) else out
        return torch.softmax(logits, dim=1)


def _input_bands(bundle) -> tuple[list[str], list[int] | None]:
    """Input band order of an ONNX export and the permutation to the model's order."""
    bands = list(bundle.bands)
    if sorted(bands) == sorted(_RGB) and bands != list(_RGB):
        return list(_RGB), [list(_RGB).index(b) for b in bands]
    return bands, None


def _commit(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, final in pairs:
        os.replace(tmp, final)


def _check_free(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{', '.join(str(p) for p in existing)} already exist(s): pass --overwrite to replace")
    for p in paths:
        if not p.parent.is_dir():
            raise OutputError(f"directory {p.parent} does not exist: create it or choose another OUT")


def export_model(
    model: Any,
    out: str | os.PathLike[str],
    format: str = "onnx",
    *,
    tile_size: int | None = None,
    resolution: float | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> ExportResult:
    """Write a geoseg model (built-in name, bundle path or :class:`ModelBundle`) in another format.

    Args:
        model: The model to export.
        out: The file to write.
        format: ``onnx``, ``torchscript``, ``pt2`` or ``mlm`` (a STAC MLM Item for the bundle).
        tile_size: Fixed input size (rounded up to the downsampling factor). ONNX default:
            512; TorchScript and pt2 default: any multiple of the factor.
        resolution: Ground sample distance in cm/px for the ONNX ``resolution`` key
            (default: the GSD the model records).
        overwrite: Replace existing files.
        check: Compare the written file's outputs (through its own runtime) with the bundle's.

    Raises:
        ModelError: An unknown format, an unusable model or tile size, a missing
            resolution, or an export that does not reproduce the bundle.
        OutputError: OUT exists (without ``overwrite``) or its directory does not.
    """
    from geoseg.models.registry import load_model

    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ModelError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    bundle = load_model(model)
    out = Path(out)
    if fmt == "mlm":
        from geoseg.models.mlm_item import write_mlm_item

        return ExportResult(out, "mlm", write_mlm_item(bundle, out, model_ref=model, overwrite=overwrite))
    if bundle.architecture == "unet_forest":
        raise ModelError(
            f"model {bundle.name!r} mixes a U-Net with a random forest (architecture unet_forest), which only "
            f"geoseg bundles keep: it cannot be written as {fmt}; use the bundle (geoseg run --model), export "
            "--format mlm, or retrain with --no-forest for a U-Net alone"
        )
    if fmt == "onnx":
        return _export_onnx(bundle, out, tile_size, resolution, overwrite, check)
    return _export_torch(bundle, out, fmt, tile_size, overwrite, check)


# --------------------------------------------------------------------------- ONNX


def _export_onnx(bundle, out: Path, tile_size, resolution, overwrite: bool, check: bool) -> ExportResult:
    try:
        import onnx
    except ImportError:
        raise ModelError("ONNX export needs the onnx package: pip install 'geoseg[onnx]'") from None
    tile = _tile(bundle, tile_size, DEFAULT_ONNX_TILE)
    assert tile is not None
    res_cm = _resolution_cm(bundle, resolution)
    _check_free([out], overwrite)
    input_bands, perm = _input_bands(bundle)
    norm = bundle.normalization
    graph = _OnnxGraph(bundle.module, list(norm.mean), list(norm.std), perm).eval()
    proto = _to_onnx(graph, len(input_bands), tile)
    meta = onnx_metadata(bundle, tile, res_cm, input_bands)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "geoseg"
    tmp = temp_path(out, "onnx-")
    result = ExportResult(out, "onnx", [out], (tile, tile), metadata=meta)
    if bundle.mask_heads:
        result.notes.append(
            f"mask heads {list(bundle.mask_heads)} are not in the ONNX file (Deepness and GeoDeep read one output)"
        )
    vr = bundle.value_range
    if input_bands != list(_RGB) or (vr is not None and vr[1] > 255):
        result.notes.append(
            f"the model takes bands {input_bands}"
            + (f" with values {vr[0]:g}..{vr[1]:g}" if vr is not None else "")
            + "; Deepness and GeoDeep feed 8-bit red, green, blue: the file will only give meaningful "
            "results on such imagery if the model was trained on it"
        )
    try:
        onnx.save_model(proto, str(tmp))
        if check:
            result.max_abs_diff = _check_onnx(tmp, graph, len(input_bands), tile)
        _commit([(tmp, out)])
    except BaseException:
        remove_files([tmp])
        raise
    return result


def _to_onnx(graph: nn.Module, bands: int, tile: int):
    """The ONNX ModelProto of ``graph`` with a dynamic batch and a fixed ``tile`` x ``tile`` input."""
    import onnx

    example = torch.rand(2, bands, tile, tile)
    with _quiet_torch_onnx():
        try:
            program = torch.onnx.export(
                graph, (example,), None, dynamo=True, input_names=["image"], output_names=["probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True, verbose=False,
            )
            return program.model_proto
        except TypeError:  # torch < 2.5: no dynamo keyword; the TorchScript-based exporter
            buf = io.BytesIO()
            torch.onnx.export(
                graph, (example,), buf, input_names=["image"], output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17,
            )
            return onnx.load_model_from_string(buf.getvalue())


class _quiet_torch_onnx:
    """Silence the exporter's progress prints and its warnings about optional packages."""

    def __enter__(self):
        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self._out = io.StringIO()
        import contextlib

        self._redirect = contextlib.redirect_stdout(self._out)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self._warn.__exit__(*exc)
        for lg, lv in zip(self._loggers, self._levels):
            lg.setLevel(lv)
        return False


def _check_onnx(path: Path, graph: nn.Module, bands: int, tile: int) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("checking the ONNX export needs onnxruntime: pip install 'geoseg[onnx]'") from None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, bands, tile, tile, generator=gen)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = graph(x).numpy()
    return _compare(got, want, "ONNX")


def _compare(got: np.ndarray, want: np.ndarray, what: str) -> float:
    if got.shape != want.shape:
        raise ModelError(f"the {what} export gives outputs of shape {got.shape}, the model {want.shape}")
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    if not diff <= _TOLERANCE * scale:
        raise ModelError(f"the {what} export does not reproduce the model (max abs difference {diff:g})")
    return diff


# --------------------------------------------------------------------------- TorchScript / pt2


def _example(bundle, tile: int | None, batch: int) -> torch.Tensor:
    f = int(bundle.downsampling)
    size = tile if tile is not None else max(4 * f, 32)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, len(bundle.bands), size, size, generator=gen)


def _export_torch(bundle, out: Path, fmt: str, tile_size, overwrite: bool, check: bool) -> ExportResult:
    tile = _tile(bundle, tile_size, None)
    side = sidecar_path(out)
    _check_free([out, side], overwrite)
    input_size = (tile, tile) if tile else None
    contract = _contract(bundle, input_size)
    text = json.dumps(contract, indent=2) + "\n"
    module = bundle.module.eval()
    tmp, tmp_side = temp_path(out, f"{fmt}-"), temp_path(side, "json-")
    result = ExportResult(out, fmt, [out, side], input_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                with torch.inference_mode(False), torch.no_grad():
                    traced = torch.jit.trace(module, _example(bundle, tile, 1), check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={"geoseg.json": text})
            else:
                program = _torch_export(module, bundle, tile)
                torch.export.save(program, str(tmp), extra_files={"geoseg.json": text})
        tmp_side.write_text(text)
        if check:
            result.max_abs_diff = _check_torch(tmp, fmt, bundle, tile)
        _commit([(tmp, out), (tmp_side, side)])
    except BaseException:
        remove_files([tmp, tmp_side])
        raise
    return result


def _torch_export(module: nn.Module, bundle, tile: int | None):
    dim = torch.export.Dim
    f = int(bundle.downsampling)
    if tile is None:
        shapes = ({0: dim("batch"), 2: f * dim("h"), 3: f * dim("w")},)
    else:
        shapes = ({0: dim("batch")},)
    with torch.no_grad():
        return torch.export.export(module, (_example(bundle, tile, 2),), dynamic_shapes=shapes)


def _check_torch(path: Path, fmt: str, bundle, tile: int | None) -> float:
    f = int(bundle.downsampling)
    # another size than the example's, to show the export is not specialised to it
    size = tile if tile is not None else max(4 * f, 32) + 2 * f
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, len(bundle.bands), size, size, generator=gen)
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path), map_location="cpu")
    else:
        loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        got, want = loaded(x), bundle.module(x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        raise ModelError(f"the {fmt} export gives {len(got)} outputs, the model {len(want)}")
    return max(_compare(g.numpy(), w.numpy(), fmt) for g, w in zip(got, want))
