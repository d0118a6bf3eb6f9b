"""Block-parallel polygonization equals a whole-map polygonize (GDAL), whatever the
blocks; `geoseg vectorize` writes GIS-ready layers with correct attributes."""

from __future__ import annotations

import json
import sqlite3
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from conftest import UTM33_M, UTM33_PIXEL_M2, write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod
from rasterio import features
from scipy import ndimage

from geoseg.cli import cli
from geoseg.io.cog import class_tags
from geoseg.vector import _gdal
from geoseg.vector.api import vectorize
from geoseg.vector.coverage import node_coverage
from geoseg.vector.polygonize import polygonize

NAMES = ["water", "forest", "crop", "soil", "building", "road"]
COLORS = ["#1f78b4", "#33a02c", "#ffff99", "#b15928", "#e31a1c", "#636363"]


def tricky_map(seed: int = 0, shape=(96, 80)) -> np.ndarray:
    """Speckle plus the shapes that break block-wise polygonizers, placed across the
    edges of 16-px blocks: rings with holes and islands, diagonal touches at block
    corners and along edges, a cross touching all four sides of a block, nodata."""
    rng = np.random.default_rng(seed)
    noise = ndimage.uniform_filter(rng.random(shape), size=7)
    m = np.digitize(noise, np.quantile(noise, [0.25, 0.5, 0.75])).astype(np.uint8)
    m[rng.random(shape) < 0.03] = 5  # speckle: many one-pixel regions
    m[8:40, 8:40] = 1  # a ring over four blocks ...
    m[12:36, 12:36] = 2  # ... with a hole of class 2 ...
    m[20:28, 20:28] = 1  # ... holding an island of class 1
    m[14:18, 14:18] = 255  # and a nodata hole inside the hole
    m[44:60, 44:60] = 0
    m[47, 40:64] = 4  # a cross through block (2, 2..3): touches all four sides of block (2, 3)
    m[40:64, 50] = 4
    m[15, 15] = m[16, 16] = 3  # diagonal touch at a block corner
    m[15, 16] = m[16, 15] = 0
    for k in range(20):  # a diagonal staircase crossing edges: joined only with 8-connectivity
        m[64 + k, 2 + k] = 3
        m[64 + k, 3 + k] = 0
        m[65 + k if 65 + k < shape[0] else 64 + k, 2 + k] = 0
    m[31:33, 0:3] = 3  # pixels touching one block edge from both sides
    m[:, -1] = 255  # a nodata column
    m[-3:, 30:60] = 255
    return m


def reference(classes: np.ndarray, connectivity: int):
    """Whole-map GDAL polygonize (rasterio.features.shapes), in pixel coordinates."""
    with warnings.catch_warnings():  # pixel coordinates are meant
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        shapes = list(features.shapes(classes, mask=classes != 255, connectivity=connectivity))
    geoms = shapely.make_valid(np.array([shapely.geometry.shape(g) for g, _ in shapes], dtype=object))
    return geoms, np.array([int(v) for _, v in shapes])


def _sorted(geoms, values):
    key = np.lexsort((shapely.area(geoms), *shapely.bounds(geoms).T[::-1], values))
    return geoms[key], values[key]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # fallback in threads
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("block", [16, 23, 1000])
@pytest.mark.parametrize("gil_free", [True, False])
def test_blocks_equal_a_whole_map_polygonize(tmp_path, monkeypatch, connectivity, block, gil_free) -> None:
    if not gil_free:  # the rasterio fallback gives the same regions
        monkeypatch.setattr(_gdal, "_gdal", lambda: None)
    classes = tricky_map()
    path = write_raster(tmp_path / "c.tif", classes, nodata=255)
    regions = polygonize(path, connectivity=connectivity, block_size=block, workers=2)
    ref, ref_values = reference(classes, connectivity)

    assert len(regions) == len(ref)
    assert np.bincount(regions.values, minlength=6).tolist() == np.bincount(ref_values, minlength=6).tolist()
    assert shapely.is_valid(regions.geometry).all()
    for c in range(6):
        assert shapely.area(regions.geometry[regions.values == c]).sum() == pytest.approx(
            shapely.area(ref[ref_values == c]).sum(), rel=1e-12
        )
    ours, ours_v = _sorted(regions.geometry, regions.values)
    theirs, theirs_v = _sorted(ref, ref_values)
    assert (ours_v == theirs_v).all()
    assert shapely.equals(ours, theirs).all()
    # the cross-edge cases really are there: pieces were joined across block edges
    if block < 1000:
        assert regions.pieces > len(regions)
    # and pixel counts are exact
    assert regions.pixels.sum() == (classes != 255).sum()


