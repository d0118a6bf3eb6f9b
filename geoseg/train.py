"""Training: a U-Net bundle trained on chips of labelled scenes, validated by mIoU.

This module holds the options (:class:`TrainConfig`), the loop (:func:`train`), its
results (:class:`TrainHistory`) and validation (:func:`predict_scene`,
:func:`evaluate`); the pieces it drives each live in a module of their own:

- :mod:`geoseg.scenes`: the data. A :class:`LabeledScene` holds whole numpy arrays (read
  with :func:`load_scene`, which puts label rasters on any grid and polygons onto the
  image grid with :mod:`geoseg.labels`, or made in memory); :func:`compute_normalization`
  gives the per-band statistics over valid (non-nodata) training pixels.
- :mod:`geoseg.chips`: square chips sampled from the training scenes (at random, or on a
  regular grid; skipping mostly unlabelled ones), normalised with those statistics and
  augmented (flips, 90-degree rotations, per-band brightness/contrast).
- :mod:`geoseg.losses`: cross-entropy (``ignore_index`` 255, optional class weights) for
  the class head plus BCE + Dice for the mask heads, optionally with an L1 (MAE) term on
  the probabilities.
- :mod:`geoseg.checkpoint`: the checkpoint file.

:func:`train` optimises with AdamW and a one-cycle, cosine or constant learning-rate
schedule, on CUDA with mixed precision when present. After each epoch it predicts the
validation scenes (spatially separate from the training area: other scenes, or a strip
split off each training scene by :func:`split_scene`) tile by tile with the model's halo,
reports mIoU, and, with ``TrainConfig.checkpoint``, writes a checkpoint that
``resume=True`` continues from. Same seed, same data, same thread count: same result,
also across an interruption and a resume.

The public names of :mod:`geoseg.scenes` are re-exported here
(``from geoseg.train import LabeledScene, load_scene`` keeps working).

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
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from geoseg.chips import ChipSampler
from geoseg.errors import InputError
from geoseg.losses import mae_loss, mask_loss, total_loss
from geoseg.metrics import Metrics, confusion_matrix, metrics_from_confusion
from geoseg.models.bundle import ModelBundle
from geoseg.models.perf import prepare_for_inference
from geoseg.scenes import (
    IGNORE,
    LabeledScene,
    class_frequencies,
    compute_normalization,
    load_scene,
    split_scene,
    window_targets,
)

__all__ = [
    "IGNORE",
    "EpochStats",
    "LabeledScene",
    "Metrics",
    "TrainConfig",
    "TrainHistory",
    "class_frequencies",
    "compute_normalization",
    "evaluate",
    "load_scene",
    "predict_scene",
    "split_scene",
    "train",
]

#: Kept for callers of the former private names (now in :mod:`geoseg.chips`, :mod:`geoseg.losses`
#: and :mod:`geoseg.metrics`).
_ChipSampler = ChipSampler
_mask_loss = mask_loss
_mae_loss = mae_loss
_loss = total_loss
_confusion = confusion_matrix
_metrics = metrics_from_confusion


# --------------------------------------------------------------------------- config and results


@dataclass
class TrainConfig:
    """Training options.

    Attributes:
        epochs: Passes of ``chips_per_epoch`` random chips (or of the chip grid).
        chips_per_epoch: Chips sampled per epoch (random sampling).
        chip_size: Side of the square chips (a multiple of the model's downsampling).
        batch_size: Chips per optimiser step.
        sampling: ``"random"`` chips anywhere in the training area, or ``"grid"``: each
            epoch visits every chip of a regular grid (stride ``chip_size``) once, in a
            random order.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``"onecycle"``, ``"cosine"`` (with warmup) or ``"constant"``.
        warmup: Fraction of steps spent warming up (onecycle and cosine).
        class_weights: Cross-entropy class weights, ``"auto"`` (inverse square root of
            the training label frequencies, mean 1), or None.
        mask_classes: For each mask head without explicit targets, the class ids whose
            pixels are positive (e.g. ``{"built_up": [4, 5]}``).
        mask_loss_weight: Weight of (BCE + Dice) of the mask heads.
        ce_weight: Weight of the class head's cross-entropy.
        bce_weight: Weight of BCE within the mask-head loss.
        dice_weight: Weight of soft Dice within the mask-head loss.
        mae_weight: Weight of an L1 (MAE) term: mean absolute difference between the
            class probabilities and the one-hot labels (plus, with mask heads, between
            the mask probabilities and targets), over labelled pixels. 0: off.
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
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision (autocast; bf16, or fp16 with gradient scaling): ``"auto"``
            = on CUDA only (on CPU it is much slower).
        checkpoint: File rewritten after every epoch with everything needed to resume
            (None: no checkpoints).
        resume: Continue from ``checkpoint`` (written by a run with the same data and
            options; ``early_stopping``, ``time_limit``, threads, device and progress
            may differ).
        progress: Show a tqdm progress bar.
    """

    epochs: int = 10
    chips_per_epoch: int = 512
    chip_size: int = 128
    batch_size: int = 16
    sampling: Literal["random", "grid"] = "random"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup: float = 0.15
    class_weights: Sequence[float] | Literal["auto"] | None = None
    mask_classes: Mapping[str, Sequence[int]] | None = None
    mask_loss_weight: float = 1.0
    ce_weight: float = 1.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    mae_weight: float = 0.0
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
    device: str = "auto"
    amp: bool | Literal["auto"] = "auto"
    checkpoint: str | os.PathLike[str] | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "chips_per_epoch", "chip_size", "batch_size", "val_tile"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise InputError(f"TrainConfig.schedule must be onecycle, cosine or constant, got {self.schedule!r}")
        if self.sampling not in ("random", "grid"):
            raise InputError(f"TrainConfig.sampling must be random or grid, got {self.sampling!r}")
        if not self.lr > 0:
            raise InputError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        for name in ("ce_weight", "bce_weight", "dice_weight", "mae_weight", "mask_loss_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.amp not in (True, False, "auto"):
            raise InputError(f"TrainConfig.amp must be True, False or 'auto', got {self.amp!r}")
        if self.resume and self.checkpoint is None:
            raise InputError("TrainConfig.resume needs TrainConfig.checkpoint: the file to resume from")


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

    def to_state(self) -> dict[str, Any]:
        """Plain-Python state (for checkpoints); :meth:`from_state` reverses it."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "lr": self.lr, "seconds": self.seconds,
                "val": None if self.val is None else self.val.to_state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EpochStats:
        val = None if state["val"] is None else Metrics.from_state(state["val"])
        return cls(int(state["epoch"]), float(state["train_loss"]), val, float(state["lr"]), float(state["seconds"]))


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
        for key in ("progress", "checkpoint", "resume"):
            cfg.pop(key, None)
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


# --------------------------------------------------------------------------- prediction and validation


def predict_scene(
    module: nn.Module,
    scene_or_image: LabeledScene | np.ndarray,
    normalization: Mapping[str, Sequence[float]],
    *,
    halo: int,
    factor: int,
    tile: int = 512,
    nodata: float | None = None,
    device: str = "cpu",
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
        device: Torch device of the forward passes.

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
    predictor = Predictor(module, normalization["mean"], normalization["std"], factor, num_masks=0, device=device)
    classes = np.zeros((h, w), np.uint8)
    masks: np.ndarray | None = None
    for t in TileGrid(h, w, tile, halo=halo, factor=factor):
        raw = image[(slice(None), *t.read.slices)].astype(np.float32)
        valid = np.ones(raw.shape[1:], bool) if nodata is None else ~np.all(raw == nodata, axis=0)
        p = predictor.predict(raw[None], valid[None], t.context, t.inner)
        classes[t.core.slices] = p.classes[0]
        if p.masks.shape[1]:
            if masks is None:
                masks = np.zeros((p.masks.shape[1], h, w), bool)
            masks[(slice(None), *t.core.slices)] = p.masks[0] == 1
    classes[classes == NODATA] = 0  # nodata pixels carry no label: any class id will do
    return classes, masks


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
    device: str = "cpu",
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
        device: Torch device of the forward passes.
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
        pred, pred_masks = predict_scene(module, s, normalization, halo=halo, factor=factor, tile=tile,
                                         device=device)
        heads = list(mask_heads) if s.masks is not None else [h for h in mask_heads if h in mask_classes]
        labels, targets = window_targets(s, slice(None), slice(None), heads, mask_classes)
        conf += confusion_matrix(labels, pred, num_classes)
        if pred_masks is None or targets is None:
            continue
        for t, head in zip(targets, heads):
            keep = t != IGNORE
            p, tt = pred_masks[list(mask_heads).index(head)][keep], t[keep] == 1
            mask_stats[head][0] += int(np.count_nonzero(p & tt))
            mask_stats[head][1] += int(np.count_nonzero(p | tt))
            evaluated.add(head)
    return metrics_from_confusion(conf, {k: v for k, v in mask_stats.items() if k in evaluated})


# --------------------------------------------------------------------------- loop helpers


def _outputs(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


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


def _amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where CUDA supports it, else fp16; None: full precision."""
    if amp == "auto":
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


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
        on_epoch: Called with each epoch's :class:`EpochStats` (after its checkpoint).

    Returns:
        ``(module, history)``: the trained module (eval mode, on the CPU; the best
        epoch's weights with ``restore_best``) and a :class:`TrainHistory` whose
        ``normalization`` goes with the module
        (``bundle.replace(module=..., normalization=...)``).

    Raises:
        InputError: For inconsistent data or options, or a checkpoint that does not fit.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **options)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(bundle, train_data, val_data, cfg, on_epoch)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Loop:
    """The training loop's state besides model and optimiser (saved in checkpoints)."""

    best_score: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    seconds: float = 0.0  # wall time of earlier runs (before a resume)


#: Options that may change between an interrupted run and its resume.
_RESUMABLE = {"early_stopping", "restore_best", "time_limit", "num_threads", "device", "amp", "checkpoint",
              "resume", "progress", "val_tile"}


def _fingerprint(bundle: ModelBundle, cfg: TrainConfig, norm: Mapping[str, Any], weights: Any,
                 scenes: Sequence[LabeledScene]) -> dict[str, str]:
    """What a checkpoint must agree on to be resumed (each value as canonical JSON)."""
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE}
    items = {f"option {k}": v for k, v in opts.items()}
    spec = bundle.spec
    items.update({
        "model": [spec.architecture, spec.arch_params, spec.bands, [c.name for c in spec.classes], spec.mask_heads],
        "normalization statistics (training data)": norm,
        "class weights": weights,
        "training scene shapes": [list(s.shape) for s in scenes],
    })
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in items.items()}


def _train(
    bundle: ModelBundle,
    train_data: LabeledScene | Sequence[LabeledScene],
    val_data: LabeledScene | Sequence[LabeledScene] | None,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[nn.Module, TrainHistory]:
    from geoseg.predict import resolve_device

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
    weights = _class_weights(cfg, scenes, bundle.num_classes)
    device = torch.device(resolve_device(cfg.device))
    amp_dtype = _amp_dtype(cfg.amp, device)

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    module = copy.deepcopy(bundle.module).to(device)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    sampler = ChipSampler(scenes, cfg, norm, heads, rng)
    steps = sampler.steps
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, steps * cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ce_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)

    history = TrainHistory(
        normalization=norm, class_weights=weights, config=cfg, class_names=list(bundle.class_names)
    )
    loop = _Loop()
    fingerprint = _fingerprint(bundle, cfg, norm, weights, scenes)
    if cfg.resume:
        _restore(cfg.checkpoint, fingerprint, module, opt, sched, scaler, rng, history, loop)
        if history.stopped != "early_stopping":
            history.stopped = "epochs"
    val_device = str(device)
    for epoch in range(len(history.epochs) + 1, cfg.epochs + 1):
        if history.stopped == "early_stopping":
            break
        t0 = time.perf_counter()
        module.train()
        losses: list[float] = []
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False,
                   file=sys.stderr)
        last_val = history.epochs[-1].val_miou if history.epochs else float("nan")
        for x, y, m in sampler.epoch():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            m = None if m is None else m.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, mask_logits = _outputs(module(x))
            loss = total_loss(cfg, logits.float(), None if mask_logits is None else mask_logits.float(), y, m, ce_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", val_miou=f"{last_val:.4f}")
        bar.close()
        module.eval()
        val = evaluate(
            module, vals, normalization=norm, halo=bundle.halo, factor=bundle.downsampling,
            mask_heads=heads, mask_classes=cfg.mask_classes, num_classes=bundle.num_classes,
            tile=cfg.val_tile, device=val_device,
        ) if vals else None
        stats = EpochStats(epoch, float(np.mean(losses)), val, opt.param_groups[0]["lr"], time.perf_counter() - t0)
        history.epochs.append(stats)
        if cfg.progress:
            masks = "" if val is None else " ".join(f"{k} IoU {v:.4f}" for k, v in val.mask_iou.items())
            tqdm.write(
                f"epoch {epoch}/{cfg.epochs}: loss {stats.train_loss:.4f}, val mIoU {stats.val_miou:.4f} "
                f"{masks} ({stats.seconds:.0f} s)", file=sys.stderr,
            )
        score = stats.val_miou if val is not None else -stats.train_loss
        if score > loop.best_score:
            loop.best_score, loop.stale, history.best_epoch = score, 0, epoch
            if cfg.restore_best:
                loop.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        else:
            loop.stale += 1
        if cfg.early_stopping is not None and loop.stale >= cfg.early_stopping:
            history.stopped = "early_stopping"
        elif cfg.time_limit is not None and time.perf_counter() - t_start > cfg.time_limit:
            history.stopped = "time_limit"
        history.seconds = loop.seconds + time.perf_counter() - t_start
        if cfg.checkpoint is not None:
            _save(cfg.checkpoint, fingerprint, module, opt, sched, scaler, rng, history, loop)
        if on_epoch is not None:
            on_epoch(stats)
        if history.stopped != "epochs":
            break
    module = module.cpu()
    if cfg.restore_best and loop.best_state is not None:
        module.load_state_dict(loop.best_state)
    module = module.to(memory_format=torch.contiguous_format).eval()
    history.seconds = loop.seconds + time.perf_counter() - t_start
    return module, history


def _class_weights(cfg: TrainConfig, scenes: Sequence[LabeledScene], num_classes: int) -> list[float] | None:
    if cfg.class_weights == "auto":
        freq = class_frequencies(scenes, num_classes)
        raw = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        raw = raw / raw[freq > 0].mean()
        return [round(float(v), 4) for v in np.clip(raw, 0.0, 10.0)]
    if cfg.class_weights is not None:
        weights = [float(v) for v in cfg.class_weights]
        if len(weights) != num_classes:
            raise InputError(f"class_weights has {len(weights)} values for {num_classes} classes")
        return weights
    return None


def _save(path: str | os.PathLike[str], fingerprint: Mapping[str, str], module: nn.Module,
          opt: torch.optim.Optimizer, sched: Any, scaler: Any, rng: np.random.Generator,
          history: TrainHistory, loop: _Loop) -> None:
    from geoseg.checkpoint import save_checkpoint

    meta = {
        "epochs": [e.to_state() for e in history.epochs],
        "best_epoch": history.best_epoch,
        "stopped": history.stopped,
        "best_score": loop.best_score,
        "stale": loop.stale,
        "seconds": history.seconds,
    }
    save_checkpoint(path, {
        "fingerprint": dict(fingerprint),
        "meta": json.dumps(meta),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "best": loop.best_state,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    })


def _restore(path: str | os.PathLike[str] | None, fingerprint: Mapping[str, str], module: nn.Module,
             opt: torch.optim.Optimizer, sched: Any, scaler: Any, rng: np.random.Generator,
             history: TrainHistory, loop: _Loop) -> None:
    from geoseg.checkpoint import load_checkpoint

    assert path is not None
    state = load_checkpoint(path)
    saved = state.get("fingerprint", {})
    diffs = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if diffs:
        raise InputError(
            f"checkpoint {path} was written by a different training setup ({', '.join(diffs[:4])} differ): "
            "resume with the original data and options, or start over without --resume"
        )
    try:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        meta = json.loads(state["meta"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise InputError(f"checkpoint {path} is damaged ({str(err)[:200]}): start over without --resume") from None
    history.epochs = [EpochStats.from_state(e) for e in meta["epochs"]]
    history.best_epoch = int(meta["best_epoch"])
    history.stopped = str(meta["stopped"])
    loop.best_score, loop.stale = float(meta["best_score"]), int(meta["stale"])
    loop.best_state = state["best"]
    loop.seconds = float(meta["seconds"])


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
