"""Real scenes from ../shared/data/real run end to end (skipped when the folder is absent).

Scenes with a NIR band go through the ``spectral`` model; the others through an
untrained U-Net bundle built for their band count: these tests check the pipeline
(georeferencing, nodata, polygons), not the model's accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import REAL_DATA, ground_area_m2

import geoseg

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data not found at {REAL_DATA}"),
]


def _bundle_for(tmp_path: Path, bands: tuple[str, ...], scale: float) -> Path:
    from geoseg.models import build_unet

    bundle = build_unet(
        bands,
        [("dark", "#000080"), ("bright", "#ffff00")],
        mask_heads=("object",),
        base_width=4,
        depth=3,
        normalization={"mean": [scale / 2] * len(bands), "std": [scale / 4] * len(bands)},
        name=f"untrained-{len(bands)}band",
        seed=0,
    )
    return bundle.save(tmp_path / f"u{len(bands)}.safetensors")


CASES = [
    # file, model ("spectral" or band names for an untrained U-Net), --bands, value scale
    ("aerial_rgbn_5m.tif", "spectral", (3, 2, 1, 4), 255),
    ("landsat7_bahamas_rgb.tif", ("red", "green", "blue"), None, 255),
    ("landsat8_parana_bgr.tif", ("blue", "green", "red"), None, 10000),
    ("spacenet_atlanta_pan.tif", ("pan",), None, 1000),
    ("aerial_buildings_image.tif", ("red", "green", "blue"), None, 255),
]


@pytest.mark.parametrize("name,model,bands,scale", CASES, ids=[c[0] for c in CASES])
def test_real_scene_end_to_end(tmp_path, name, model, bands, scale) -> None:
    scene = REAL_DATA / name
    if not scene.exists():
        pytest.skip(f"{scene} missing")
    model_ref = model if isinstance(model, str) else str(_bundle_for(tmp_path, model, scale))
    manifest = geoseg.run_scene(scene, tmp_path / "out", model=model_ref, bands=bands, tile_size=256, quiet=True)
    stem = scene.stem
    with rasterio.open(scene) as src:
        ref = (src.crs, src.transform, src.width, src.height)
        data = src.read()
        invalid = (data == src.nodata).all(axis=0) if src.nodata is not None else np.zeros(data.shape[1:], bool)
    for product in ("classes", "confidence", "mask"):
        with rasterio.open(tmp_path / "out" / f"{stem}.{product}.tif") as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == ref
            out = ds.read()
            assert ((out == 255).all(axis=0) == invalid).all()
    info = pyogrio.read_info(tmp_path / "out" / f"{stem}.gpkg", layer="classes")
    assert info["features"] > 0
    _, _, _, fields = pyogrio.raw.read(tmp_path / "out" / f"{stem}.gpkg", layer="classes", columns=["area_m2"])
    pixel_area = ground_area_m2(ref[0], ref[1], ref[3], ref[2]) / (ref[2] * ref[3])  # mean ground pixel
    assert fields[0].sum() == pytest.approx((~invalid).sum() * pixel_area, rel=1e-3)
    assert manifest["nodata_pixels"] == int(invalid.sum())
