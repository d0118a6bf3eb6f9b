"""Writing polygon layers: GeoPackage, FlatGeobuf or GeoParquet, styled for QGIS.

A GeoPackage holds every layer of a vectorization (class map and masks) with a spatial
index and its default QGIS style in the ``layer_styles`` table. FlatGeobuf and
GeoParquet hold one layer per file: the first layer goes to the path asked for, the
others next to it as ``<stem>.<layer><suffix>``, and each gets a ``.qml`` side-car with
the same style (QGIS applies a side-car of the same base name on open).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.errors import InputError
from geoseg.vector.styles import write_layer_style

#: ``--format`` name -> (file suffix, writer).
FORMATS = {"GPKG": ".gpkg", "FlatGeobuf": ".fgb", "GeoParquet": ".parquet"}


def check_format(fmt: str) -> str:
    """The canonical format name for ``fmt`` (case-insensitive)."""
    for name in FORMATS:
        if name.lower() == str(fmt).lower():
            return name
    raise InputError(f"unknown vector format {fmt!r}: choose one of {', '.join(FORMATS)}")


@dataclass
class LayerData:
    """One layer ready to write: geometries in the CRS plus attribute columns."""

    name: str
    crs: str  # WKT
    geometry: np.ndarray  # shapely polygons / multipolygons
    fields: dict[str, np.ndarray]
    qml: str
    sld: str

    @property
    def geometry_type(self) -> str:
        import shapely

        multi = len(self.geometry) and bool((shapely.get_type_id(self.geometry) == 6).any())
        return "MultiPolygon" if multi else "Polygon"

    def uniform_geometry(self) -> np.ndarray:
        """Geometries promoted to the layer's single type (formats want one)."""
        import shapely

        if self.geometry_type == "Polygon" or not len(self.geometry):
            return self.geometry
        parts, index = shapely.get_parts(self.geometry, return_index=True)
        return shapely.multipolygons(parts, indices=index)


def layer_path(out: Path, fmt: str, layer: str, first: bool) -> Path:
    """Where a layer goes: ``out`` itself for GeoPackages and first layers, else a sibling."""
    if fmt == "GPKG" or first:
        return out
    return out.with_name(f"{out.stem}.{layer}{FORMATS[fmt]}")


def write_layer(path: Path, fmt: str, layer: LayerData, qml_path: Path | None = None) -> None:
    """Write ``layer`` to ``path`` (appending to an existing GeoPackage) with its style.

    The style goes into the GeoPackage's ``layer_styles`` table, or for the one-layer
    formats to ``qml_path`` (the caller's name for the ``<stem>.qml`` side-car).
    """
    if fmt == "GeoParquet":
        _write_geoparquet(path, layer)
    else:
        _write_ogr(path, fmt, layer)
    if fmt == "GPKG":
        write_layer_style(path, layer.name, layer.qml, layer.sld)
    elif qml_path is not None:
        qml_path.write_text(layer.qml)


def _write_ogr(path: Path, fmt: str, layer: LayerData) -> None:
    import shapely
    from pyogrio.raw import write

    geoms = layer.uniform_geometry()
    wkb = np.asarray(shapely.to_wkb(geoms), dtype=object) if len(geoms) else np.array([], dtype=object)
    write(
        str(path),
        geometry=wkb,
        field_data=list(layer.fields.values()),
        fields=list(layer.fields.keys()),
        layer=layer.name,
        driver=fmt,
        geometry_type=layer.geometry_type,
        crs=layer.crs,
        append=fmt == "GPKG" and path.exists(),
        layer_options={"SPATIAL_INDEX": "YES"},
    )