def test_diagonals_join_only_with_8_connectivity(tmp_path) -> None:
    classes = np.zeros((32, 32), np.uint8)
    classes[15, 15] = classes[16, 16] = 1  # across a block corner
    classes[4, 15] = classes[5, 16] = 1  # across a vertical block edge
    path = write_raster(tmp_path / "c.tif", classes)
    four = polygonize(path, connectivity=4, block_size=16)
    eight = polygonize(path, connectivity=8, block_size=16)
    assert (four.values == 1).sum() == 4
    assert (eight.values == 1).sum() == 2
    assert set(shapely.get_type_id(eight.geometry[eight.values == 1])) == {6}  # multipolygons, valid
    assert shapely.is_valid(eight.geometry).all()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_confidence_is_the_mean_under_each_polygon(tmp_path, connectivity) -> None:
    classes = tricky_map(3)
    conf = np.random.default_rng(2).integers(0, 101, classes.shape).astype(np.uint8)
    cpath = write_raster(tmp_path / "c.tif", classes, nodata=255)
    fpath = write_raster(tmp_path / "f.tif", conf, nodata=255)
    regions = polygonize(cpath, weights=(fpath, 1), block_size=16, connectivity=connectivity)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndimage.label(classes == 1, structure=structure)
    means = ndimage.mean(conf, labels, index=np.arange(1, n + 1))
    ours = regions.weight_mean[regions.values == 1]
    assert sorted(np.round(ours, 9)) == sorted(np.round(means, 9))
    assert regions.pixels.sum() == (classes != 255).sum()


