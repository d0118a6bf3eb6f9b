"""Polygonize an in-memory block with GDAL's C API, without the GIL.

``rasterio.features.shapes`` turns every vertex into a Python tuple and holds the GIL
while it does, so polygonizing in threads does not scale, and building shapely
geometries from the tuples costs as much again. Here the same GDAL functions
(``GDALPolygonize``) are called through ``ctypes`` on the GDAL library rasterio has
already loaded: ``ctypes`` releases the GIL for each call, and polygons come back as WKB.

:func:`polygonize_block` falls back to rasterio's Python API (same results, slower)
when that library cannot be found (or with ``GEOSEG_GDAL_CTYPES=0`` in the environment).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from functools import lru_cache

import numpy as np

from geoseg.errors import GeosegError
from geoseg.io._libgdal import GdalBindings

_GDT_BYTE, _GDT_INT32 = 1, 5
_GF_READ, _GF_WRITE = 0, 1
_WKB_POLYGON, _WKB_NDR = 3, 1
_OFT_INTEGER = 0


class _Gdal(GdalBindings):
    """Prototypes of the few GDAL C functions used here."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        vp, ci, cd, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
        fn = self.fn

        self.get_driver = fn("GDALGetDriverByName", vp, cs)
        self.create = fn("GDALCreate", vp, vp, cs, ci, ci, ci, ci, vp)
        self.close = fn("GDALClose", ci, vp)
        self.get_band = fn("GDALGetRasterBand", vp, vp, ci)
        self.raster_io = fn("GDALRasterIO", ci, vp, ci, ci, ci, ci, ci, vp, ci, ci, ci, ci, ci)
        self.set_geotransform = fn("GDALSetGeoTransform", ci, vp, ctypes.POINTER(cd))
        self.create_layer = fn("GDALDatasetCreateLayer", vp, vp, cs, vp, ci, vp)
        self.field_create = fn("OGR_Fld_Create", vp, cs, ci)
        self.field_destroy = fn("OGR_Fld_Destroy", None, vp)
        self.layer_create_field = fn("OGR_L_CreateField", ci, vp, vp, ci)
        self.polygonize = fn("GDALPolygonize", ci, vp, vp, vp, ci, ctypes.POINTER(cs), vp, vp)
        self.reset_reading = fn("OGR_L_ResetReading", None, vp)
        self.next_feature = fn("OGR_L_GetNextFeature", vp, vp)
        self.feature_count = fn("OGR_L_GetFeatureCount", ctypes.c_int64, vp, ci)
        self.get_int = fn("OGR_F_GetFieldAsInteger", ci, vp, ci)
        self.geometry_ref = fn("OGR_F_GetGeometryRef", vp, vp)
        self.wkb_size = fn("OGR_G_WkbSize", ci, vp)
        self.export_wkb = fn("OGR_G_ExportToWkb", ci, vp, ci, cs)
        self.feature_destroy = fn("OGR_F_Destroy", None, vp)
        self.error_msg = fn("CPLGetLastErrorMsg", cs)
        fn("GDALAllRegister", None)()  # idempotent; rasterio registers drivers only in an Env
        self.raster_driver = self.get_driver(b"MEM")
        # GDAL < 3.11 keeps in-memory vector layers in "Memory"; later versions in "MEM"
        self.vector_driver = self.get_driver(b"Memory") or self.raster_driver
        if not self.raster_driver:
            raise OSError("GDAL's MEM driver is not registered")


@lru_cache(maxsize=1)
def _gdal() -> _Gdal | None:
    return _Gdal.load()


_INIT_LOCK = threading.Lock()


