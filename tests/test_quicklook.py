"""Quicklooks: PNGs of the class map and masks from the COGs' overviews, a legend strip, STAC thumbnails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

import geoseg
from geoseg.classes import hex_to_rgb
from geoseg.io.raster import file_sha256
from stac_schemas import stac_validator

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """The spectral model (3 classes, a ``water`` mask head) over a 1100x1300 scene with a
    nodata border: its COGs have two overview levels (550x650, 275x325)."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("quicklook")
    scene = synthesize(d / "big.tif", (1100, 1300), seed=5, nodata_border=True).path
    manifest = geoseg.run_scene(scene, d / "out", model="spectral", tile_size=512, quiet=True, stac=True, vectorize=False)
    return d / "out", manifest


def _png(path: Path, mode: str = "P") -> tuple[np.ndarray, dict]:
    """A PNG's pixels as RGBA (what a viewer shows) and its text chunks."""
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == mode  # quicklooks are paletted (one byte a pixel)
        im.load()
        return np.asarray(im.convert("RGBA")), dict(im.text)


def _palette(values: np.ndarray, colors: list[str]) -> np.ndarray:
    """What the quicklook should show for ``values``, computed here independently."""
    out = np.zeros((*values.shape, 4), np.uint8)
    for i, c in enumerate(colors):
        out[values == i] = (*hex_to_rgb(c), 255)
    return out


def test_quicklooks_are_the_class_maps_overview_in_its_colours(run) -> None:
    out, manifest = run
    colors = [c["color"] for c in manifest["classes"]]
    with rasterio.open(out / "big.classes.tif") as ds:
        assert ds.overviews(1) == [2, 4]  # so the quicklook comes from the overview, not the full raster
    with rasterio.open(out / "big.classes.tif", overview_level=0) as ov:
        level = ov.read(1)
    assert level.shape == (550, 650)
    rgba, text = _png(out / "big.classes.png")
    assert rgba.shape == (550, 650, 4)
    np.testing.assert_array_equal(rgba, _palette(level, colors))
    assert (level == 255).any() and (rgba[level == 255, 3] == 0).all()  # nodata transparent
    assert (rgba[level != 255, 3] == 255).all()
    assert "overview 0" in text["Description"]
    # the thumbnail: at most 256 px, only class colours and transparency
    thumb, _ = _png(out / "big.thumb.png")
    assert max(thumb.shape[:2]) == 256 and thumb.shape[:2] == (217, 256)
    allowed = {(*hex_to_rgb(c), 255) for c in colors} | {(0, 0, 0, 0)}
    assert {tuple(p) for p in thumb.reshape(-1, 4)} <= allowed
    # one quicklook per mask head: 1 red, 0 grey, nodata transparent
    with rasterio.open(out / "big.mask.tif", overview_level=0) as ov:
        water = ov.read(1)
    mask_png, _ = _png(out / "big.mask-water.png")
    np.testing.assert_array_equal(mask_png, _palette(water, ["#ebebeb", "#e31a1c"]))
    assert (water == 1).any() and (water == 0).any()
    for kind in ("classes.png", "thumb.png", "legend.png", "mask-water.png"):
        entry = manifest["outputs"][kind]
        assert entry["path"] == f"big.{kind}" and entry["sha256"] == file_sha256(out / entry["path"])
    assert manifest["timings_s"]["quicklooks"] >= 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_legend_strip_names_every_class_with_its_swatch(run) -> None:
    out, manifest = run
    rgba, text = _png(out / "big.legend.png", "RGBA")
    entries = json.loads(text["geoseg:legend"])
    assert [(e["value"], e["name"], e["color"]) for e in entries] == [
        (c["id"], c["name"], c["color"]) for c in manifest["classes"]]
    for e in entries:
        x0, y0, x1, y1 = e["swatch"]
        swatch = rgba[y0:y1, x0:x1]
        assert swatch.size and (swatch == (*hex_to_rgb(e["color"]), 255)).all(), e
        # the name is drawn right of its swatch: dark text pixels there
        label = rgba[y0:y1, x1 + 2 : x1 + 40, :3]
        assert (label.max(axis=-1) < 128).any(), e["name"]


def test_stac_item_lists_the_quicklooks_and_validates(run) -> None:
    out, _ = run
    item = json.loads((out / "big.stac.json").read_text())
    stac_validator()(item)
    assets = item["assets"]
    assert assets["thumbnail"]["href"] == "./big.thumb.png" and assets["thumbnail"]["roles"] == ["thumbnail"]
    assert assets["overview"]["href"] == "./big.classes.png" and set(assets["overview"]["roles"]) == {"overview", "visual"}
    assert assets["overview_water"]["href"] == "./big.mask-water.png"
    for key in ("thumbnail", "overview", "legend", "overview_water"):
        assert assets[key]["type"] == "image/png"
        assert assets[key]["file:checksum"] == "1220" + file_sha256(out / assets[key]["href"])
