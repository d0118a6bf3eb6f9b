"""``segment``: a model over an xarray DataArray or Dataset as a lazy Dask graph, with exact seams.

The graph is built per tile of the same :class:`~geoseg.grid.TileGrid` that ``geoseg run``
cuts the scene into (cores of ``tile_size`` px on the model's downsampling factor, read
windows = core + halo, clamped at the raster's edges), and each tile runs the same kernel
(:class:`~geoseg.scene.predict.Predictor`, one forward per batch of tiles of equal shape,
single-threaded torch on CPU, :func:`~geoseg.scene.predict.predict_tiles`). A task reads
its tiles' windows straight from the input's source when the input is a plain
``from_array`` (a chunked rioxarray file), else assembles them from the input blocks they
overlap (:mod:`geoseg.xr.windows`); either way every output block is computed from exactly
the input window ``run_scene`` reads for that core: the outputs equal ``geoseg run``'s COGs
byte for byte, whatever the chunking. The output blocks are the tiles' cores.

Models that ``run_scene`` cuts otherwise are cut the same way here
(:func:`~geoseg.scene.tiling.plan_tiles`): a fixed input size gets windows of exactly that
size; a model with blended seams gets one task per batch of windows (their weighted
probabilities, :func:`~geoseg.scene.tiling.blend_tiles`) and one per core, which blends the
windows over it as ``geoseg run`` does.

A task carries the model *reference* (a built-in name or an absolute path), never the
model: every worker process loads it once (:func:`~geoseg.scene.predict.get_predictor`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from geoseg._constants import DEFAULT_TILE_SIZE, NODATA
from geoseg.errors import ContractError, InputError
from geoseg.grid import Tile, batches
from geoseg.scene.tiling import plan_tiles
from geoseg.xr._deps import require
from geoseg.xr._inputs import band_stack, geo_info
from geoseg.xr.windows import values, windows_for

__all__ = ["segment"]

#: ``segment`` options that are ``run_scene`` options about prediction.
PREDICT_OPTIONS = ("tile_size", "batch_size", "device", "bands", "tta", "probabilities", "precision")

#: Name of the class dimension of the ``probabilities`` variable.
CLASS = "class"


@dataclass(frozen=True)
class _Kernel:
    """What every task of one ``segment`` graph runs: the model, by reference, and its options."""

    model: str  # a built-in name or an absolute path (resolve_model_ref)
    checksum: str  # of the bundle the client loaded: the per-process predictor cache key
    device: str  # as given: resolved where the task runs
    nodata: tuple[float | None, ...]  # per band
    tta: bool = False
    probabilities: bool = False
    precision: str = "fp32"  # fp16/bf16: autocast on CUDA (checked against the client's device)


def _on_windows(kernel: _Kernel, windows, tiles: list[Tile], where: tuple, fn):
    """``fn(predictor, data, valid)`` on a batch of tiles' read windows, read from ``where``
    (the source array, or the input blocks the windows overlap, resolved by Dask; see
    :mod:`geoseg.xr.windows`), with one torch thread, as ``geoseg run``'s tasks."""
    import torch

    from geoseg.scene.predict import get_predictor, resolve_device

    predictor = get_predictor(kernel.model, kernel.checksum, resolve_device(kernel.device), precision=kernel.precision)
    reads = [values(raw, kernel.nodata) for raw in windows.raws(tiles, *where)]
    data = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    del reads
    # One torch thread per forward, as geoseg run (pipeline.CPU_TORCH_THREADS): the same float
    # summation order, so the same bytes. Set in this thread only (OpenMP's setting is per thread).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(predictor, data, valid)
    finally:
        torch.set_num_threads(before)


def _predict(kernel: _Kernel, windows, tiles: list[Tile], *where) -> list[np.ndarray]:
    """Dask task: the products ``(P, core_h, core_w)`` uint8 of a batch of tiles (a list),
    as :func:`geoseg.scene.pipeline.predict_batch` computes them, on the same windows."""
    from geoseg.scene.predict import predict_tiles

    pred, _ = _on_windows(kernel, windows, tiles, where, lambda predictor, data, valid: predict_tiles(
        predictor, tiles, data, valid, tta=kernel.tta, probabilities=kernel.probabilities))
    parts = [pred.classes[:, None], pred.confidence[:, None], pred.masks]
    if pred.probabilities is not None:
        parts.append(pred.probabilities)
    out = np.concatenate(parts, axis=1)
    return [out[k] for k in range(len(tiles))]


