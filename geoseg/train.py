"""Training: random chips from labelled scenes, a U-Net bundle, validation by mIoU.

The data plumbing is deliberately simple: a :class:`LabeledScene` holds whole numpy
arrays (read with :func:`load_scene`, or made in memory). :func:`train` samples random
square chips from the training scenes (skipping mostly unlabelled ones), normalises them
with per-band statistics computed over valid (non-nodata) training pixels, augments them
(flips, 90-degree rotations, per-band brightness/contrast), and optimises cross-entropy
(``ignore_index`` 255, optional class weights) for the class head plus BCE + Dice for the
mask heads with AdamW and a one-cycle or cosine learning-rate schedule. After each epoch
it predicts the validation scenes (spatially separate from the training area: other
scenes, or a strip split off each training scene) tile by tile with the model's halo and
reports mIoU. Same seed, same data, same thread count: same result.

Example::

    bundle = build_unet(["blue", "green", "red", "nir"], LANDCOVER_CLASSES, ["built_up"])
    scenes = [load_scene("s0.tif", "s0_labels.tif"), ...]
    module, history = train(bundle, scenes, val, epochs=10, mask_classes={"built_up": [4, 5]})
    trained = bundle.replace(module=module, normalization=history.normalization,
                             training=history.summary())
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from geoseg.errors import InputError
from geoseg.models.bundle import ModelBundle
from geoseg.models.perf import prepare_for_inference

__all__ = [
    "IGNORE",
    "LabeledScene",
    "load_scene",
    "split_scene",
    "TrainConfig",
    "EpochStats",
    "TrainHistory",
    "Metrics",
    "compute_normalization",
    "class_frequencies",
    "predict_scene",
    "evaluate",
    "train",
]

#: Label value that marks pixels without ground truth (ignored by losses and metrics).
IGNORE = 255


# --------------------------------------------------------------------------- data


@dataclass
class LabeledScene:
    """A raster and its ground truth, as in-memory arrays on the same grid.

    Attributes:
        image: Raw ``(bands, H, W)`` values (any numeric dtype).
        labels: ``(H, W)`` uint8 class ids; 255 = no label.
        masks: Optional ``(M, H, W)`` uint8 targets of the mask heads (0/1, 255 = no
            label); when None they are derived from the labels (``mask_classes``).
        nodata: Image nodata value: pixels where every band equals it are invalid
            (excluded from statistics, labels treated as 255).
        name: For messages.
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    nodata: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise InputError(f"scene {self.name!r}: image must be (bands, H, W), got shape {self.image.shape}")
        if self.labels.shape != self.image.shape[1:]:
            raise InputError(
                f"scene {self.name!r}: labels shape {self.labels.shape} does not match image "
                f"{self.image.shape[1:]}"
            )
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[1:] != self.labels.shape):
            raise InputError(f"scene {self.name!r}: masks must be (M, H, W) on the labels' grid")

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.labels.shape  # type: ignore[return-value]

    def valid(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Boolean ``(h, w)``: not nodata (all bands) in the window."""
        if self.nodata is None:
            return np.ones(self.labels[rows, cols].shape, bool)
        return ~np.all(self.image[:, rows, cols] == self.nodata, axis=0)

    def window(self, rows: slice, cols: slice) -> LabeledScene:
        """A view of a window of the scene."""
        masks = None if self.masks is None else self.masks[:, rows, cols]
        return LabeledScene(self.image[:, rows, cols], self.labels[rows, cols], masks, self.nodata, self.name)


def load_scene(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    mask_paths: Sequence[str | os.PathLike[str]] = (),
) -> LabeledScene:
    """Read an image and its label raster (and optional mask rasters) with rasterio.

    Raises:
        InputError: If the rasters are not on the same grid.
    """
    import rasterio

    with rasterio.open(image_path) as src:
        image = src.read()
        nodata = src.nodata
        grid = (src.width, src.height, src.transform)
    with rasterio.open(labels_path) as src:
        if (src.width, src.height, src.transform) != grid:
            raise InputError(f"{labels_path} is not on the grid of {image_path}")
        labels = src.read(1).astype(np.uint8)
        if src.nodata is not None and src.nodata != IGNORE:
            labels[src.read(1) == src.nodata] = IGNORE
    masks = None
    if mask_paths:
        layers = []
        for p in mask_paths:
            with rasterio.open(p) as src:
                if (src.width, src.height, src.transform) != grid:
                    raise InputError(f"{p} is not on the grid of {image_path}")
                layers.append(src.read(1).astype(np.uint8))
        masks = np.stack(layers)
    return LabeledScene(image, labels, masks, nodata, name=os.fspath(image_path))


def split_scene(scene: LabeledScene, val_fraction: float = 0.2, gap: int = 64) -> tuple[LabeledScene, LabeledScene]:
    """Split a scene into a training part (top) and a validation strip (bottom).

    ``gap`` rows between the two are used by neither, so that training chips and
    validation pixels are spatially separate.
    """
    h = scene.shape[0]
    n_val = int(round(h * val_fraction))
    if not 0 < n_val < h - gap:
        raise InputError(f"scene {scene.name!r}: cannot split {h} rows with val_fraction={val_fraction}, gap={gap}")
    train_part = scene.window(slice(0, h - n_val - gap), slice(None))
    val_part = scene.window(slice(h - n_val, h), slice(None))
    return train_part, val_part


# --------------------------------------------------------------------------- config and results


@dataclass
class TrainConfig:
    """Training options.

    Attributes:
        epochs: Passes of ``chips_per_epoch`` random chips.
        chips_per_epoch: Chips sampled per epoch.
        chip_size: Side of the square chips (a multiple of the model's downsampling).
        batch_size: Chips per optimiser step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``"onecycle"``, ``"cosine"`` (with warmup) or ``"constant"``.
        warmup: Fraction of steps spent warming up (onecycle and cosine).
        class_weights: Cross-entropy class weights, ``"auto"`` (inverse square root of
            the training label frequencies, mean 1), or None.
        mask_classes: For each mask head without explicit targets, the class ids whose
            pixels are positive (e.g. ``{"built_up": [4, 5]}``).
        mask_loss_weight: Weight of (BCE + Dice) of the mask heads.
        augment: Random flips, 90-degree rotations and per-band brightness/contrast.
        brightness: Max additive per-band shift, in units of the band's std.
        contrast: Max relative per-band gain change.
        min_labeled: Chips with a smaller fraction of labelled pixels are re-drawn.
        val_fraction: With no validation scenes, the bottom fraction of each training
            scene is held out (after a ``val_gap``-row gap).
        val_gap: Rows left out between the training part and the validation strip.
        val_tile: Tile size for validation inference.
        early_stopping: Stop when val mIoU has not improved for this many epochs (None: off).
        restore_best: Return the weights of the epoch with the best val mIoU.
        time_limit: Stop after the epoch during which this many seconds have elapsed.
        channels_last: Train in ``channels_last`` memory format (faster on CPU).
        seed: Seed of chip sampling, augmentation and torch's RNG.
        num_threads: torch threads (None: leave as is).
        progress: Show a tqdm progress bar.
    """

    epochs: int = 10
    chips_per_epoch: int = 512
    chip_size: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup: float = 0.15
    class_weights: Sequence[float] | Literal["auto"] | None = None
    mask_classes: Mapping[str, Sequence[int]] | None = None
    mask_loss_weight: float = 1.0
    augment: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    min_labeled: float = 0.5
    val_fraction: float = 0.2
    val_gap: int = 64
    val_tile: int = 512
    early_stopping: int | None = None
    restore_best: bool = True
    time_limit: float | None = None
    channels_last: bool = True
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "chips_per_epoch", "chip_size", "batch_size", "val_tile"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise InputError(f"TrainConfig.schedule must be onecycle, cosine or constant, got {self.schedule!r}")
        if not self.lr > 0:
            raise InputError(f"TrainConfig.lr must be > 0, got {self.lr!r}")


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
    mask_iou: dict[str, float]
    confusion: np.ndarray
    pixels: int

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-able summary (per-class IoU keyed by class name when given)."""
        names = list(class_names) if class_names else [str(i) for i in range(len(self.iou))]
        return {
            "miou": round(self.miou, 4),
            "iou": {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(names, self.iou)},
            "accuracy": round(self.accuracy, 4),
            "mask_iou": {k: round(v, 4) for k, v in self.mask_iou.items()},
            "pixels": self.pixels,
        }


@dataclass
class EpochStats:
    """One epoch: mean training loss, validation metrics, learning rate, duration."""

    epoch: int
    train_loss: float
    val: Metrics | None
    lr: float
    seconds: float

    @property
    def val_miou(self) -> float:
        return float("nan") if self.val is None else self.val.miou


@dataclass
class TrainHistory:
    """What :func:`train` did.

    Attributes:
        epochs: Per-epoch statistics.
        best_epoch: Epoch (1-based) with the best val mIoU (whose weights are returned
            when ``restore_best``).
        normalization: ``{"mean": [...], "std": [...]}`` used (raw units, per band).
        class_weights: Cross-entropy class weights used, or None.
        config: The configuration.
        seconds: Wall time.
        stopped: Why training ended (``"epochs"``, ``"early_stopping"``, ``"time_limit"``).
    """

    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    normalization: dict[str, list[float]] = field(default_factory=dict)
    class_weights: list[float] | None = None
    config: TrainConfig | None = None
    seconds: float = 0.0
    stopped: str = "epochs"
    class_names: list[str] = field(default_factory=list)

    @property
    def best(self) -> EpochStats | None:
        """The best epoch's statistics."""
        return self.epochs[self.best_epoch - 1] if self.best_epoch else None

    def summary(self) -> dict[str, Any]:
        """JSON-able provenance for a bundle's ``training`` metadata."""
        best = self.best
        cfg = dataclasses.asdict(self.config) if self.config else {}
        cfg.pop("progress", None)
        if isinstance(cfg.get("mask_classes"), Mapping):
            cfg["mask_classes"] = {k: list(v) for k, v in cfg["mask_classes"].items()}
        return {
            "epochs_run": len(self.epochs),
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 1),
            "val": None if best is None or best.val is None else best.val.as_dict(self.class_names),
            "loss": [round(e.train_loss, 4) for e in self.epochs],
            "val_miou": [None if math.isnan(e.val_miou) else round(e.val_miou, 4) for e in self.epochs],
            "class_weights": self.class_weights,
            "config": cfg,
        }


# --------------------------------------------------------------------------- statistics


def compute_normalization(scenes: Iterable[LabeledScene], block: int = 512) -> dict[str, list[float]]:
    """Per-band mean and std over valid (non-nodata) pixels of all scenes.

    Computed in float64 block by block (no full-size float copies).

    Raises:
        InputError: If there are no valid pixels or the band counts differ.
    """
    total = None
    count = 0
    for s in scenes:
        h, w = s.shape
        for r in range(0, h, block):
            for c in range(0, w, block):
                rows, cols = slice(r, r + block), slice(c, c + block)
                px = s.image[:, rows, cols].reshape(s.image.shape[0], -1).astype(np.float64)
                px = px[:, s.valid(rows, cols).ravel()]
                sums = np.stack([px.sum(1), np.square(px).sum(1)])
                if total is None:
                    total = sums
                elif total.shape != sums.shape:
                    raise InputError("scenes have different band counts")
                else:
                    total += sums
                count += px.shape[1]
    if total is None or count == 0:
        raise InputError("no valid (non-nodata) pixels to compute normalisation statistics from")
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean**2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def class_frequencies(scenes: Iterable[LabeledScene], num_classes: int) -> np.ndarray:
    """Fraction of labelled pixels in each class."""
    counts = np.zeros(num_classes, np.int64)
    for s in scenes:
        counts += np.bincount(s.labels.ravel(), minlength=256)[:num_classes]
    return counts / max(counts.sum(), 1)


# --------------------------------------------------------------------------- helpers


def _targets(scene: LabeledScene, rows: slice, cols: slice, heads: Sequence[str],
             mask_classes: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (255 on nodata) and mask targets (255 = ignore) of a window."""
    labels = scene.labels[rows, cols].copy()
    if scene.nodata is not None:
        labels[~scene.valid(rows, cols)] = IGNORE
    if not heads:
        return labels, None
    if scene.masks is not None:
        masks = scene.masks[:, rows, cols].copy()
        masks[:, labels == IGNORE] = IGNORE
    else:
        masks = np.empty((len(heads),) + labels.shape, np.uint8)
        for i, head in enumerate(heads):
            masks[i] = np.isin(labels, list(mask_classes[head]))
        masks[:, labels == IGNORE] = IGNORE
    return labels, masks


def _normalize(raw: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """float32 ``(raw - mean) / std``; invalid pixels become 0 (the band mean)."""
    x = raw.astype(np.float32)
    x -= mean
    x *= inv_std
    if valid is not None:
        x[..., ~valid] = 0.0
    return x


def _outputs(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def predict_scene(
    module: nn.Module,
    scene_or_image: LabeledScene | np.ndarray,
    normalization: Mapping[str, Sequence[float]],
    *,
    halo: int,
    factor: int,
    tile: int = 512,
    nodata: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict a whole in-memory scene tile by tile, with the scene pipeline's grid and
    per-tile kernel (:class:`geoseg.grid.TileGrid`, :class:`geoseg.predict.Predictor`).

    Args:
        module: Eval-mode module (e.g. from ``prepare_for_inference``).
        scene_or_image: A scene or a raw ``(bands, H, W)`` array.
        normalization: ``{"mean", "std"}`` in raw units.
        halo: Context pixels per side.
        factor: The module's downsampling factor.
        tile: Core tile size (rounded up to a multiple of ``factor``).
        nodata: Image nodata (taken from the scene when one is given).

    Returns:
        ``(classes, masks)``: uint8 ``(H, W)`` argmax and bool ``(M, H, W)`` (logit > 0),
        or None without mask heads.
    """
    from geoseg.grid import TileGrid
    from geoseg.predict import NODATA, Predictor

    if isinstance(scene_or_image, LabeledScene):
        image, nodata = scene_or_image.image, scene_or_image.nodata
    else:
        image = scene_or_image
    _, h, w = image.shape
    predictor = Predictor(module, normalization["mean"], normalization["std"], factor, num_masks=0)
    classes = np.zeros((h, w), np.uint8)
    masks: np.ndarray | None = None
    for t in TileGrid(h, w, tile, halo=halo, factor=factor):
        raw = image[(slice(None), *t.read.slices)].astype(np.float32)
        valid = np.ones(raw.shape[1:], bool) if nodata is None else ~np.all(raw == nodata, axis=0)
        p = predictor.predict(raw[None], valid[None])
        classes[t.core.slices] = p.classes[0][t.crop]
        if p.masks.shape[1]:
            if masks is None:
                masks = np.zeros((p.masks.shape[1], h, w), bool)
            masks[(slice(None), *t.core.slices)] = p.masks[0][(slice(None), *t.crop)] == 1
    classes[classes == NODATA] = 0  # nodata pixels carry no label: any class id will do
    return classes, masks


def _confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    keep = (truth < num_classes) & (pred < num_classes)
    idx = truth[keep].astype(np.int64) * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _metrics(conf: np.ndarray, mask_stats: dict[str, list[int]]) -> Metrics:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    present = iou[~np.isnan(iou)]
    total = int(conf.sum())
    mask_iou = {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in mask_stats.items()}
    return Metrics(
        miou=float(present.mean()) if present.size else float("nan"),
        iou=[float(v) for v in iou],
        accuracy=float(tp.sum() / total) if total else float("nan"),
        mask_iou=mask_iou,
        confusion=conf,
        pixels=total,
    )


def evaluate(
    model: ModelBundle | nn.Module,
    scenes: LabeledScene | Sequence[LabeledScene],
    *,
    normalization: Mapping[str, Sequence[float]] | None = None,
    halo: int | None = None,
    factor: int | None = None,
    mask_heads: Sequence[str] = (),
    mask_classes: Mapping[str, Sequence[int]] | None = None,
    num_classes: int | None = None,
    tile: int = 512,
    fast: bool = True,
) -> Metrics:
    """Predict labelled scenes and compute mIoU, per-class IoU and mask-head IoU.

    With a :class:`ModelBundle`, normalisation, halo, factor, class and mask-head
    information come from it; with a bare module they must be given.

    Args:
        model: Bundle or eval-mode module.
        scenes: Labelled scenes.
        normalization: Overrides the bundle's.
        halo: Context per tile side (default: the bundle's).
        factor: Downsampling factor (default: the bundle's).
        mask_heads: Names of the mask heads (bare module).
        mask_classes: Class ids that make each mask head's target, for scenes without masks.
        num_classes: Number of classes (bare module).
        tile: Core tile size.
        fast: Predict with a BatchNorm-folded ``channels_last`` copy.
    """
    if isinstance(model, ModelBundle):
        module = model.module
        normalization = normalization or model.normalization.model_dump()
        halo = model.halo if halo is None else halo
        factor = factor or model.downsampling
        mask_heads = mask_heads or model.mask_heads
        num_classes = num_classes or model.num_classes
    else:
        module = model
    if normalization is None or halo is None or factor is None or num_classes is None:
        raise InputError("evaluate() with a bare module needs normalization, halo, factor and num_classes")
    if isinstance(scenes, LabeledScene):
        scenes = [scenes]
    module = prepare_for_inference(module) if fast else module.eval()
    mask_classes = mask_classes or {}
    conf = np.zeros((num_classes, num_classes), np.int64)
    mask_stats = {h: [0, 0] for h in mask_heads}
    evaluated: set[str] = set()
    for s in scenes:
        pred, pred_masks = predict_scene(module, s, normalization, halo=halo, factor=factor, tile=tile)
        heads = list(mask_heads) if s.masks is not None else [h for h in mask_heads if h in mask_classes]
        labels, targets = _targets(s, slice(None), slice(None), heads, mask_classes)
        conf += _confusion(labels, pred, num_classes)
        if pred_masks is None or targets is None:
            continue
        for t, head in zip(targets, heads):
            keep = t != IGNORE
            p, tt = pred_masks[list(mask_heads).index(head)][keep], t[keep] == 1
            mask_stats[head][0] += int(np.count_nonzero(p & tt))
            mask_stats[head][1] += int(np.count_nonzero(p | tt))
            evaluated.add(head)
    return _metrics(conf, {k: v for k, v in mask_stats.items() if k in evaluated})


# --------------------------------------------------------------------------- sampling and augmentation


class _ChipSampler:
    """Random labelled chips from the training scenes, normalised and augmented."""

    def __init__(self, scenes: Sequence[LabeledScene], cfg: TrainConfig, norm: Mapping[str, Sequence[float]],
                 heads: Sequence[str], rng: np.random.Generator) -> None:
        self.scenes = [s for s in scenes if min(s.shape) >= cfg.chip_size]
        if not self.scenes:
            raise InputError(f"no training scene is at least chip_size={cfg.chip_size} pixels on each side")
        areas = np.array([s.shape[0] * s.shape[1] for s in self.scenes], np.float64)
        self.p = areas / areas.sum()
        self.cfg = cfg
        self.heads = list(heads)
        self.mask_classes = cfg.mask_classes or {}
        self.mean = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1)
        self.inv = (1.0 / np.asarray(norm["std"], np.float64)).astype(np.float32).reshape(-1, 1, 1)
        self.rng = rng

    def chip(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        c, rng = self.cfg.chip_size, self.rng
        for _ in range(50):
            s = self.scenes[rng.choice(len(self.scenes), p=self.p)]
            r = int(rng.integers(0, s.shape[0] - c + 1))
            q = int(rng.integers(0, s.shape[1] - c + 1))
            rows, cols = slice(r, r + c), slice(q, q + c)
            labels, masks = _targets(s, rows, cols, self.heads, self.mask_classes)
            if np.count_nonzero(labels != IGNORE) >= self.cfg.min_labeled * c * c:
                break
        valid = None if s.nodata is None else s.valid(rows, cols)
        x = _normalize(s.image[:, rows, cols], self.mean, self.inv, valid)
        if self.cfg.augment:
            x, labels, masks = self._augment(x, labels, masks)
        return x, labels, masks

    def _augment(self, x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None):  # noqa: ANN202
        rng, cfg = self.rng, self.cfg
        k = int(rng.integers(0, 4))
        flip = bool(rng.integers(0, 2))
        arrays = [x, labels[None]] + ([masks] if masks is not None else [])
        out = []
        for a in arrays:
            a = np.rot90(a, k, axes=(-2, -1))
            if flip:
                a = a[..., ::-1]
            out.append(np.ascontiguousarray(a))
        x = out[0]
        gain = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast, size=(x.shape[0], 1, 1)).astype(np.float32)
        shift = rng.uniform(-cfg.brightness, cfg.brightness, size=(x.shape[0], 1, 1)).astype(np.float32)
        x = x * gain + shift
        return x, out[1][0], (out[2] if masks is not None else None)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        chips = [self.chip() for _ in range(n)]
        x = torch.from_numpy(np.stack([c[0] for c in chips]))
        y = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
        m = None
        if self.heads:
            m = torch.from_numpy(np.stack([c[2] for c in chips]))  # type: ignore[misc]
        return x, y, m


# --------------------------------------------------------------------------- losses


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over labelled pixels (target 255 = ignore), averaged over heads."""
    keep = target != IGNORE
    t = (target == 1).to(logits.dtype)
    w = keep.to(logits.dtype)
    denom = w.sum().clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * w).sum() / denom
    p = torch.sigmoid(logits) * w
    dims = (0, 2, 3)
    inter = (p * t).sum(dims)
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(dims) + (t * w).sum(dims) + 1.0)
    return bce + dice.mean()


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup, div_factor=10.0, final_div_factor=100.0
        )
    warm = max(1, int(cfg.warmup * total))
    if cfg.schedule == "cosine":
        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------- training


def train(
    bundle: ModelBundle,
    train_data: LabeledScene | Sequence[LabeledScene],
    val_data: LabeledScene | Sequence[LabeledScene] | None = None,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    **options: Any,
) -> tuple[nn.Module, TrainHistory]:
    """Train (a copy of) a bundle's module on labelled scenes.

    Args:
        bundle: The model to train (architecture, bands, classes, mask heads, halo), e.g.
            from :func:`geoseg.models.build_unet`; its module is copied, not modified.
        train_data: Training scenes (band order as in ``bundle.bands``).
        val_data: Validation scenes, spatially separate from the training data; None:
            hold out the bottom ``val_fraction`` of each training scene.
        config: Options (:class:`TrainConfig`); keyword ``options`` override its fields.
        on_epoch: Called with each epoch's :class:`EpochStats`.

    Returns:
        ``(module, history)``: the trained module (eval mode; the best epoch's weights
        with ``restore_best``) and a :class:`TrainHistory` whose ``normalization`` goes
        with the module (``bundle.replace(module=..., normalization=...)``).

    Raises:
        InputError: For inconsistent data or options.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **options)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(bundle, train_data, val_data, cfg, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(
    bundle: ModelBundle,
    train_data: LabeledScene | Sequence[LabeledScene],
    val_data: LabeledScene | Sequence[LabeledScene] | None,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[nn.Module, TrainHistory]:
    t_start = time.perf_counter()
    scenes = [train_data] if isinstance(train_data, LabeledScene) else list(train_data)
    if val_data is None:
        pairs = [split_scene(s, cfg.val_fraction, cfg.val_gap) for s in scenes]
        scenes, vals = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        vals = [val_data] if isinstance(val_data, LabeledScene) else list(val_data)
    heads = list(bundle.mask_heads)
    _check_data(bundle, scenes + vals, heads, cfg)
    if cfg.chip_size % bundle.downsampling:
        raise InputError(f"chip_size={cfg.chip_size} must be a multiple of the model's downsampling {bundle.downsampling}")

    norm = compute_normalization(scenes)
    weights: list[float] | None = None
    if cfg.class_weights == "auto":
        freq = class_frequencies(scenes, bundle.num_classes)
        raw = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        raw = raw / raw[freq > 0].mean()
        weights = [round(float(v), 4) for v in np.clip(raw, 0.0, 10.0)]
    elif cfg.class_weights is not None:
        weights = [float(v) for v in cfg.class_weights]
        if len(weights) != bundle.num_classes:
            raise InputError(f"class_weights has {len(weights)} values for {bundle.num_classes} classes")

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    module = copy.deepcopy(bundle.module)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    sampler = _ChipSampler(scenes, cfg, norm, heads, rng)
    steps = math.ceil(cfg.chips_per_epoch / cfg.batch_size)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, steps * cfg.epochs)
    ce_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    history = TrainHistory(
        normalization=norm, class_weights=weights, config=cfg, class_names=list(bundle.class_names)
    )
    best_miou, best_state, stale = -1.0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        losses = []
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for _ in bar:
            x, y, m = sampler.batch(cfg.batch_size)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits, mask_logits = _outputs(module(x))
            loss = F.cross_entropy(logits, y, weight=ce_weight, ignore_index=IGNORE)
            if heads and mask_logits is not None and m is not None:
                loss = loss + cfg.mask_loss_weight * _mask_loss(mask_logits, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        module.eval()
        val = evaluate(
            module, vals, normalization=norm, halo=bundle.halo, factor=bundle.downsampling,
            mask_heads=heads, mask_classes=cfg.mask_classes, num_classes=bundle.num_classes,
            tile=cfg.val_tile,
        ) if vals else None
        stats = EpochStats(epoch, float(np.mean(losses)), val, opt.param_groups[0]["lr"], time.perf_counter() - t0)
        history.epochs.append(stats)
        if cfg.progress:
            masks = "" if val is None else " ".join(f"{k} IoU {v:.4f}" for k, v in val.mask_iou.items())
            tqdm.write(
                f"epoch {epoch}/{cfg.epochs}: loss {stats.train_loss:.4f}, val mIoU {stats.val_miou:.4f} "
                f"{masks} ({stats.seconds:.0f} s)"
            )
        if on_epoch is not None:
            on_epoch(stats)
        score = stats.val_miou if val is not None else -stats.train_loss
        if score > best_miou:
            best_miou, stale, history.best_epoch = score, 0, epoch
            if cfg.restore_best:
                best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
        if cfg.early_stopping is not None and stale >= cfg.early_stopping:
            history.stopped = "early_stopping"
            break
        if cfg.time_limit is not None and time.perf_counter() - t_start > cfg.time_limit:
            history.stopped = "time_limit"
            break
    if cfg.restore_best and best_state is not None:
        module.load_state_dict(best_state)
    module = module.to(memory_format=torch.contiguous_format).eval()
    history.seconds = time.perf_counter() - t_start
    return module, history


def _check_data(bundle: ModelBundle, scenes: Sequence[LabeledScene], heads: Sequence[str], cfg: TrainConfig) -> None:
    for s in scenes:
        if s.image.shape[0] != bundle.num_bands:
            raise InputError(
                f"scene {s.name!r} has {s.image.shape[0]} bands; model {bundle.name!r} expects "
                f"{bundle.num_bands} ({', '.join(bundle.bands)})"
            )
        values = np.unique(s.labels)
        bad = values[(values >= bundle.num_classes) & (values != IGNORE)]
        if bad.size:
            raise InputError(
                f"scene {s.name!r} has label values {bad.tolist()} outside 0..{bundle.num_classes - 1} (and 255)"
            )
        if s.masks is not None and s.masks.shape[0] != len(heads):
            raise InputError(f"scene {s.name!r} has {s.masks.shape[0]} mask layers for {len(heads)} mask heads")
        if s.masks is None:
            missing = [h for h in heads if h not in (cfg.mask_classes or {})]
            if missing:
                raise InputError(
                    f"scene {s.name!r} has no mask targets for mask head(s) {missing}: give "
                    "LabeledScene.masks or TrainConfig.mask_classes"
                )
