"""The U-Net mixed with a random forest (issue 24): the forest in tensors equals
scikit-learn's, the mixture runs through `geoseg run` tile-size invariant, its weight is
chosen on validation, and the training summary reports validation scores and warns when
validation is too small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import write_raster

from geoseg._constants import IGNORE
from geoseg.cli import cli
from geoseg.train.data import LabeledScene
from geoseg.train.hybrid import (
    NO_VALIDATION_WEIGHT,
    WEIGHTS,
    choose_weight,
    fit_forest,
    scene_features,
    validation_warning,
)

pytest.importorskip("sklearn")

NORM = {"mean": [100.0, 100.0, 100.0], "std": [20.0, 20.0, 20.0]}


def _scene(h: int = 96, w: int = 112, seed: int = 0) -> LabeledScene:
    """Three bands; class 1 where band 0 is bright (a block on the right, plus noise)."""
    rng = np.random.default_rng(seed)
    img = (rng.normal(size=(3, h, w)) * 6 + 100).astype(np.float32)
    img[0, :, w // 2:] += 40
    lab = (img[0] > 120).astype(np.uint8)
    lab[::5] = IGNORE
    return LabeledScene(img, lab, None, None, "t")


def test_the_forest_in_tensors_gives_scikit_learns_probabilities() -> None:
    import torch
    from sklearn.ensemble import RandomForestClassifier

    from geoseg.train.hybrid import _labelled

    s = _scene()
    forest = fit_forest([s], NORM, 8, 2, seed=0, trees=8, tree_depth=5)
    feats = scene_features(s, NORM, 8, (5, 17)).reshape(9, -1).numpy().T
    keep = _labelled(s).ravel()
    rf = RandomForestClassifier(8, max_depth=5, n_jobs=-1, random_state=0).fit(feats[keep], s.labels.ravel()[keep])
    with torch.no_grad():
        ours = forest.probabilities(torch.from_numpy(feats)).numpy()
    assert np.abs(ours - rf.predict_proba(feats)).max() < 1e-6
    # a class the training pixels lack gets probability 0, and the column order is the class ids
    three = fit_forest([s], NORM, 8, 3, seed=0, trees=4, tree_depth=4)
    with torch.no_grad():
        p = three.probabilities(torch.from_numpy(feats))
    assert p.shape == (feats.shape[0], 3) and float(p[:, 2].abs().max()) == 0.0


def _combined_bundle(tmp: Path, net_weight: float) -> Path:
    from geoseg.models import build_unet
    from geoseg.models.forest import UNetForest

    s = _scene()
    net = build_unet(["b1", "b2", "b3"], [("dark", None), ("bright", None)], base_width=4, depth=2, seed=3,
                     normalization=NORM)
    forest = fit_forest([s], NORM, net.downsampling, 2, seed=0, trees=6, tree_depth=5)
    params = {**net.arch_params, "trees": 6, "tree_depth": 5, "scales": [5, 17], "net_weight": net_weight}
    module = UNetForest(3, 2, 0, **params).eval()
    module.net.load_state_dict(net.module.state_dict())
    module.forest.load_state_dict(forest.state_dict())
    path = tmp / f"mixed{net_weight}.safetensors"
    net.replace(module=module, architecture="unet_forest", arch_params=params).save(path)
    return path


@pytest.mark.parametrize("net_weight", [0.5, 0.0])
def test_the_mixed_model_runs_through_geoseg_run_whatever_the_tile_size(tmp_path: Path, net_weight: float) -> None:
    from geoseg.models import read_bundle

    model = _combined_bundle(tmp_path, net_weight)
    bundle = read_bundle(model)
    assert bundle.architecture == "unet_forest" and bundle.arch_params["net_weight"] == net_weight
    s = _scene(200, 168, seed=4)
    scene = write_raster(tmp_path / "scene.tif", np.clip(s.image, 0, 255).astype(np.uint8))
    outs = {}
    for tile in (32, 48, 512):
        out = tmp_path / f"out{tile}"
        res = CliRunner().invoke(cli, ["run", str(scene), "--model", str(model), "-o", str(out), "--tile-size",
                                       str(tile), "--no-vectorize", "--quiet"])
        assert res.exit_code == 0, res.output
        with rasterio.open(out / "scene.classes.tif") as a, rasterio.open(out / "scene.confidence.tif") as c:
            outs[tile] = (a.read(1), c.read(1))
    for tile in (32, 48):
        assert np.array_equal(outs[tile][0], outs[512][0]), tile
        assert np.array_equal(outs[tile][1], outs[512][1]), tile
    classes = outs[512][0]
    assert set(np.unique(classes)) == {0, 1}
    if net_weight == 0.0:  # the forest alone: it learned "bright band 0" and finds it in a new scene
        truth = s.image[0] > 120
        assert ((classes == 1) == truth).mean() > 0.8


def test_export_keeps_the_forest_only_in_bundle_and_mlm(tmp_path: Path) -> None:
    model = _combined_bundle(tmp_path, 0.5)
    res = CliRunner().invoke(cli, ["export", str(model), str(tmp_path / "m.onnx")])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "random forest" in lines[0] and "--no-forest" in lines[0]
    assert not (tmp_path / "m.onnx").exists()
    res = CliRunner().invoke(cli, ["export", str(model), str(tmp_path / "m.json"), "--format", "mlm"])
    assert res.exit_code == 0, res.output


def test_the_weight_is_the_best_mixture_no_worse_than_the_forest_on_validation() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (40, 40)).astype(np.uint8)
    onehot = np.eye(3, dtype=np.float32)[truth].transpose(2, 0, 1)
    noise = rng.random((3, 40, 40)).astype(np.float32)
    good, bad = 0.6 * onehot + 0.4 * noise, noise
    # a useless network: the forest alone
    blend = choose_weight([bad], [good], [truth], 3)
    assert blend.weight == 0.0 and set(blend.candidates) == set(WEIGHTS)
    # a perfect network beats the forest: a mixture with it, never one worse than the forest alone
    blend = choose_weight([onehot], [good], [truth], 3)
    assert blend.weight > 0.0
    f, m = blend.candidates[0.0], blend.candidates[blend.weight]
    assert m.miou >= f.miou and m.accuracy >= f.accuracy
    # equal scores: the weight nearest an even mixture
    assert choose_weight([onehot], [onehot], [truth], 3).weight == 0.5
    # no validation pixels: an even mixture
    assert choose_weight([], [], [], 3).weight == NO_VALIDATION_WEIGHT
    assert choose_weight([onehot], [good], [np.full_like(truth, IGNORE)], 3).weight == NO_VALIDATION_WEIGHT


def test_validation_too_small_to_trust_is_said() -> None:
    big = _scene(96, 112)
    names = ["dark", "bright"]
    assert validation_warning([big], [big], names) == ""
    small = big.window(slice(0, 20), slice(0, 20))
    msg = validation_warning([big], [small], names)
    assert "too small to trust" in msg and "labelled validation pixels" in msg
    assert "bright" in msg  # the right half is bright: the 20x20 corner holds (almost) none
    assert "no validation pixels" in validation_warning([big], [], names)


def test_train_writes_the_mixture_and_reports_validation_scores(tmp_path: Path) -> None:
    """End to end: geoseg train's JSON summary reports the network, the forest and the model
    written on the validation blocks, the weight chosen and the validation warning."""
    from geoseg.models import read_bundle

    rng = np.random.default_rng(2)
    h = w = 256
    lab = np.zeros((h, w), np.uint8)
    for k, (r, c) in enumerate([(0, 0), (0, 128), (128, 0), (128, 128)]):
        lab[r:r + 128, c:c + 128] = k % 2
    lab[::2, ::3] ^= (rng.random((128, 86)) < 0.3).astype(np.uint8)  # speckle both classes everywhere
    img = (lab[None] * 40 + rng.normal(100, 15, (3, h, w))).clip(0, 255).astype(np.uint8)
    image = write_raster(tmp_path / "img.tif", img)
    labels = write_raster(tmp_path / "lab.tif", lab, nodata=255)
    model = tmp_path / "m.safetensors"
    res = CliRunner().invoke(cli, ["train", "--image", str(image), "--labels", str(labels), "--classes", "a,b",
                                   "--out", str(model), "--epochs", "1", "--chips-per-epoch", "16", "--chip-size",
                                   "32", "--batch-size", "8", "--width", "4", "--depth", "2", "--threads", "1",
                                   "--val-gap", "8", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    forest = summary["forest"]
    assert forest["net_weight"] in WEIGHTS and "validation" in forest["why"]
    assert set(forest["validation"]) == {f"{w:g}" for w in WEIGHTS}
    base = summary["baseline"]
    assert {"model", "random_forest", "network"} <= set(base)
    assert base["model"]["miou"] >= base["random_forest"]["miou"]
    assert base["model"]["overall_accuracy"] >= base["random_forest"]["overall_accuracy"]
    assert isinstance(summary["validation_warning"], str)
    bundle = read_bundle(model)
    assert bundle.architecture == ("unet" if forest["net_weight"] == 1.0 else "unet_forest")
    assert bundle.training["forest"] == forest and bundle.training["time_budget"] is None  # --epochs given


def test_the_default_time_budget_applies_unless_the_length_of_training_is_given() -> None:
    from geoseg.train.job import DEFAULT_TIME_BUDGET, time_budget_of
    from geoseg.train.settings import TrainSettings

    assert DEFAULT_TIME_BUDGET < 5  # issue 24: a ~500x500-px scene in under 5 minutes
    assert time_budget_of(TrainSettings()) == (DEFAULT_TIME_BUDGET, "default")
    assert time_budget_of(TrainSettings(time_budget=2.5)) == (2.5, "given")
    assert time_budget_of(TrainSettings(epochs=3))[0] is None
    assert time_budget_of(TrainSettings(time_limit=60))[0] is None
