"""`geoseg train` and `geoseg evaluate` end to end: real GeoTIFFs and polygons in, bundles out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner, Result
from conftest import write_raster

from geoseg._constants import IGNORE
from geoseg.classes import LANDCOVER_CLASSES
from geoseg.cli import cli
from geoseg.cli.train import evaluate_command, train_command
from geoseg.io.labels import geobox_of, read_labels
from geoseg.models import read_bundle

#: A tiny, fast model and training run (2 cores shared with other work: one torch thread).
TINY = ("--width", "8", "--depth", "2", "--chip-size", "32", "--batch-size", "8", "--lr", "0.01",
        "--threads", "1")


def invoke(command, *args) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_bundle(path).module.state_dict()


# --------------------------------------------------------------------------- learning, run, evaluate


@pytest.fixture(scope="module")
def landcover_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 384x320 synthetic scene with six land-cover classes in both its training part and
    its validation strip (the bottom 20 %)."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("landcover")
    info = synthesize(d / "scene.tif", (384, 320), seed=1, labels_path=d / "labels.tif")
    return Path(info.path), Path(info.labels_path)


@pytest.mark.slow
def test_learns_a_synthetic_scene_and_run_uses_the_bundle(landcover_scene, tmp_path: Path) -> None:
    image, labels = landcover_scene
    out = tmp_path / "landcover.safetensors"
    summary = json.loads(ok(invoke(
        train_command, "--image", image, "--labels", labels, "--out", out, "--epochs", 5,
        "--chips-per-epoch", 128, *TINY, "--chip-size", 64, "--val-gap", 32,
        "--mask-head", "built_up=building,road", "--json",
    )).stdout)
    names = [c.name for c in LANDCOVER_CLASSES]
    assert summary["classes"] == names  # from the label raster's tags
    assert summary["epochs_run"] == 5 and len(summary["val_miou"]) == 5
    # well above chance (~0.1: all cropland) after a few epochs, and improving (class-balanced
    # chips reach ~0.54 after the first epoch already)
    assert summary["val"]["miou"] > 0.45
    assert max(summary["val_miou"]) > summary["val_miou"][0]

    bundle = read_bundle(out)
    assert bundle.bands == ("blue", "green", "red", "nir") and bundle.mask_heads == ("built_up",)
    assert bundle.class_names == tuple(names) and bundle.class_colors[0] == LANDCOVER_CLASSES[0].color
    assert bundle.training["mask_classes"] == {"built_up": [4, 5]}
    assert bundle.training["best_epoch"] == summary["best_epoch"]
    assert bundle.training["gsd_m"] == 10.0  # the image's pixel size: `geoseg export --format onnx` needs it

    # `geoseg run --model` uses the bundle directly
    ok(invoke(cli, "run", image, "-o", tmp_path / "run", "-m", out, "--no-vectorize", "--tile-size", 128, "-q"))
    with rasterio.open(tmp_path / "run" / "scene.classes.tif") as ds, rasterio.open(image) as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert json.loads(ds.tags()["CLASS_NAMES"]) == names
    with rasterio.open(tmp_path / "run" / "scene.mask.tif") as ds:
        assert ds.count == 1 and ds.descriptions == ("built_up",)

    report = json.loads(ok(invoke(evaluate_command, "-m", out, "--image", image, "--labels", labels,
                                  "--tile-size", 128, "--json")).stdout)
    assert set(report) == {"miou", "overall_accuracy", "per_class", "confusion"}
    assert [c["name"] for c in report["per_class"]] == names
    assert set(report["per_class"][0]) == {"name", "iou", "precision", "recall", "f1"}
    assert np.array(report["confusion"]).sum() == 384 * 320
    assert report["miou"] > 0.4 and report["overall_accuracy"] > 0.7


@pytest.fixture(scope="module")
def building_model(buildings_scene, tmp_path_factory) -> tuple[Path, dict]:
    """A model trained on the buildings scene's GeoJSON (EPSG:4326) polygons."""
    out = tmp_path_factory.mktemp("building_model") / "buildings.safetensors"
    result = invoke(
        train_command, "--image", buildings_scene["image"], "--labels", buildings_scene["vector"], "--out", out,
        "--classes", "ground,building", "--epochs", 3, "--chips-per-epoch", 64, *TINY,
        "--val-fraction", 0.25, "--val-gap", 16, "--val-split", "strip", "--json",
    )
    return out, json.loads(ok(result).stdout)


