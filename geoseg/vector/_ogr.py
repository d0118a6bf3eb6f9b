"""GeoPackage layers written through GDAL's OGR C API, on the GDAL rasterio has loaded.

pyogrio brings a second GDAL into the process and imports pandas, pyarrow and geopandas
on the way (~100 MiB of resident memory before the first polygon, measured), and each of
its ``write(..., append=True)`` calls reopens the file. Here a GeoPackage layer is
created once through ``ctypes`` on rasterio's GDAL (:mod:`geoseg.io._libgdal`), stays open
while the polygons stream in, and takes each batch in one ``OGR_L_WriteArrowBatch`` call
(GDAL >= 3.8): the batch is handed over as Arrow C data (numpy buffers, no pyarrow), so
no Python runs per feature, in a transaction of its own.

The layer is what ``pyogrio.raw.write`` makes of the same arrays (the same field types:
int32 -> Integer, int64 -> Integer64, float64 -> Real with NaN as NULL, str -> String;
the same geometry type, CRS, spatial index, FID and geometry column names).
:func:`available` says whether this writer can be used; the caller falls back to pyogrio
where it cannot (no rasterio GDAL found, GDAL < 3.8, or ``GEOSEG_GDAL_CTYPES=0``).

GDAL's messages are collected while the layer is written (not printed on stderr) and
end up in :class:`~geoseg.io.faults.GdalWriteError`, which
:func:`geoseg.io.faults.writing` turns into one line.
"""

from __future__ import annotations

import ctypes
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from geoseg.io._libgdal import GdalBindings
from geoseg.io.faults import GdalWriteError

__all__ = ["GpkgLayer", "available"]

_GDAL_OF_VECTOR, _GDAL_OF_UPDATE = 0x04, 0x01
_OFT_INTEGER, _OFT_REAL, _OFT_STRING, _OFT_INTEGER64 = 0, 2, 4, 12
_GEOMETRY_TYPES = {"Polygon": 3, "MultiPolygon": 6}
_OAMS_TRADITIONAL_GIS_ORDER = 0
_ARROW_FLAG_NULLABLE = 2


class _ArrowSchema(ctypes.Structure):
    pass


class _ArrowArray(ctypes.Structure):
    pass


# The Arrow C data interface (https://arrow.apache.org/docs/format/CDataInterface.html)
_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))), ("dictionary", ctypes.POINTER(_ArrowSchema)),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]
_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64), ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))), ("dictionary", ctypes.POINTER(_ArrowArray)),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]


def _released(struct_type):
    """A ``release`` callback that marks the struct released: the buffers stay Python's."""

    @ctypes.CFUNCTYPE(None, ctypes.POINTER(struct_type))
    def release(ptr) -> None:
        ptr.contents.release = None

    return release


_RELEASE_SCHEMA, _RELEASE_ARRAY = _released(_ArrowSchema), _released(_ArrowArray)
_ERROR_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)


class _Ogr(GdalBindings):
    """Prototypes of the GDAL/OGR C functions used here."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        vp, ci, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        pp = ctypes.POINTER(ctypes.c_char_p)
        fn = self.fn

        self.get_driver = fn("GDALGetDriverByName", vp, cs)
        self.create = fn("GDALCreate", vp, vp, cs, ci, ci, ci, ci, pp)
        self.open = fn("GDALOpenEx", vp, cs, ctypes.c_uint, pp, pp, pp)
        self.close = fn("GDALClose", ci, vp)
        self.create_layer = fn("GDALDatasetCreateLayer", vp, vp, cs, vp, ci, pp)
        self.layer_by_name = fn("GDALDatasetGetLayerByName", vp, vp, cs)
        self.start_transaction = fn("GDALDatasetStartTransaction", ci, vp, ci)
        self.commit_transaction = fn("GDALDatasetCommitTransaction", ci, vp)
        self.rollback_transaction = fn("GDALDatasetRollbackTransaction", ci, vp)
        self.geometry_column = fn("OGR_L_GetGeometryColumn", cs, vp)
        self.field_create = fn("OGR_Fld_Create", vp, cs, ci)
        self.field_destroy = fn("OGR_Fld_Destroy", None, vp)
        self.layer_create_field = fn("OGR_L_CreateField", ci, vp, vp, ci)
        self.write_arrow_batch = fn("OGR_L_WriteArrowBatch", ctypes.c_bool, vp, ctypes.POINTER(_ArrowSchema),
                                    ctypes.POINTER(_ArrowArray), pp)
        self.srs_new = fn("OSRNewSpatialReference", vp, cs)
        self.srs_set = fn("OSRSetFromUserInput", ci, vp, cs)
        self.srs_axis_order = fn("OSRSetAxisMappingStrategy", None, vp, ci)
        self.srs_release = fn("OSRRelease", None, vp)
        self.push_handler = fn("CPLPushErrorHandlerEx", None, _ERROR_HANDLER, vp)
        self.pop_handler = fn("CPLPopErrorHandler", None)
        self.error_reset = fn("CPLErrorReset", None)
        fn("GDALAllRegister", None)()  # idempotent; rasterio registers drivers only in an Env
        self.gpkg = self.get_driver(b"GPKG")
        if not self.gpkg:
            raise OSError("GDAL's GPKG driver is not registered")


@lru_cache(maxsize=1)
def _ogr() -> _Ogr | None:
    return _Ogr.load()


_INIT_LOCK = threading.Lock()


def available() -> bool:
    """Whether GeoPackage layers can be written here (else use pyogrio)."""
    with _INIT_LOCK:
        return _ogr() is not None


def _options(*items: str):
    """A NULL-terminated ``char **`` of ``KEY=VALUE`` strings."""
    return (ctypes.c_char_p * (len(items) + 1))(*[s.encode() for s in items], None)


class _Messages:
    """GDAL's messages of this thread while in the ``with`` block, instead of stderr."""

    def __init__(self, g: _Ogr) -> None:
        self.g, self.messages, self.failures = g, [], 0

        def handler(err_class: int, err_no: int, msg: bytes | None) -> None:
            if err_class >= 2:  # warnings, failures (debug and notices are dropped)
                self.messages.append((msg or b"").decode("utf-8", "replace").strip())
                self.failures += err_class >= 3

        self.callback = _ERROR_HANDLER(handler)

    def __enter__(self) -> _Messages:
        self.g.error_reset()
        self.g.push_handler(self.callback, None)
        return self

    def __exit__(self, *exc) -> None:
        self.g.pop_handler()

    def fail(self, what: str, path: Path) -> GdalWriteError:
        said = "; ".join(dict.fromkeys(m for m in self.messages if m)) or "no message from GDAL"
        return GdalWriteError(f"GDAL failed to {what} {path.name}: {said}")


