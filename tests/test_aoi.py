"""Areas of interest: ``--aoi FILE[:LAYER]`` and ``--bbox``, as a user gives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from conftest import read, to_crs, write_polygons

import geoseg

UTM = "EPSG:32633"


def geoseg_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def run(scene, out, model, **kw) -> dict:
    return geoseg.run_scene(scene, out, model=model, quiet=True, overwrite=True, vectorize=kw.pop("vectorize", False), **kw)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 10 m 320x400 synthetic scene (origin 500000, 5500000, EPSG:32633)."""
    from geoseg.synthetic import synthesize

    return Path(synthesize(tmp_path_factory.mktemp("aoi") / "scene.tif", (320, 400), seed=8).path)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, scene, small_unet) -> np.ndarray:
    out = tmp_path_factory.mktemp("full")
    run(scene, out, small_unet, tile_size=64)
    return read(out / "scene.classes.tif")[0]


# a triangle in UTM metres, inside the scene; written to files in lon/lat
TRIANGLE = shapely.Polygon([(500505, 5499495), (502003, 5499007), (501001, 5497502)])


def test_polygon_in_another_crs(tmp_path, scene, small_unet, full_run) -> None:
    """A GeoPackage layer in EPSG:4326: outputs cover its bounding window on the scene grid;
    inside, the classes are those of the whole-scene run; outside, nodata; only the tiles
    that touch it were read and predicted."""
    gpkg = write_polygons(tmp_path / "aoi.gpkg", to_crs([TRIANGLE], UTM, "EPSG:4326"), "EPSG:4326", driver="GPKG")
    m = run(scene, tmp_path / "out", small_unet, tile_size=64, aoi=str(gpkg), vectorize=True)
    r0, c0, h, w = m["aoi"]["window"]
    assert (r0, c0, h, w) == (50, 50, 200, 151)  # x 500505..502003 -> cols 50.5..200.3, y -> rows 50.5..249.8
    with rasterio.open(tmp_path / "out" / "scene.classes.tif") as out, rasterio.open(scene) as src:
        assert out.crs == src.crs and out.shape == (200, 151)
        assert out.transform == src.transform * rasterio.Affine.translation(50, 50)
        classes = out.read(1)
    inside = classes != 255
    expected = rasterio.features.geometry_mask([TRIANGLE], (200, 151), out.transform, invert=True)
    assert abs(int(inside.sum()) - int(expected.sum())) <= 4  # the same up to pixel centres on the reprojected edges
    assert (inside == expected).mean() > 0.999
    assert np.array_equal(classes[inside], full_run[50:250, 50:201][inside])
    # tiles: 64-px cores of a 320x400 grid touched by the triangle, not all 30
    assert m["execution"]["tiles"] < 30 / 2
    assert m["aoi"]["features"] == 1 and m["aoi"]["crop"] is True
    # polygons only inside the area
    import pyogrio

    info = pyogrio.read_info(tmp_path / "out" / "scene.gpkg", layer="classes")
    xmin, ymin, xmax, ymax = info["total_bounds"]
    assert xmin >= 500500 and xmax <= 502010 and ymin >= 5497500 and ymax <= 5499500


def test_bbox_and_whole_scene_output(tmp_path, scene, small_unet, full_run) -> None:
    m = run(scene, tmp_path / "crop", small_unet, tile_size=64, bbox="500105,5498003,500995,5498998,EPSG:32633")
    assert m["aoi"]["window"] == [100, 10, 100, 90]  # outward to whole pixels
    crop = read(tmp_path / "crop" / "scene.classes.tif")[0]
    # pixels whose centres lie in the box: cols 11..99 -> 1..89 of the window, rows 100..199
    assert (crop[:, 0] == 255).all() and (crop[:, 1:] != 255).all()
    assert np.array_equal(crop[:, 1:], full_run[100:200, 11:100])
    run(scene, tmp_path / "whole", small_unet, tile_size=64, bbox="500105,5498003,500995,5498998,EPSG:32633", aoi_crop=False)
    whole = read(tmp_path / "whole" / "scene.classes.tif")[0]
    assert whole.shape == full_run.shape
    assert np.array_equal(whole[100:200, 10:100], crop)
    outside = np.ones(whole.shape, bool)
    outside[100:200, 11:100] = False
    assert (whole[outside] == 255).all()