def _blend(kernel: _Kernel, windows, tiles: list[Tile], layout, *where) -> list:
    """Dask task of blended-seam models: the :class:`~geoseg.scene.blend.BlendPiece` of each
    tile of a batch (its window's probabilities, weighted), as ``run_scene``'s ``blend_batch``."""
    from geoseg.scene.tiling import blend_tiles

    return _on_windows(kernel, windows, tiles, where,
                       lambda predictor, data, valid: blend_tiles(predictor, tiles, data, valid, layout))


def _blend_core(layout, core, pieces_near: list, nlead: int) -> np.ndarray:
    """Dask task: the products ``(2 + masks, h, w)`` of one core of a blended-seam model,
    blended from the pieces of the windows over it (``pieces_near``: at most nine, each a
    tile's :class:`~geoseg.scene.blend.BlendPiece`), each cut to the core (the core's edges
    are cell edges), as ``run_scene``'s sink blends them: the same bytes
    (:class:`~geoseg.scene.blend.BlendSink` sums four windows in tile order)."""
    from dataclasses import replace

    from geoseg.scene.blend import BlendSink

    pieces = []
    for p in pieces_near:
        win = p.window.intersection(core)
        if win is not None:
            sl = win.relative_to(p.window)
            pieces.append(replace(p, window=win, probs=p.probs[(slice(None), *sl)], masks=p.masks[(slice(None), *sl)],
                                  weight=p.weight[sl], valid=p.valid[sl]))
    done: list = []
    BlendSink(layout, done.extend).add(pieces)
    (res,) = done
    out = np.concatenate([res.classes[None], res.confidence[None], res.masks], axis=0)
    return out.reshape((1,) * nlead + out.shape)


def _item(results: list, k: int):
    """Element ``k`` of a batch task's list (one tile's piece)."""
    return results[k]


def _pick(results: list, k: int, nlead: int) -> np.ndarray:
    """Tile ``k`` of a batch, with the leading dimensions' axes (length 1)."""
    return results[k].reshape((1,) * nlead + results[k].shape)


