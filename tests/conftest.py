"""Fixtures that write small real GeoTIFFs and model bundles for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

UTM33 = "EPSG:32633"


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM33,
    transform: Affine | None = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5500000.0),
    nodata: float | None = None,
    descriptions: tuple[str, ...] | None = None,
    **profile,
) -> Path:
    """Write ``(bands, h, w)`` (or ``(h, w)``) ``data`` as a tiled GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    opts = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name, nodata=nodata)
    if crs is not None:
        opts["crs"] = crs
    if transform is not None:
        opts["transform"] = transform
    if h >= 16 and w >= 16:
        opts.update(tiled=True, blockxsize=16 * max(1, min(w, h, 256) // 16), blockysize=16 * max(1, min(w, h, 256) // 16))
    opts.update(profile)
    with rasterio.open(path, "w", **opts) as ds:
        ds.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
    return path


@pytest.fixture(scope="session")
def synth_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 300x417 synthetic 4-band scene (not a multiple of any tile size) and its labels."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("synth")
    info = synthesize(d / "scene.tif", (300, 417), seed=7, labels_path=d / "labels.tif")
    return Path(info.path), Path(info.labels_path)


@pytest.fixture(scope="session")
def nodata_scene(tmp_path_factory) -> Path:
    """A 256x320 synthetic scene with an irregular nodata border (value 0)."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("synth_nodata")
    return Path(synthesize(d / "border.tif", (256, 320), seed=3, nodata_border=True).path)


@pytest.fixture(scope="session")
def small_unet(tmp_path_factory) -> Path:
    """An untrained depth-3 U-Net bundle for 4 bands, 3 classes and one mask head."""
    from geoseg.models import build_unet

    bundle = build_unet(
        ("blue", "green", "red", "nir"),
        [("low", "#1f78b4"), ("mid", "#33a02c"), ("high", "#e31a1c")],
        mask_heads=("bright",),
        base_width=8,
        depth=3,
        normalization={"mean": [1000.0] * 4, "std": [800.0] * 4},
        name="test-unet",
        seed=0,
    )
    path = tmp_path_factory.mktemp("models") / "test_unet.safetensors"
    bundle.save(path)
    return path


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()
