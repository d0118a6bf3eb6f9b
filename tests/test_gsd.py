"""Scenes at another ground sample distance than the model's: read through the model grid,
products written back onto the scene's grid (or left on the model grid)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import read, write_raster
from pyproj import CRS

import geoseg
from geoseg.grid import GeoBox, PixelWindow
from geoseg.io.warp import axis_taps, ground_gsd, plan_warp, resample, source_window, to_output

UTM33 = CRS.from_epsg(32633).to_wkt()


def geoseg_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, timeout=600)


def run(scene, out, model="default", **kw) -> dict:
    return geoseg.run_scene(scene, out, model=model, quiet=True, overwrite=True, vectorize=kw.pop("vectorize", False), **kw)


# --------------------------------------------------------------------------- ground sample distance


def test_ground_gsd_projected_geographic_and_web_mercator() -> None:
    utm = GeoBox(100, 100, Affine(10, 0, 500000, 0, -10, 5500000), UTM33)
    gx, gy = ground_gsd(utm)
    assert gx == pytest.approx(10 / 0.9996, rel=1e-4) and gy == pytest.approx(gx, rel=1e-4)  # on the central meridian
    # Web Mercator at 60N: scale 1/cos(60) = 2, a nominal 0.2 m pixel covers 0.1 m
    y60 = 8399737.89  # northing of 60N
    merc = GeoBox(100, 100, Affine(0.2, 0, 1e6, 0, -0.2, y60 + 10), CRS.from_epsg(3857).to_wkt())
    assert ground_gsd(merc) == pytest.approx((0.1, 0.1), rel=1e-3)
    # geographic: metres along the parallel shrink with cos(lat)
    geo = GeoBox(100, 100, Affine(1e-4, 0, 12, 0, -1e-4, 45.005), CRS.from_epsg(4326).to_wkt())
    gx, gy = ground_gsd(geo)
    assert gx == pytest.approx(7.88, rel=1e-2) and gy == pytest.approx(11.11, rel=1e-2)


def test_plan_warp_tolerance_snapping_and_scale_free() -> None:
    gb = GeoBox(101, 99, Affine(5, 0, 500000, 0, -5, 5500000), UTM33)
    assert plan_warp(gb, None) is None  # scale-free model
    assert plan_warp(gb, 5.1) is None  # within 5%
    p = plan_warp(gb, 10.0)
    assert p.ratio == (2.0, 2.0)  # 10 / 5.002 snapped to 2
    assert (p.model.height, p.model.width) == (51, 50)
    assert p.model.transform == Affine(10, 0, 500000, 0, -10, 5500000)
    up = plan_warp(gb, 2.5)
    assert up.ratio == (0.5, 0.5) and up.input_resampling == "bilinear"
    odd = plan_warp(gb, 12.5)
    assert 2.49 < odd.ratio[0] < 2.5  # not snapped


@pytest.mark.parametrize("gsd", [10.0, 12.5, 16.5, 2.5, 3.7])
def test_resampled_windows_do_not_depend_on_the_window(gsd) -> None:
    """Every model-grid pixel is the same float whatever window it is computed in."""
    rng = np.random.default_rng(1)
    gb = GeoBox(203, 187, Affine(5, 0, 500000, 0, -5, 5500000), UTM33)
    data = rng.uniform(0, 10000, (3, gb.height, gb.width)).astype(np.float32)
    valid = rng.uniform(size=gb.shape) > 0.1
    plan = plan_warp(gb, gsd)

    def window(w: PixelWindow):
        s = source_window(plan, w)
        return resample(data[(slice(None), *s.slices)], valid[s.slices], s, plan, w)

    whole, ok = window(plan.model.window)
    for w in (PixelWindow(3, 5, 17, 29), PixelWindow(0, 0, 1, 1), PixelWindow(plan.model.height - 7, plan.model.width - 4, 7, 4)):
        part, pok = window(w)
        assert np.array_equal(part, whole[(slice(None), *w.slices)])
        assert np.array_equal(pok, ok[w.slices])


def test_area_average_of_an_integer_ratio_is_the_block_mean() -> None:
    rng = np.random.default_rng(2)
    gb = GeoBox(40, 60, Affine(5, 0, 500000, 0, -5, 5500000), UTM33)
    data = rng.integers(0, 10000, (4, 40, 60)).astype(np.float32)
    plan = plan_warp(gb, 10.0)
    out, ok = resample(data, np.ones(gb.shape, bool), gb.window, plan, plan.model.window)
    assert ok.all() and np.array_equal(out, data.reshape(4, 20, 2, 30, 2).mean(axis=(2, 4)))
    # invalid pixels carry no weight; a model pixel with no valid pixel is invalid
    valid = np.ones(gb.shape, bool)
    valid[0, 0] = False
    valid[2:4, 2:4] = False
    out, ok = resample(data, valid, gb.window, plan, plan.model.window)
    assert out[0, 0, 0] == pytest.approx(data[0, :2, :2].ravel()[1:].mean())
    assert not ok[1, 1] and ok.sum() == 20 * 30 - 1
    idx, w = axis_taps(0, 3, 2.0, 5)  # the last model pixel of 5 scene pixels covers one
    assert w[2].tolist() == [1.0, 0.0, 0.0] and idx[2, 0] == 4


@pytest.mark.parametrize("ratio_gsd", [10.0, 16.5, 3.7])
def test_products_go_back_to_every_scene_pixel_exactly_once(ratio_gsd) -> None:
    gb = GeoBox(203, 187, Affine(5, 0, 500000, 0, -5, 5500000), UTM33)
    plan = plan_warp(gb, ratio_gsd)
    hits = np.zeros(gb.shape, int)
    ids = np.arange(plan.model.height * plan.model.width).reshape(plan.model.shape)
    back = np.full(gb.shape, -1)
    t = 16
    for r in range(0, plan.model.height, t):
        for c in range(0, plan.model.width, t):
            core = PixelWindow(r, c, min(t, plan.model.height - r), min(t, plan.model.width - c))
            win, (vals,) = to_output(plan, core, [ids[core.slices]])
            hits[win.slices] += 1
            back[win.slices] = vals
    assert (hits == 1).all()
    # each scene pixel took the model pixel that contains its centre
    rows = np.floor((np.arange(gb.height) + 0.5) / plan.ratio[1]).astype(int)
    cols = np.floor((np.arange(gb.width) + 0.5) / plan.ratio[0]).astype(int)
    assert np.array_equal(back, ids[rows[:, None], cols[None, :]])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def scenes_5m_10m(tmp_path_factory) -> tuple[Path, Path]:
    """A 5 m synthetic scene and the same ground averaged to 10 m (2x2 block means, float32)."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("gsd")
    info = synthesize(d / "s5.tif", (400, 336), seed=5, pixel_size=5.0)
    data = read(info.path).astype(np.float32)
    avg = data.reshape(4, 200, 2, 168, 2).mean(axis=(2, 4))
    s10 = write_raster(d / "s10.tif", avg, transform=Affine(10, 0, 500000, 0, -10, 5500000),
                       descriptions=("blue", "green", "red", "nir"))
    return Path(info.path), s10


