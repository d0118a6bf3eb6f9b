"""The training loop: a U-Net bundle trained on chips of labelled scenes, validated by mIoU.

This module holds the loop (:func:`train`) and its results (:class:`TrainHistory`); the
pieces it drives each live in a module of their own in :mod:`geoseg.train`:

- :mod:`~geoseg.train.config`: the options (:class:`~geoseg.train.config.TrainConfig`).
- :mod:`~geoseg.train.data`: the data. A :class:`LabeledScene` holds whole numpy arrays (read
  with :func:`load_scene`, which puts label rasters on any grid and polygons onto the
  image grid with :mod:`geoseg.io.labels`, or made in memory); :func:`compute_normalization`
  gives the per-band statistics over valid (non-nodata) training pixels.
- :mod:`~geoseg.train.chips`: square chips sampled from the training scenes (at random, or on a
  regular grid; skipping mostly unlabelled ones), normalised with those statistics and
  augmented (flips, 90-degree rotations, per-band brightness/contrast).
- :mod:`~geoseg.train.losses`: cross-entropy (``ignore_index`` 255, optional class weights) for
  the class head plus BCE + Dice for the mask heads, optionally with an L1 (MAE) term on
  the probabilities.
- :mod:`~geoseg.train.validation`: prediction of the validation scenes and their scores.
- :mod:`~geoseg.train.checkpoint`: the checkpoint file.

:func:`train` optimises with AdamW and a one-cycle, cosine or constant learning-rate
schedule, on CUDA with mixed precision when present. After each epoch it predicts the
validation scenes (spatially separate from the training area: other scenes, or a strip
split off each training scene by :func:`split_scene`) tile by tile with the model's halo,
reports mIoU, and, with ``TrainConfig.checkpoint``, writes a checkpoint that
``resume=True`` continues from. Same seed, same data, same thread count: same result,
also across an interruption and a resume.

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
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.models.bundle import ModelBundle
from geoseg.train.chips import ChipSampler
from geoseg.train.config import TrainConfig
from geoseg.train.data import (
    LabeledScene,
    class_frequencies,
    compute_normalization,
    split_scene,
)
from geoseg.train.losses import total_loss
from geoseg.train.metrics import Metrics
from geoseg.train.sizing import epochs_for_budget, steps_for_budget
from geoseg.train.validation import evaluate

__all__ = ["EpochStats", "TrainHistory", "train"]



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
    train_scenes: list[LabeledScene] = field(default_factory=list, repr=False)
    val_scenes: list[LabeledScene] = field(default_factory=list, repr=False)
    split_note: str = ""
    planned_epochs: int = 0
    schedule_steps: int = 0
    setup_seconds: float = 0.0
    resumed_at: int = 0

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
            "epochs_planned": self.planned_epochs,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 1),
            "val": None if best is None or best.val is None else best.val.as_dict(self.class_names),
            "loss": [round(e.train_loss, 4) for e in self.epochs],
            "val_miou": [None if math.isnan(e.val_miou) else round(e.val_miou, 4) for e in self.epochs],
            "class_weights": self.class_weights,
            "config": cfg,
        }


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


def _refit_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int, old: Any) -> Any:
    """A schedule over ``total`` steps, advanced to where ``old`` was."""
    done = int(old.last_epoch)
    sched = _scheduler(opt, cfg, total)
    for _ in range(min(done, total - 1)):
        sched.step()
    return sched


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
    refits: int = 0
    seconds: float = 0.0  # wall time of earlier runs (before a resume)


#: Options that may change between an interrupted run and its resume.
_RESUMABLE = {"early_stopping", "restore_best", "time_limit", "time_budget", "num_threads", "device", "amp",
              "checkpoint", "resume", "progress", "val_tile"}


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
    from geoseg.scene.predict import resolve_device

    t_start = time.perf_counter()
    scenes = [train_data] if isinstance(train_data, LabeledScene) else list(train_data)
    split_note = ""
    if val_data is None and cfg.val_split == "blocks":
        from geoseg.train.split import block_split

        split = block_split(scenes, cfg.val_fraction, max(cfg.val_gap, bundle.halo), num_classes=bundle.num_classes,
                            seed=cfg.seed, factor=bundle.downsampling)
        scenes, vals, split_note = split.train, split.val, split.note
        if split_note and cfg.progress:
            tqdm.write(f"validation: {split_note}; training without validation", file=sys.stderr)
    elif val_data is None:
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
    pseudo = cfg.pseudo_weight > 0
    sampler.with_valid = pseudo
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ce_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)

    history = TrainHistory(
        normalization=norm, class_weights=weights, config=cfg, class_names=list(bundle.class_names),
        train_scenes=scenes, val_scenes=vals, split_note=split_note,
    )
    history.planned_epochs = cfg.epochs
    history.schedule_steps = steps * cfg.epochs
    loop = _Loop()
    history.setup_seconds = time.perf_counter() - t_start
    fingerprint = _fingerprint(bundle, cfg, norm, weights, scenes)
    if cfg.resume:
        _restore(cfg.checkpoint, fingerprint, module, opt, sched, scaler, rng, history, loop)
        if history.stopped != "early_stopping":
            history.stopped = "epochs"
        if history.schedule_steps != steps * cfg.epochs:  # a time budget shrank the run: same schedule
            sched = _refit_schedule(opt, cfg, history.schedule_steps, sched)
    val_device = str(device)
    epoch = len(history.epochs)
    while epoch < history.planned_epochs:
        epoch += 1
        if history.stopped == "early_stopping":
            break
        t0 = time.perf_counter()
        module.train()
        losses: list[float] = []
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{history.planned_epochs}", disable=not cfg.progress, leave=False,
                   file=sys.stderr)
        last_val = history.epochs[-1].val_miou if history.epochs else float("nan")
        t_first = 0.0
        for i, (x, y, m, *v) in enumerate(sampler.epoch(), start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            m = None if m is None else m.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, mask_logits = _outputs(module(x))
            loss = total_loss(cfg, logits.float(), None if mask_logits is None else mask_logits.float(), y, m, ce_weight)
            if pseudo and epoch > cfg.pseudo_start * history.planned_epochs:
                from geoseg.train.pseudo import pseudo_label_loss

                extra, _ = pseudo_label_loss(module, x, y, v[0].to(device), weight=cfg.pseudo_weight,
                                             threshold=cfg.pseudo_threshold, rng=rng)
                loss = loss + extra
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
            if cfg.time_budget is not None and loop.refits == 0:
                if i == 1:
                    t_first = time.perf_counter()
                elif i == 4 or i == steps:
                    # time three steps, then fit the epochs and the schedule to the budget (once)
                    per_step = (time.perf_counter() - t_first) / (i - 1)
                    done = (epoch - 1) * steps + i
                    left = cfg.time_budget - (loop.seconds + time.perf_counter() - t_start)
                    total = steps_for_budget(steps * history.planned_epochs, done, per_step, left)
                    loop.refits += 1
                    if total < steps * history.planned_epochs:
                        history.planned_epochs = max(epoch, math.ceil(total / steps))
                        history.schedule_steps = max(done + 1, min(total, steps * history.planned_epochs))
                        sched = _refit_schedule(opt, cfg, history.schedule_steps, sched)
            bar.update(1)
            if (epoch - 1) * steps + i >= history.schedule_steps:
                break  # a budget that does not allow one whole epoch
            if cfg.time_budget is not None and loop.seconds + time.perf_counter() - t_start > cfg.time_budget:
                history.stopped = "time_budget"  # slower steps than timed (a loaded machine): stop here
                break
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
                f"epoch {epoch}/{history.planned_epochs}: loss {stats.train_loss:.4f}, val mIoU {stats.val_miou:.4f} "
                f"{masks} ({stats.seconds:.0f} s)", file=sys.stderr,
            )
        score = stats.val_miou if val is not None else -stats.train_loss
        if score > loop.best_score:
            loop.best_score, loop.stale, history.best_epoch = score, 0, epoch
            if cfg.restore_best:
                loop.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        else:
            loop.stale += 1
        elapsed = loop.seconds + time.perf_counter() - t_start
        if cfg.time_budget is not None and epoch < history.planned_epochs:
            this_run = time.perf_counter() - t_start - history.setup_seconds
            per_epoch = this_run / max(1, epoch - history.resumed_at)
            if history.stopped == "time_budget" or epochs_for_budget(
                    history.planned_epochs, epoch, per_epoch, cfg.time_budget - elapsed) <= epoch:
                history.stopped = "time_budget"
        if history.stopped == "time_budget":
            pass
        elif cfg.early_stopping is not None and loop.stale >= cfg.early_stopping:
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
    if history.stopped == "epochs" and history.planned_epochs < cfg.epochs:
        history.stopped = "time_budget"  # the epochs the budget allowed are done
    module = module.cpu()
    if cfg.restore_best and loop.best_state is not None:
        module.load_state_dict(loop.best_state)
    module = module.to(memory_format=torch.contiguous_format).eval()
    history.seconds = loop.seconds + time.perf_counter() - t_start
    return module, history


def _class_weights(cfg: TrainConfig, scenes: Sequence[LabeledScene], num_classes: int) -> list[float] | None:
    if cfg.class_weights == "auto" and cfg.sampling == "balanced":
        return None  # the chips are balanced already: weighting the loss too would over-correct
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
    from geoseg.train.checkpoint import save_checkpoint

    meta = {
        "epochs": [e.to_state() for e in history.epochs],
        "best_epoch": history.best_epoch,
        "stopped": history.stopped,
        "best_score": loop.best_score,
        "stale": loop.stale,
        "seconds": history.seconds,
        "planned_epochs": history.planned_epochs,
        "schedule_steps": history.schedule_steps,
        "refits": loop.refits,
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
    from geoseg.train.checkpoint import load_checkpoint

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
    history.planned_epochs = int(meta.get("planned_epochs", history.planned_epochs))
    history.schedule_steps = int(meta.get("schedule_steps", history.schedule_steps))
    history.resumed_at = len(history.epochs)
    loop.refits = int(meta.get("refits", 0))


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
