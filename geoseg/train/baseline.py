"""A classical baseline: a random forest on per-pixel bands and neighbourhood means.

Users of this field know the random forest; a CNN is only worth switching to if it beats
one trained on the same pixels. :class:`ForestBaseline` is that comparison, built in:

- **Features** (:func:`pixel_features`): for every pixel its band values plus the mean of
  each band over a square neighbourhood at two scales (``scales``, default 5 and 17
  pixels), computed with box filters over valid (non-nodata) pixels only.
- **Training pixels**: the labelled pixels of the training scenes (the same scenes,
  normalisation-free), at most ``max_samples`` of them, drawn at random with a seed.
- **Forest**: scikit-learn's ``RandomForestClassifier`` (``n_estimators`` trees, all cores).

scikit-learn is an optional extra: ``pip install 'geoseg[baseline]'``; :func:`available`
says whether it is installed, and :class:`ForestBaseline` raises a one-line
:class:`~geoseg.errors.InputError` saying how to install it when it is not.

Example::

    rf = ForestBaseline(seed=0).fit(train_scenes, num_classes=4)
    pred = rf.predict(scene.image, nodata=scene.nodata)          # uint8 (H, W)
    metrics = rf.score(val_scenes)                                # geoseg.train.metrics.Metrics
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.train.data import LabeledScene
from geoseg.train.metrics import Metrics, confusion_matrix, metrics_from_confusion

__all__ = [
    "ForestBaseline",
    "available",
    "compare_on_split",
    "comparison",
    "comparison_text",
    "evaluate_baseline",
    "pixel_features",
    "training_scenes_of",
]

#: Side lengths (pixels) of the two neighbourhoods whose band means are features.
SCALES: tuple[int, int] = (5, 17)


def available() -> bool:
    """Whether scikit-learn (the ``baseline`` extra) is installed."""
    return importlib.util.find_spec("sklearn") is not None


def _require() -> None:
    if not available():
        raise InputError(
            "the random-forest baseline needs scikit-learn: pip install 'geoseg[baseline]' (or scikit-learn)"
        )


def pixel_features(image: np.ndarray, valid: np.ndarray | None = None,
                   scales: Sequence[int] = SCALES) -> np.ndarray:
    """``(bands * (1 + len(scales)), H, W)`` float32 features of every pixel.

    The first ``bands`` features are the pixel's values; then, for each scale ``s``, the
    mean of each band over the ``s x s`` window centred on the pixel, over valid pixels
    only (nodata pixels neither count nor contribute; windows are clipped at the edges).
    """
    from scipy.ndimage import uniform_filter

    x = image.astype(np.float32)
    bands, h, w = x.shape
    v = np.ones((h, w), np.float32) if valid is None else valid.astype(np.float32)
    feats = [x]
    xv = x * v
    for s in scales:
        if s < 1:
            raise InputError(f"neighbourhood scales must be >= 1 pixel, got {s}")
        cnt = uniform_filter(v, size=s, mode="constant", cval=0.0)
        means = np.empty_like(x)
        for b in range(bands):
            total = uniform_filter(xv[b], size=s, mode="constant", cval=0.0)
            means[b] = np.where(cnt > 1e-6, total / np.maximum(cnt, 1e-6), 0.0)
        feats.append(means)
    return np.concatenate(feats, axis=0)


def _valid(scene: LabeledScene) -> np.ndarray | None:
    return None if scene.nodata is None else scene.valid()


@dataclass
class ForestBaseline:
    """A random forest on :func:`pixel_features`, trained on labelled pixels.

    Attributes:
        n_estimators: Trees.
        max_samples: At most this many labelled pixels are used for fitting (a seeded
            random subset of all of them).
        min_samples_leaf: Minimum pixels per leaf.
        scales: Neighbourhood sides (pixels) of the mean features.
        seed: Seed of the pixel subset and the forest.
        n_jobs: Parallel jobs of scikit-learn (-1: all cores).
    """

    n_estimators: int = 100
    max_samples: int = 50_000
    min_samples_leaf: int = 1
    scales: tuple[int, ...] = SCALES
    seed: int = 0
    n_jobs: int = -1

    def __post_init__(self) -> None:
        self.forest = None
        self.num_classes = 0
        self.fit_seconds = 0.0
        self.pixels = 0

    def fit(self, scenes: LabeledScene | Sequence[LabeledScene], num_classes: int) -> ForestBaseline:
        """Fit on every labelled, valid pixel of ``scenes`` (subsampled to ``max_samples``).

        Raises:
            InputError: Without scikit-learn, or without labelled pixels of two classes.
        """
        _require()
        from sklearn.ensemble import RandomForestClassifier

        t0 = time.perf_counter()
        scenes = [scenes] if isinstance(scenes, LabeledScene) else list(scenes)
        rng = np.random.default_rng(self.seed)
        total = 0
        for s in scenes:
            total += int(np.count_nonzero(self._labelled(s)))
        if total == 0:
            raise InputError("the baseline has no labelled training pixel to learn from")
        keep = min(1.0, self.max_samples / total)
        xs, ys = [], []
        for s in scenes:
            lab = self._labelled(s)
            idx = np.flatnonzero(lab.ravel())
            if keep < 1.0:
                idx = np.sort(rng.choice(idx, size=max(1, round(idx.size * keep)), replace=False))
            if not idx.size:
                continue
            f = pixel_features(s.image, _valid(s), self.scales)
            xs.append(f.reshape(f.shape[0], -1)[:, idx].T)
            ys.append(s.labels.ravel()[idx])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if np.unique(y).size < 2:
            raise InputError("the baseline's training pixels hold a single class: it needs at least two")
        self.forest = RandomForestClassifier(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, n_jobs=self.n_jobs,
            random_state=self.seed,
        ).fit(x, y)
        self.num_classes = num_classes
        self.pixels = int(y.size)
        self.fit_seconds = time.perf_counter() - t0
        return self

    @staticmethod
    def _labelled(s: LabeledScene) -> np.ndarray:
        lab = s.labels != IGNORE
        if s.nodata is not None:
            lab &= s.valid()
        return lab

    def predict(self, image: np.ndarray, nodata: float | None = None, where: np.ndarray | None = None,
                chunk: int = 262_144) -> np.ndarray:
        """uint8 ``(H, W)`` classes of every pixel (or only where ``where``; 255 elsewhere
        and on nodata)."""
        if self.forest is None:
            raise InputError("ForestBaseline.predict: fit the baseline first")
        valid = None if nodata is None else ~np.all(image == nodata, axis=0)
        f = pixel_features(image, valid, self.scales)
        h, w = image.shape[1:]
        todo = np.ones((h, w), bool) if where is None else where.copy()
        if valid is not None:
            todo &= valid
        out = np.full(h * w, IGNORE, np.uint8)
        idx = np.flatnonzero(todo.ravel())
        flat = f.reshape(f.shape[0], -1)
        for i in range(0, idx.size, chunk):
            part = idx[i:i + chunk]
            out[part] = self.forest.predict(flat[:, part].T).astype(np.uint8)
        return out.reshape(h, w)

    def score(self, scenes: LabeledScene | Sequence[LabeledScene]) -> Metrics:
        """Metrics on the labelled, valid pixels of ``scenes``."""
        scenes = [scenes] if isinstance(scenes, LabeledScene) else list(scenes)
        conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        for s in scenes:
            lab = self._labelled(s)
            pred = self.predict(s.image, s.nodata, where=lab)
            conf += confusion_matrix(np.where(lab, s.labels, IGNORE), pred, self.num_classes)
        return metrics_from_confusion(conf)


def comparison(model: Metrics, forest: Metrics, class_names: Sequence[str]) -> dict:
    """The model's and the forest's scores on the same pixels, JSON-able."""
    def one(m: Metrics) -> dict:
        return {"miou": _round(m.miou), "overall_accuracy": _round(m.accuracy),
                "iou": {n: _round(v) for n, v in zip(class_names, m.iou)}}

    return {"pixels": int(model.pixels), "model": one(model), "random_forest": one(forest),
            "model_wins": bool(model.miou > forest.miou and model.accuracy > forest.accuracy)}


def _round(v: float) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 4)


def comparison_text(result: dict, where: str) -> str:
    """A few readable lines of :func:`comparison` output."""
    m, f = result["model"], result["random_forest"]
    names = list(m["iou"])
    width = max(len("random forest"), *(len(n) for n in names))

    def cell(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.3f}"

    lines = [f"model vs random-forest baseline on {where} ({result['pixels']} labelled pixels):",
             f"{'':<{width}}  {'mIoU':>6}  {'OA':>6}  " + "  ".join(f"{n[:8]:>8}" for n in names)]
    for label, r in (("model", m), ("random forest", f)):
        lines.append(f"{label:<{width}}  {cell(r['miou'])}  {cell(r['overall_accuracy'])}  "
                     + "  ".join(f"{cell(r['iou'][n]):>8}" for n in names))
    lines.append("the model beats the baseline on mIoU and overall accuracy" if result["model_wins"] else
                 "the model does NOT beat the baseline on both mIoU and overall accuracy")
    return "\n".join(lines)


def compare_on_split(history, num_classes: int, seed: int = 0) -> dict | None:
    """Fit the forest on a finished training run's training pixels and score both on its
    validation pixels (``history`` from :func:`geoseg.train.train`); None without
    validation."""
    best = history.best
    if best is None or best.val is None or not history.val_scenes:
        return None
    forest = ForestBaseline(seed=seed).fit(history.train_scenes, num_classes)
    result = comparison(best.val, forest.score(history.val_scenes), history.class_names)
    result["forest_pixels"] = forest.pixels
    result["forest_seconds"] = round(forest.fit_seconds, 1)
    return result


def training_scenes_of(training: dict, class_names: Sequence[str]) -> list[LabeledScene]:
    """The training scenes a model bundle records (``bundle.training``: ``data`` pairs and
    ``labels`` options, as ``geoseg train`` writes them), read again."""
    from geoseg.io.labels import LabelOptions
    from geoseg.train.data import load_scene

    pairs = training.get("data") or []
    if not pairs:
        raise InputError("the model records no training data (it was not trained by geoseg train): give "
                         "--train-image and --train-labels for the baseline")
    opts = dict(training.get("labels") or {})
    options = LabelOptions(opts.get("field"), opts.get("layer"), opts.get("background", "auto"),
                           opts.get("nodata", "auto"), bool(opts.get("all_touched", False)))
    return [load_scene(p["image"], p["labels"], label_options=options, class_names=list(class_names))
            for p in pairs]


def evaluate_baseline(training: dict, class_names: Sequence[str], image: str, labels: str, *,
                      label_options=None, bands: Sequence[int] | None = None,
                      train: Sequence[tuple[str, str]] | None = None, seed: int = 0) -> tuple[Metrics, ForestBaseline]:
    """Fit the forest on a model's training pixels and score it on ``labels`` of ``image``.

    Args:
        training: The bundle's ``training`` metadata (where its training data are).
        class_names: The model's classes.
        image: The evaluation scene (read whole into memory).
        labels: Its ground truth (class raster on any grid, or polygons).
        label_options: How ``labels`` become class ids.
        bands: 1-based bands of ``image`` in the model's order.
        train: ``(image, labels)`` pairs to train on instead of the recorded ones (read with
            the recorded label options).
        seed: Seed of the forest.
    """
    from geoseg.train.data import load_scene

    names = list(class_names)
    if train:
        training = {**training, "data": [{"image": i, "labels": lb} for i, lb in train]}
    scenes = training_scenes_of(training, names)
    scene = load_scene(image, labels, label_options=label_options, class_names=names)
    if bands:
        scene = LabeledScene(scene.image[[b - 1 for b in bands]], scene.labels, None, scene.nodata, scene.name)
    for s in scenes:
        if s.image.shape[0] != scene.image.shape[0]:
            raise InputError(f"the training image {s.name} has {s.image.shape[0]} bands but the evaluation image "
                             f"has {scene.image.shape[0]}: give --bands")
    forest = ForestBaseline(seed=seed).fit(scenes, len(names))
    return forest.score(scene), forest