def _class_map(tmp_path, classes, name="scene.classes.tif"):
    path = write_raster(tmp_path / name, classes, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(**class_tags(NAMES, COLORS))
    return path


def test_cli_writes_a_styled_indexed_geopackage(tmp_path) -> None:
    classes = tricky_map(1)
    path = _class_map(tmp_path, classes)
    out = tmp_path / "out.gpkg"
    res = CliRunner().invoke(cli, ["vectorize", str(path), str(out), "--block-size", "16", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["layers"][0]["features"] == len(reference(classes, 4)[0])

    info = pyogrio.read_info(out, layer="classes")
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] == "Polygon"
    meta, _, geoms, f = pyogrio.raw.read(out, layer="classes")
    fields = dict(zip(meta["fields"], f))
    assert set(fields) == {"class_id", "class_name", "area_m2", "perimeter_m"}  # no confidence raster known
    assert [NAMES[i] for i in fields["class_id"]] == list(fields["class_name"])
    g = shapely.from_wkb(geoms)
    # ground measures: UTM's scale at its central meridian is 0.9996
    assert np.allclose(fields["area_m2"], shapely.area(g) * UTM33_PIXEL_M2 / 100, rtol=1e-6)
    assert np.allclose(fields["perimeter_m"], shapely.length(g) * UTM33_M, rtol=1e-6)
    assert fields["area_m2"].sum() == pytest.approx((classes != 255).sum() * UTM33_PIXEL_M2, rel=1e-6)
    with rasterio.open(path) as ds:  # georeferenced: the polygons cover the raster's bounds
        left, bottom, right, top = ds.bounds  # ... but the last column, which is nodata
        assert tuple(shapely.total_bounds(g)) == pytest.approx((left, bottom, right - 10.0, top), abs=1e-6)

    con = sqlite3.connect(out)
    tables = {r[0] for r in con.execute("select name from sqlite_master")}
    assert "rtree_classes_geom" in tables  # spatial index
    qml, sld, default = con.execute(
        "select styleQML, styleSLD, useAsDefault from layer_styles where f_table_name='classes'"
    ).fetchone()
    con.close()
    assert default == 1
    root = ET.fromstring(qml.split("'SYSTEM'>", 1)[1])  # parseable, categorized on class_id
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    cats = {c.get("value"): c.get("label") for c in renderer.iter("category")}
    assert cats == {str(i): n for i, n in enumerate(NAMES)}
    colors = {s.get("name"): o.get("value") for s in root.iter("symbol") for o in s.iter("Option") if o.get("name") == "color"}
    with rasterio.open(path) as ds:  # same colours as the raster's colour table? (tags here)
        assert colors["4"] == "227,26,28,255"
    ET.fromstring(sld)


def test_perimeter_and_area_of_a_known_shape(tmp_path) -> None:
    classes = np.zeros((40, 40), np.uint8)
    classes[10:20, 5:35] = 1  # 10 x 30 px of 10 m: 3000 m^2... x 100
    classes[12:18, 10:15] = 2  # a 6 x 5 hole
    path = _class_map(tmp_path, classes)
    vectorize(path, tmp_path / "v.gpkg", block_size=16)
    _, _, _, (cid, _, area, perim) = pyogrio.raw.read(tmp_path / "v.gpkg", layer="classes")
    k = int(np.flatnonzero(cid == 1)[0])
    assert area[k] == pytest.approx((300 - 30) * UTM33_PIXEL_M2, rel=1e-6)
    assert perim[k] == pytest.approx((2 * (100 + 300) + 2 * (60 + 50)) * UTM33_M, rel=1e-6)  # outer ring + hole


def test_geographic_areas_are_geodesic(tmp_path) -> None:
    classes = tricky_map(4, shape=(90, 66))
    res = 0.001  # degrees: ~111 m x ~80 m at 45N
    path = write_raster(tmp_path / "geo.tif", classes, nodata=255, crs="EPSG:4326", transform=Affine(res, 0, 10.0, 0, -res, 45.0))
    vectorize(path, tmp_path / "geo.gpkg", block_size=16)
    _, _, _, (cid, _, area, perim) = pyogrio.raw.read(tmp_path / "geo.gpkg", layer="classes")
    geod = Geod(ellps="WGS84")
    with rasterio.open(path) as ds:
        t = ds.transform
    for c in range(6):
        ref = 0.0
        for g, v in features.shapes(classes, mask=classes != 255, transform=t):
            if v == c:
                ref += abs(geod.geometry_area_perimeter(shapely.geometry.shape(g))[0])
        # pixel footprints (parallels as edges) vs geodesic-edged polygons, factor interpolated to 1e-6
        assert area[cid == c].sum() == pytest.approx(ref, rel=1e-5)
    assert (perim > 0).all()
    # sanity: a pixel at 45N is ~111 m x ~79 m
    assert area.sum() / (classes != 255).sum() == pytest.approx(111_000 * 0.001 * 78_800 * 0.001, rel=0.02)
    # --min-area on a geographic CRS compares geodesic areas; the kept polygons keep their measures
    vectorize(path, tmp_path / "big.gpkg", block_size=16, min_area=5 * 8769.0)
    _, _, _, (_, _, big_area, big_perim) = pyogrio.raw.read(tmp_path / "big.gpkg", layer="classes")
    kept = area >= 5 * 8769.0
    assert 0 < len(big_area) == kept.sum() < len(area)
    assert sorted(big_area) == pytest.approx(sorted(area[kept]))
    assert sorted(big_perim) == pytest.approx(sorted(perim[kept]))


def test_min_area_drops_small_polygons(tmp_path) -> None:
    classes = tricky_map(5)
    path = _class_map(tmp_path, classes)
    summary = vectorize(path, tmp_path / "v.gpkg", min_area=450.0, block_size=16)  # < 5 px of 100 m^2 dropped
    _, _, _, (_, _, area, _) = pyogrio.raw.read(tmp_path / "v.gpkg", layer="classes")
    ref, _ = reference(classes, 4)
    ref_area = shapely.area(ref) * UTM33_PIXEL_M2
    assert len(area) == (ref_area >= 450).sum() and (area >= 450).all()
    assert summary["layers"][0]["dropped_below_min_area"] == (ref_area < 450).sum() > 0
    # dropped, not merged: the kept polygons have exactly their own pixels' area
    assert area.sum() == pytest.approx(ref_area[ref_area >= 450].sum(), rel=1e-6)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_simplify_keeps_the_topology(tmp_path, connectivity) -> None:
    classes = tricky_map(6, shape=(120, 100))
    path = _class_map(tmp_path, classes)
    vectorize(path, tmp_path / "exact.gpkg", block_size=32, connectivity=connectivity)
    vectorize(path, tmp_path / "simple.gpkg", block_size=32, connectivity=connectivity, simplify=25.0)
    exact = shapely.from_wkb(pyogrio.raw.read(tmp_path / "exact.gpkg", layer="classes")[2])
    simple = shapely.from_wkb(pyogrio.raw.read(tmp_path / "simple.gpkg", layer="classes")[2])
    assert len(simple) == len(exact)  # nothing vanishes
    assert shapely.is_valid(simple).all()
    assert shapely.get_num_coordinates(simple).sum() < 0.8 * shapely.get_num_coordinates(exact).sum()
    # no overlaps between neighbours
    tree = shapely.STRtree(simple)
    a, b = tree.query(simple, predicate="intersects")
    pairs = a < b
    overlap = shapely.area(shapely.intersection(simple[a[pairs]], simple[b[pairs]])).sum()
    assert overlap < 1e-6 * shapely.area(simple).sum()
    # no gaps: the union covers the same area (the outer boundary may move within the tolerance)
    assert shapely.union_all(simple).area == pytest.approx(shapely.union_all(exact).area, rel=0.02)
    assert shapely.area(simple).sum() == pytest.approx(shapely.union_all(simple).area, rel=1e-9)


def test_node_coverage_makes_gdal_polygons_a_valid_coverage(tmp_path) -> None:
    path = write_raster(tmp_path / "c.tif", tricky_map(7), nodata=255)
    geoms = polygonize(path, block_size=16).geometry
    assert not shapely.coverage_is_valid(geoms)  # T-junctions without vertices
    noded = node_coverage(geoms)
    assert shapely.coverage_is_valid(noded)
    assert shapely.equals(noded, geoms).all()


@pytest.mark.parametrize("fmt,suffix", [("FlatGeobuf", ".fgb"), ("GeoParquet", ".parquet")])
def test_other_formats(tmp_path, fmt, suffix) -> None:
    classes = tricky_map(8)
    path = _class_map(tmp_path, classes)
    out = tmp_path / f"v{suffix}"
    res = CliRunner().invoke(cli, ["vectorize", str(path), str(out), "--format", fmt, "-q"])
    assert res.exit_code == 0, res.output
    assert out.with_suffix(".qml").exists()
    n_ref = len(reference(classes, 4)[0])
    if fmt == "FlatGeobuf":
        info = pyogrio.read_info(out)
        assert info["features"] == n_ref and info["crs"] == "EPSG:32633"
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        geo = json.loads(table.schema.metadata[b"geo"])
        assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
        assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32633
        assert table.num_rows == n_ref
        area = shapely.area(shapely.from_wkb(table.column("geometry").to_pylist()))
        assert area.sum() == pytest.approx((classes != 255).sum() * 100.0)  # planar, from the geometries
        assert table.column("class_name").to_pylist()[0] in NAMES


def test_masks_and_classes_from_json(tmp_path) -> None:
    mask = (tricky_map(9) == 1).astype(np.uint8)
    mask[:, -1] = 255
    mpath = write_raster(tmp_path / "m.tif", mask, nodata=255)
    with rasterio.open(mpath, "r+") as ds:
        ds.set_band_description(1, "built_up")
    vectorize(mpath, tmp_path / "m.gpkg", mask=True, block_size=16)
    _, _, _, (name, area, _) = pyogrio.raw.read(tmp_path / "m.gpkg", layer="built_up")
    assert set(name) == {"built_up"}
    assert area.sum() == pytest.approx((mask == 1).sum() * UTM33_PIXEL_M2, rel=1e-6)

    cls = tricky_map(9)
    cpath = write_raster(tmp_path / "plain.tif", cls, nodata=255)  # no class metadata
    spec = tmp_path / "classes.json"
    spec.write_text(json.dumps([{"name": n, "color": c} for n, c in zip(NAMES, COLORS)]))
    vectorize(cpath, tmp_path / "a.gpkg")
    vectorize(cpath, tmp_path / "b.gpkg", classes_from=str(spec))
    with rasterio.open(cpath, "r+") as ds:  # a colour table alone gives the style its colours
        ds.write_colormap(1, {1: (10, 20, 30, 255)})
    vectorize(cpath, tmp_path / "c.gpkg")
    con = sqlite3.connect(tmp_path / "c.gpkg")
    qml = con.execute("select styleQML from layer_styles").fetchone()[0]
    con.close()
    assert '"10,20,30,255"' in qml
    assert set(pyogrio.raw.read(tmp_path / "a.gpkg", layer="classes")[3][1]) <= {f"class_{i}" for i in range(6)}
    assert set(pyogrio.raw.read(tmp_path / "b.gpkg", layer="classes")[3][1]) <= set(NAMES)


def test_runs_on_a_dask_scheduler(tmp_path) -> None:
    from distributed import LocalCluster

    classes = tricky_map(10)
    path = write_raster(tmp_path / "c.tif", classes, nodata=255)
    local = polygonize(path, block_size=16)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = polygonize(path, block_size=16, scheduler=cluster.scheduler_address)
    assert (local.values == remote.values).all()
    assert shapely.equals(local.geometry, remote.geometry).all()


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.tif", "o.gpkg"], "does not exist"),
        (["float.tif", "o.gpkg"], "integer class map"),
        (["c.tif", "o.shp"], "does not end in .gpkg"),
        (["c.tif", "o.gpkg", "--classes-from", "nope.json"], "no such file"),
        (["c.tif", "o.gpkg", "--min-area", "-1"], "--min-area must be >= 0"),
        (["c.tif", "exists.gpkg"], "already exist"),
        (["nocrs.tif", "o.gpkg"], "has no CRS"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    write_raster(tmp_path / "c.tif", tricky_map(), nodata=255)
    write_raster(tmp_path / "float.tif", np.zeros((8, 8), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        write_raster(tmp_path / "nocrs.tif", np.zeros((8, 8), np.uint8), crs=None, transform=None)
    (tmp_path / "exists.gpkg").write_bytes(b"keep me")
    before = set(tmp_path.iterdir())
    res = CliRunner().invoke(cli, ["vectorize", *args])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:") and message in lines[0], res.stderr
    assert set(tmp_path.iterdir()) == before
    assert (tmp_path / "exists.gpkg").read_bytes() == b"keep me"


def test_geoseg_run_passes_the_vectorize_options(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    stem = scene.stem
    runs = {"plain": [], "filtered": ["--min-area", "2000", "--connectivity", "8"], "simple": ["--simplify", "15"]}
    layers = {}
    for name, extra in runs.items():
        res = CliRunner().invoke(cli, ["run", str(scene), "-o", str(tmp_path / name), "-q", *extra])
        assert res.exit_code == 0, res.output
        meta, _, wkb, f = pyogrio.raw.read(tmp_path / name / f"{stem}.gpkg", layer="classes")
        layers[name] = (shapely.from_wkb(wkb), dict(zip(meta["fields"], f)))
    manifest = json.loads((tmp_path / "filtered" / f"{stem}.run.json").read_text())
    assert manifest["parameters"]["min_area_m2"] == 2000 and manifest["parameters"]["connectivity"] == 8
    plain, filtered, simple = layers["plain"][0], layers["filtered"][0], layers["simple"][0]
    assert 0 < len(filtered) < len(plain) and (layers["filtered"][1]["area_m2"] >= 2000).all()
    assert len(simple) == len(plain) and shapely.is_valid(simple).all()
    assert shapely.get_num_coordinates(simple).sum() < 0.8 * shapely.get_num_coordinates(plain).sum()


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 60), st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=120))
def test_connected_components_match_scipy(n, edges) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    from geoseg.vector.polygonize import connected_components

    a = np.array([e[0] % n for e in edges], dtype=np.int64)
    b = np.array([e[1] % n for e in edges], dtype=np.int64)
    ours = connected_components(n, a, b)
    _, ref = scipy_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    assert len({(x, y) for x, y in zip(ours, ref)}) == len(set(ours)) == len(set(ref))
    for label in set(ours.tolist()):
        assert label == np.flatnonzero(ours == label).min()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.03, 0.3, 0.5]), st.sampled_from([4, 5, 8]))
