"""The strip-wise component labelling equals whole-map labelling; polygons equal a
whole-map polygonize (GDAL, 4-connectivity), whatever the strip height."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio import features
from scipy import ndimage

from conftest import write_raster
from geoseg.vectorize import label_components, vectorize_products


def _class_map(seed: int, shape=(203, 157)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.uniform_filter(rng.random(shape), size=9)
    classes = np.digitize(noise, np.quantile(noise, [0.2, 0.4, 0.6, 0.8])).astype(np.uint8)
    classes[rng.random(shape) < 0.02] = rng.integers(0, 5)  # speckle: many tiny regions
    classes[40:60, 30:90] = 255  # a nodata hole
    classes[:, :3] = 255
    return classes


@pytest.mark.parametrize("strip", [1, 7, 64, 1000])
def test_strip_labels_equal_whole_map_components(tmp_path, strip) -> None:
    classes = _class_map(strip)
    conf = np.random.default_rng(1).integers(0, 101, classes.shape).astype(np.uint8)
    cpath = write_raster(tmp_path / "c.tif", classes, nodata=255)
    fpath = write_raster(tmp_path / "f.tif", conf, nodata=255)
    with rasterio.open(cpath) as cds, rasterio.open(fpath) as fds:
        comps = label_components(cds, 5, tmp_path / "labels.tif", fds, strip=strip)
    labels = rasterio.open(tmp_path / "labels.tif").read(1)
    assert ((labels == 0) == (classes == 255)).all()
    # the same partition as whole-map labelling, class by class
    four = ndimage.generate_binary_structure(2, 1)
    for c in range(5):
        whole, n = ndimage.label(classes == c, structure=four)
        pairs = {(int(a), int(b)) for a, b in zip(whole[classes == c], labels[classes == c])}
        assert len(pairs) == n == len({b for _, b in pairs})
        assert (comps.owner[[b for _, b in pairs]] == c).all()
    # confidence sums and pixel counts per label
    flat = labels.ravel()
    assert np.allclose(comps.counts, np.bincount(flat, minlength=len(comps.counts)))
    assert np.allclose(comps.sums[1:], np.bincount(flat, weights=conf.ravel().astype(float), minlength=len(comps.sums))[1:])


@pytest.mark.parametrize("batch", [500, 20_000])
def test_polygons_equal_a_whole_map_polygonize(tmp_path, monkeypatch, batch) -> None:
    import geoseg.vectorize

    monkeypatch.setattr(geoseg.vectorize, "WRITE_BATCH", batch)  # many appends, or one
    classes = _class_map(5, shape=(1100, 97))  # three 512-row strips
    cpath = write_raster(tmp_path / "c.tif", classes, nodata=255)
    conf = np.full(classes.shape, 50, np.uint8)
    fpath = write_raster(tmp_path / "f.tif", conf, nodata=255)
    names, colors = [f"c{i}" for i in range(5)], ["#000000"] * 5
    out = tmp_path / "v.gpkg"
    vectorize_products(out, classes_path=Path(cpath), class_names=names, class_colors=colors, confidence_path=Path(fpath))
    _, _, _, (cls, _, area, confidence) = pyogrio.raw.read(out, layer="classes")
    with rasterio.open(cpath) as ds:
        ref = [int(v) for _, v in features.shapes(classes, mask=classes != 255, connectivity=4, transform=ds.transform)]
    assert np.bincount(cls, minlength=5).tolist() == np.bincount(ref, minlength=5).tolist()
    assert area.sum() == pytest.approx((classes != 255).sum() * 100.0)
    assert (confidence == 50).all()
