"""Segmentation metrics from a confusion matrix (pure numpy).

Truth and prediction are uint8 class-id arrays; any value outside ``0..C-1`` (255 for
unlabelled ground truth or nodata predictions) is left out. Rows of the confusion matrix
are the true classes, columns the predicted ones.

Example::

    conf = confusion_matrix(truth, pred, num_classes=3)
    m = metrics_from_confusion(conf)
    m.miou, m.iou, m.precision, m.recall, m.f1, m.accuracy
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Metrics", "confusion_matrix", "metrics_from_confusion"]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts of (true class, predicted class) over pixels where both
    are class ids ``< num_classes``."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    keep = (truth < num_classes) & (pred < num_classes)
    idx = truth[keep].astype(np.int64) * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


@dataclass
class Metrics:
    """Segmentation metrics over labelled pixels.

    Attributes:
        miou: Mean IoU over the classes present in the ground truth or the prediction.
        iou: Per-class IoU (NaN for a class absent from both).
        accuracy: Overall pixel accuracy.
        mask_iou: IoU of each mask head (prediction: logit > 0).
        confusion: ``(C, C)`` confusion matrix, rows = truth, columns = prediction.
        pixels: Number of labelled pixels evaluated.
    """

    miou: float
    iou: list[float]
    accuracy: float
    mask_iou: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    pixels: int = 0

    @property
    def precision(self) -> list[float]:
        """Per class: correct / predicted (NaN when the class is never predicted)."""
        conf = np.asarray(self.confusion, np.float64)
        return [float(v) for v in _ratio(np.diag(conf), conf.sum(0))]

    @property
    def recall(self) -> list[float]:
        """Per class: correct / true (NaN when the class is absent from the truth)."""
        conf = np.asarray(self.confusion, np.float64)
        return [float(v) for v in _ratio(np.diag(conf), conf.sum(1))]

    @property
    def f1(self) -> list[float]:
        """Per class: ``2 TP / (2 TP + FP + FN)`` (NaN for a class absent from both)."""
        conf = np.asarray(self.confusion, np.float64)
        tp = np.diag(conf)
        return [float(v) for v in _ratio(2 * tp, conf.sum(0) + conf.sum(1))]

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-able summary (per-class IoU keyed by class name when given)."""
        names = list(class_names) if class_names else [str(i) for i in range(len(self.iou))]
        return {
            "miou": round(self.miou, 4),
            "iou": {n: _json_float(v, 4) for n, v in zip(names, self.iou)},
            "accuracy": round(self.accuracy, 4),
            "mask_iou": {k: round(v, 4) for k, v in self.mask_iou.items()},
            "pixels": self.pixels,
        }

    def report(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The evaluation report: ``miou``, ``overall_accuracy``, ``per_class`` (``name``,
        ``iou``, ``precision``, ``recall``, ``f1``) and ``confusion`` (rows = truth).
        Undefined values (a class absent from truth and prediction) are None."""
        per_class = [
            {"name": n, "iou": _json_float(i), "precision": _json_float(p), "recall": _json_float(r),
             "f1": _json_float(f)}
            for n, i, p, r, f in zip(class_names, self.iou, self.precision, self.recall, self.f1)
        ]
        return {
            "miou": _json_float(self.miou),
            "overall_accuracy": _json_float(self.accuracy),
            "per_class": per_class,
            "confusion": np.asarray(self.confusion).astype(int).tolist(),
        }

    def to_state(self) -> dict[str, Any]:
        """Plain-Python state (for checkpoints); :meth:`from_state` reverses it."""
        return {
            "miou": self.miou, "iou": list(self.iou), "accuracy": self.accuracy,
            "mask_iou": dict(self.mask_iou), "confusion": np.asarray(self.confusion).tolist(),
            "pixels": self.pixels,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Metrics:
        conf = np.asarray(state["confusion"], np.int64)
        return cls(float(state["miou"]), [float(v) for v in state["iou"]], float(state["accuracy"]),
                   {k: float(v) for k, v in state["mask_iou"].items()}, conf, int(state["pixels"]))


def _json_float(v: float, digits: int = 6) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), digits)


def metrics_from_confusion(conf: np.ndarray, mask_stats: Mapping[str, Sequence[int]] | None = None) -> Metrics:
    """Metrics of a confusion matrix; ``mask_stats`` maps a mask head to its
    ``[intersection, union]`` pixel counts."""
    conf = np.asarray(conf)
    tp = np.diag(conf).astype(np.float64)
    iou = _ratio(tp, conf.sum(0) + conf.sum(1) - tp)
    present = iou[~np.isnan(iou)]
    total = int(conf.sum())
    mask_iou = {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in (mask_stats or {}).items()}
    return Metrics(
        miou=float(present.mean()) if present.size else float("nan"),
        iou=[float(v) for v in iou],
        accuracy=float(tp.sum() / total) if total else float("nan"),
        mask_iou=mask_iou,
        confusion=conf,
        pixels=total,
    )