def test_stitched_pieces_equal_the_union_of_the_pieces(seed, p, block) -> None:
    """Edge cancellation along block lines (geoseg.vector.stitch) gives the union GEOS gives,
    valid, on binary noise: holes cut by block lines, holes and pieces touching the shell
    or each other at single pixel corners, inside blocks and on the block lines, and
    (sparse noise) whole blocks inside a region, whose every edge cancels."""
    from geoseg.vector import stitch
    from geoseg.vector.polygonize import block_grid
    from geoseg.vector.stitch import stitch_pieces

    rng = np.random.default_rng(seed)
    classes = (rng.random((24, 24)) < p).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        shapes = list(features.shapes(classes, connectivity=4))
    # the pieces of each whole-map region: the region cut by the block lines
    grid = block_grid(24, 24, block)
    pieces, group, whole = [], [], []
    for g, (geom, _) in enumerate(shapes):
        region = shapely.geometry.shape(geom)
        whole.append(region)
        for i in range(grid.rows):
            for j in range(grid.cols):
                w = grid.tile(i, j).core
                cut = shapely.intersection(region, shapely.box(w.col, w.row, w.col + w.width, w.row + w.height))
                for part in getattr(cut, "geoms", [cut]):
                    if part.geom_type == "Polygon" and part.area > 0:
                        pieces.append(shapely.normalize(part))
                        group.append(g)
    lines = np.arange(block, 24, block)
    with pytest.MonkeyPatch.context() as mp:  # never GEOS's union: 4-connected regions always stitch
        mp.setattr(stitch, "_union", lambda p: pytest.fail(f"fell back to a GEOS union of {len(p)} pieces"))
        out = stitch_pieces(np.array(pieces, dtype=object), np.array(group), len(shapes), lines, lines)
    assert shapely.is_valid(out).all()
    assert shapely.equals(out, np.array(whole, dtype=object)).all()
    assert (shapely.get_type_id(out) == 3).all()  # one polygon per 4-connected region


def test_block_size_follows_the_boundary_density(tmp_path) -> None:
    """Speckle gets small blocks (memory), a map of large regions large ones (fewer joins);
    the polygons are the same either way."""
    from geoseg.vector.polygonize import choose_block_size

    rng = np.random.default_rng(3)
    speckle = np.kron(rng.integers(0, 6, (512, 512)), np.ones((2, 2))).astype(np.uint8)
    low = ndimage.zoom(rng.random((9, 9)), 1024 / 9, order=1)[:1024, :1024]
    blobs = np.digitize(low, np.quantile(low, [0.3, 0.6])).astype(np.uint8)
    sp = write_raster(tmp_path / "speckle.tif", speckle, nodata=255)
    bl = write_raster(tmp_path / "blobs.tif", blobs, nodata=255)
    assert choose_block_size(sp) == 512
    assert choose_block_size(bl) == 2048
    auto = polygonize(bl, workers=2)  # one block: the whole map
    small = polygonize(bl, block_size=128, workers=2)
    a, av = _sorted(auto.geometry, auto.values)
    b, bv = _sorted(small.geometry, small.values)
    assert (av == bv).all() and shapely.equals(a, b).all() and small.pieces > auto.pieces