def test_bbox_in_lon_lat_by_default(tmp_path, scene, small_unet) -> None:
    from pyproj import Transformer

    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    (x0, x1), (y0, y1) = to_ll.transform([500600, 501400], [5498400, 5499200])
    m = run(scene, tmp_path / "ll", small_unet, tile_size=64, bbox=f"{min(x0, x1)},{min(y0, y1)},{max(x0, x1)},{max(y0, y1)}")
    assert m["aoi"]["bbox_crs"] == "EPSG:4326"
    r0, c0, h, w = m["aoi"]["window"]
    assert abs(r0 - 80) <= 1 and abs(c0 - 60) <= 1 and abs(h - 80) <= 2 and abs(w - 80) <= 2


def test_aoi_with_resampling(tmp_path, small_unet) -> None:
    """A 5 m scene through a 10 m model, restricted to a polygon: inside, the same classes as
    the resampled whole-scene run."""
    from geoseg.models import build_unet
    from geoseg.synthetic import synthesize

    scene = synthesize(tmp_path / "s5.tif", (300, 280), seed=2, pixel_size=5.0).path
    model = tmp_path / "m10.safetensors"
    build_unet(("blue", "green", "red", "nir"), 3, base_width=4, depth=3, seed=0, gsd=10.0,
               normalization={"mean": [1000.0] * 4, "std": [800.0] * 4}).save(model)
    run(scene, tmp_path / "full", model, tile_size=64)
    full = read(tmp_path / "full" / "s5.classes.tif")[0]
    poly = shapely.Polygon([(500200, 5499800), (501100, 5499600), (500600, 5498700)])
    gpkg = write_polygons(tmp_path / "a.gpkg", to_crs([poly], UTM, "EPSG:3857"), "EPSG:3857", driver="GPKG")
    m = run(scene, tmp_path / "aoi", model, tile_size=64, aoi=f"{gpkg}:a")
    assert m["gsd"]["ratio"] == [2.0, 2.0]
    r0, c0, h, w = m["aoi"]["window"]
    classes = read(tmp_path / "aoi" / "s5.classes.tif")[0]
    inside = classes != 255
    assert inside.sum() > 0.4 * h * w
    assert np.array_equal(classes[inside], full[r0:r0 + h, c0:c0 + w][inside])


def test_aoi_errors(tmp_path, scene, small_unet) -> None:
    from geoseg.errors import InputError

    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(0, 0, 1, 1)], "EPSG:4326", driver="GPKG")
    with pytest.raises(InputError, match="does not overlap"):
        run(scene, tmp_path / "x", small_unet, aoi=str(far))
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    with pytest.raises(InputError, match="layers: far"):
        run(scene, tmp_path / "x", small_unet, aoi=f"{far}:nope")
    with pytest.raises(InputError, match="MINX < MAXX"):
        run(scene, tmp_path / "x", small_unet, bbox="3,2,1,4")
    with pytest.raises(InputError, match="not both"):
        run(scene, tmp_path / "x", small_unet, bbox="1,2,3,4", aoi=str(far))


@pytest.mark.slow
def test_cli_aoi_outside_the_scene_and_bbox(tmp_path, scene, small_unet) -> None:
    """The command line: an AOI outside the scene is a one-line error with no outputs; a
    bbox run writes the cropped outputs and records the area in the manifest."""
    far = write_polygons(tmp_path / "far.geojson", [shapely.box(-60, -10, -59, -9)], "EPSG:4326")
    proc = geoseg_cli("run", scene, "-o", tmp_path / "bad", "-m", small_unet, "--aoi", far)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: ") and "does not overlap" in lines[0], proc.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    proc = geoseg_cli("run", scene, "-o", tmp_path / "ok", "-m", small_unet, "--bbox", "500000,5498000,501000,5499000,EPSG:32633",
                      "--no-vectorize", "-q", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["aoi"]["window"] == [100, 0, 100, 100]
    assert manifest["options"]["bbox"] == "500000,5498000,501000,5499000,EPSG:32633"
    with rasterio.open(tmp_path / "ok" / "scene.classes.tif") as out:
        assert out.shape == (100, 100) and out.transform.c == 500000 and out.transform.f == 5499000