def _field_type(dtype: np.dtype) -> int:
    if dtype == np.int32:
        return _OFT_INTEGER
    if dtype == np.int64:
        return _OFT_INTEGER64
    if dtype == np.float64:
        return _OFT_REAL
    if dtype == object:
        return _OFT_STRING
    raise TypeError(f"no OGR field type for {dtype}")


class _Batch:
    """One batch as an Arrow struct array over numpy buffers (kept alive by this object)."""

    def __init__(self) -> None:
        self.keep: list = []
        self.schemas: list[_ArrowSchema] = []
        self.arrays: list[_ArrowArray] = []

    def _add(self, name: str, fmt: bytes, length: int, buffers: list, null_count: int = 0) -> None:
        bufs = (ctypes.c_void_p * len(buffers))(*buffers)
        name_b = name.encode()
        self.keep += [bufs, name_b]
        schema = _ArrowSchema(format=fmt, name=name_b, flags=_ARROW_FLAG_NULLABLE if null_count else 0,
                              release=ctypes.cast(_RELEASE_SCHEMA, ctypes.c_void_p))
        array = _ArrowArray(length=length, null_count=null_count, n_buffers=len(buffers), buffers=bufs,
                            release=ctypes.cast(_RELEASE_ARRAY, ctypes.c_void_p))
        self.schemas.append(schema)
        self.arrays.append(array)

    def _buffer(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        if not a.size:
            a = np.zeros(1, dtype=a.dtype)
        self.keep.append(a)
        return a.ctypes.data

    def _validity(self, valid: np.ndarray) -> tuple[int | None, int]:
        nulls = int(len(valid) - np.count_nonzero(valid))
        return (self._buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls

    def numbers(self, name: str, values: np.ndarray) -> None:
        fmt = {np.dtype(np.int32): b"i", np.dtype(np.int64): b"l", np.dtype(np.float64): b"g"}[values.dtype]
        validity, nulls = self._validity(~np.isnan(values)) if fmt == b"g" else (None, 0)
        self._add(name, fmt, len(values), [validity, self._buffer(values)], nulls)

    def binary(self, name: str, items: list, fmt: bytes = b"Z") -> None:
        """``items``: bytes or None; ``fmt`` ``Z`` (large binary) or ``U`` (large UTF-8 string)."""
        valid = np.fromiter((v is not None for v in items), dtype=bool, count=len(items))
        data = [v if v is not None else b"" for v in items]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, data), dtype=np.int64, count=len(data)), out=offsets[1:])
        validity, nulls = self._validity(valid)
        self._add(name, fmt, len(items), [validity, self._buffer(offsets),
                                          self._buffer(np.frombuffer(b"".join(data), dtype=np.uint8))], nulls)

    def strings(self, name: str, values: np.ndarray) -> None:
        self.binary(name, [None if v is None else str(v).encode("utf-8") for v in values], b"U")

    def struct(self, length: int) -> tuple[_ArrowSchema, _ArrowArray]:
        n = len(self.schemas)
        schema_children = (ctypes.POINTER(_ArrowSchema) * n)(*[ctypes.pointer(s) for s in self.schemas])
        array_children = (ctypes.POINTER(_ArrowArray) * n)(*[ctypes.pointer(a) for a in self.arrays])
        top_buffers = (ctypes.c_void_p * 1)(None)
        self.keep += [schema_children, array_children, top_buffers]
        schema = _ArrowSchema(format=b"+s", name=b"", n_children=n, children=schema_children,
                              release=ctypes.cast(_RELEASE_SCHEMA, ctypes.c_void_p))
        array = _ArrowArray(length=length, n_buffers=1, n_children=n, buffers=top_buffers, children=array_children,
                            release=ctypes.cast(_RELEASE_ARRAY, ctypes.c_void_p))
        return schema, array