def segment(
    data,
    model: str | os.PathLike = "default",
    *,
    bands: Sequence[str | int] | None = None,
    tile_size: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: bool = False,
    probabilities: bool = False,
    precision: str = "fp32",
    **options,
):
    """Segment imagery held as xarray: a lazy :class:`xarray.Dataset` of geoseg's products.

    Args:
        data: a DataArray ``(band, y, x)`` or ``(time, band, y, x)`` (any leading
            dimensions are mapped over), or a Dataset with one ``(..., y, x)`` variable per
            band; numpy- or dask-backed. Values in the units the model was trained on.
        model: a built-in model name or a bundle path.
        bands: the bands that feed the model, in its order: names (matched against the
            ``band`` coordinate, a ``common_name`` coordinate, ``long_name`` attributes or
            variable names) or 1-based positions. Default: the model's band names when the
            data names them all, else all bands in order.
        tile_size: core tile size in px (default 1024, as ``geoseg run``): outputs equal
            ``geoseg run --tile-size`` with the same value. Output chunks are the tiles
            (a model with a fixed input size sets its own, as in ``geoseg run``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved where the tasks run).
        batch_size: tiles per forward (default: 1 on CPU, 4 on CUDA, as ``geoseg run``).
        tta: average the probabilities of the 8 flips/rotations of every window, as
            ``geoseg run --tta`` (8x the compute; seams stay exact).
        probabilities: also give ``probabilities``, as ``geoseg run --probabilities``.
        precision: ``fp32``, or ``fp16``/``bf16`` (autocast; CUDA only), as
            ``geoseg run --precision``.
        **options: other ``run_scene`` prediction options (none yet).

    Returns:
        A Dataset on the input's grid (its coordinates, ``spatial_ref`` and leading
        dimensions): ``classes`` (uint8 class ids, 255 = nodata, CF ``flag_values`` /
        ``flag_meanings``, ``flag_colors``), ``confidence`` (uint8 percent, 255 = nodata)
        and one uint8 0/1 variable per mask head; with ``probabilities``, a
        ``(..., class, y, x)`` uint8 ``probabilities`` variable (``round(p x 254)``, 255 =
        nodata; the ``class`` coordinate holds the class names). The model's contract in ``attrs``.
        Nothing is computed until the caller does (``.compute()``, ``.to_zarr()``,
        :func:`geoseg.to_cog`). The graph's layer carries the ``dask.annotate``
        annotations active during the call (e.g. ``resources={"GPU": 1}`` for GPU workers).
        A task reads its tiles' windows straight from the input's source when the input is
        a plain ``from_array`` (``rioxarray.open_rasterio(..., chunks=...)``), else from the
        input's blocks (:mod:`geoseg.xr.windows`).

    Raises:
        InputError: unusable dimensions, bands or options.
        ContractError: the bands or the value range do not fit the model.
    """
    xr = require("xarray", "geoseg.segment")
    import dask.array as da

    from geoseg.allocator import configure_process

    configure_process()  # the process defaults run_scene sets: bounded GDAL block cache, allocator (no-op when set)
    from geoseg.io.raster import size_block_cache

    size_block_cache()  # GDAL's, if the caller's reads had sized it already (rioxarray's reads are not geoseg's)
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from geoseg.io.raster import dtype_range
    from geoseg.models import load_model
    from geoseg.models.refs import resolve_model_ref
    from geoseg.scene.predict import check_precision, resolve_device

    unknown = sorted(set(options) - set(PREDICT_OPTIONS))
    if unknown:
        raise TypeError(f"segment() got unknown option(s) {unknown}; it takes {', '.join(PREDICT_OPTIONS)}")
    model_ref = resolve_model_ref(model)
    bundle = load_model(model_ref)
    stack = band_stack(data, bundle.bands, bands)
    arr = stack.array
    vr = bundle.value_range
    if vr is not None:
        dlo, dhi = dtype_range(arr.dtype.name)
        if dhi < float(vr[1]) or dlo > float(vr[0]):
            raise ContractError(
                f"the data is {arr.dtype} (values {dlo:g}..{dhi:g}) but model '{bundle.name}' expects values in "
                f"{float(vr[0]):g}..{float(vr[1]):g}: use a model trained for {arr.dtype} data, or rescale the data"
            )
    tile_size = DEFAULT_TILE_SIZE if tile_size is None else int(tile_size)
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    local_device = resolve_device(device)  # validates the name; checks CUDA here when asked for
    precision = check_precision(precision, local_device)
    batch_size = int(batch_size) if batch_size else (1 if local_device == "cpu" else 4)
    height, width = arr.sizes[stack.ydim], arr.sizes[stack.xdim]
    tiling = plan_tiles(bundle, height, width, tile_size)  # exact, fixed-size or blended seams, as run_scene
    grid, layout = tiling.grid, tiling.layout
    if layout is not None and (tta or probabilities):
        raise InputError(
            f"model '{bundle.name}' runs with blended seams (its receptive field exceeds the exact-halo limit): "
            "tta and probabilities are available for exact-seam models only; segment without them"
        )
    plan = batches(tiling.tiles, batch_size)

    src = arr.data
    if not isinstance(src, da.Array):
        src = da.from_array(src, chunks=(1,) * len(stack.lead) + (-1, -1, -1))
    nlead = len(stack.lead)
    lead_shape = src.shape[:nlead]
    heads = list(bundle.mask_heads)
    n_out = 2 + len(heads) + (len(bundle.class_names) if probabilities else 0)
    kernel = _Kernel(model_ref, bundle.checksum, device, stack.nodata, bool(tta), bool(probabilities), precision)
    windows = windows_for(src)

    token = tokenize(src.name, kernel, tile_size, batch_size)
    name = f"geoseg-segment-{token}"
    batch_name = f"geoseg-batch-{token}"
    piece_name = f"geoseg-piece-{token}"
    dsk: dict = {}
    for t in product(*(range(n) for n in lead_shape)):
        for b, tiles in enumerate(plan):
            bkey = (batch_name, *t, b)
            if layout is None:
                dsk[bkey] = (_predict, kernel, windows, tiles, *windows.task_args(t, tiles))
                for k, tile in enumerate(tiles):
                    i, j = divmod(tile.index, grid.cols)
                    dsk[(name, *t, 0, i, j)] = (_pick, bkey, k, nlead)
            else:  # the windows' weighted probabilities, one key per tile; a core blends those over it
                dsk[bkey] = (_blend, kernel, windows, tiles, layout, *windows.task_args(t, tiles))
                for k, tile in enumerate(tiles):
                    dsk[(piece_name, *t, tile.index)] = (_item, bkey, k)
        if layout is not None:  # an overlap is at most half a tile: the windows over a core are its neighbours'
            for tile in tiling.tiles:
                i, j = divmod(tile.index, grid.cols)
                near = [(piece_name, *t, grid.tile(a, c).index)
                        for a in range(max(0, i - 1), min(grid.rows, i + 2))
                        for c in range(max(0, j - 1), min(grid.cols, j + 2))
                        if layout.used(grid.tile(a, c)).intersection(tile.core) is not None]
                dsk[(name, *t, 0, i, j)] = (_blend_core, layout, tile.core, near, nlead)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[src])
    chunks = (
        *((1,) * n for n in lead_shape),
        (n_out,),
        tuple(grid.tile(i, 0).core.height for i in range(grid.rows)),
        tuple(grid.tile(0, j).core.width for j in range(grid.cols)),
    )
    out = da.Array(graph, name, chunks=chunks, dtype=np.uint8)
    return _dataset(xr, out, stack, bundle, model_ref, grid.tile_size, data, bool(tta), bool(probabilities))


