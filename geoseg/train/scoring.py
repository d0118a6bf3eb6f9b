"""Accuracy of a model on a labelled scene, measured through the full tiled pipeline.

:func:`evaluate_model` runs :func:`geoseg.scene.pipeline.run_scene` (without polygons) into a
temporary directory, so the class map it scores is exactly what ``geoseg run`` writes,
and compares it strip by strip with the labels, put onto the image grid by
:mod:`geoseg.io.labels` (class rasters on any grid, or polygons). Pixels that are unlabelled
(255, outside the labels, label nodata) or nodata in the image are left out. The result
holds the confusion matrix and per-class IoU, precision, recall and F1, mean IoU and
overall accuracy.

Example::

    ev = evaluate_model("model.safetensors", "scene.tif", "truth.gpkg")
    print(ev.table()); json.dumps(ev.report())
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg._constants import IGNORE
from geoseg.io.store import scene_file
from geoseg.errors import InputError
from geoseg.grid import PixelWindow
from geoseg.io.labels import LabelOptions, geobox_of, open_labels
from geoseg.io.raster import open_raster
from geoseg.train.metrics import Metrics, confusion_matrix, metrics_from_confusion

__all__ = ["Evaluation", "evaluate_model", "score_class_map"]

#: Rows compared at a time.
STRIP = 1024


@dataclass
class Evaluation:
    """Metrics of one model on one labelled scene.

    Attributes:
        metrics: Confusion matrix and the metrics derived from it.
        class_names: The model's classes, in id order.
        model: The model reference evaluated.
        image: The scene.
        labels: The ground truth file.
        seconds: Wall time (prediction and scoring).
    """

    metrics: Metrics
    class_names: list[str]
    model: str
    image: str
    labels: str
    seconds: float

    def report(self) -> dict[str, Any]:
        """``{"miou", "overall_accuracy", "per_class": [{"name", "iou", "precision",
        "recall", "f1"}], "confusion"}`` (None where undefined)."""
        return self.metrics.report(self.class_names)

    def table(self) -> str:
        """A readable summary: per-class metrics, mIoU, overall accuracy, confusion matrix."""
        m = self.metrics
        width = max(len("overall accuracy"), *(len(n) for n in self.class_names))

        def fmt(v: float) -> str:
            return "     -" if np.isnan(v) else f"{v:6.3f}"

        truth = np.asarray(m.confusion).sum(1)
        lines = [
            f"{Path(self.image).name}: model {self.model}, {m.pixels} labelled pixels",
            f"{'class':<{width}}  {'IoU':>6}  {'prec.':>6}  {'recall':>6}  {'F1':>6}  {'pixels':>10}",
        ]
        for k, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {fmt(m.iou[k])}  {fmt(m.precision[k])}  {fmt(m.recall[k])}  {fmt(m.f1[k])}  "
                f"{int(truth[k]):>10}"
            )
        lines.append(f"{'mean IoU':<{width}}  {fmt(m.miou)}")
        lines.append(f"{'overall accuracy':<{width}}  {fmt(m.accuracy)}")
        lines.append("confusion (rows: truth, columns: prediction):")
        cell = max(6, len(str(int(np.max(m.confusion, initial=0)))) + 1)
        lines.append(" " * width + "".join(f"{k:>{cell}}" for k in range(len(self.class_names))))
        for k, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}" + "".join(f"{int(v):>{cell}}" for v in m.confusion[k]))
        return "\n".join(lines)


def score_class_map(
    classes_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    class_names: Sequence[str],
    label_options: LabelOptions | None = None,
    *,
    region: PixelWindow | None = None,
) -> Metrics:
    """Compare a class map (uint8 ids, 255 = nodata) with labels on any grid, strip by strip.

    Args:
        classes_path: The predicted class map (e.g. ``<stem>.classes.tif``).
        labels_path: Class raster or polygons (see :mod:`geoseg.io.labels`).
        class_names: Class names in id order (map text labels to ids).
        label_options: How the labels become class ids.
        region: Only score this window of the class map (default: all of it).

    Raises:
        InputError: If the labels hold class ids the model does not have.
    """
    geobox = geobox_of(classes_path)
    labels = open_labels(labels_path, geobox, label_options, class_names)
    n = len(class_names)
    region = region or geobox.window
    conf = np.zeros((n, n), np.int64)
    with open_raster(classes_path, env=False) as src:
        for r0 in range(region.row, region.row_end, STRIP):
            win = PixelWindow(r0, region.col, min(STRIP, region.row_end - r0), region.width)
            pred = src.read(1, window=win.to_rasterio())
            truth = labels.read(win)
            extra = np.unique(truth[(truth >= n) & (truth != IGNORE)])
            if extra.size:
                raise InputError(
                    f"{labels_path} holds class ids {extra.tolist()[:5]} but the model has {n} classes "
                    f"({', '.join(class_names)}): evaluate with labels of the model's classes"
                )
            conf += confusion_matrix(truth, pred, n)
    return metrics_from_confusion(conf)


def evaluate_model(
    model: str | os.PathLike[str],
    image: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    label_options: LabelOptions | None = None,
    bands: Sequence[int] | None = None,
    tile_size: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    region: PixelWindow | None = None,
    quiet: bool = True,
) -> Evaluation:
    """Run a model over a scene with the full tiled pipeline and score it against labels.

    Args:
        model: Built-in model name or bundle path.
        image: The scene.
        labels: Class raster (any grid, any CRS) or polygons for it.
        label_options: How the labels become class ids (field, background, nodata).
        bands: 1-based scene bands in model order (as ``geoseg run --bands``).
        tile_size: Core tile size of the pipeline.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: Threads of the pipeline's local scheduler.
        region: Only score this window of the scene.
        quiet: No progress bar.

    Raises:
        GeosegError: Whatever ``geoseg run`` refuses (contract, inputs), or labels that
            do not fit the model.
    """
    from geoseg._constants import DEFAULT_TILE_SIZE
    from geoseg.models import load_model
    from geoseg.scene.pipeline import run_scene

    t0 = time.perf_counter()
    bundle = load_model(os.fspath(model) if isinstance(model, Path) else model)
    names = list(bundle.class_names)
    model_ref = os.fspath(model)
    with tempfile.TemporaryDirectory(prefix="geoseg-evaluate-") as tmp:
        run_scene(
            image, tmp, model=model_ref, bands=bands, tile_size=tile_size or DEFAULT_TILE_SIZE, device=device,
            threads=threads, vectorize=False, quiet=quiet, overwrite=True,
        )
        classes = scene_file(Path(tmp), Path(image).stem, "classes.tif")
        metrics = score_class_map(classes, labels, names, label_options, region=region)
    return Evaluation(metrics, names, model_ref, os.fspath(image), os.fspath(labels), time.perf_counter() - t0)