class GpkgLayer:
    """A layer of a GeoPackage (created, or added to an existing one), open for writing
    until :meth:`close`; its fields are made from the dtypes of the first batch."""

    def __init__(self, path: Path, name: str, crs_wkt: str, geometry_type: str) -> None:
        self.g = _ogr()
        if self.g is None:
            raise RuntimeError("GDAL's C API is not available: check available() first")
        self.path, self.name = Path(path), name
        self.fields: list[str] | None = None
        g = self.g
        with _Messages(g) as said:
            if self.path.exists():
                drivers = (ctypes.c_char_p * 2)(b"GPKG", None)
                self.ds = g.open(str(self.path).encode(), _GDAL_OF_VECTOR | _GDAL_OF_UPDATE, drivers, None, None)
            else:  # GeoPackage 1.4, as pyogrio's GDAL (3.12) writes it; rasterio's (3.10) would write 1.2
                self.ds = g.create(g.gpkg, str(self.path).encode(), 0, 0, 0, 0, _options("VERSION=1.4"))
            if not self.ds:
                raise said.fail("create the GeoPackage", self.path)
            srs = None
            try:
                if crs_wkt:
                    srs = g.srs_new(None)
                    if g.srs_set(srs, crs_wkt.encode()) != 0:
                        raise said.fail("read the CRS of", self.path)
                    g.srs_axis_order(srs, _OAMS_TRADITIONAL_GIS_ORDER)
                self.layer = g.create_layer(self.ds, name.encode(), srs, _GEOMETRY_TYPES[geometry_type],
                                            _options("SPATIAL_INDEX=YES"))
                if not self.layer:
                    raise said.fail(f"create the layer {name!r} in", self.path)
            except BaseException:
                g.close(self.ds)
                self.ds = None
                raise
            finally:
                if srs:
                    g.srs_release(srs)
        self.geometry_column = (g.geometry_column(self.layer) or b"geom").decode()

    def _create_fields(self, fields: dict[str, np.ndarray]) -> None:
        g = self.g
        with _Messages(g) as said:
            for key, values in fields.items():
                field = g.field_create(key.encode(), _field_type(values.dtype))
                try:
                    if g.layer_create_field(self.layer, field, 1) != 0:
                        raise said.fail(f"add the field {key!r} to", self.path)
                finally:
                    g.field_destroy(field)
            # Closed and reopened empty: GDAL creates the spatial index now, and the triggers
            # it installs index each feature as it is inserted. Filled in the session that
            # created it, the index would be built from every feature's extent held in memory
            # (~70 bytes a feature, measured: +150 MiB for 2 M features) when the file closes.
            ds, self.ds = self.ds, None
            if g.close(ds) != 0 or said.failures:
                raise said.fail("create the layer in", self.path)
            drivers = (ctypes.c_char_p * 2)(b"GPKG", None)
            self.ds = g.open(str(self.path).encode(), _GDAL_OF_VECTOR | _GDAL_OF_UPDATE, drivers, None, None)
            self.layer = g.layer_by_name(self.ds, self.name.encode()) if self.ds else None
            if not self.layer:
                raise said.fail("reopen", self.path)
        self.fields = list(fields)

    def write(self, wkb: list, fields: dict[str, np.ndarray]) -> None:
        """Add features: their geometries as WKB and their attribute columns, in one transaction."""
        if self.fields is None:
            self._create_fields(fields)
        if not len(wkb):
            return
        batch = _Batch()
        for key in self.fields:
            values = fields[key]
            (batch.strings if values.dtype == object else batch.numbers)(key, values)
        batch.binary(self.geometry_column, list(wkb))
        schema, array = batch.struct(len(wkb))
        g = self.g
        with _Messages(g) as said:
            if g.start_transaction(self.ds, 0) != 0:
                raise said.fail("start a transaction in", self.path)
            ok = g.write_arrow_batch(self.layer, ctypes.byref(schema), ctypes.byref(array),
                                     _options(f"GEOMETRY_NAME={self.geometry_column}"))
            if not ok:
                g.rollback_transaction(self.ds)
                raise said.fail(f"write {len(wkb)} features to", self.path)
            if g.commit_transaction(self.ds) != 0:
                raise said.fail(f"commit {len(wkb)} features to", self.path)

    def close(self) -> None:
        """Close the GeoPackage (this builds the spatial index): errors then raise."""
        if self.ds is None:
            return
        ds, self.ds = self.ds, None
        with _Messages(self.g) as said:
            failed = self.g.close(ds) != 0
        if failed or said.failures:
            raise said.fail("finish", self.path)

    def abort(self) -> None:
        """Close after a failure, quietly (the file is a temporary one, removed by the caller)."""
        if self.ds is not None:
            ds, self.ds = self.ds, None
            with _Messages(self.g):
                self.g.close(ds)