def test_vector_labels_in_another_crs_and_nodata(building_model, buildings_scene) -> None:
    out, summary = building_model
    assert summary["val"]["miou"] > 0.7  # bright roofs on dark ground: easy, but only if labels line up
    bundle = read_bundle(out)
    assert bundle.class_names == ("ground", "building") and bundle.bands == ("band1",)
    # normalisation over valid pixels of the training part only (rows above the validation
    # strip and its gap), nodata (the 0-valued strip on the left) excluded
    image = buildings_scene["image_array"]
    train_rows = image[: 192 - 48 - 16]
    valid = train_rows[train_rows != 0].astype(np.float64)
    assert bundle.normalization.mean[0] == pytest.approx(valid.mean(), rel=1e-9)
    assert bundle.normalization.std[0] == pytest.approx(valid.std(), rel=1e-6)
    assert bundle.normalization.mean[0] > train_rows.mean() + 10  # nodata would pull it down
    # the contract's value range: that of the valid pixels of the training images
    assert bundle.value_range == (float(image[image != 0].min()), float(image[image != 0].max()))
    assert bundle.gsd == 0.5  # the training image's ground sample distance (0.5 m UTM pixels)


def test_evaluate_ignores_nodata_and_unlabelled_pixels(building_model, buildings_scene) -> None:
    out, _ = building_model
    # raster labels on a 0.3 m web-mercator grid that leaves the top rows unlabelled
    result = ok(invoke(evaluate_command, "-m", out, "--image", buildings_scene["image"], "--labels",
                       buildings_scene["raster"], "--json", "-q"))
    report = json.loads(result.stdout)
    labels = read_labels(buildings_scene["raster"], geobox_of(buildings_scene["image"]))
    counted = (labels != IGNORE) & (buildings_scene["image_array"] != 0)
    assert np.array(report["confusion"]).sum() == counted.sum() < labels.size
    building = report["per_class"][1]
    assert building["name"] == "building" and building["iou"] > 0.7
    table = ok(invoke(evaluate_command, "-m", out, "--image", buildings_scene["image"], "--labels",
                      buildings_scene["vector"], "-q")).stdout
    assert "building" in table and "mean IoU" in table and "overall accuracy" in table


def test_run_enforces_the_bundle_contract(building_model, synth_scene, tmp_path: Path) -> None:
    out, _ = building_model
    four_bands, _ = synth_scene
    one_line_error(invoke(cli, "run", four_bands, "-o", tmp_path / "a", "-m", out, "-q"), "expects 1 (band1)")
    eight_bit = write_raster(tmp_path / "pan8.tif", np.full((1, 32, 32), 100, np.uint8))
    one_line_error(invoke(cli, "run", eight_bit, "-o", tmp_path / "b", "-m", out, "-q"), "uint8", "expects values")


# --------------------------------------------------------------------------- checkpoints, resume, seeds