def polygonize_block(
    values: np.ndarray, valid: np.ndarray, origin: tuple[int, int], connectivity: int = 4
) -> tuple[np.ndarray, list[bytes]]:
    """Polygons of the connected regions of equal value in one block.

    Args:
        values: 2-D integer block.
        valid: boolean mask of the same shape; invalid pixels never become polygons.
        origin: ``(row, col)`` of the block's first pixel in the whole raster; polygons
            are in whole-raster pixel coordinates (x = column, y = row), exact integers.
        connectivity: 4 or 8.

    Returns:
        ``(values, polygons as WKB)``: the value and the polygon of each region, in
        GDAL's order.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    # a uint8 class map stays uint8 (GDAL's polygonizer reads any integer band): no int32
    # copy and a 2-byte-per-pixel MEM raster instead of 8 (a 2048^2 block: 8 MB, not 48 MB)
    values = np.ascontiguousarray(values, dtype=np.uint8 if values.dtype == np.uint8 else np.int32)
    valid = np.ascontiguousarray(valid, dtype=np.uint8)
    with _INIT_LOCK:
        g = _gdal()
    if g is None:
        return _polygonize_rasterio(values.astype(np.int32, copy=False), valid, origin, connectivity)
    return _polygonize_ctypes(g, values, valid, origin, connectivity)


def _check(g: _Gdal, ok, what: str):
    if not ok:
        raise GeosegError(f"GDAL failed to {what}: {(g.error_msg() or b'').decode(errors='replace')}")
    return ok


def _polygonize_ctypes(g: _Gdal, values, valid, origin, connectivity):
    h, w = values.shape
    row0, col0 = origin
    gdt = _GDT_BYTE if values.dtype == np.uint8 else _GDT_INT32
    ds = _check(g, g.create(g.raster_driver, b"", w, h, 2, gdt, None), "create a MEM raster")
    vds = layer = None
    try:
        g.set_geotransform(ds, (ctypes.c_double * 6)(col0, 1.0, 0.0, row0, 0.0, 1.0))
        band, mask = g.get_band(ds, 1), g.get_band(ds, 2)
        g.raster_io(band, _GF_WRITE, 0, 0, w, h, values.ctypes.data, w, h, gdt, 0, 0)
        g.raster_io(mask, _GF_WRITE, 0, 0, w, h, valid.ctypes.data, w, h, _GDT_BYTE, 0, 0)
        vds = _check(g, g.create(g.vector_driver, b"", 0, 0, 0, 0, None), "create a memory layer")
        layer = _check(g, g.create_layer(vds, b"regions", None, _WKB_POLYGON, None), "create a memory layer")
        field = g.field_create(b"value", _OFT_INTEGER)
        g.layer_create_field(layer, field, 1)
        g.field_destroy(field)
        options = (ctypes.c_char_p * 2)(b"8CONNECTED=8" if connectivity == 8 else None, None)
        if g.polygonize(band, mask, layer, 0, options, None, None) != 0:
            _check(g, False, "polygonize a block")
        n = int(g.feature_count(layer, 1))
        out_values = np.empty(n, dtype=np.int32)
        wkbs: list[bytes] = [b""] * n
        next_feature, get_int, geometry_ref = g.next_feature, g.get_int, g.geometry_ref
        wkb_size, export_wkb, buffer = g.wkb_size, g.export_wkb, ctypes.create_string_buffer
        g.reset_reading(layer)
        destroy = g.feature_destroy
        for i in range(n):
            feat = next_feature(layer)  # a copy of the layer's feature: freed at once
            try:
                out_values[i] = get_int(feat, 0)
                geom = geometry_ref(feat)
                buf = buffer(wkb_size(geom))
                export_wkb(geom, _WKB_NDR, buf)
                wkbs[i] = buf.raw
            finally:
                destroy(feat)
        return out_values, wkbs
    finally:
        if vds:
            g.close(vds)
        g.close(ds)


def _polygonize_rasterio(values, valid, origin, connectivity):
    """The same as :func:`_polygonize_ctypes` through rasterio's Python API."""
    import shapely
    import shapely.geometry
    from affine import Affine
    from rasterio import features
    from rasterio.errors import NotGeoreferencedWarning

    row0, col0 = origin
    transform = Affine.translation(col0, row0)
    with warnings.catch_warnings():  # pixel coordinates are meant here
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        shapes = list(features.shapes(values, mask=valid.astype(bool), connectivity=connectivity, transform=transform))
    out_values = np.asarray([int(v) for _, v in shapes], dtype=np.int32)
    return out_values, [shapely.to_wkb(shapely.geometry.shape(s)) for s, _ in shapes]
