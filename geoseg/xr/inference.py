"""``segment``: a model over an xarray DataArray or Dataset as a lazy Dask graph, with exact seams.

The graph is built per tile of the same :class:`~geoseg.grid.TileGrid` that ``geoseg run``
cuts the scene into (cores of ``tile_size`` px on the model's downsampling factor, read
windows = core + halo, clamped at the raster's edges), and each tile runs the same kernel
(:class:`~geoseg.scene.predict.Predictor`, one forward per batch of tiles of equal shape,
single-threaded torch on CPU). The input's chunking only decides which input blocks a
tile's window is assembled from, so every output block is computed from exactly the input
window ``run_scene`` reads for that core: the outputs equal ``geoseg run``'s COGs byte for
byte, whatever the chunking. The output blocks are the tiles' cores.

A task carries the model *reference* (a built-in name or an absolute path), never the
model: every worker process loads it once (:func:`~geoseg.scene.predict.get_predictor`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from itertools import product

import numpy as np

from geoseg._constants import DEFAULT_TILE_SIZE, NODATA
from geoseg.errors import ContractError, InputError
from geoseg.grid import PixelWindow, Tile, TileGrid, batches
from geoseg.io.raster import as_float32
from geoseg.xr._deps import require
from geoseg.xr._inputs import band_stack, geo_info

__all__ = ["segment"]

#: ``segment`` options that are ``run_scene`` options about prediction.
PREDICT_OPTIONS = ("tile_size", "batch_size", "device", "bands")


def _window(blocks, lead_offsets: tuple[int, ...], crop: tuple[slice, slice]) -> np.ndarray:
    """Assemble one read window ``(bands, h, w)`` from nested lists ``[band][row][col]`` of
    input blocks ``(*lead, b, h, w)``."""
    parts = [[[blk[lead_offsets] for blk in row] for row in rows] for rows in blocks]
    arr = np.block(parts) if (len(parts) > 1 or len(parts[0]) > 1 or len(parts[0][0]) > 1) else parts[0][0][0]
    return arr[(slice(None), *crop)]


def _values(raw: np.ndarray, nodata: tuple[float | None, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Raw window -> ``(float32 data, bool validity)``, as :meth:`geoseg.io.raster.SceneSource.read`."""
    valid = None
    declared = [v is not None and not np.isnan(v) for v in nodata]
    if any(declared):
        hits = []
        for b, nd in enumerate(nodata):
            if not declared[b]:
                hits = None  # a band without nodata: no pixel has every band equal to nodata
                break
            try:
                value = raw.dtype.type(nd)
            except (OverflowError, ValueError):
                hits = None
                break
            hits.append(raw[b] != value)
        if hits is not None:
            valid = np.any(np.stack(hits), axis=0)
    if valid is None:
        valid = np.ones(raw.shape[1:], dtype=bool)
    return as_float32(raw, valid)


def _predict(
    model: str, checksum: str, device: str, tiles: list[Tile], windows: list, covered: list[PixelWindow],
    lead_offsets: tuple[int, ...], nodata: tuple[float | None, ...],
) -> list[np.ndarray]:
    """Dask task: the products ``(P, core_h, core_w)`` uint8 of a batch of tiles (a list).

    ``windows[k]`` holds tile ``k``'s input blocks (``[band][row][col]``, resolved by Dask)
    and ``covered[k]`` the pixel window they cover. The same computation as
    :func:`geoseg.scene.pipeline.predict_batch` on the same read windows.
    """
    import torch

    from geoseg.scene.predict import get_predictor, resolve_device

    predictor = get_predictor(model, checksum, resolve_device(device))
    reads = [_values(_window(w, lead_offsets, t.read.relative_to(c)), nodata) for w, c, t in zip(windows, covered, tiles)]
    data = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    has_valid = np.array([valid[k][t.crop].any() for k, t in enumerate(tiles)])
    context, inner = tiles[0].context, tiles[0].inner  # the same for a batch (grid.batches)
    core = tiles[0].core
    # One torch thread per forward, as geoseg run (pipeline.CPU_TORCH_THREADS): the same float
    # summation order, so the same bytes. Set in this thread only (OpenMP's setting is per thread).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if has_valid.all():
            pred = predictor.predict(data, valid, context, inner)
        else:
            pred = predictor.empty(len(tiles), core.height, core.width)
            if has_valid.any():
                sub = predictor.predict(data[has_valid], valid[has_valid], context, inner)
                pred.classes[has_valid], pred.confidence[has_valid], pred.masks[has_valid] = (
                    sub.classes, sub.confidence, sub.masks)
    finally:
        torch.set_num_threads(before)
    out = np.concatenate([pred.classes[:, None], pred.confidence[:, None], pred.masks], axis=1)
    return [out[k] for k in range(len(tiles))]


def _pick(results: list, k: int, nlead: int) -> np.ndarray:
    """Tile ``k`` of a batch, with the leading dimensions' axes (length 1)."""
    return results[k].reshape((1,) * nlead + results[k].shape)