def test_resume_continues_where_it_stopped(buildings_scene, tmp_path: Path) -> None:
    args = ("--image", buildings_scene["image"], "--labels", buildings_scene["raster"], "--epochs", 3,
            "--chips-per-epoch", 16, *TINY, "--val-gap", 16, "--seed", 3, "--json")
    full = tmp_path / "full.safetensors"
    whole = json.loads(ok(invoke(train_command, *args, "--out", full)).stdout)
    assert whole["epochs_run"] == 3

    part = tmp_path / "part.safetensors"
    first = json.loads(ok(invoke(train_command, *args, "--out", part, "--time-limit", 0)).stdout)
    assert first["epochs_run"] == 1 and first["stopped"] == "time_limit"
    assert part.exists() and Path(first["checkpoint"]) == tmp_path / "part.safetensors.ckpt"
    one_line_error(invoke(train_command, *args, "--out", part), "--resume", "--overwrite")
    one_line_error(invoke(train_command, *args, "--out", part, "--resume", "--lr", 0.02),
                   "different training setup", "option lr")
    one_line_error(invoke(train_command, *args, "--out", tmp_path / "none.safetensors", "--resume"),
                   "no checkpoint")

    resumed = json.loads(ok(invoke(train_command, *args, "--out", part, "--resume")).stdout)
    assert resumed["epochs_run"] == 3 and resumed["stopped"] == "epochs"
    assert resumed["loss"] == whole["loss"] and resumed["val_miou"] == whole["val_miou"]
    a, b = weights(full), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same model as without the interruption

    other = tmp_path / "seed4.safetensors"
    ok(invoke(train_command, *args, "--out", other, "--seed", 4))
    c = weights(other)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    ok(invoke(train_command, *args, "--out", other, "--overwrite"))  # seed 3 again: the same model
    c = weights(other)
    assert all(torch.equal(a[k], c[k]) for k in a)


# --------------------------------------------------------------------------- config and errors


def test_yaml_config_with_mask_files_and_flag_overrides(buildings_scene, tmp_path: Path) -> None:
    config = {
        "out": "model.safetensors",
        "data": [{"image": str(buildings_scene["image"]), "labels": str(buildings_scene["vector"]),
                  "masks": {"roofs": str(buildings_scene["raster"])}}],
        "classes": [{"name": "ground", "color": "#AAAAAA"}, {"name": "building", "color": "#ff0000"}],
        "mask_heads": [{"name": "roofs"}, {"name": "built", "classes": ["building"]}],
        "model": {"width": 4, "depth": 2},
        "epochs": 4, "chips_per_epoch": 16, "chip_size": 32, "batch_size": 8, "sampling": "grid",
        "val_fraction": 0.25, "val_gap": 16, "threads": 1, "loss_weights": {"mae": 0.5},
    }
    path = tmp_path / "cfg" / "train.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    summary = json.loads(ok(invoke(train_command, "--config", path, "--epochs", 1, "--json")).stdout)
    assert summary["epochs_run"] == 1  # the flag wins over the file
    assert Path(summary["model"]) == tmp_path / "cfg" / "model.safetensors"  # relative to the config
    bundle = read_bundle(tmp_path / "cfg" / "model.safetensors")
    assert bundle.class_colors == ("#aaaaaa", "#ff0000") and bundle.mask_heads == ("roofs", "built")
    assert bundle.training["config"]["sampling"] == "grid" and bundle.training["config"]["mae_weight"] == 0.5
    assert bundle.arch_params["base_width"] == 4


