"""Spatial validation: a block split with a buffer, so no training chip sees validation pixels.

Random validation pixels next to training pixels measure memory, not generalisation. A
:func:`block_split` cuts each training scene into square blocks and holds out whole blocks
for validation, chosen so that every class keeps its share where the labels allow it:

- blocks are picked greedily (in a seeded order) to bring each class's validation share
  towards ``fraction`` of its labelled pixels, never taking a block that would leave a
  class with less than ``min_train`` of its pixels for training;
- every labelled pixel within ``buffer`` pixels (Chebyshev distance; at least the model's
  halo) of a validation block is removed from training, so the receptive field of every
  training pixel that the loss sees ends before the validation blocks;
- the validation blocks are *hidden* in the training scenes (:attr:`LabeledScene.hidden`):
  the chip sampler blanks them (band mean, no label), so no training chip sees a
  validation pixel, and the normalisation statistics leave them out.

The validation scenes are windows of the full scenes around the held-out blocks, with
``buffer`` pixels of context (what tiled inference reads as its halo), labelled only inside
the blocks.

Example::

    split = block_split(scenes, fraction=0.2, buffer=bundle.halo, seed=0)
    split.train, split.val, split.report()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geoseg._constants import IGNORE
from geoseg.train.data import LabeledScene

__all__ = ["SplitResult", "block_size_for", "block_split"]


def block_size_for(shape: tuple[int, int], factor: int = 8) -> int:
    """The side of the split's blocks: about a sixth of the shorter side, a multiple of
    ``factor``, between 32 and 512 pixels."""
    side = min(shape) // 6
    side = max(32, min(512, side))
    return max(factor, side // factor * factor)


@dataclass
class SplitResult:
    """A block split of training scenes.

    Attributes:
        train: Training scenes (full grids; labels only outside the validation blocks and
            their buffer; the blocks hidden).
        val: Validation windows (labels only inside the blocks), possibly empty.
        blocks: Per scene, the validation blocks as ``(row, col, height, width)``.
        buffer: Pixels between validation blocks and the nearest training label.
        counts: ``{"train": [...], "val": [...], "dropped": [...]}`` labelled pixels per
            class (dropped: inside the buffer).
        note: Why the split holds no validation pixels (when it does not), else "".
    """

    train: list[LabeledScene]
    val: list[LabeledScene]
    blocks: list[list[tuple[int, int, int, int]]]
    buffer: int
    counts: dict[str, list[int]] = field(default_factory=dict)
    note: str = ""


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=256)[:num_classes].astype(np.int64)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask.copy()
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask.view(np.uint8), size=2 * r + 1, mode="constant", cval=0).astype(bool)


def _labels_of(s: LabeledScene) -> np.ndarray:
    if s.nodata is None and s.hidden is None:
        return s.labels
    return np.where(s.valid(), s.labels, IGNORE).astype(np.uint8)


def block_split(
    scenes: LabeledScene | Sequence[LabeledScene],
    fraction: float = 0.2,
    buffer: int = 64,
    *,
    num_classes: int | None = None,
    block: int | None = None,
    min_train: float = 0.5,
    seed: int = 0,
    factor: int = 8,
) -> SplitResult:
    """Hold out whole blocks of the scenes for validation, with a buffer around them.

    Args:
        scenes: Training scenes.
        fraction: Target share of each class's labelled pixels held out.
        buffer: Pixels (at least the model's halo) between a validation block and any
            training label.
        num_classes: Classes (default: the largest label + 1).
        block: Block side in pixels (default: :func:`block_size_for` each scene).
        min_train: A block is never held out if it (with its buffer) would leave a class
            with less than this share of its labelled pixels for training.
        seed: Seed of the order in which blocks are considered.
        factor: Blocks are multiples of this (the model's downsampling).

    Returns:
        A :class:`SplitResult`; with no block that can be held out (e.g. one small polygon
        per class), ``val`` is empty and ``note`` says why.
    """
    scenes = [scenes] if isinstance(scenes, LabeledScene) else list(scenes)
    labels = [_labels_of(s) for s in scenes]
    if num_classes is None:
        num_classes = max((int(lb[lb != IGNORE].max(initial=0)) for lb in labels), default=0) + 1
    total = sum((_class_counts(lb, num_classes) for lb in labels), np.zeros(num_classes, np.int64))
    present = total > 0
    target = fraction * total
    rng = np.random.default_rng(seed)

    # candidate blocks of every scene, with their class counts and their buffered zone's counts
    cands = []
    for k, (s, lb) in enumerate(zip(scenes, labels)):
        h, w = s.shape
        b = block or block_size_for((h, w), factor)
        for r in range(0, h, b):
            for c in range(0, w, b):
                bh, bw = min(b, h - r), min(b, w - c)
                inside = _class_counts(lb[r:r + bh, c:c + bw], num_classes)
                if inside.sum() == 0:
                    continue
                cands.append((k, r, c, bh, bw, inside))
    order = rng.permutation(len(cands))

    val_masks = [np.zeros(s.shape, bool) for s in scenes]
    lost = np.zeros(num_classes, np.int64)     # labelled pixels removed from training (blocks + buffers)
    held = np.zeros(num_classes, np.int64)     # labelled pixels held out for validation
    chosen: list[list[tuple[int, int, int, int]]] = [[] for _ in scenes]
    for i in order:
        k, r, c, bh, bw, inside = cands[i]
        need = np.maximum(target - held, 0)
        gain = np.minimum(inside, need)[present] / np.maximum(total[present], 1)
        if gain.sum() <= 0:
            continue
        # what holding this block out would remove from training (block + buffer, not already removed)
        h, w = scenes[k].shape
        r0, c0 = max(0, r - buffer), max(0, c - buffer)
        r1, c1 = min(h, r + bh + buffer), min(w, c + bw + buffer)
        zone_lb = labels[k][r0:r1, c0:c1]
        e0, f0 = max(0, r0 - buffer), max(0, c0 - buffer)
        already = _dilate(val_masks[k][e0:r1 + buffer, f0:c1 + buffer], buffer)[r0 - e0:r1 - e0, c0 - f0:c1 - f0]
        removed = _class_counts(np.where(already, IGNORE, zone_lb).astype(np.uint8), num_classes)
        if np.any((lost + removed)[present] > (1 - min_train) * total[present]):
            continue
        overshoot = np.maximum(inside - need, 0)[present] / np.maximum(total[present], 1)
        if gain.sum() <= overshoot.sum():
            continue
        val_masks[k][r:r + bh, c:c + bw] = True
        chosen[k].append((r, c, bh, bw))
        lost += removed
        held += inside
        if np.all(held[present] >= target[present]):
            break

    train, val = [], []
    counts = {"train": np.zeros(num_classes, np.int64), "val": np.zeros(num_classes, np.int64)}
    for k, (s, lb) in enumerate(zip(scenes, labels)):
        vm = val_masks[k]
        if not vm.any():
            train.append(s)
            counts["train"] += _class_counts(lb, num_classes)
            continue
        zone = _dilate(vm, buffer)
        tr_labels = np.where(zone, IGNORE, s.labels).astype(np.uint8)
        tr_masks = None if s.masks is None else np.where(zone[None], IGNORE, s.masks).astype(np.uint8)
        hidden = vm if s.hidden is None else (vm | s.hidden)
        t = LabeledScene(s.image, tr_labels, tr_masks, s.nodata, s.name, hidden=hidden)
        train.append(t)
        counts["train"] += _class_counts(_labels_of(t), num_classes)
        rows, cols = np.flatnonzero(vm.any(1)), np.flatnonzero(vm.any(0))
        h, w = s.shape
        r0, r1 = max(0, rows[0] - buffer), min(h, rows[-1] + 1 + buffer)
        c0, c1 = max(0, cols[0] - buffer), min(w, cols[-1] + 1 + buffer)
        r0, c0 = r0 // factor * factor, c0 // factor * factor  # keep the validation grid aligned
        win = (slice(r0, r1), slice(c0, c1))
        v_labels = np.where(vm[win], s.labels[win], IGNORE).astype(np.uint8)
        v_masks = None if s.masks is None else np.where(vm[win][None], s.masks[(slice(None), *win)], IGNORE
                                                        ).astype(np.uint8)
        v = LabeledScene(s.image[(slice(None), *win)], v_labels, v_masks, s.nodata, f"{s.name} (validation)")
        val.append(v)
        counts["val"] += _class_counts(_labels_of(v), num_classes)
    note = ""
    if not val:
        note = ("no block could be held out for validation without taking more than "
                f"{round((1 - min_train) * 100)}% of a class's labelled pixels (with a {buffer}-pixel buffer): "
                "give validation scenes, or more labels")
    dropped = total - counts["train"] - counts["val"]
    return SplitResult(train, val, chosen, buffer,
                       {"train": counts["train"].tolist(), "val": counts["val"].tolist(),
                        "dropped": dropped.tolist()}, note)
