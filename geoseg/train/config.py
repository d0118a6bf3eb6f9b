"""The trainer's options: one dataclass, the only home of their defaults and checks.

:class:`geoseg.train.settings.TrainSettings` (YAML and flags) maps onto it; the chip
sampler and the losses read the fields they need.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from geoseg.errors import InputError

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Training options.

    Attributes:
        epochs: Passes of ``chips_per_epoch`` random chips (or of the chip grid).
        chips_per_epoch: Chips sampled per epoch (random sampling).
        chip_size: Side of the square chips (a multiple of the model's downsampling).
        batch_size: Chips per optimiser step.
        sampling: ``"balanced"``: chips centred (at a random offset) on labelled pixels of
            a class drawn uniformly (class-balanced), so sparse labels and rare classes
            are seen; ``"random"`` chips anywhere in the training
            area; or ``"grid"``: each epoch visits every chip of a regular grid (stride
            ``chip_size``) once, in a random order.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``"onecycle"``, ``"cosine"`` (with warmup) or ``"constant"``.
        warmup: Fraction of steps spent warming up (onecycle and cosine).
        class_weights: Cross-entropy class weights, ``"auto"`` (none with balanced
            sampling, which balances the chips already; else the inverse square root of the
            training label frequencies, mean 1), or None.
        mask_classes: For each mask head without explicit targets, the class ids whose
            pixels are positive (e.g. ``{"built_up": [4, 5]}``).
        mask_loss_weight: Weight of (BCE + Dice) of the mask heads.
        ce_weight: Weight of the class head's cross-entropy.
        bce_weight: Weight of BCE within the mask-head loss.
        dice_weight: Weight of soft Dice within the mask-head loss.
        mae_weight: Weight of an L1 (MAE) term: mean absolute difference between the
            class probabilities and the one-hot labels (plus, with mask heads, between
            the mask probabilities and targets), over labelled pixels. 0: off.
        augment: Random flips, 90-degree rotations, per-band gain/offset jitter and noise.
        brightness: Max additive per-band offset, in units of the band's std.
        contrast: Max relative per-band gain change.
        noise: Std of Gaussian noise added to the normalised bands (0: none).
        min_labeled: Chips with a smaller fraction of labelled pixels are re-drawn.
        val_fraction: With no validation scenes, the share of the labelled pixels held
            out (``val_split``).
        val_gap: Pixels between training labels and validation pixels (with ``"blocks"``
            never fewer than the model's halo).
        val_split: ``"blocks"``: whole blocks of each scene held out, chosen to keep each
            class's share, hidden from training chips, with a buffer of
            ``max(val_gap, halo)`` (:func:`geoseg.train.split.block_split`); ``"strip"``:
            the bottom ``val_fraction`` of each scene, after ``val_gap`` rows.
        val_tile: Tile size for validation inference.
        early_stopping: Stop when val mIoU has not improved for this many epochs (None: off).
        restore_best: Return the weights of the epoch with the best val mIoU.
        time_limit: Stop after the epoch during which this many seconds have elapsed.
        time_budget: Seconds to train as well as possible in: the first epoch is timed
            and the number of epochs (and the learning-rate schedule) shrunk to fit
            (:func:`geoseg.train.sizing.epochs_for_budget`); recorded in the history's
            ``planned_epochs`` and the checkpoint, so a resume keeps it.
        pseudo_weight: Weight of the pseudo-label loss (:mod:`geoseg.train.pseudo`); 0: off.
        pseudo_threshold: Confidence a pseudo-label needs.
        pseudo_start: Pseudo-labels join after this fraction of the epochs.
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
    sampling: Literal["balanced", "random", "grid"] = "balanced"
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
    noise: float = 0.03
    min_labeled: float = 0.5
    val_fraction: float = 0.2
    val_gap: int = 64
    val_split: Literal["blocks", "strip"] = "blocks"
    val_tile: int = 512
    early_stopping: int | None = None
    restore_best: bool = True
    time_limit: float | None = None
    time_budget: float | None = None
    pseudo_weight: float = 0.0
    pseudo_threshold: float = 0.9
    pseudo_start: float = 0.3
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
        if self.sampling not in ("balanced", "random", "grid"):
            raise InputError(f"TrainConfig.sampling must be balanced, random or grid, got {self.sampling!r}")
        if self.val_split not in ("blocks", "strip"):
            raise InputError(f"TrainConfig.val_split must be blocks or strip, got {self.val_split!r}")
        if not 0 < self.pseudo_threshold <= 1:
            raise InputError(f"TrainConfig.pseudo_threshold must be in (0, 1], got {self.pseudo_threshold!r}")
        if not self.lr > 0:
            raise InputError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        for name in ("ce_weight", "bce_weight", "dice_weight", "mae_weight", "mask_loss_weight", "pseudo_weight",
                     "noise"):
            if not getattr(self, name) >= 0:
                raise InputError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.amp not in (True, False, "auto"):
            raise InputError(f"TrainConfig.amp must be True, False or 'auto', got {self.amp!r}")
        if self.resume and self.checkpoint is None:
            raise InputError("TrainConfig.resume needs TrainConfig.checkpoint: the file to resume from")
