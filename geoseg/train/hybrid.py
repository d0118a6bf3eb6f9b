"""The network and a random forest combined into one model, weighted on validation.

A U-Net trained on one small scene can memorise it and lose, on new ground, to the random
forest that ``geoseg evaluate --baseline rf`` fits on the same pixels (issue 24). So
``geoseg train`` also fits a forest and writes the mixture of the two that does best on
the validation split, as one bundle (:class:`geoseg.models.forest.UNetForest`) that
``geoseg run`` tiles like any U-Net:

1. :func:`fit_forest`: a random forest (scikit-learn, :data:`TREES` trees of depth at most
   :data:`TREE_DEPTH`, on at most :data:`MAX_SAMPLES` labelled pixels drawn with the seed)
   on the features the built-in baseline uses (bands and their 5- and 17-px means), computed
   from the *normalised* image exactly as the model computes them at inference, and
   converted into a :class:`~geoseg.models.forest.PixelForest` (complete trees in tensors).
2. :func:`choose_weight`: the network (fitted on the training blocks) and a forest fitted on
   the same training blocks predict the validation blocks; of the mixtures
   ``w * network + (1 - w) * forest`` for ``w`` in :data:`WEIGHTS`, the one with the best
   mIoU + overall accuracy is taken among those at least as good as the forest alone on
   both (``w = 0`` always is); ties go to the weight nearest 0.5. Without validation
   pixels the weight is :data:`NO_VALIDATION_WEIGHT`.
3. The final forest is refitted on every labelled pixel (training and validation blocks,
   as the baseline is) and joined to the network with the chosen weight. With ``w = 1`` the
   plain U-Net is written (no forest, nothing slower).

:func:`validation_warning` says when the validation split is too small to trust.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.train.data import LabeledScene
from geoseg.train.metrics import Metrics, confusion_matrix, metrics_from_confusion

__all__ = [
    "Blend", "choose_weight", "fit_forest", "forest_seconds_estimate", "scene_probabilities",
    "validation_warning",
]

#: Trees of the model's forest and their depth (as accurate as the baseline's 100 unlimited
#: trees on the benchmark scenes, measured, and ~7x cheaper to evaluate).
TREES, TREE_DEPTH = 50, 10
#: At most this many labelled pixels fit the forest (the baseline's number).
MAX_SAMPLES = 50_000
#: The network weights tried on validation.
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The weight without validation pixels: an even mixture.
NO_VALIDATION_WEIGHT = 0.5
#: Validation is too small to trust below this many labelled pixels, or when a class the
#: training labels hold has fewer than MIN_CLASS_PIXELS validation pixels (or none).
MIN_VAL_PIXELS, MIN_CLASS_PIXELS = 2000, 50


def _normalised(scene: LabeledScene, normalization: Mapping[str, Sequence[float]]) -> torch.Tensor:
    """``(1, B, H, W)`` float32 as the predictor feeds a model: nodata pixels 0 (hidden
    validation pixels keep their values: they are real image pixels)."""
    mean = np.asarray(normalization["mean"], np.float32)[:, None, None]
    inv = (1.0 / np.asarray(normalization["std"], np.float32))[:, None, None]
    x = (scene.image.astype(np.float32) - mean) * inv
    if scene.nodata is not None:
        x *= ~np.all(scene.image == scene.nodata, axis=0)
    return torch.from_numpy(np.ascontiguousarray(x))[None]


def _padded(x: torch.Tensor, factor: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    return (torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x), ph, pw


def _labelled(scene: LabeledScene) -> np.ndarray:
    lab = scene.labels != IGNORE
    if scene.nodata is not None or scene.hidden is not None:
        lab &= scene.valid()
    return lab


def scene_features(scene: LabeledScene, normalization: Mapping[str, Sequence[float]], factor: int,
                   scales: Sequence[int]) -> torch.Tensor:
    """``(F, H, W)`` forest features of a scene, as the model computes them on it whole."""
    from geoseg.models.forest import pixel_features

    x, ph, pw = _padded(_normalised(scene, normalization), factor)
    f = pixel_features(x, scales)[0]
    h, w = scene.shape
    return f[:, :h, :w]


def _down32(t: np.ndarray) -> np.ndarray:
    """float64 thresholds as the largest float32 <= each: ``x > t`` is unchanged for float32 ``x``."""
    t32 = t.astype(np.float32)
    over = t32.astype(np.float64) > t
    t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
    return t32


def _complete_tree(tree: Any, depth: int, columns: np.ndarray, num_classes: int):
    """A fitted scikit-learn tree as complete arrays (breadth-first splits, leaf distributions)."""
    splits = 2**depth - 1
    feature = np.zeros(splits, np.int64)
    threshold = np.full(splits, np.inf, np.float32)
    nodes = np.zeros(1, np.int64)
    for level in range(depth):
        first = 2**level - 1
        left = tree.children_left[nodes]
        leaf = left < 0
        feature[first:first + nodes.size] = np.where(leaf, 0, tree.feature[nodes])
        threshold[first:first + nodes.size] = np.where(leaf, np.float32(np.inf), _down32(tree.threshold[nodes]))
        nodes = np.stack([np.where(leaf, nodes, left), np.where(leaf, nodes, tree.children_right[nodes])], 1).ravel()
    values = tree.value[nodes, 0, :].astype(np.float64)
    values /= np.maximum(values.sum(1, keepdims=True), 1e-12)
    out = np.zeros((2**depth, num_classes), np.float32)
    out[:, columns] = values
    return feature, threshold, out


def fit_forest(scenes: Sequence[LabeledScene], normalization: Mapping[str, Sequence[float]], factor: int,
               num_classes: int, *, seed: int = 0, trees: int = TREES, tree_depth: int = TREE_DEPTH,
               scales: Sequence[int] | None = None, max_samples: int = MAX_SAMPLES):
    """A :class:`~geoseg.models.forest.PixelForest` fitted on the labelled, valid pixels of
    ``scenes`` (features of the normalised images, as the model computes them).

    Raises:
        InputError: Without scikit-learn, or without labelled pixels of two classes.
    """
    from geoseg.models.forest import PixelForest
    from geoseg.train.baseline import SCALES, _require

    _require()
    from sklearn.ensemble import RandomForestClassifier

    scales = tuple(SCALES if scales is None else scales)
    rng = np.random.default_rng(seed)
    masks = [_labelled(s) for s in scenes]
    total = int(sum(m.sum() for m in masks))
    if total == 0:
        raise InputError("the forest has no labelled training pixel to learn from")
    keep = min(1.0, max_samples / total)
    xs, ys = [], []
    for s, m in zip(scenes, masks):
        idx = np.flatnonzero(m.ravel())
        if keep < 1.0:
            idx = np.sort(rng.choice(idx, size=max(1, round(idx.size * keep)), replace=False))
        if not idx.size:
            continue
        f = scene_features(s, normalization, factor, scales).reshape(-1, m.size).numpy()
        xs.append(f[:, idx].T)
        ys.append(s.labels.ravel()[idx])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if np.unique(y).size < 2:
        raise InputError("the forest's training pixels hold a single class: it needs at least two")
    rf = RandomForestClassifier(n_estimators=trees, max_depth=tree_depth, n_jobs=-1, random_state=seed).fit(x, y)
    forest = PixelForest(scenes[0].image.shape[0], num_classes, trees, tree_depth, scales)
    parts = [_complete_tree(e.tree_, tree_depth, rf.classes_.astype(np.int64), num_classes) for e in rf.estimators_]
    with torch.no_grad():
        forest.feature.copy_(torch.from_numpy(np.stack([p[0] for p in parts])))
        forest.threshold.copy_(torch.from_numpy(np.stack([p[1] for p in parts])))
        forest.leaf.copy_(torch.from_numpy(np.stack([p[2] for p in parts])))
    return forest.eval()


def forest_seconds_estimate(scenes: Sequence[LabeledScene], normalization: Mapping[str, Sequence[float]],
                            factor: int, num_classes: int, seed: int = 0) -> float:
    """Seconds the two forest fits of a run will take: a fit of a tenth of the trees, timed
    (scikit-learn imported first: its import is paid once)."""
    from geoseg.train.baseline import available

    if not available():
        return 0.0
    import sklearn.ensemble  # noqa: F401

    t0 = time.perf_counter()
    try:
        fit_forest(scenes, normalization, factor, num_classes, seed=seed, trees=max(1, TREES // 10))
    except InputError:
        return 0.0
    return 2 * 10 * (time.perf_counter() - t0)


def scene_probabilities(module: torch.nn.Module, scene: LabeledScene, normalization: Mapping[str, Sequence[float]],
                        factor: int) -> np.ndarray:
    """``(C, H, W)`` float32 class probabilities of a whole scene (as whole-image
    inference: padded to the factor, nodata 0): a U-Net's softmax, or a forest's."""
    from geoseg.models.forest import PixelForest

    x, _, _ = _padded(_normalised(scene, normalization), factor)
    h, w = scene.shape
    with torch.inference_mode():
        out = module(x)
        if not isinstance(module, PixelForest):
            out = torch.softmax((out[0] if isinstance(out, tuple) else out).float(), dim=1)
    return out[0, :, :h, :w].numpy()


@dataclass
class Blend:
    """The chosen mixture and what validation said of each candidate.

    Attributes:
        weight: The network's weight ``w``.
        why: How it was chosen.
        candidates: ``{w: Metrics}`` on the validation pixels.
    """

    weight: float
    why: str
    candidates: dict[float, Metrics] = field(default_factory=dict)

    def as_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {"net_weight": self.weight, "why": self.why,
                "validation": {f"{w:g}": {"miou": round(m.miou, 4), "overall_accuracy": round(m.accuracy, 4)}
                               for w, m in self.candidates.items()}}


def choose_weight(net_probs: Sequence[np.ndarray], forest_probs: Sequence[np.ndarray],
                  labels: Sequence[np.ndarray], num_classes: int, weights: Sequence[float] = WEIGHTS) -> Blend:
    """The network weight of the mixture to write (see the module's rule 2).

    Args:
        net_probs, forest_probs: ``(C, H, W)`` probabilities per validation scene.
        labels: ``(H, W)`` class ids per validation scene (255: not scored).
    """
    if not labels or not any((lb != IGNORE).any() for lb in labels):
        return Blend(NO_VALIDATION_WEIGHT, "no validation pixels: an even mixture")
    scores: dict[float, Metrics] = {}
    for w in weights:
        conf = np.zeros((num_classes, num_classes), np.int64)
        for pn, pf, lb in zip(net_probs, forest_probs, labels):
            pred = np.argmax(w * pn + (1.0 - w) * pf, axis=0).astype(np.uint8)
            conf += confusion_matrix(lb, pred, num_classes)
        scores[float(w)] = metrics_from_confusion(conf)
    forest = scores[0.0]
    ok = [w for w, m in scores.items() if m.miou >= forest.miou and m.accuracy >= forest.accuracy]
    best = max(ok, key=lambda w: (round(scores[w].miou + scores[w].accuracy, 9), -abs(w - 0.5)))
    why = ("validation: the best mIoU + OA of the mixtures at least as good as the forest alone on both"
           if best else "validation: no mixture with the network beats the forest alone on both mIoU and OA")
    return Blend(best, why, scores)


def validation_warning(train: Sequence[LabeledScene], val: Sequence[LabeledScene], class_names: Sequence[str]) -> str:
    """Why the validation split is too small to trust ('' when it is not)."""
    n = len(class_names)

    def counts(scenes: Sequence[LabeledScene]) -> np.ndarray:
        c = np.zeros(n, np.int64)
        for s in scenes:
            lb = s.labels[_labelled(s)]
            c += np.bincount(lb, minlength=n)[:n]
        return c

    if not val:
        return "no validation pixels: the scores cannot be checked"
    tr, va = counts(train), counts(val)
    problems = []
    if va.sum() < MIN_VAL_PIXELS:
        problems.append(f"{int(va.sum())} labelled validation pixels (< {MIN_VAL_PIXELS})")
    few = [f"{class_names[k]} {int(va[k])}" for k in range(n) if tr[k] > 0 and va[k] < MIN_CLASS_PIXELS]
    if few:
        problems.append(f"classes with < {MIN_CLASS_PIXELS} validation pixels: {', '.join(few)}")
    if not problems:
        return ""
    return ("validation too small to trust (" + "; ".join(problems) + "): its scores, and the choices made on "
            "them, may not hold on new ground; label more, or give validation scenes (validation: in a config)")
