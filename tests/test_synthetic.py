"""Tests for geoseg.synthetic (synthetic scenes) and geoseg.classes."""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.classes import LABEL_NODATA, LANDCOVER_CLASSES, ClassInfo, hex_to_rgb
from geoseg.errors import InputError, OutputError
from geoseg.synthetic import SceneInfo, band_names, render_window, synthesize

WATER, FOREST, CROPLAND, BARE_SOIL, BUILDING, ROAD = range(6)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scene_1024() -> tuple[np.ndarray, np.ndarray]:
    return render_window(0, 0, 1024, 1024, seed=0, bands=4)


# ----------------------------------------------------------------------------- classes
def test_class_scheme() -> None:
    assert [(c.id, c.name) for c in LANDCOVER_CLASSES] == [
        (0, "water"), (1, "forest"), (2, "cropland"), (3, "bare_soil"), (4, "building"),
        (5, "road"),
    ]
    assert hex_to_rgb("#1f78b4") == (31, 120, 180)
    assert LANDCOVER_CLASSES[0].rgb == (31, 120, 180)
    with pytest.raises(InputError, match="nothex"):
        hex_to_rgb("nothex")
    with pytest.raises(InputError):
        ClassInfo(255, "x", "#000000")


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        img, lab = tmp_path / f"{name}.tif", tmp_path / f"{name}_labels.tif"
        synthesize(img, (300, 517), seed=seed, labels_path=lab, nodata_border=True)
        paths.append((sha256(img), sha256(lab)))
    assert paths[0] == paths[1]
    assert paths[0][0] != paths[2][0] and paths[0][1] != paths[2][1]
    # only the final files remain (temporary files are renamed or removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{s}.tif" for n in "abc" for s in ("", "_labels")
    )


@pytest.mark.parametrize("border", [False, True])
def test_window_independence(border: bool) -> None:
    shape = (1200, 1100)
    kw = dict(seed=11, bands=6, scene_shape=shape, nodata_border=border)
    r0, c0 = 37, 0
    big_img, big_lab = render_window(r0, c0, 700, 1100, **kw)  # spans several chunks
    if border:
        assert (big_lab == LABEL_NODATA).any()
    for r, c, h, w in [(37, 0, 1, 1), (101, 513, 333, 517), (500, 3, 237, 1097), (736, 1099, 1, 1)]:
        img, lab = render_window(r, c, h, w, **kw)
        np.testing.assert_array_equal(img, big_img[:, r - r0:r - r0 + h, c - c0:c - c0 + w])
        np.testing.assert_array_equal(lab, big_lab[r - r0:r - r0 + h, c - c0:c - c0 + w])


def test_written_file_matches_render_window(tmp_path: Path) -> None:
    info = synthesize(tmp_path / "s.tif", (600, 700), seed=2, labels_path=tmp_path / "l.tif",
                      block=256)
    img, lab = render_window(0, 0, 600, 700, seed=2, bands=4)
    with rasterio.open(info.path) as src:
        np.testing.assert_array_equal(src.read(), img)
    with rasterio.open(info.labels_path) as src:
        np.testing.assert_array_equal(src.read(1), lab)


# ----------------------------------------------------------------------------- content
def test_all_classes_present(scene_1024: tuple[np.ndarray, np.ndarray]) -> None:
    _, lab = scene_1024
    fractions = np.bincount(lab.ravel(), minlength=256) / lab.size
    assert fractions[6:].sum() == 0
    for c in LANDCOVER_CLASSES:
        assert fractions[c.id] >= 0.005, (c.name, fractions[:6])
    assert fractions[:6].max() < 0.7


