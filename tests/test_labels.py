"""Labels onto an image grid: class rasters on other grids and CRSs, polygons, nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import REAL_DATA, UTM16, to_crs, write_polygons, write_raster

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.grid import PixelWindow
from geoseg.io.labels import (
    LabelOptions,
    geobox_of,
    inspect_labels,
    label_class_names,
    label_kind,
    open_labels,
    read_labels,
)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


# --------------------------------------------------------------------------- rasters


def test_raster_on_other_crs_and_grid_is_reprojected(buildings_scene) -> None:
    geobox = geobox_of(buildings_scene["image"])
    labels = read_labels(buildings_scene["raster"], geobox)
    truth = buildings_scene["truth"]
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    # the class raster covers the image from row 20 down (its top edge is slanted by the
    # ~1.4 degree grid convergence between web mercator and UTM): above it, unlabelled
    assert np.all(labels[:14] == IGNORE) and np.all(labels[20:] != IGNORE)
    assert 0 < np.count_nonzero(labels[14:20] == IGNORE) < 6 * 192
    # nearest-neighbour resampling from 0.3 m web mercator: only edge pixels may differ
    assert _agreement(labels[20:], truth[20:]) > 0.985
    assert set(np.unique(labels)) == {0, 1, IGNORE}


def test_raster_window_reads_match_the_whole(buildings_scene) -> None:
    geobox = geobox_of(buildings_scene["image"])
    source = open_labels(buildings_scene["raster"], geobox)
    whole = source.read()
    win = PixelWindow(50, 70, 60, 90)
    np.testing.assert_array_equal(source.read(win), whole[win.slices])


def test_same_grid_raster_is_read_as_is(tmp_path: Path) -> None:
    lab = np.arange(48, dtype=np.uint8).reshape(6, 8) % 5
    img = write_raster(tmp_path / "img.tif", np.ones((2, 6, 8), np.uint16))
    path = write_raster(tmp_path / "lab.tif", lab)
    np.testing.assert_array_equal(read_labels(path, geobox_of(img)), lab)


def test_label_nodata_equal_to_a_class(tmp_path: Path) -> None:
    """The aerial_buildings_label.tif pitfall: nodata=0 declared, but 0 is background."""
    lab = np.zeros((8, 8), np.uint8)
    lab[2:5, 2:5] = 1
    img = geobox_of(write_raster(tmp_path / "img.tif", np.ones((1, 8, 8), np.uint8)))
    path = write_raster(tmp_path / "lab.tif", lab, nodata=0)
    auto = read_labels(path, img)
    assert np.all(auto[lab == 0] == IGNORE) and np.all(auto[lab == 1] == 1)
    np.testing.assert_array_equal(read_labels(path, img, LabelOptions(nodata="none")), lab)
    explicit = read_labels(path, img, LabelOptions(nodata=1))
    assert np.all(explicit[lab == 1] == IGNORE) and np.all(explicit[lab == 0] == 0)
    assert inspect_labels(path).nodata == 0


def test_raster_values_must_be_class_ids(tmp_path: Path) -> None:
    img = geobox_of(write_raster(tmp_path / "img.tif", np.ones((1, 4, 4), np.uint8)))
    bad = write_raster(tmp_path / "bad.tif", np.full((4, 4), 300, np.int16))
    with pytest.raises(InputError, match=r"label values \[300\].*--label-nodata"):
        read_labels(bad, img)
    # declared as nodata, the same value is fine
    assert np.all(read_labels(bad, img, LabelOptions(nodata=300)) == IGNORE)
    frac = write_raster(tmp_path / "frac.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(InputError, match="not class ids"):
        read_labels(frac, img)


def test_binary_mask_targets(tmp_path: Path) -> None:
    img = geobox_of(write_raster(tmp_path / "img.tif", np.ones((1, 4, 4), np.uint8)))
    mask = np.array([[0, 1, 7, 200]] * 4, np.uint8)
    got = read_labels(write_raster(tmp_path / "m.tif", mask), img, binary=True)
    np.testing.assert_array_equal(got, [[0, 1, 1, 1]] * 4)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_rasters_that_cannot_be_placed(tmp_path: Path) -> None:
    img = geobox_of(write_raster(tmp_path / "img.tif", np.ones((1, 16, 16), np.uint8)))
    far = write_raster(tmp_path / "far.tif", np.zeros((16, 16), np.uint8),
                       transform=Affine(10.0, 0.0, 900000.0, 0.0, -10.0, 5500000.0))
    with pytest.raises(InputError, match="does not overlap"):
        read_labels(far, img)
    nocrs = write_raster(tmp_path / "nocrs.tif", np.zeros((8, 8), np.uint8), crs=None, transform=None)
    with pytest.raises(InputError, match="no CRS"):
        read_labels(nocrs, img)
    # without a CRS but with the image's shape: taken as on the image grid
    same = write_raster(tmp_path / "same.tif", np.full((16, 16), 3, np.uint8), crs=None, transform=None)
    assert np.all(read_labels(same, img) == 3)


# --------------------------------------------------------------------------- polygons


def test_polygons_in_another_crs_are_rasterised_on_the_image_grid(buildings_scene) -> None:
    geobox = geobox_of(buildings_scene["image"])
    truth = buildings_scene["truth"]
    # without a field: polygons are class 1 on background 0
    plain = read_labels(buildings_scene["vector"], geobox)
    assert _agreement(plain, truth) > 0.995
    # a numeric field: ids as they are; outside the polygons unlabelled unless a background is given
    coded = read_labels(buildings_scene["vector"], geobox, LabelOptions(field="code"))
    assert set(np.unique(coded)) == {1, IGNORE}
    assert _agreement(coded == IGNORE, truth == 0) > 0.995
    coded_bg = read_labels(buildings_scene["vector"], geobox, LabelOptions(field="code", background=0))
    assert _agreement(coded_bg, truth) > 0.995


def test_text_field_names_map_to_ids(buildings_scene) -> None:
    geobox = geobox_of(buildings_scene["image"])
    opts = LabelOptions(field="kind", background="ground")
    info = inspect_labels(buildings_scene["vector"], opts)
    assert info.kind == "vector" and info.values == ("building", "house")
    names = label_class_names([info], opts)
    assert names == ["building", "ground", "house"]  # sorted, background name included
    labels = read_labels(buildings_scene["vector"], geobox, opts, names)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert _agreement(labels == 1, buildings_scene["truth"] == 0) > 0.995
    # class names from the config decide the ids
    given = ["ground", "house", "building"]
    ids = read_labels(buildings_scene["vector"], geobox, opts, given)
    np.testing.assert_array_equal(ids == 0, labels == 1)
    np.testing.assert_array_equal(ids == 2, labels == 0)
    with pytest.raises(InputError, match=r"values \['house'\] that are not classes"):
        read_labels(buildings_scene["vector"], geobox, opts, ["ground", "building"])


def test_vector_errors(buildings_scene, tmp_path: Path) -> None:
    geobox = geobox_of(buildings_scene["image"])
    with pytest.raises(InputError, match=r"no field 'class'.*'kind'"):
        read_labels(buildings_scene["vector"], geobox, LabelOptions(field="class"))
    with pytest.raises(InputError, match="not a class"):
        read_labels(buildings_scene["vector"], geobox, LabelOptions(field="code", background="roof"), ["a", "b"])
    bad = write_polygons(tmp_path / "bad.gpkg", [shapely.box(733600, 3725100, 733610, 3725110)], UTM16,
                         {"code": np.array([300], np.int32)})
    with pytest.raises(InputError, match="not class ids"):
        read_labels(bad, geobox, LabelOptions(field="code"))
    assert label_kind(bad) == "vector" and label_kind(buildings_scene["raster"]) == "raster"
    with pytest.raises(InputError, match="must be 'auto', 'none' or a number"):
        LabelOptions(nodata="zero")


def test_polygons_cover_exactly_their_pixels(tmp_path: Path) -> None:
    """A square on pixel edges burns exactly its pixels, also through a CRS round trip."""
    img = write_raster(tmp_path / "img.tif", np.ones((1, 20, 20), np.uint8))
    geobox = geobox_of(img)
    t = geobox.transform
    x0, y0 = t * (5, 4)
    x1, y1 = t * (12, 9)
    square = shapely.box(x0, y1, x1, y0)
    path = write_polygons(tmp_path / "sq.gpkg", to_crs([square], "EPSG:32633", "EPSG:4326"), "EPSG:4326",
                          {"name": np.array(["roof"], dtype=object)})
    got = read_labels(path, geobox, LabelOptions(field="name", background="none"), ["roof"])
    want = np.full((20, 20), IGNORE, np.uint8)
    want[4:9, 5:12] = 0
    np.testing.assert_array_equal(got, want)


def test_class_names_from_raster_tags(tmp_path: Path, synth_scene) -> None:
    _, labels = synth_scene
    info = inspect_labels(labels)
    names = label_class_names([info], LabelOptions())
    assert names == ["water", "forest", "cropland", "bare_soil", "building", "road"]
    plain = inspect_labels(write_raster(tmp_path / "plain.tif", np.zeros((4, 4), np.uint8)))
    assert label_class_names([plain], LabelOptions()) is None  # only the pixels can tell
    assert label_class_names([plain], LabelOptions(), ["a", "b"]) == ["a", "b"]


# --------------------------------------------------------------------------- real data


@pytest.mark.real
@pytest.mark.skipif(not (REAL_DATA / "spacenet_atlanta_pan.tif").exists(), reason="real data not found")
def test_real_spacenet_polygons_match_the_provided_mask() -> None:
    geobox = geobox_of(REAL_DATA / "spacenet_atlanta_pan.tif")
    labels = read_labels(REAL_DATA / "spacenet_atlanta_buildings.geojson", geobox)
    with rasterio.open(REAL_DATA / "spacenet_atlanta_buildings_mask.tif") as src:
        mask = src.read(1)
    assert labels.sum() > 1000 and _agreement(labels, mask) > 0.99


@pytest.mark.real
@pytest.mark.skipif(not (REAL_DATA / "aerial_buildings_label.tif").exists(), reason="real data not found")
def test_real_aerial_label_nodata_is_background() -> None:
    path = REAL_DATA / "aerial_buildings_label.tif"
    geobox = geobox_of(REAL_DATA / "aerial_buildings_image.tif")
    auto = read_labels(path, geobox)
    assert set(np.unique(auto)) == {1, IGNORE}  # the declared nodata=0 hides the background
    fixed = read_labels(path, geobox, LabelOptions(nodata="none"))
    assert set(np.unique(fixed)) == {0, 1}
