"""``to_cog``: xarray products -> geoseg's Cloud-Optimized GeoTIFFs, chunk by chunk from Dask.

The writer is ``geoseg run``'s own (:class:`geoseg.io.cog.RasterProduct`): blocks go into a
tiled scratch GeoTIFF under a temporary name as Dask computes them, then GDAL's COG driver
copies it with the colour table, class names and mode overviews, and the files are renamed
to their final names only when all of them are complete. At most the blocks in flight are
in memory, never the whole array (rioxarray's ``to_raster(driver="COG")`` cannot stream
from Dask, and neither it nor odc-geo writes a colour table).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.errors import InputError, OutputError
from geoseg.grid import GeoBox, PixelWindow
from geoseg.xr._deps import require
from geoseg.xr._inputs import geo_info, spatial_dims
from geoseg.xr.inference import CLASS

__all__ = ["to_cog"]


@dataclass
class _Product:
    """One output raster: where its bands come from in the stacked array, and how it looks."""

    kind: str  # classes | confidence | mask
    bands: list  # 2-D DataArrays (y, x), one per raster band
    descriptions: list[str]
    colors: list[str] | None
    tags: dict[str, str]
    overview_resampling: str = "MODE"


def _class_names(attrs: dict) -> tuple[list[str], list[str]]:
    """Class names and colours of a class map's attributes (``segment``'s CF flags)."""
    if "geoseg_classes" in attrs:  # a Dataset's attrs: exact names
        classes = sorted(json.loads(attrs["geoseg_classes"]), key=lambda c: c["id"])
        return [c["name"] for c in classes], [c["color"] for c in classes]
    meanings = str(attrs.get("flag_meanings", "")).split()
    colors = str(attrs.get("flag_colors", "")).split()
    values = attrs.get("flag_values")
    if values is not None and meanings and list(np.asarray(values).ravel()) != list(range(len(meanings))):
        return [], colors
    return meanings, colors


def _two_d(var, what: str):
    """``var`` as a ``(y, x)`` DataArray: size-1 leading dimensions are dropped."""
    ydim, xdim = spatial_dims(var)
    extra = [d for d in var.dims if d not in (ydim, xdim)]
    big = {d: var.sizes[d] for d in extra if var.sizes[d] != 1}
    if big:
        dim = next(iter(big))
        raise InputError(
            f"{what} has dimension {dim!r} of size {big[dim]}: a COG holds one raster; select one, "
            f"e.g. .isel({dim}=0)"
        )
    if extra:
        var = var.isel({d: 0 for d in extra})
    return var.transpose(ydim, xdim)


def _products(obj) -> tuple[list[_Product], object]:
    """The rasters of a ``segment`` Dataset or of one DataArray, and the object holding the grid."""
    import xarray as xr

    from geoseg.io.cog import class_tags

    if isinstance(obj, xr.Dataset):
        if "classes" not in obj.data_vars:
            raise InputError(
                f"the Dataset has variables {list(obj.data_vars)} but no 'classes': give the result of "
                "geoseg.segment, or a class map DataArray"
            )
        names, colors = _class_names({**obj["classes"].attrs, **obj.attrs})
        products = [_Product("classes", [_two_d(obj["classes"], "classes")], ["class"], colors or None,
                             class_tags(names, colors) if names else {})]
        if "confidence" in obj.data_vars:
            products.append(_Product("confidence", [_two_d(obj["confidence"], "confidence")], ["confidence_percent"],
                                     None, {"UNITS": "percent", "DESCRIPTION": "max class probability x 100"}, "AVERAGE"))
        masks = [(k, v) for k, v in obj.data_vars.items() if "geoseg_mask_head" in v.attrs]
        if masks:
            heads = [v.attrs["geoseg_mask_head"] for _, v in masks]
            products.append(_Product("mask", [_two_d(v, k) for k, v in masks], heads, None, {"MASK_HEADS": ",".join(heads)}))
        if "probabilities" in obj.data_vars and CLASS in obj["probabilities"].dims:
            from geoseg.scene.predict import PROBABILITY_TAGS

            probs = obj["probabilities"]
            labels = [str(v) for v in probs[CLASS].values]
            products.append(_Product("probabilities", [_two_d(probs.isel({CLASS: k}), "probabilities")
                                                       for k in range(len(labels))], labels, None, dict(PROBABILITY_TAGS),
                                     "AVERAGE"))
        return products, obj
    if isinstance(obj, xr.DataArray):
        var = _two_d(obj, obj.name or "the DataArray")
        if "geoseg_mask_head" in obj.attrs:
            head = obj.attrs["geoseg_mask_head"]
            return [_Product("mask", [var], [head], None, {"MASK_HEADS": head})], obj
        if obj.attrs.get("units") == "percent" and obj.name == "confidence":
            return [_Product("confidence", [var], ["confidence_percent"], None,
                             {"UNITS": "percent", "DESCRIPTION": "max class probability x 100"}, "AVERAGE")], obj
        names, colors = _class_names(obj.attrs)
        return [_Product("classes", [var], ["class"], colors or None, class_tags(names, colors) if names else {})], obj
    raise InputError(
        f"to_cog got a {type(obj).__name__}: give the Dataset of geoseg.segment or a (y, x) class map DataArray"
    )


def geobox_of(obj) -> GeoBox:
    """The grid of a DataArray or Dataset as geoseg's :class:`~geoseg.grid.GeoBox`."""
    ydim, xdim = spatial_dims(obj)
    crs, transform = geo_info(obj)
    if crs is None:
        raise InputError(
            "the data has no CRS: write one first, e.g. data.rio.write_crs('EPSG:32633') (rioxarray), "
            "so the raster is georeferenced"
        )
    if transform is None:
        raise InputError("the data has no transform: give x/y coordinates or a spatial_ref with a GeoTransform")
    return GeoBox(int(obj.sizes[ydim]), int(obj.sizes[xdim]), transform, crs)