def _offsets(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def _blocks_over(offsets: np.ndarray, start: int, end: int) -> range:
    """Indexes of the blocks (edges ``offsets``) that overlap pixels ``start..end``."""
    return range(int(np.searchsorted(offsets, start, side="right")) - 1, int(np.searchsorted(offsets, end, side="left")))


def segment(
    data,
    model: str | os.PathLike = "default",
    *,
    bands: Sequence[str | int] | None = None,
    tile_size: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
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
            ``geoseg run --tile-size`` with the same value. Output chunks are the tiles.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved where the tasks run).
        batch_size: tiles per forward (default: 1 on CPU, 4 on CUDA, as ``geoseg run``).
        **options: other ``run_scene`` prediction options (none yet).

    Returns:
        A Dataset on the input's grid (its coordinates, ``spatial_ref`` and leading
        dimensions): ``classes`` (uint8 class ids, 255 = nodata, CF ``flag_values`` /
        ``flag_meanings``, ``flag_colors``), ``confidence`` (uint8 percent, 255 = nodata)
        and one uint8 0/1 variable per mask head; the model's contract in ``attrs``.
        Nothing is computed until the caller does (``.compute()``, ``.to_zarr()``,
        :func:`geoseg.to_cog`). The graph's layer carries the ``dask.annotate``
        annotations active during the call (e.g. ``resources={"GPU": 1}`` for GPU workers).

    Raises:
        InputError: unusable dimensions, bands or options.
        ContractError: the bands or the value range do not fit the model.
    """
    xr = require("xarray", "geoseg.segment")
    import dask.array as da

    from geoseg.allocator import configure_process

    configure_process()  # the process defaults run_scene sets: bounded GDAL block cache, allocator (no-op when set)
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from geoseg.io.raster import dtype_range
    from geoseg.models import load_model
    from geoseg.models.refs import resolve_model_ref
    from geoseg.scene.predict import resolve_device

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
    batch_size = int(batch_size) if batch_size else (1 if local_device == "cpu" else 4)
    height, width = arr.sizes[stack.ydim], arr.sizes[stack.xdim]
    grid = TileGrid(height, width, tile_size, halo=int(bundle.halo), factor=int(bundle.downsampling))
    plan = batches(list(grid), batch_size)

    src = arr.data
    if not isinstance(src, da.Array):
        src = da.from_array(src, chunks=(1,) * len(stack.lead) + (-1, -1, -1))
    nlead = len(stack.lead)
    lead_shape = src.shape[:nlead]
    lead_offsets = [_offsets(c) for c in src.chunks[:nlead]]
    band_chunks = range(len(src.chunks[nlead]))
    row_off, col_off = _offsets(src.chunks[nlead + 1]), _offsets(src.chunks[nlead + 2])
    heads = list(bundle.mask_heads)
    n_out = 2 + len(heads)

    token = tokenize(src.name, bundle.checksum, tile_size, batch_size, device, stack.nodata)
    name = f"geoseg-segment-{token}"
    batch_name = f"geoseg-batch-{token}"
    dsk: dict = {}
    for t in product(*(range(n) for n in lead_shape)):
        # the input block holding lead index t, and t's offset inside it
        blk = tuple(int(np.searchsorted(off, v, side="right") - 1) for off, v in zip(lead_offsets, t))
        inside = tuple(int(v - off[b]) for off, v, b in zip(lead_offsets, t, blk))
        for b, tiles in enumerate(plan):
            windows, covered = [], []
            for tile in tiles:
                rd = tile.read
                ri, ci = _blocks_over(row_off, rd.row, rd.row_end), _blocks_over(col_off, rd.col, rd.col_end)
                windows.append([[[(src.name, *blk, k, i, j) for j in ci] for i in ri] for k in band_chunks])
                r0, c0 = int(row_off[ri[0]]), int(col_off[ci[0]])
                covered.append(PixelWindow(r0, c0, int(row_off[ri[-1] + 1]) - r0, int(col_off[ci[-1] + 1]) - c0))
            bkey = (batch_name, *t, b)
            dsk[bkey] = (_predict, model_ref, bundle.checksum, device, tiles, windows, covered, inside, stack.nodata)
            for k, tile in enumerate(tiles):
                i, j = divmod(tile.index, grid.cols)
                dsk[(name, *t, 0, i, j)] = (_pick, bkey, k, nlead)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[src])
    chunks = (
        *((1,) * n for n in lead_shape),
        (n_out,),
        tuple(grid.tile(i, 0).core.height for i in range(grid.rows)),
        tuple(grid.tile(0, j).core.width for j in range(grid.cols)),
    )
    out = da.Array(graph, name, chunks=chunks, dtype=np.uint8)
    return _dataset(xr, out, stack, bundle, model_ref, tile_size, data)


def _cf_name(name: str) -> str:
    return "_".join(str(name).split()) or "unnamed"


def _dataset(xr, out, stack, bundle, model_ref: str, tile_size: int, data):
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
    spec = bundle.spec
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
        "geoseg_tile_size": int(tile_size),
        "geoseg_value_range": json.dumps(list(bundle.value_range) if bundle.value_range is not None else None),
        "geoseg_normalization": json.dumps({"mean": list(spec.normalization.mean), "std": list(spec.normalization.std)}),
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