def test_spectral_sanity(scene_1024: tuple[np.ndarray, np.ndarray]) -> None:
    img, lab = scene_1024
    blue, green, red, nir = (img[b].astype(np.float64) for b in range(4))

    def mean(band: np.ndarray, cls: int) -> float:
        return float(band[lab == cls].mean())

    assert mean(nir, FOREST) > 2500 and mean(red, FOREST) < 500
    assert mean(nir, FOREST) > 5 * mean(red, FOREST)
    assert mean(nir, WATER) < mean(green, WATER)
    assert (nir[lab == WATER] < green[lab == WATER] + 200).mean() > 0.95
    assert mean(red, BARE_SOIL) > mean(green, BARE_SOIL)
    assert 900 < mean(red, ROAD) < 1700
    assert mean(blue, BUILDING) > mean(blue, FOREST) + 500
    assert img.min() >= 1 and img.max() <= 10000
    # not trivially separable by one band: cropland and bare soil overlap in red
    crop_red, bare_red = red[lab == CROPLAND], red[lab == BARE_SOIL]
    assert np.quantile(crop_red, 0.95) > np.quantile(bare_red, 0.05)


# ----------------------------------------------------------------------------- files
def test_nodata_border(tmp_path: Path) -> None:
    info = synthesize(tmp_path / "s.tif", 512, seed=1, labels_path=tmp_path / "l.tif",
                      nodata_border=True)
    assert info.nodata == 0
    with rasterio.open(info.path) as src:
        assert src.nodata == 0
        img = src.read()
    with rasterio.open(info.labels_path) as src:
        assert src.nodata == LABEL_NODATA
        lab = src.read(1)
    border = lab == LABEL_NODATA
    assert 0.01 < border.mean() < 0.4
    assert (img[:, border] == 0).all()
    assert (img[:, ~border] > 0).all()
    # irregular: the border's extent varies along the edge
    rows_any, cols_any = border.any(axis=1), border.any(axis=0)
    assert rows_any.any() or cols_any.any()
    extents = np.concatenate([border.sum(axis=1)[border.sum(axis=1) > 0],
                              border.sum(axis=0)[border.sum(axis=0) > 0]])
    assert extents.std() > 0


def test_file_metadata(tmp_path: Path) -> None:
    info = synthesize(tmp_path / "s.tif", 64, bands=4, labels_path=tmp_path / "l.tif")
    assert isinstance(info, SceneInfo)
    assert (info.width, info.height, info.count, info.seed) == (64, 64, 4, 0)
    with rasterio.open(info.path) as src:
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert src.dtypes == ("uint16",) * 4
        assert src.nodata is None
        assert src.profile["tiled"] and src.profile["blockxsize"] == 512
        assert src.compression.name.lower() in ("zstd", "deflate")
        assert json.loads(src.tags()["GEOSEG_SYNTHETIC"])["seed"] == 0
        assert json.loads(src.tags(ns="geoseg")["synthetic"])["bands"] == 4
    with rasterio.open(info.labels_path) as src:
        assert src.dtypes == ("uint8",)
        tags = src.tags()
        classes = json.loads(tags["GEOSEG_CLASSES"])
        assert classes == [c.to_dict() for c in LANDCOVER_CLASSES]
        assert json.loads(src.tags(ns="geoseg")["classes"]) == classes
        assert json.loads(tags["CLASS_NAMES"])[4] == "building"
        cmap = src.colormap(1)
        assert cmap[0][:3] == hex_to_rgb(LANDCOVER_CLASSES[0].color)
    assert not list(tmp_path.glob("*.aux.xml"))


@pytest.mark.parametrize("bands", [1, 3, 7, 12])
def test_band_counts(tmp_path: Path, bands: int) -> None:
    info = synthesize(tmp_path / "s.tif", 40, bands=bands)
    with rasterio.open(info.path) as src:
        assert src.count == bands
        assert src.descriptions == band_names(bands)
        data = src.read()
    assert len(set(band_names(bands))) == bands
    assert band_names(3) == ("blue", "green", "red")
    assert band_names(7)[4:] == ("swir1", "swir2", "red_edge1")
    assert (data > 0).all()