@contextlib.contextmanager
def raster_thread():
    """``run(fn, *args)``: calls ``fn`` in one thread of its own, the thread that opens, writes,
    flushes and closes the rasters of a :class:`_Target` (rasterio binds a dataset to the
    thread that opened it; Dask's threads, or the distributed client, hand in the blocks)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-rasters") as pool:
        yield lambda fn, *args, **kwargs: pool.submit(fn, *args, **kwargs).result()


class _Target:
    """A ``dask.array.store`` target: each block ``(P, h, w)`` lands in the products' rasters.

    ``run(fn, *args)`` runs ``fn`` in the one thread that opened the rasters (and so may
    flush and close them: rasterio binds a dataset to the thread that opened it), whichever
    thread hands in the block."""

    def __init__(self, rasters: list, spans: list[tuple[int, int]], run) -> None:
        self.rasters, self.spans, self.run = rasters, spans, run
        self._lock = threading.Lock()
        self._closed = False

    def __setitem__(self, key, block: np.ndarray) -> None:
        _, rows, cols = key
        window = PixelWindow(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        block = _as_uint8(block)
        with self._lock:
            if self._closed:  # a block still in flight after another one failed
                raise OutputError("the output was closed after an error")
            for raster, (a, b) in zip(self.rasters, self.spans):
                self.run(raster.write, window, block[a:b])

    def close(self) -> None:
        """Refuse further blocks; wait for a write in progress (the rasters may then be closed:
        when one task fails, Dask raises while other tasks still run)."""
        with self._lock:
            self._closed = True


def _as_uint8(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    if block.dtype.kind not in "iu" or (block.size and (block.min() < 0 or block.max() > 255)):
        raise InputError(
            f"the values are {block.dtype} outside 0..255: geoseg's COGs are uint8 class ids (255 = nodata)"
        )
    return block.astype(np.uint8)


def _stacked(products: list[_Product]):
    """All bands of all products as one dask array ``(P, y, x)`` (one chunk along P)."""
    import dask.array as da

    bands = []
    for p in products:
        for var in p.bands:
            if var.dtype.kind not in "iu":
                raise InputError(f"{p.kind} is {var.dtype}: geoseg's COGs are uint8 class ids (255 = nodata)")
            data = var.data
            if not isinstance(data, da.Array):
                data = da.from_array(np.asarray(data), chunks=1024)
            bands.append(data[None])
    stacked = da.concatenate(bands, axis=0)
    return stacked.rechunk({0: -1})


def _distributed_client():
    """The ``distributed.Client`` that Dask computes on now, if any."""
    from dask.base import get_scheduler

    sched = get_scheduler()
    owner = getattr(sched, "__self__", None)
    return owner if type(owner).__name__ == "Client" else None


def write_blocks(stacked, target: _Target) -> None:
    """Compute ``stacked`` block by block into ``target``: local threads (Dask's ``store``),
    or a distributed cluster whose results stream back and are written here as they arrive."""
    import dask.array as da

    client = _distributed_client()
    if client is None:
        da.store(stacked, target, lock=False)
        return
    from distributed import as_completed

    blocks = stacked.to_delayed()
    rows, cols = (np.concatenate([[0], np.cumsum(c)]).astype(int) for c in stacked.chunks[1:])
    pending = [(i, j) for i in range(blocks.shape[1]) for j in range(blocks.shape[2])]
    window = 2 * max(1, sum(client.nthreads().values()))  # blocks in flight: bounded memory
    where: dict = {}
    ac = as_completed()

    def submit() -> None:
        i, j = pending.pop(0)
        fut = client.compute(blocks[0, i, j])
        where[fut.key] = (i, j)
        ac.add(fut)

    for _ in range(min(window, len(pending))):
        submit()
    for fut in ac:
        i, j = where.pop(fut.key)
        target[(slice(None), slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))] = fut.result()
        fut.release()
        if pending:
            submit()


def _finals(obj, store, name: str, products: list[_Product]) -> dict[str, Path]:
    """The final paths in ``store``: ``geoseg run``'s names for a Dataset, ``name`` for one DataArray."""
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        for suffix in (".classes.tif", ".tif", ".tiff"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        finals = store.scene_outputs(name, has_masks=True, vectorize=False, probabilities=True)
        return {p.kind: finals[p.kind] for p in products}
    if Path(name).suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{store.where(name)} does not end in .tif: name the COG *.tif")
    return {products[0].kind: store.path(name)}


def to_cog(obj, path: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write a ``segment`` result or a class map DataArray as geoseg's COGs.

    Args:
        obj: the Dataset of :func:`geoseg.segment` (writes ``<stem>.classes.tif``,
            ``<stem>.confidence.tif``, ``<stem>.mask.tif`` and, with ``probabilities``,
            ``<stem>.probabilities.tif``: the names of ``geoseg run``),
            or one ``(y, x)`` DataArray (a class map: any integer values 0..254, 255 =
            nodata; a mask or confidence variable of a ``segment`` result is written as such).
            Dask-backed arrays are computed block by block, on the current Dask scheduler
            (a ``distributed`` client streams the blocks back), and never held whole.
        path: for a Dataset, ``<dir>/<stem>`` (or ``<dir>/<stem>.classes.tif``); for a
            DataArray, the ``.tif`` to write. ``<dir>`` may be an object-store prefix
            (``s3://bucket/prefix/<stem>``): the COGs are built in a local scratch
            directory and uploaded (:mod:`geoseg.io.store`).
        overwrite: replace existing files.

    Returns:
        ``{"classes"|"confidence"|"mask"|"probabilities": path}`` of the files written
        (URLs ``s3://...`` for an object-store destination).

    Class maps get a colour table (255 transparent) and class names (from ``flag_meanings``
    / ``flag_colors``), mode overviews; confidence gets average overviews. The files appear
    under their final names only when all of them are complete.
    """
    require("xarray", "geoseg.to_cog")
    from geoseg.allocator import configure_process

    configure_process()  # the process defaults run_scene sets: bounded GDAL block cache, allocator (no-op when set)
    from geoseg.io.cog import RasterProduct
    from geoseg.io.store import OutputStore, split_target

    dest, name = split_target(path)
    outputs = OutputStore(dest, overwrite=overwrite)  # an unknown scheme is refused here
    products, holder = _products(obj)
    geobox = geobox_of(holder)
    finals = _finals(obj, outputs, name, products)
    outputs.prepare()
    outputs.check_free(list(finals.values()))
    stacked = _stacked(products)
    rasters: list = []
    with raster_thread() as run:
        try:
            for p in products:
                rasters.append(run(
                    RasterProduct, finals[p.kind], geobox, outputs, count=len(p.bands), descriptions=p.descriptions,
                    colors=p.colors, tags=p.tags, overview_resampling=p.overview_resampling))
            spans, start = [], 0
            for p in products:
                spans.append((start, start + len(p.bands)))
                start += len(p.bands)
            target = _Target(rasters, spans, run)
            try:
                write_blocks(stacked, target)
            finally:
                target.close()
            for r in rasters:
                run(r.close)
            for r in rasters:
                run(r.finish)
            outputs.commit()
            if outputs.remote:
                return {k: outputs.where(f.name) for k, f in finals.items()}
            return dict(finals)
        except BaseException:
            outputs.discard()
            raise
        finally:
            for r in rasters:
                with contextlib.suppress(OSError):  # cleanup must not hide the error that got here
                    run(r.discard_stripes)