def test_catalog_scenes_take_aoi_and_bbox(tmp_path, scene, small_unet) -> None:
    import shutil

    shutil.copy(scene, tmp_path / "a.tif")
    shutil.copy(scene, tmp_path / "b.tif")
    (tmp_path / "areas").mkdir()
    write_polygons(tmp_path / "areas" / "field.gpkg", to_crs([TRIANGLE], UTM, "EPSG:4326"), "EPSG:4326", driver="GPKG")
    (tmp_path / "catalog.yaml").write_text(
        f"defaults:\n  model: {small_unet}\n  tile_size: 64\n  vectorize: false\n  out: out/{{id}}\n"
        "scenes:\n"
        "  - path: a.tif\n    aoi: areas/field.gpkg\n"
        "  - path: b.tif\n    bbox: [500000, 5498000, 501000, 5499000, 'EPSG:32633']\n"
    )
    report = geoseg.run_batch(tmp_path / "catalog.yaml", quiet=True)
    assert [s.status for s in report.scenes] == ["done", "done"], report
    with rasterio.open(tmp_path / "out" / "a" / "a.classes.tif") as ds:
        assert ds.shape == (200, 151)
    with rasterio.open(tmp_path / "out" / "b" / "b.classes.tif") as ds:
        assert ds.shape == (100, 100)
    again = geoseg.run_batch(tmp_path / "catalog.yaml", quiet=True)
    assert [s.status for s in again.scenes] == ["skipped", "skipped"], again


def test_grid_tiles_within_a_window_and_window_arithmetic() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from geoseg.grid import PixelWindow, TileGrid

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 90), st.integers(0, 299), st.integers(0, 299),
           st.integers(1, 120), st.integers(1, 120))
    def check(h, w, t, r, c, wh, ww):
        grid = TileGrid(h, w, t, halo=8, factor=8)
        win = PixelWindow(min(r, h - 1), min(c, w - 1), wh, ww)
        tiles = grid.tiles_within(win)
        cover = np.zeros((h, w), int)
        for tile in tiles:
            cover[tile.core.slices] += 1
            assert tile.core.row % 8 == 0 and tile.core.col % 8 == 0 and tile.read.row % 8 == 0 and tile.read.col % 8 == 0
            assert tile.core.height <= grid.tile_size and tile.core.width <= grid.tile_size
            assert tile.read == grid._tile(0, tile.core.row, tile.core.col, tile.core.row_end, tile.core.col_end).read
        assert (cover <= 1).all() and (cover[win.slices] == 1).all()  # the window, each pixel once
        rows, cols = np.nonzero(cover)
        assert rows.min() > win.row - 8 and cols.min() > win.col - 8
        assert rows.max() < win.row_end + 8 and cols.max() < win.col_end + 8  # and little more

    check()
    a, b = PixelWindow(2, 3, 10, 10), PixelWindow(8, 1, 10, 3)
    assert a.intersection(b) == PixelWindow(8, 3, 4, 1)
    assert a.union(b) == PixelWindow(2, 1, 16, 12)
    assert a.intersection(PixelWindow(12, 0, 5, 5)) is None
    assert a.shift(-2, -3) == PixelWindow(0, 0, 10, 10)


def test_scene_view_pickles_for_cluster_workers(tmp_path) -> None:
    """Tiles on a Dask cluster carry the view: it pickles with its area and model grid."""
    import pickle

    from affine import Affine
    from pyproj import CRS

    from geoseg.grid import GeoBox, TileGrid
    from geoseg.scene.view import plan_view

    scene = GeoBox(300, 280, Affine(5, 0, 500000, 0, -5, 5500000), CRS.from_epsg(32633).to_wkt())
    view = plan_view(scene, 10.0, bbox="500200,5499000,500900,5499700,EPSG:32633")
    again = pickle.loads(pickle.dumps(view))
    assert again.warp == view.warp and again.window == view.window and again.area.geometry.equals(view.area.geometry)
    grid = TileGrid(view.tile_geobox.height, view.tile_geobox.width, 32, halo=8, factor=8)
    assert [t.core for t in again.select(grid)] == [t.core for t in view.select(grid)]
    assert view.output.shape == (140, 140) and view.describe()["aoi"]["window"] == [60, 40, 140, 140]
