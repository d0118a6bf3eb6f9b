"""Plots: `geoseg evaluate --plots DIR` (confusion heat map, per-class IoU/F1 bars, with the
baseline beside the model) and `geoseg train`'s curves beside the model (PNG + CSV)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli.train import evaluate_command, train_command
from geoseg.train.metrics import metrics_from_confusion

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

CONF = np.array([[50, 5, 0], [10, 80, 10], [0, 0, 45]])
NAMES = ["water", "vegetation", "other"]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_evaluation_plots_and_their_numbers(tmp_path) -> None:
    from geoseg.train.plots import write_evaluation_plots

    model, forest = metrics_from_confusion(CONF), metrics_from_confusion(CONF[::-1, ::-1].copy())
    files, notice = write_evaluation_plots(tmp_path / "plots", model, NAMES, forest, title="m on s")
    assert notice == "" and sorted(f.name for f in files) == ["confusion.csv", "confusion.png", "scores.csv", "scores.png"]
    conf = _rows(tmp_path / "plots" / "confusion.csv")
    assert conf[0][1:] == NAMES and [[int(v) for v in r[1:]] for r in conf[1:]] == CONF.tolist()
    scores = _rows(tmp_path / "plots" / "scores.csv")
    assert scores[0] == ["class", "iou", "f1", "precision", "recall", "baseline_iou", "baseline_f1"]
    for i, row in enumerate(scores[1:4]):
        assert row[0] == NAMES[i]
        assert float(row[1]) == pytest.approx(model.iou[i], abs=1e-5) and float(row[2]) == pytest.approx(model.f1[i], abs=1e-5)
        assert float(row[5]) == pytest.approx(forest.iou[i], abs=1e-5)
    assert float(scores[4][1]) == pytest.approx(model.miou, abs=1e-5)
    heat, bars = _image(tmp_path / "plots" / "confusion.png"), _image(tmp_path / "plots" / "scores.png")
    assert min(heat.shape[:2]) > 300 and min(bars.shape[:2]) > 300
    # the bars are drawn in the model's and the baseline's colours
    for color in ((0x1F, 0x5F, 0xA8), (0xE0, 0x8A, 0x1E)):
        assert (np.abs(bars.astype(int) - color).sum(axis=-1) < 8).sum() > 200, color
    assert heat.std() > 20  # not a blank canvas


def test_without_matplotlib_plots_are_skipped_with_a_one_line_notice(tmp_path) -> None:
    code = ("import sys, numpy as np; sys.modules['matplotlib'] = None\n"
            "from geoseg.train.metrics import metrics_from_confusion\n"
            "from geoseg.train.plots import write_evaluation_plots\n"
            f"files, notice = write_evaluation_plots({str(tmp_path)!r}, metrics_from_confusion(np.eye(3, dtype=int) * 5), "
            "['a', 'b', 'c'])\nprint(notice); print(','.join(sorted(f.name for f in files)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    notice, names = proc.stdout.strip().split("\n")
    assert notice.startswith("plots skipped: matplotlib is not installed") and names == "confusion.csv,scores.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.csv", "scores.csv"]


def test_evaluate_cli_writes_plots_with_the_baseline(tmp_path, synth_scene) -> None:
    """The spectral model scored against labels made from its own map with a changed block;
    the forest trained on the same scene sits beside it."""
    pytest.importorskip("sklearn")
    import geoseg
    from conftest import write_raster

    scene, _ = synth_scene
    geoseg.run_scene(scene, tmp_path / "run", model="spectral", tile_size=256, quiet=True, vectorize=False)
    with rasterio.open(tmp_path / "run" / "scene.classes.tif") as ds:
        labels = ds.read(1)
    labels[:60, :80] = 2
    lab = write_raster(tmp_path / "labels.tif", labels, nodata=255)
    result = CliRunner().invoke(evaluate_command, [
        "-m", "spectral", "--image", str(scene), "--labels", str(lab), "--tile-size", "256", "--baseline", "rf",
        "--train-image", str(scene), "--train-labels", str(lab), "--plots", str(tmp_path / "plots"), "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "wrote" in result.output and "scores.png" in result.output
    scores = _rows(tmp_path / "plots" / "scores.csv")
    assert [r[0] for r in scores[1:4]] == NAMES and scores[0][-2:] == ["baseline_iou", "baseline_f1"]
    assert all(0 <= float(r[1]) <= 1 for r in scores[1:4] if r[1])
    assert _image(tmp_path / "plots" / "scores.png").shape[0] > 300


def test_train_writes_curves_beside_the_model(tmp_path, synth_scene) -> None:
    scene, labels = synth_scene
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(train_command, [
        "--image", str(scene), "--labels", str(labels), "--out", str(out), "--epochs", "2", "--chips-per-epoch", "16",
        "--width", "8", "--depth", "2", "--chip-size", "32", "--batch-size", "8", "--threads", "1", "--no-baseline",
        "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = _rows(tmp_path / "m.training.csv")
    assert rows[0] == ["epoch", "train_loss", "val_miou", "val_overall_accuracy", "lr", "seconds"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2] and all(float(r[1]) > 0 for r in rows[1:])
    curves = _image(tmp_path / "m.training.png")
    assert curves.shape[1] > 600 and curves.std() > 10
    assert (np.abs(curves.astype(int) - (0x1F, 0x5F, 0xA8)).sum(axis=-1) < 8).sum() > 20  # the loss line
