"""Training defaults that adapt to the data: model size, chip size, steps, patience.

A user with one small scene and a few hundred labelled polygons needs other settings
than one with a large land-cover map. :func:`plan_training` chooses every setting the
user left unset from :class:`DataStats` (the number and layout of the labelled pixels of
the training scenes), by the rules below; the chosen values and the reason for each are
recorded in the model's training metadata (:meth:`TrainPlan.as_dict`).

Rules (``L`` = labelled training pixels, ``S`` = the shorter side of the largest
training scene, ``F`` = the labelled fraction of the training scenes' area):

- **depth**: 3 (halo 56 px), or 2 (halo 24 px) when ``S < 192``: a small scene cannot
  afford a 56-px validation buffer and 64-px-deep context.
- **width**: 16 when ``L >= 100_000``, else 12 (fewer labels: a smaller model, more steps
  in the same time).
- **chip size**: 128 when ``S >= 256`` and labels are dense (``F >= 0.3``), else 64
  (sparse labels: chips are centred on labelled pixels and little context is labelled),
  never more than ``S`` (rounded down to the downsampling factor).
- **batch size**: 16 chips of 128 px, 32 of 64 px (the same pixels per step).
- **total steps**: ``clip(400 + 8 sqrt(L), 400, 4000)``: small data, fewer steps in all
  but more passes over each labelled pixel.
- **chips per epoch**: a 25th of the total steps (so validation runs about 25 times),
  8 to 64 batches.
- **epochs**: total steps / steps per epoch.
- **patience**: ``max(5, epochs // 4)`` epochs without a better validation mIoU.

With a time budget the trainer times its first epoch and shrinks the number of epochs
to what fits (:func:`epochs_for_budget`); the learning-rate schedule is fitted to that
number, so the run anneals before the budget ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from geoseg._constants import IGNORE
from geoseg.train.data import LabeledScene

__all__ = ["DataStats", "TrainPlan", "data_stats", "epochs_for_budget", "plan_training", "steps_for_budget"]

#: Bounds of the total number of optimiser steps.
MIN_STEPS, MAX_STEPS = 400, 4000
#: About this many epochs (validations) per run.
VALIDATIONS = 25


@dataclass(frozen=True)
class DataStats:
    """The number and layout of labelled training pixels.

    Attributes:
        labelled: Labelled (valid) training pixels.
        area: Training pixels in all (labelled or not).
        shortest_side: Shorter side of the largest training scene.
        class_pixels: Labelled pixels per class id.
    """

    labelled: int
    area: int
    shortest_side: int
    class_pixels: tuple[int, ...] = ()

    @property
    def fraction(self) -> float:
        """Labelled share of the training area."""
        return self.labelled / max(self.area, 1)


def data_stats(scenes: Sequence[LabeledScene], num_classes: int | None = None) -> DataStats:
    """:class:`DataStats` of training scenes (nodata and hidden pixels are unlabelled)."""
    counts = np.zeros(256, np.int64)
    area, side, largest = 0, 0, -1
    for s in scenes:
        lb = s.labels if s.nodata is None and s.hidden is None else np.where(s.valid(), s.labels, IGNORE)
        counts += np.bincount(lb.ravel(), minlength=256)
        h, w = s.shape
        area += h * w
        if h * w > largest:
            largest, side = h * w, min(h, w)
    n = num_classes if num_classes is not None else int(np.flatnonzero(counts[:IGNORE]).max(initial=0)) + 1
    return DataStats(int(counts[:IGNORE].sum()), int(area), int(side), tuple(int(v) for v in counts[:n]))


@dataclass
class TrainPlan:
    """Settings chosen for the data (each with the rule that chose it in ``why``)."""

    width: int
    depth: int
    chip_size: int
    batch_size: int
    chips_per_epoch: int
    epochs: int
    patience: int
    why: dict[str, str] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.chips_per_epoch / self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floor_to(v: int, f: int) -> int:
    return v // f * f


def plan_training(stats: DataStats, given: dict[str, Any] | None = None) -> TrainPlan:
    """Choose width, depth, chip size, batch size, chips per epoch, epochs and patience.

    Args:
        stats: The training data (:func:`data_stats`).
        given: Settings the user fixed (same names; None values are not fixed); the other
            rules take them into account (e.g. a given depth fixes the chip multiple).
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    why: dict[str, str] = {}
    L, S, F = stats.labelled, stats.shortest_side, stats.fraction

    if "depth" in given:
        depth = int(given["depth"])
        why["depth"] = "given"
    else:
        depth = 3 if S >= 192 else 2
        why["depth"] = f"shorter side {S} px {'>=' if depth == 3 else '<'} 192"
    factor = 2 ** depth
    if "width" in given:
        width = int(given["width"])
        why["width"] = "given"
    else:
        width = 16 if L >= 100_000 else 12
        why["width"] = f"{L} labelled px {'>=' if width == 16 else '<'} 100000"

    if "chip_size" in given:
        chip = int(given["chip_size"])
        why["chip_size"] = "given"
    else:
        dense = S >= 256 and F >= 0.3
        chip = 128 if dense else 64
        chip = max(factor, min(chip, _floor_to(max(S, factor), factor)))
        why["chip_size"] = (f"dense labels ({F:.0%} of the area) on a {S}-px side" if dense else
                            f"{'sparse labels' if F < 0.3 else 'small scene'} ({F:.0%} labelled, {S}-px side)")
    if "batch_size" in given:
        batch = int(given["batch_size"])
        why["batch_size"] = "given"
    else:
        batch = int(min(32, max(4, round(16 * (128 / chip) ** 2))))
        why["batch_size"] = f"~{16 * 128 * 128} px per step"
    total = int(np.clip(400 + 8 * math.sqrt(L), MIN_STEPS, MAX_STEPS))
    if "chips_per_epoch" in given:
        cpe = int(given["chips_per_epoch"])
        why["chips_per_epoch"] = "given"
    else:
        cpe = int(np.clip(math.ceil(total / VALIDATIONS), 8, 64)) * batch
        why["chips_per_epoch"] = f"a {VALIDATIONS}th of the {total} steps, 8-64 batches"
    steps_per_epoch = math.ceil(cpe / batch)
    if "epochs" in given:
        epochs = int(given["epochs"])
        why["epochs"] = "given"
    else:
        epochs = max(1, math.ceil(total / steps_per_epoch))
        why["epochs"] = f"{total} steps for {L} labelled px"
    if "patience" in given:
        patience = int(given["patience"])
        why["patience"] = "given"
    else:
        patience = max(5, epochs // 4)
        why["patience"] = "a quarter of the epochs, at least 5"
    return TrainPlan(width, depth, chip, batch, cpe, epochs, patience, why)


def epochs_for_budget(planned: int, done: int, seconds_per_epoch: float, seconds_left: float) -> int:
    """Epochs to run in all, so that the remaining ones fit in ``seconds_left``.

    Never fewer than ``done`` (no time left: stop now) or more than ``planned``.
    """
    if seconds_per_epoch <= 0:
        return planned
    fit = done + int(max(seconds_left, 0.0) // seconds_per_epoch)
    return int(max(done, min(planned, fit)))


def steps_for_budget(planned: int, done: int, seconds_per_step: float, seconds_left: float,
                     overhead: float = 0.15) -> int:
    """Optimiser steps to run in all so that the remaining ones, plus ``overhead`` (the
    share of time validation and checkpoints take), fit in ``seconds_left``.

    Never fewer than ``done + 1`` or more than ``planned``.
    """
    if seconds_per_step <= 0:
        return planned
    fit = done + int(max(seconds_left, 0.0) * (1 - overhead) // seconds_per_step)
    return int(max(done + 1, min(planned, fit)))