def _cf_name(name: str) -> str:
    return "_".join(str(name).split()) or "unnamed"


def _dataset(xr, out, stack, bundle, model_ref: str, tile_size: int, data, tta: bool, probabilities: bool):
    """Wrap the products array ``(*lead, P, y, x)`` as the result Dataset."""
    dims = (*stack.lead, stack.ydim, stack.xdim)
    coords = {k: v for k, v in stack.coords.items() if set(v.dims) <= set(dims)}
    lead = (slice(None),) * len(stack.lead)
    names, colors, heads = list(bundle.class_names), list(bundle.class_colors), list(bundle.mask_heads)
    grid_mapping = {"grid_mapping": "spatial_ref"} if "spatial_ref" in coords else {}
    variables = {
        "classes": xr.DataArray(out[(*lead, 0)], dims=dims, attrs={
            "long_name": "class", "flag_values": np.arange(len(names), dtype=np.uint8),
            "flag_meanings": " ".join(_cf_name(n) for n in names), "flag_colors": " ".join(colors),
            "_FillValue": np.uint8(NODATA), **grid_mapping}),
        "confidence": xr.DataArray(out[(*lead, 1)], dims=dims, attrs={
            "long_name": "confidence: max class probability x 100", "units": "percent",
            "valid_range": np.array([0, 100], dtype=np.uint8), "_FillValue": np.uint8(NODATA), **grid_mapping}),
    }
    for m, head in enumerate(heads):
        key = head if head not in variables and head not in coords and head not in dims else f"mask_{head}"
        variables[key] = xr.DataArray(out[(*lead, 2 + m)], dims=dims, attrs={
            "long_name": f"mask {head}", "flag_values": np.array([0, 1], dtype=np.uint8),
            "flag_meanings": f"not_{_cf_name(head)} {_cf_name(head)}", "_FillValue": np.uint8(NODATA),
            "geoseg_mask_head": head, **grid_mapping})
    if probabilities:
        from geoseg.scene.predict import PROBABILITY_SCALE

        first = 2 + len(heads)
        variables["probabilities"] = xr.DataArray(
            out[(*lead, slice(first, first + len(names)))], dims=(*stack.lead, CLASS, stack.ydim, stack.xdim),
            coords={CLASS: names}, attrs={
                "long_name": f"class probability x {PROBABILITY_SCALE}", "units": f"probability x {PROBABILITY_SCALE}",
                "valid_range": np.array([0, PROBABILITY_SCALE], dtype=np.uint8), "_FillValue": np.uint8(NODATA),
                **grid_mapping})
    norm = bundle.normalization  # a bundle's or an external model's contract
    attrs = {
        "title": f"geoseg segmentation by model {bundle.name}",
        "geoseg_model": model_ref,
        "geoseg_model_name": bundle.name,
        "geoseg_model_sha256": bundle.checksum,
        "geoseg_model_bands": json.dumps(list(bundle.bands)),
        "geoseg_input_bands": json.dumps(list(stack.names)),
        "geoseg_classes": json.dumps([{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors))]),
        "geoseg_mask_heads": json.dumps(heads),
        "geoseg_halo": int(bundle.halo),
        "geoseg_downsampling": int(bundle.downsampling),
        "geoseg_tile_size": int(tile_size),  # the grid's (a fixed-input-size model sets its own)
        "geoseg_tta": int(tta),
        "geoseg_value_range": json.dumps(list(bundle.value_range) if bundle.value_range is not None else None),
        "geoseg_normalization": json.dumps({"mean": list(norm.mean), "std": list(norm.std)}),
    }
    ds = xr.Dataset(variables, coords=coords, attrs=attrs)
    crs, transform = geo_info(data)
    if crs is not None:
        try:
            import rioxarray  # noqa: F401
        except ImportError:
            ds.attrs["crs_wkt"] = crs
        else:
            ds = ds.rio.write_crs(crs)
            if transform is not None:
                ds = ds.rio.write_transform(transform)
    return ds