def test_5m_scene_through_10m_model_matches_the_averaged_scene(tmp_path, scenes_5m_10m) -> None:
    """Classes on the 5 m grid agree with nearest-upsampling the classes of the same scene
    averaged to 10 m first (the model sees the same 10 m pixels either way)."""
    s5, s10 = scenes_5m_10m
    manifest = run(s5, tmp_path / "o5", tile_size=64)
    run(s10, tmp_path / "o10", tile_size=64)
    with rasterio.open(tmp_path / "o5" / "s5.classes.tif") as out, rasterio.open(s5) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        c5 = out.read(1)
    c10 = read(tmp_path / "o10" / "s10.classes.tif")[0]
    up = np.repeat(np.repeat(c10, 2, axis=0), 2, axis=1)
    assert (c5 == up).mean() >= 0.99
    conf5 = read(tmp_path / "o5" / "s5.confidence.tif")[0]
    conf10 = read(tmp_path / "o10" / "s10.confidence.tif")[0]
    assert (conf5 == np.repeat(np.repeat(conf10, 2, axis=0), 2, axis=1)).mean() >= 0.99  # nearest, like the classes
    g = manifest["gsd"]
    assert g["model_gsd_m"] == 10.0 and g["ratio"] == [2.0, 2.0] and g["input_resampling"] == "average"
    assert g["scene_gsd_m"][0] == pytest.approx(5.002, abs=1e-3)
    assert g["model_grid"]["width"] == 168 and g["model_grid"]["height"] == 200
    assert manifest["model"]["gsd"] == 10.0 and manifest["output_grid"]["grid"] == "input"
    assert manifest["execution"]["tiles"] == 4 * 3  # tiles of the 200x168 model grid, not of the scene


@pytest.mark.parametrize("pixel_size", [5.0, 4.0])
def test_tile_size_invariance_with_resampling(tmp_path, pixel_size) -> None:
    """--tile-size 256 and 2048 give the same products (integer and non-integer ratios)."""
    from geoseg.synthetic import synthesize

    scene = synthesize(tmp_path / "s.tif", (700, 610), seed=11, pixel_size=pixel_size).path
    small = run(scene, tmp_path / "a", tile_size=256)
    run(scene, tmp_path / "b", tile_size=2048)
    assert small["execution"]["tiles"] > 1
    for kind in ("classes", "confidence", "mask"):
        a, b = read(tmp_path / "a" / f"s.{kind}.tif"), read(tmp_path / "b" / f"s.{kind}.tif")
        assert (a == b).mean() >= 0.9999, kind


