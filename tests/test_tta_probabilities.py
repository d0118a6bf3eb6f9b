"""`--tta`, `--probabilities` and `--precision`: seams stay exact, products opened again and checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import read

import geoseg


def run(scene: Path, out: Path, model, **kw) -> dict:
    return geoseg.run_scene(scene, out, model=str(model), quiet=True, vectorize=False, **kw)


def whole_image_tta(bundle, data: np.ndarray) -> np.ndarray:
    """Reference: the 8 flips/rotations of the whole image (padded to the factor as
    whole-image inference pads it), each run through bundle.module, probabilities averaged."""
    f = bundle.downsampling
    h, w = data.shape[1:]
    x = torch.from_numpy(np.pad(bundle.normalize(data[None]), ((0, 0), (0, 0), (0, -h % f), (0, -w % f))))
    probs = []
    with torch.no_grad():
        for flip in (False, True):
            xf = torch.flip(x, (-1,)) if flip else x
            for k in range(4):
                out = bundle.module(torch.rot90(xf, k, (-2, -1)))
                p = torch.rot90(torch.softmax(out[0] if isinstance(out, tuple) else out, 1), -k, (-2, -1))
                probs.append(torch.flip(p, (-1,)) if flip else p)
    return torch.stack(probs).mean(0)[0, :, :h, :w].numpy()


@pytest.mark.slow
def test_tta_tiled_equals_whole_image_tta(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene  # 300 x 417: neither side a multiple of the tile size or of the factor 8
    whole = run(scene, tmp_path / "whole", small_unet, tile_size=2048, tta=True)
    tiled = run(scene, tmp_path / "tiled", small_unet, tile_size=64, tta=True)
    assert whole["execution"]["tiles"] == 1 and tiled["execution"]["tiles"] > 12
    assert tiled["options"]["tta"] is True
    for product in ("classes.tif", "mask.tif"):
        a, b = read(tmp_path / "whole" / f"scene.{product}"), read(tmp_path / "tiled" / f"scene.{product}")
        assert (a == b).mean() >= 0.9999, product
    ca, cb = read(tmp_path / "whole" / "scene.confidence.tif"), read(tmp_path / "tiled" / "scene.confidence.tif")
    assert np.abs(ca.astype(int) - cb.astype(int)).max() <= 1
    # and both are the average over the 8 transforms of the whole image
    bundle = geoseg.load_model(str(small_unet))
    ref = whole_image_tta(bundle, read(scene).astype(np.float32))
    tiled_classes = read(tmp_path / "tiled" / "scene.classes.tif")[0]
    assert (tiled_classes == ref.argmax(0)).mean() >= 0.9999
    conf = read(tmp_path / "tiled" / "scene.confidence.tif")[0].astype(int)
    assert np.abs(conf - np.round(ref.max(0) * 100)).max() <= 1
    # TTA is not a no-op for this (not flip-invariant) model
    plain = run(scene, tmp_path / "plain", small_unet, tile_size=64)
    assert (read(tmp_path / "plain" / "scene.classes.tif")[0] != tiled_classes).mean() > 0.001
    assert plain["options"]["tta"] is False


def test_tta_changes_nothing_for_a_flip_invariant_model(tmp_path, synth_scene) -> None:
    """The spectral model works pixel by pixel: every flip/rotation gives the same probabilities,
    and their mean (a pairwise sum of 8 equal numbers, / 8) is bit-identical."""
    scene, _ = synth_scene
    run(scene, tmp_path / "plain", "spectral", tile_size=128)
    run(scene, tmp_path / "tta", "spectral", tile_size=128, tta=True)
    for product in ("classes.tif", "confidence.tif", "mask.tif"):
        assert np.array_equal(read(tmp_path / "plain" / f"scene.{product}"), read(tmp_path / "tta" / f"scene.{product}"))


def test_probabilities_cog(tmp_path, nodata_scene, small_unet) -> None:
    manifest = run(nodata_scene, tmp_path, small_unet, tile_size=64, probabilities=True, stac=True)
    path = tmp_path / "border.probabilities.tif"
    assert "probabilities.tif" in manifest["outputs"] and manifest["options"]["probabilities"] is True
    with rasterio.open(path) as ds, rasterio.open(tmp_path / "border.classes.tif") as cls_ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 255
        assert ds.descriptions == ("low", "mid", "high")
        assert ds.crs == cls_ds.crs and ds.transform == cls_ds.transform and ds.shape == cls_ds.shape
        assert ds.overviews(1) or max(ds.shape) <= 512
        assert ds.profile.get("tiled", False) or max(ds.shape) <= 512
        probs = ds.read().astype(int)
        classes = cls_ds.read(1)
    invalid = classes == 255
    assert invalid.any() and (~invalid).any()
    assert (probs[:, invalid] == 255).all()  # nodata where the input is nodata, in every band
    valid = probs[:, ~invalid]
    assert valid.max() <= 254
    assert np.abs(valid.sum(0) - 254).max() <= 2  # probabilities sum to 1 (to rounding)
    top2 = np.sort(valid, axis=0)[-2:]
    clear = top2[1] > top2[0]  # away from ties (quantisation makes some)
    assert clear.mean() > 0.95
    assert (valid.argmax(0)[clear] == classes[~invalid][clear]).all()
    conf = read(tmp_path / "border.confidence.tif")[0][~invalid].astype(float)
    assert np.abs(valid.max(0) / 254 * 100 - conf).max() <= 1.0
    item = json.loads((tmp_path / "border.stac.json").read_text())
    asset = item["assets"]["probabilities"]
    assert asset["href"] == "./border.probabilities.tif" and len(asset["raster:bands"]) == 3


def test_precision_fp16_on_cpu_is_a_one_line_error(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    proc = subprocess.run(
        [sys.executable, "-m", "geoseg", "run", str(scene), "-o", str(tmp_path / "out"), "-m", "spectral",
         "--device", "cpu", "--precision", "fp16"], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--precision fp16 needs a CUDA device" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predictor_kernel_precision_and_tta_on_cpu() -> None:
    from geoseg.errors import InputError
    from geoseg.scene.predict import Predictor, check_precision

    assert check_precision("FP32", "cpu") == "fp32"
    with pytest.raises(InputError, match="needs a CUDA device"):
        check_precision("bf16", "cpu")
    with pytest.raises(InputError, match="not one of"):
        check_precision("int8", "cpu")
    bundle = geoseg.load_model("spectral")
    pred = Predictor.for_bundle(bundle, "cpu")
    data = np.random.default_rng(0).uniform(0, 3000, (2, 4, 20, 24)).astype(np.float32)
    valid = np.ones((2, 20, 24), bool)
    a = pred.predict(data, valid, probabilities=True)
    b = pred.predict(data, valid, tta=True, probabilities=True)
    assert np.array_equal(a.probabilities, b.probabilities) and a.probabilities.shape == (2, 3, 20, 24)
    assert pred.predict(data, valid).probabilities is None
