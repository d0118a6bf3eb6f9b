"""Streaming polygons (issue 14.1) and ground areas in any CRS (issue 14.3).

The written layers equal a whole-map GDAL polygonize whatever the block size; peak memory
does not grow with the map; ``area_m2``/``perimeter_m`` match geodesic footprints in
projections that stretch the ground (Web Mercator, polar stereographic, geostationary)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import ground_area_m2, write_raster
from pyproj import CRS, Transformer
from test_vectorize import reference, tricky_map

from geoseg.vector.api import vectorize
from geoseg.vector.areas import AreaCalculator, mean_pixel_area_m2
from geoseg.vector.formats import LayerWriter


def _read(path, layer=None):
    layer = layer or ("classes" if str(path).endswith(".gpkg") else None)
    meta, _, wkb, f = pyogrio.raw.read(path, layer=layer)
    return shapely.from_wkb(wkb), dict(zip(meta["fields"], f))


@pytest.mark.parametrize("fmt,suffix", [("GPKG", ".gpkg"), ("FlatGeobuf", ".fgb")])
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("block", [16, 23, 40])
def test_written_layer_equals_a_whole_map_polygonize(tmp_path, monkeypatch, fmt, suffix, connectivity, block) -> None:
    """Rings, holes, nodata holes, diagonals at block corners (tricky_map): the streamed
    layer holds exactly GDAL's polygons, georeferenced."""
    monkeypatch.setattr(LayerWriter, "BATCH", 97)  # many appends
    classes = tricky_map(11)
    path = write_raster(tmp_path / "c.tif", classes, nodata=255)
    out = tmp_path / f"v{suffix}"
    summary = vectorize(path, out, block_size=block, connectivity=connectivity, format=fmt, workers=2)
    geoms, fields = _read(out)
    ref, ref_values = reference(classes, connectivity)
    with rasterio.open(path) as ds:
        t = ds.transform
    ref = shapely.transform(ref, lambda xy: np.column_stack(t * (xy[:, 0], xy[:, 1])))
    assert summary["layers"][0]["features"] == len(geoms) == len(ref)
    key = lambda g, v: np.lexsort((*np.round(shapely.bounds(g)).T[::-1], np.round(shapely.area(g)), v))  # noqa: E731
    ours, theirs = key(geoms, fields["class_id"]), key(ref, ref_values)
    assert (fields["class_id"][ours] == ref_values[theirs]).all()
    assert shapely.equals(geoms[ours], ref[theirs]).all()


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_polygon_count(tmp_path) -> None:
    """A speckled map 4x larger in area (4x the polygons) keeps the same peak RSS: finished
    regions leave memory as they are written."""

    def speckle(size):
        rng = np.random.default_rng(size)
        c = rng.choice(6, size=(size // 2, size // 2), p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05]).astype(np.uint8)
        return np.kron(c, np.ones((2, 2), np.uint8))

    peaks = {}
    for size in (512, 1024):
        path = write_raster(tmp_path / f"s{size}.tif", speckle(size), nodata=255)
        cmd = [sys.executable, "-m", "geoseg", "vectorize", str(path), str(tmp_path / f"s{size}.gpkg"),
               "--block-size", "128", "--workers", "2", "-q"]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
        peaks[size] = usage.ru_maxrss / 1024
        n = pyogrio.read_info(tmp_path / f"s{size}.gpkg", layer="classes")["features"]
        assert n > size * size / 12  # speckle: tens of thousands of polygons
    # the old in-memory path grew by ~1 KB per polygon: ~+150 MiB here
    assert peaks[1024] < peaks[512] + 40, peaks


def _mercator_y(lat: float) -> float:
    return 6378137.0 * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


SCENES = {
    # name: (crs, transform, size in px)
    **{f"webmercator_{lat}N": ("EPSG:3857", Affine(30.0, 0, 1.2e6, 0, -30.0, _mercator_y(lat)), 64)
       for lat in (0, 30, 60, 75)},
    "polar_stereographic": ("EPSG:3413", Affine(500.0, 0, -600000, 0, -500.0, -900000), 64),
    "geostationary": ("+proj=geos +h=35785831 +lon_0=0 +ellps=WGS84 +units=m +no_defs",
                      Affine(3000.0, 0, -1200000, 0, -3000.0, 4400000), 64),
    "geographic": ("EPSG:4326", Affine(0.01, 0, 10.0, 0, -0.01, 60.0), 64),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_areas_are_ground_areas_in_any_crs(tmp_path, name) -> None:
    crs, t, n = SCENES[name]
    classes = np.zeros((n, n), np.uint8)
    classes[8:40, 16:56] = 1  # a 32 x 40 px rectangle ...
    classes[20:28, 30:38] = 2  # ... with a hole
    classes[:, -4:] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_raster(tmp_path / "c.tif", classes, nodata=255, crs=crs, transform=t)
    summary = vectorize(path, tmp_path / "v.gpkg", block_size=16)
    geoms, f = _read(tmp_path / "v.gpkg")
    sub = lambda r, c: t * Affine.translation(c, r)  # noqa: E731  the transform of a sub-rectangle
    rect = ground_area_m2(crs, sub(8, 16), 32, 40)
    hole = ground_area_m2(crs, sub(20, 30), 8, 8)
    valid = ground_area_m2(crs, t, n, n - 4)
    (ring,) = np.flatnonzero(f["class_id"] == 1)
    assert f["area_m2"][ring] == pytest.approx(rect - hole, rel=5e-3)
    assert f["area_m2"][f["class_id"] == 2].sum() == pytest.approx(hole, rel=5e-3)
    assert f["area_m2"].sum() == pytest.approx(valid, rel=5e-3)
    # perimeter: outer ring and hole, measured geodesically along their densified edges
    c = CRS.from_user_input(crs)
    to_ll = Transformer.from_crs(c, c.geodetic_crs, always_xy=True)

    def ring_length(r0, c0, h, w):
        k = 50
        cols = np.r_[np.linspace(0, w, k), np.full(k, w), np.linspace(w, 0, k), np.zeros(k)] + c0
        rows = np.r_[np.zeros(k), np.linspace(0, h, k), np.full(k, h), np.linspace(h, 0, k)] + r0
        lon, lat = to_ll.transform(*(t * (cols, rows)))
        return c.get_geod().line_length(lon, lat)

    assert f["perimeter_m"][ring] == pytest.approx(ring_length(8, 16, 32, 40) + ring_length(20, 30, 8, 8), rel=5e-3)
    # the summary's (and so the manifest's) class areas are the same ground areas
    assert summary["layers"][0]["area_m2"]["class_1"] == pytest.approx(rect - hole, rel=5e-3)
    # and the mean ground pixel the manifest uses without polygons
    assert mean_pixel_area_m2(crs, t, n, n) * n * n == pytest.approx(ground_area_m2(crs, t, n, n), rel=5e-3)


def test_web_mercator_at_60n_is_not_four_times_too_large() -> None:
    """The issue's case: planar EPSG:3857 areas at 60N are ~3.98x the ground."""
    t = Affine(10.0, 0, 1e6, 0, -10.0, _mercator_y(60))
    calc = AreaCalculator("EPSG:3857", t, 100, 100)
    true = ground_area_m2("EPSG:3857", t, 100, 100)
    assert 100 * 100 * 100.0 / true == pytest.approx(3.98, abs=0.02)
    assert calc.pixel_areas(0, 0, 100, 100).sum() == pytest.approx(true, rel=1e-5)


def test_min_area_compares_ground_areas(tmp_path) -> None:
    t = Affine(10.0, 0, 1e6, 0, -10.0, _mercator_y(60))  # a 10 m Mercator pixel is ~25 m^2 of ground
    classes = np.zeros((32, 32), np.uint8)
    classes[4:8, 4:8] = 1  # 16 px: ~400 m^2 of ground, 1600 "planar m^2"
    path = write_raster(tmp_path / "c.tif", classes, crs="EPSG:3857", transform=t)
    vectorize(path, tmp_path / "a.gpkg", min_area=1000.0)
    vectorize(path, tmp_path / "b.gpkg", min_area=300.0)
    assert set(_read(tmp_path / "a.gpkg")[1]["class_id"]) == {0}
    assert set(_read(tmp_path / "b.gpkg")[1]["class_id"]) == {0, 1}


def test_a_map_without_regions_gives_an_empty_layer(tmp_path) -> None:
    path = write_raster(tmp_path / "c.tif", np.full((40, 40), 255, np.uint8), nodata=255)
    summary = vectorize(path, tmp_path / "v.gpkg", block_size=16)
    assert summary["layers"][0]["features"] == 0
    info = pyogrio.read_info(tmp_path / "v.gpkg", layer="classes")
    assert info["features"] == 0 and info["crs"] == "EPSG:32633"
    assert {"class_id", "class_name", "area_m2", "perimeter_m"} <= set(info["fields"])


def _gpkg_dump(path) -> dict:
    """Everything a GeoPackage says about its layers, less the write times: the tables,
    triggers and versions, the metadata tables, each layer's columns and rows (geometry
    blobs included) and its spatial index entries."""
    import sqlite3

    con = sqlite3.connect(path)
    out = {
        "tables": sorted(con.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')")),
        "versions": (con.execute("PRAGMA application_id").fetchone(), con.execute("PRAGMA user_version").fetchone()),
    }
    for table in ("gpkg_contents", "gpkg_geometry_columns", "gpkg_spatial_ref_sys", "gpkg_extensions",
                  "gpkg_ogr_contents", "layer_styles"):
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        keep = [i for i, c in enumerate(cols) if c not in ("last_change", "update_time")]
        out[table] = sorted(tuple(r[i] for i in keep) for r in con.execute(f"SELECT * FROM {table}"))
    for (layer,) in con.execute("SELECT table_name FROM gpkg_contents WHERE data_type = 'features'").fetchall():
        out[f"{layer} columns"] = list(con.execute(f"PRAGMA table_info({layer})"))
        out[f"{layer} rows"] = list(con.execute(f"SELECT * FROM {layer} ORDER BY fid"))
        out[f"{layer} index"] = list(con.execute(f"SELECT * FROM rtree_{layer}_geom ORDER BY id"))
    con.close()
    return out


@pytest.mark.parametrize("geometry_type", ["Polygon", "MultiPolygon"])
def test_geopackage_writer_equals_pyogrio(tmp_path, monkeypatch, geometry_type) -> None:
    """GeoPackage layers written through rasterio's GDAL (geoseg.vector._ogr) are what
    pyogrio made of the same batches: the same rows (geometry blobs, NaN as NULL, UTF-8
    names), field types, CRS, spatial index, metadata tables and styles; several layers in
    one file; an empty layer keeps its fields."""
    from geoseg.vector import _ogr
    from geoseg.vector.styles import categorized_qml, categorized_sld

    assert _ogr.available()
    rng = np.random.default_rng(3)
    x, y = 500000 + 10.0 * rng.integers(0, 500, 300), 5500000 - 10.0 * rng.integers(0, 500, 300)
    boxes = shapely.box(x, y, x + 10.0 * rng.integers(1, 5, 300), y + 10.0 * rng.integers(1, 5, 300))
    if geometry_type == "MultiPolygon":
        boxes[::3] = shapely.multipolygons([[b, shapely.affinity.translate(b, 1e4)] for b in boxes[::3]])
    area = shapely.area(boxes)
    area[::7] = np.nan
    crs = CRS.from_epsg(32633).to_wkt()

    def write(path) -> None:
        layers = [("classes", 300), ("bright", 0), ("built_up", 40)]
        for name, n in layers:
            sink = LayerWriter(path, "GPKG", name, crs, geometry_type)
            for s in range(0, max(n, 1), 17):  # many batches of a few features
                ids = rng.integers(0, 3, n)[s:s + 17].astype(np.int32) if n else np.zeros(0, np.int32)
                sink.write(boxes[s:min(s + 17, n)], {
                    "class_id": ids, "class_name": np.array(["forêt", "水", "x y"], dtype=object)[ids],
                    "area_m2": area[s:min(s + 17, n)], "pixels": ids.astype(np.int64) * 2**40,
                })
            cats = [(0, "forêt", "#00ff00"), (1, "水", "#0000ff"), (2, "x y", "#ff0000")]
            sink.close(categorized_qml("class_id", cats), categorized_sld(name, "class_id", cats))

    monkeypatch.setattr(LayerWriter, "BATCH", 40)
    rng = np.random.default_rng(5)
    write(tmp_path / "ctypes.gpkg")
    with monkeypatch.context() as m:
        m.setattr(_ogr, "available", lambda: False)
        rng = np.random.default_rng(5)
        write(tmp_path / "pyogrio.gpkg")
    ours, theirs = _gpkg_dump(tmp_path / "ctypes.gpkg"), _gpkg_dump(tmp_path / "pyogrio.gpkg")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == theirs[key], key
    assert len(ours["classes rows"]) == 300 and ours["bright rows"] == [] and len(ours["built_up rows"]) == 40
    assert sum(r[4] is None for r in ours["classes rows"]) == len(area[::7])  # NaN -> NULL
    assert pyogrio.read_info(tmp_path / "ctypes.gpkg", layer="classes")["geometry_type"] == geometry_type


def test_vectorize_keeps_one_gdal_and_no_dataframe_libraries(tmp_path) -> None:
    """The GeoPackage path loads neither pyogrio (a second GDAL) nor pandas, pyarrow or
    geopandas: ~100 MiB of resident memory before the first polygon (measured)."""
    classes = tricky_map(2)
    path = write_raster(tmp_path / "c.tif", classes, nodata=255)
    code = (
        "import sys; from geoseg.vector.api import vectorize; "
        f"vectorize({str(path)!r}, {str(tmp_path / 'v.gpkg')!r}, block_size=16); "
        "maps = {l.split()[-1] for l in open('/proc/self/maps') if 'libgdal' in l}; "
        "print(len(maps), sorted(m for m in ('pyogrio', 'pandas', 'pyarrow', 'geopandas') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split(maxsplit=1) == ["1", "[]\n"], r.stdout + r.stderr
    assert pyogrio.read_info(tmp_path / "v.gpkg", layer="classes")["features"] == len(reference(classes, 4)[0])


def test_measures_in_pieces_equal_the_whole(monkeypatch) -> None:
    """Ground areas (ring_sums) and perimeters are computed a few thousand vertices at a time
    (bounded temporaries); piece by piece they are bit for bit the one-piece results."""
    from geoseg.grid import PixelWindow
    from geoseg.vector import _gdal, areas
    from geoseg.vector.polygonize import array_prefix, ring_sums

    classes = tricky_map(4).astype(np.int32)
    valid = classes != 255
    _, wkb = _gdal.polygonize_block(classes, valid, (0, 0))
    geoms = shapely.from_wkb(np.asarray(wkb, dtype=object))
    window = PixelWindow(0, 0, *classes.shape)
    t = Affine(10.0, 0, 1e6, 0, -10.0, _mercator_y(60))
    calc = AreaCalculator("EPSG:3857", t, *classes.shape)
    weights = array_prefix(np.random.default_rng(0).random(classes.shape))
    whole = ring_sums(geoms, window, weights), calc.lengths(geoms)
    monkeypatch.setattr(areas, "CHUNK_VERTICES", 7)
    assert len(areas.vertex_chunks(geoms)) > 100
    pieces = ring_sums(geoms, window, weights), calc.lengths(geoms)
    assert np.array_equal(whole[0], pieces[0]) and np.array_equal(whole[1], pieces[1])


def test_prefix_sums_without_the_blocks_array() -> None:
    """A block's ground-area prefix sums come from a small table of node rows (no block-sized
    float64 arrays) and equal the prefix sums of the pixel areas; integer weights are summed
    exactly in int32."""
    from geoseg.vector.polygonize import array_prefix

    t = Affine(10.0, 0, 1e6, 0, -10.0, _mercator_y(60))  # Web Mercator at 60N: areas change along rows
    calc = AreaCalculator("EPSG:3857", t, 2000, 1500)
    assert len(calc._ys) > 3  # the block spans several node rows
    row0, col0, h, w = 300, 200, 900, 700
    ref = np.zeros((h, w + 1))
    np.cumsum(calc.pixel_areas(row0, col0, h, w), axis=1, out=ref[:, 1:])
    rows, cols = np.meshgrid(np.arange(h), np.arange(w + 1), indexing="ij")
    got = calc.area_prefix(row0, col0, h, w)(rows.ravel(), cols.ravel()).reshape(h, w + 1)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-6)
    conf = np.random.default_rng(1).integers(0, 101, (64, 2048)).astype(np.uint8)
    at = array_prefix(conf)
    assert at(np.array([5]), np.array([2048]))[0] == int(conf[5].astype(np.int64).sum())