def _write_geoparquet(path: Path, layer: LayerData) -> None:
    """GeoParquet 1.1: WKB geometry column plus the ``geo`` file metadata."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("GeoParquet output needs pyarrow: pip install 'geoseg[parquet]', or use --format GPKG") from None
    import shapely
    from pyproj import CRS

    geoms = layer.uniform_geometry()
    columns = {k: pa.array(v.tolist() if v.dtype == object else v) for k, v in layer.fields.items()}
    columns["geometry"] = pa.array(list(shapely.to_wkb(geoms)) if len(geoms) else [], type=pa.binary())
    column = {"encoding": "WKB", "geometry_types": [layer.geometry_type]}
    column["crs"] = CRS.from_wkt(layer.crs).to_json_dict() if layer.crs else None
    if len(geoms):
        column["bbox"] = shapely.total_bounds(geoms).tolist()
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    table = pa.table(columns).replace_schema_metadata({"geo": json.dumps(geo)})
    pq.write_table(table, str(path), compression="zstd")


class LayerWriter:
    """Writes one layer batch by batch: a GeoPackage layer is open while the features stream in
    and takes a batch every ``BATCH`` features (memory holds one batch, as WKB), through the
    GDAL rasterio has loaded (:mod:`geoseg.vector._ogr`; pyogrio, which reopens the file for each
    batch, where that is not available); FlatGeobuf (whose spatial index needs every feature) and
    GeoParquet collect the layer and write it on :meth:`close`. Without a path, :meth:`close`
    returns the whole layer as :class:`LayerData` (the in-memory API)."""

    def __init__(self, path: Path | None, fmt: str, name: str, crs: str, geometry_type: str,
                 qml_path: Path | None = None) -> None:
        self.path, self.fmt, self.name, self.crs, self.geometry_type = path, fmt, name, crs, geometry_type
        self.qml_path = qml_path
        self.streaming = path is not None and fmt == "GPKG"
        self.parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self.pending = 0
        self.written = 0
        self.layer = None  # the open GeoPackage layer (geoseg.vector._ogr.GpkgLayer)

    #: Features gathered (as WKB) before each write: a batch costs a transaction (pyogrio: ~0.1 s
    #: to reopen the file), and memory holds one batch.
    BATCH = 16384

    def write(self, geoms: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        """Add features (shapely geometries in the CRS and their attribute columns)."""
        if not self.streaming:
            self.parts.append((geoms, fields))
            return
        import shapely

        if self.geometry_type == "MultiPolygon" and len(geoms):
            parts, index = shapely.get_parts(geoms, return_index=True)
            geoms = shapely.multipolygons(parts, indices=index)
        wkb = np.asarray(shapely.to_wkb(geoms), dtype=object) if len(geoms) else np.array([], dtype=object)
        self.parts.append((wkb, fields))
        self.pending += len(wkb)
        if self.pending >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.parts:
            return
        wkb = np.concatenate([w for w, _ in self.parts])
        fields = {k: np.concatenate([f[k] for _, f in self.parts]) for k in self.parts[0][1]}
        self.parts, self.pending = [], 0
        from geoseg.vector import _ogr

        if self.layer is None and _ogr.available():
            self.layer = _ogr.GpkgLayer(self.path, self.name, self.crs, self.geometry_type)
        if self.layer is not None:
            self.layer.write(wkb, fields)
        else:
            from pyogrio.raw import write

            write(
                str(self.path), geometry=wkb, field_data=list(fields.values()), fields=list(fields.keys()),
                layer=self.name, driver="GPKG", geometry_type=self.geometry_type, crs=self.crs,
                append=self.written > 0 or self.path.exists(), layer_options={"SPATIAL_INDEX": "YES"},
            )
        self.written += 1

    def abort(self) -> None:
        """Drop what is pending and close an open layer after a failure (the caller removes the file)."""
        self.parts, self.pending = [], 0
        if self.layer is not None:
            layer, self.layer = self.layer, None
            layer.abort()

    def close(self, qml: str, sld: str) -> LayerData | None:
        """Finish the layer with its style; the in-memory layer when there is no path."""
        if self.streaming:
            self._flush()
            if self.layer is not None:
                layer, self.layer = self.layer, None
                layer.close()
            write_layer_style(self.path, self.name, qml, sld)
            return None
        geoms = np.concatenate([g for g, _ in self.parts]) if self.parts else np.zeros(0, dtype=object)
        keys = list(self.parts[0][1]) if self.parts else []
        fields = {k: np.concatenate([f[k] for _, f in self.parts]) for k in keys}
        self.parts = []
        data = LayerData(self.name, self.crs, geoms, fields, qml, sld)
        if self.path is None:
            return data
        write_layer(self.path, self.fmt, data, self.qml_path)
        return None