def test_geographic_scene_is_resampled_in_metres(tmp_path) -> None:
    """A lon/lat scene at 45N with 5e-5 degree pixels (3.9 m x 5.6 m on the ground) is read
    on a model grid of ~10 m pixels, and the products come back on its own grid."""
    from geoseg.synthetic import synthesize

    scene = synthesize(tmp_path / "geo.tif", (240, 256), seed=4, crs="EPSG:4326", pixel_size=5e-5, origin=(12.0, 45.0)).path
    m = run(scene, tmp_path / "out", tile_size=64, vectorize=True)
    g = m["gsd"]
    assert g["scene_gsd_m"][0] == pytest.approx(3.94, rel=0.01) and g["scene_gsd_m"][1] == pytest.approx(5.56, rel=0.01)
    rx, ry = g["ratio"]
    assert rx == pytest.approx(10 / 3.94, rel=0.01) and ry == pytest.approx(10 / 5.56, rel=0.01)
    with rasterio.open(tmp_path / "out" / "geo.classes.tif") as out, rasterio.open(scene) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        classes = out.read(1)
    assert (classes != 255).all()
    # tile-size invariance holds on the geographic model grid too
    run(scene, tmp_path / "big", tile_size=2048)
    assert np.array_equal(classes, read(tmp_path / "big" / "geo.classes.tif")[0])
    assert (tmp_path / "out" / "geo.gpkg").exists()


@pytest.mark.slow
def test_output_grid_model_cli(tmp_path, scenes_5m_10m) -> None:
    s5, s10 = scenes_5m_10m
    proc = geoseg_cli("run", s5, "-o", tmp_path / "m", "--output-grid", "model", "--no-vectorize", "-q", "--tile-size", "64")
    assert proc.returncode == 0, proc.stderr
    run(s10, tmp_path / "o10", tile_size=64)
    with rasterio.open(tmp_path / "m" / "s5.classes.tif") as out, rasterio.open(s10) as ref:
        assert out.crs == ref.crs and out.transform == ref.transform and out.shape == ref.shape
        classes = out.read(1)
    assert (classes == read(tmp_path / "o10" / "s10.classes.tif")[0]).mean() >= 0.999
    manifest = json.loads((tmp_path / "m" / "s5.run.json").read_text())
    assert manifest["output_grid"]["grid"] == "model" and manifest["output_grid"]["width"] == 168
    assert manifest["options"]["output_grid"] == "model"


def test_web_mercator_nominal_pixels_are_not_ground_pixels(tmp_path) -> None:
    """At 60N a nominal 20 m Web Mercator pixel covers 10 m: read as it is by a 10 m model;
    a nominal 10 m pixel covers 5 m: resampled."""
    from geoseg.synthetic import synthesize

    y60 = 8399737.89
    s20 = synthesize(tmp_path / "m20.tif", (96, 96), seed=1, crs="EPSG:3857", pixel_size=20.0, origin=(1e6, y60 + 960)).path
    s10 = synthesize(tmp_path / "m10.tif", (96, 96), seed=1, crs="EPSG:3857", pixel_size=10.0, origin=(1e6, y60 + 480)).path
    assert "gsd" not in run(s20, tmp_path / "a", tile_size=64)
    g = run(s10, tmp_path / "b", tile_size=64)["gsd"]
    assert g["ratio"] == [2.0, 2.0] and g["scene_gsd_m"][0] == pytest.approx(5.0, rel=1e-3)


def test_bundles_record_gsd(tmp_path, synth_scene) -> None:
    from geoseg.models import build_unet, load_model

    assert load_model("default").gsd == 10.0
    assert load_model("spectral").gsd is None
    b = build_unet(4, 3, base_width=4, depth=2, seed=0, gsd=5.0)
    b.save(tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").gsd == 5.0
    # a scale-free (gsd None) model reads a 10 m scene as it is; a 5 m model resamples it
    scene, _ = synth_scene
    free = build_unet(4, 3, base_width=4, depth=2, seed=0)
    free.save(tmp_path / "free.safetensors")
    assert "gsd" not in run(scene, tmp_path / "free", tmp_path / "free.safetensors", tile_size=128)
    m = run(scene, tmp_path / "five", tmp_path / "m.safetensors", tile_size=128)
    assert m["gsd"]["ratio"] == [0.5, 0.5] and m["gsd"]["input_resampling"] == "bilinear"
    with rasterio.open(tmp_path / "five" / "scene.classes.tif") as out, rasterio.open(scene) as src:
        assert out.transform == src.transform and out.shape == src.shape


def test_training_gsd_from_the_images(tmp_path) -> None:
    from geoseg.io.warp import training_gsd
    from geoseg.synthetic import synthesize

    a = synthesize(tmp_path / "a.tif", 32, seed=1, pixel_size=5.0).path
    b = synthesize(tmp_path / "b.tif", 32, seed=1, crs="EPSG:4326", pixel_size=1e-4, origin=(12.0, 45.0)).path
    assert training_gsd([a]) == 5.0  # 5.002 m of ground, rounded to 3 digits
    assert training_gsd([b]) == pytest.approx((7.88 * 11.11) ** 0.5, rel=0.01)
    plain = write_raster(tmp_path / "plain.tif", np.zeros((1, 8, 8), np.uint8), crs=None, transform=None)
    assert training_gsd([a, plain]) is None