@pytest.mark.parametrize("text,needles", [
    ("epochs: 0\n", ["train.yaml: invalid training config", "field 'epochs'"]),
    ("epoch: 3\n", ["field 'epoch'", "Extra inputs"]),
    ("data: [\n", ["train.yaml: not valid YAML at line"]),
    ("data: [{image: a.tif}]\n", ["field 'data.0.labels'"]),
    ("mask_heads: [{name: roofs}]\ndata: [{image: a.tif, labels: b.tif}]\n", ["mask head 'roofs' has no classes"]),
    ("labels: {nodata: zero}\n", ["field 'labels.nodata'"]),
    ("classes: [{name: a, color: red}]\n", ["field 'classes.0.color'"]),
    ("epochs: 2\n", ["no training data: give --image IMG --labels LBL"]),
])
def test_config_errors_name_the_file_and_field(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    one_line_error(invoke(train_command, "--config", path, "--out", tmp_path / "m.safetensors"), *needles)


def test_flag_errors(buildings_scene, tmp_path: Path) -> None:
    img = buildings_scene["image"]
    out = tmp_path / "m.safetensors"
    one_line_error(invoke(train_command, "--image", img, "--out", out), "one --labels for each --image")
    one_line_error(invoke(train_command, "--image", img, "--labels", img, "--out", out, "--mask-head", "roofs"),
                   "NAME=CLASS")
    one_line_error(invoke(train_command, "--image", img, "--labels", buildings_scene["vector"]), "--out")
    one_line_error(invoke(train_command, "--image", img, "--labels", buildings_scene["vector"], "--out", out,
                          "--label-field", "colour"), "no field 'colour'", "'kind'")


def test_label_nodata_that_is_a_class(buildings_scene, tmp_path: Path) -> None:
    """nodata=0 declared, 0 meaning background (aerial_buildings_label.tif): refused with a
    hint, learnt with --label-nodata none."""
    labels = write_raster(tmp_path / "truth.tif", buildings_scene["truth"], crs="EPSG:32616",
                          transform=buildings_scene["transform"], nodata=0)
    out = tmp_path / "m.safetensors"
    args = ("--image", buildings_scene["image"], "--labels", labels, "--out", out, "--epochs", 1,
            "--chips-per-epoch", 8, *TINY, "--val-gap", 16, "-q")
    one_line_error(invoke(train_command, *args), "only class 'class1'", "nodata=0", "--label-nodata none")
    ok(invoke(train_command, *args, "--label-nodata", "none", "--classes", "ground,building"))
    assert read_bundle(out).class_names == ("ground", "building")


# --------------------------------------------------------------------------- metrics


def test_evaluate_metrics_match_a_hand_computed_confusion_matrix(tmp_path: Path) -> None:
    """The training-free `spectral` model through the full pipeline: every pixel's prediction
    is known, so the confusion matrix can be written down by hand."""
    h, w = 64, 64
    bands = np.zeros((4, h, w), np.uint16)  # blue, green, red, nir
    bands[:, :, :20] = np.array([900, 1000, 500, 200])[:, None, None]  # water (NDWI > 0)
    bands[:, :, 20:40] = np.array([500, 800, 400, 3000])[:, None, None]  # vegetation (NDVI > 0.3)
    bands[:, :, 40:] = np.array([1000, 1000, 1200, 1100])[:, None, None]  # other
    bands[:, :4, :] = 0  # nodata rows: never counted, whatever their labels say
    image = write_raster(tmp_path / "scene.tif", bands, nodata=0)
    truth = np.zeros((h, w), np.uint8)
    truth[:, 20:40], truth[:, 40:] = 1, 2
    truth[10:15, :20] = 1  # 100 water pixels labelled vegetation
    truth[20:22, 40:] = 0  # 48 "other" pixels labelled water
    truth[60:, :] = IGNORE  # unlabelled rows
    labels = write_raster(tmp_path / "truth.tif", truth, nodata=IGNORE)

    report = json.loads(ok(invoke(evaluate_command, "-m", "spectral", "--image", image, "--labels", labels,
                                  "--tile-size", 32, "--json", "-q")).stdout)
    # rows 4..59 count: 56 rows; columns 0-19 water, 20-39 vegetation, 40-63 other
    conf = [[1020, 0, 48],
            [100, 1120, 0],
            [0, 0, 1296]]
    assert report["confusion"] == conf
    tp, fp, fn = np.array([1020, 1120, 1296]), np.array([100, 0, 48]), np.array([48, 100, 0])
    iou, precision, recall = tp / (tp + fp + fn), tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    for k, name in enumerate(["water", "vegetation", "other"]):
        c = report["per_class"][k]
        assert c["name"] == name
        assert c["iou"] == pytest.approx(iou[k], abs=1e-6) and c["f1"] == pytest.approx(f1[k], abs=1e-6)
        assert c["precision"] == pytest.approx(precision[k], abs=1e-6)
        assert c["recall"] == pytest.approx(recall[k], abs=1e-6)
    assert report["miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert report["overall_accuracy"] == pytest.approx(tp.sum() / 3584, abs=1e-6)
