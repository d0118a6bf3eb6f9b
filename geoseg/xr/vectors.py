"""``polygons``: a class map -> a :class:`geopandas.GeoDataFrame`, by geoseg's exact polygonizer.

The same layer ``geoseg vectorize`` writes to its GeoPackage (the block-parallel polygonizer
of :mod:`geoseg.vector.polygonize`, ``--min-area``, the coverage ``--simplify``, geodesic
areas for geographic CRSs), returned as a frame instead of a file. A class map in memory or
in Dask is first written block by block to a scratch GeoTIFF, which the polygonizer reads
block by block as it reads any class map; the scratch files are removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from geoseg.errors import InputError
from geoseg.xr._deps import require

__all__ = ["polygons"]


def _frame(layer):
    gpd = require("geopandas", "geoseg.polygons")
    # one geometry type per layer, as the files have it (MultiPolygon once any feature is one)
    return gpd.GeoDataFrame(dict(layer.fields), geometry=list(layer.uniform_geometry()), crs=layer.crs)


def _as_dataarray(array, transform, crs, what: str):
    """An ``(y, x)`` array plus its georeferencing as a DataArray that :mod:`geoseg.xr.cog` can write."""
    import xarray as xr
    from affine import Affine

    if transform is None or crs is None:
        raise InputError(f"{what} is a bare array: pass transform= (an affine.Affine) and crs= with it")
    if not isinstance(transform, Affine):
        transform = Affine(*list(transform)[:6])
    arr = np.asarray(array) if not hasattr(array, "dask") and not hasattr(array, "chunks") else array
    if arr.ndim != 2:
        raise InputError(f"{what} has shape {arr.shape}: give a (rows, cols) class map")
    h, w = arr.shape
    xs = (transform * (np.arange(w) + 0.5, np.full(w, 0.5)))[0]
    ys = (transform * (np.full(h, 0.5), np.arange(h) + 0.5))[1]
    da = xr.DataArray(arr, dims=("y", "x"), coords={"y": ys, "x": xs})
    try:
        import rioxarray  # noqa: F401
    except ImportError:
        from pyproj import CRS

        da = da.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": CRS.from_user_input(crs).to_wkt()}))
        return da
    return da.rio.write_crs(crs).rio.write_transform(transform)


def polygons(
    source,
    *,
    confidence=None,
    classes_from: str | None = None,
    transform=None,
    crs=None,
    layer: str = "classes",
    band: int = 1,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    block_size: int | None = None,
    workers: int | None = None,
    scratch_dir: str | os.PathLike | None = None,
):
    """Polygons of a class map as a GeoDataFrame: one feature per connected region of a class.

    Args:
        source: a class map raster path (e.g. ``<stem>.classes.tif`` of ``geoseg run``), the
            Dataset of :func:`geoseg.segment` (its ``classes`` and ``confidence``), a ``(y, x)``
            class map DataArray with a CRS, or a 2-D array with ``transform`` and ``crs``.
            Values 0..254 are classes, 255 is nodata (never polygonized).
        confidence: a confidence raster on the same grid (path, DataArray or array) whose
            mean per polygon fills ``confidence``; default: the Dataset's ``confidence``, or
            the sibling ``<stem>.confidence.tif`` of a ``geoseg run`` class map. ``False``: none.
        classes_from: class names from a model or JSON file (default: the raster's metadata
            or the DataArray's ``flag_meanings``, else ``class_<id>``).
        transform, crs: the georeferencing of a bare array.
        layer: the layer name (used in error messages and the frame's ``attrs``).
        band: the band of a raster path.
        min_area: drop polygons smaller than this many square metres.
        simplify: simplify boundaries by this many metres, as a coverage (no gaps or overlaps).
        connectivity: 4 or 8.
        block_size, workers: polygonizer blocks (px; default: from the map's boundary density)
            and parallel threads.
        scratch_dir: where in-memory class maps are written for the polygonizer (default:
            the system's temporary directory).

    Returns:
        A GeoDataFrame in the class map's CRS with the columns of ``geoseg vectorize``'s
        layer: ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m`` (geodesic for
        geographic CRSs) and, with a confidence raster, ``confidence``.
    """
    require("geopandas", "geoseg.polygons")
    from geoseg.io.store import sibling_confidence
    from geoseg.allocator import configure_process

    configure_process()  # the process defaults run_scene sets: bounded GDAL block cache, allocator (no-op when set)
    from geoseg.vector.api import (
        VectorizeOptions,
        class_layer,
        classes_of_raster,
        load_classes,
    )

    opts = VectorizeOptions(connectivity=connectivity, min_area=min_area, simplify=simplify, workers=workers,
                            block_size=block_size)
    if isinstance(source, (str, os.PathLike)):
        raster = Path(source)
        names, colors = load_classes(classes_from) if classes_from else (classes_of_raster(raster) or ([], []))
        if confidence is None:
            confidence = sibling_confidence(raster)
        if confidence is not None and confidence is not False and not isinstance(confidence, (str, os.PathLike)):
            raise InputError("confidence= must be a raster path when the class map is a path")
        conf = (str(confidence), 1) if confidence not in (None, False) else None
        data, _ = class_layer(raster, names=names, colors=colors, layer=layer, band=band, confidence=conf, options=opts)
        return _frame(data)
    return _in_memory(source, confidence, classes_from, transform, crs, layer, opts, scratch_dir)


def _in_memory(source, confidence, classes_from, transform, crs, layer, opts, scratch_dir):
    xr = require("xarray", "geoseg.polygons")
    from geoseg.vector.api import class_layer, load_classes
    from geoseg.xr.cog import (
        _class_names,
        _products,
        _stacked,
        _Target,
        geobox_of,
        raster_thread,
        write_blocks,
    )

    if isinstance(source, xr.Dataset):
        if "classes" not in source.data_vars:
            raise InputError(f"the Dataset has variables {list(source.data_vars)} but no 'classes': give geoseg.segment's result")
        if confidence is None and "confidence" in source.data_vars:
            confidence = source["confidence"]
        attrs = {**source["classes"].attrs, **source.attrs}
        classes = source["classes"]
    elif isinstance(source, xr.DataArray):
        classes, attrs = source, dict(source.attrs)
    else:
        classes = _as_dataarray(source, transform, crs, "the class map")
        attrs = {}
    if confidence is False:
        confidence = None
    if confidence is not None and not isinstance(confidence, xr.DataArray):
        if isinstance(confidence, (str, os.PathLike)):
            raise InputError("confidence= must be an array or DataArray when the class map is in memory")
        confidence = _as_dataarray(confidence, *_georef(classes), "confidence")
    names, colors = load_classes(classes_from) if classes_from else _class_names(attrs)
    geobox = geobox_of(classes)
    from geoseg.io.cog import RasterProduct

    parts = [("classes", classes)] + ([("confidence", confidence)] if confidence is not None else [])
    products = []
    for kind, var in parts:
        prods, _ = _products(var.rename(kind) if kind == "confidence" else var)
        prods[0].kind = kind
        products.append(prods[0])
    if confidence is not None and products[1].bands[0].shape != products[0].bands[0].shape:
        raise InputError(
            f"confidence has shape {products[1].bands[0].shape} but the class map {products[0].bands[0].shape}: "
            "give both on one grid"
        )
    from geoseg.io.store import OutputStore

    with tempfile.TemporaryDirectory(prefix="geoseg-polygons-", dir=scratch_dir) as tmp, raster_thread() as run:
        outputs = OutputStore(Path(tmp))
        rasters: list = []
        try:
            for p in products:
                rasters.append(run(RasterProduct, Path(tmp) / f"{p.kind}.tif", geobox, outputs))
            target = _Target(rasters, [(k, k + 1) for k in range(len(products))], run)
            try:
                write_blocks(_stacked(products), target)
            finally:
                target.close()
            paths = [run(r.close) for r in rasters]
            conf = (str(paths[1]), 1) if len(paths) > 1 else None
            data, _ = class_layer(paths[0], names=names, colors=colors, layer=layer, confidence=conf, options=opts)
        finally:
            for r in rasters:
                run(r.discard_stripes)
    return _frame(data)


def _georef(classes):
    from geoseg.xr._inputs import geo_info

    crs, transform = geo_info(classes)
    return transform, crs