def test_crs_and_transform(tmp_path: Path) -> None:
    info = synthesize(tmp_path / "geo.tif", (30, 20), crs="EPSG:4326")
    assert info.crs == "EPSG:4326"
    with rasterio.open(info.path) as src:
        assert src.crs.to_epsg() == 4326
        assert src.transform.almost_equals(rasterio.Affine(1e-4, 0, 12.0, 0, -1e-4, 45.0))
        assert (src.height, src.width) == (30, 20)
    info = synthesize(tmp_path / "utm.tif", 16, crs="EPSG:32632", pixel_size=5.0,
                      origin=(400000.0, 5000000.0))
    with rasterio.open(info.path) as src:
        assert src.crs.to_epsg() == 32632
        assert src.transform == rasterio.Affine(5.0, 0, 400000.0, 0, -5.0, 5000000.0)
    info = synthesize(tmp_path / "default.tif", 16)
    assert info.crs == "EPSG:32633"
    assert info.transform == rasterio.Affine(10.0, 0, 500000.0, 0, -10.0, 5500000.0)


@pytest.mark.parametrize("size", [(300, 517), (1, 1), (1, 700), (513, 1)])
def test_odd_sizes(tmp_path: Path, size: tuple[int, int]) -> None:
    info = synthesize(tmp_path / "s.tif", size, labels_path=tmp_path / "l.tif",
                      nodata_border=True)
    assert (info.height, info.width) == size
    with rasterio.open(info.path) as src, rasterio.open(info.labels_path) as lsrc:
        assert (src.height, src.width) == size
        img, lab = src.read(), lsrc.read(1)
    ref_img, ref_lab = render_window(0, 0, *size, seed=0, bands=4, scene_shape=size,
                                     nodata_border=True)
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": 0}, "bands"),
        ({"size": 0}, "size"),
        ({"size": (10, 0)}, "size"),
        ({"size": (10,)}, "size"),
        ({"size": 2.5}, "size"),
        ({"crs": "EPSG:999999"}, "EPSG:999999"),
        ({"crs": "not a crs"}, "not a crs"),
        ({"block": 100}, "block"),
        ({"pixel_size": -1.0}, "pixel_size"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"size": 16, **kwargs}
    size = args.pop("size")
    with pytest.raises(InputError, match=match):
        synthesize(tmp_path / "s.tif", size, **args)
    assert not list(tmp_path.iterdir())


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        synthesize(tmp_path / "missing" / "s.tif", 16)
    with pytest.raises(InputError, match="labels_path"):
        synthesize(tmp_path / "s.tif", 16, labels_path=tmp_path / "s.tif")
    with pytest.raises(InputError):
        render_window(0, 0, 0, 5)
    with pytest.raises(InputError, match="scene_shape"):
        render_window(0, 0, 5, 5, nodata_border=True)


# ----------------------------------------------------------------------------- scale
@pytest.mark.slow
def test_bounded_memory_large_scene(tmp_path: Path) -> None:
    """A large scene is written window by window: peak Python memory stays small."""
    size = int(os.environ.get("GEOSEG_TEST_LARGE_SIZE", "8000"))
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        info = synthesize(tmp_path / "big.tif", size, seed=5, labels_path=tmp_path / "big_l.tif")
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_image_bytes = size * size * 4 * 2
    assert peak < 200e6, peak
    assert peak < full_image_bytes / 5
    assert info.width == size and (tmp_path / "big.tif").stat().st_size > 0
    with rasterio.open(info.path) as src:
        corner = src.read(window=((size - 7, size), (size - 9, size)))
    ref, _ = render_window(size - 7, size - 9, 7, 9, seed=5)
    np.testing.assert_array_equal(corner, ref)
    print(f"{size}x{size}: {elapsed:.1f} s, {size * size / elapsed / 1e6:.1f} Mpx/s, "
          f"peak {peak / 1e6:.0f} MB")
