"""Training chips: sampling from labelled scenes, normalisation and augmentation.

A :class:`ChipSampler` cuts square chips out of the training scenes, either at random
(weighted by scene area, re-drawing chips with fewer than ``min_labeled`` labelled pixels)
or on a regular grid visited once per epoch in a random order; normalises them with
per-band statistics (nodata pixels become 0, the band mean); augments them with flips,
90-degree rotations and per-band brightness/contrast; and collates them into
``(x, labels, masks)`` tensor batches. All randomness comes from the one
``numpy.random.Generator`` it is given, in a fixed order, so a seed (and a checkpointed
generator state) reproduces the chips exactly.

Example::

    sampler = ChipSampler(scenes, TrainConfig(chip_size=128), norm, ["built_up"], np.random.default_rng(0))
    for x, labels, masks in sampler.epoch():
        ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.train.data import LabeledScene, window_targets

if TYPE_CHECKING:
    from geoseg.train.config import TrainConfig

__all__ = ["ChipSampler", "jitter"]

#: At most this many anchor pixels per class and scene are kept for balanced sampling.
MAX_ANCHORS = 1_000_000


def jitter(x: np.ndarray, rng: np.random.Generator, contrast: float, brightness: float,
           noise: float) -> np.ndarray:
    """Radiometric augmentation of a normalised ``(bands, h, w)`` chip: a per-band gain
    ``1 +- contrast`` and offset ``+- brightness`` (in units of the band's std, as sensors,
    atmospheres and illumination differ per band), plus Gaussian noise of std ``noise``."""
    gain = 1.0 + rng.uniform(-contrast, contrast, size=(x.shape[0], 1, 1)).astype(np.float32)
    shift = rng.uniform(-brightness, brightness, size=(x.shape[0], 1, 1)).astype(np.float32)
    x = x * gain + shift
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return x


def _normalize(raw: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """float32 ``(raw - mean) / std``; invalid pixels become 0 (the band mean)."""
    x = raw.astype(np.float32)
    x -= mean
    x *= inv_std
    if valid is not None:
        x[..., ~valid] = 0.0
    return x


def _grid_starts(n: int, c: int) -> list[int]:
    """Chip origins every ``c`` pixels, the last one flush with the end."""
    starts = list(range(0, n - c + 1, c))
    if starts[-1] != n - c:
        starts.append(n - c)
    return starts


class ChipSampler:
    """Labelled chips from the training scenes (random or on a grid), normalised and augmented."""

    def __init__(self, scenes: Sequence[LabeledScene], cfg: TrainConfig, norm: Mapping[str, Sequence[float]],
                 heads: Sequence[str], rng: np.random.Generator) -> None:
        self.scenes = [s for s in scenes if min(s.shape) >= cfg.chip_size]
        if not self.scenes:
            sizes = ", ".join(f"{s.shape[0]}x{s.shape[1]}" for s in scenes)
            raise InputError(
                f"no training area is at least chip_size={cfg.chip_size} pixels on each side ({sizes} after "
                "the validation split): use a smaller chip size, a smaller validation fraction or gap, or "
                "larger images"
            )
        areas = np.array([s.shape[0] * s.shape[1] for s in self.scenes], np.float64)
        self.p = areas / areas.sum()
        self.cfg = cfg
        self.heads = list(heads)
        self.mask_classes = cfg.mask_classes or {}
        self.mean = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1)
        self.inv = (1.0 / np.asarray(norm["std"], np.float64)).astype(np.float32).reshape(-1, 1, 1)
        self.rng = rng
        self.with_valid = False
        self.positions = self._grid() if cfg.sampling == "grid" else None
        self.anchors = self._anchors() if cfg.sampling == "balanced" else None

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch."""
        n = self.cfg.chips_per_epoch if self.positions is None else len(self.positions)
        return math.ceil(n / self.cfg.batch_size)

    def _grid(self) -> list[tuple[int, int, int]]:
        c = self.cfg.chip_size
        full, some = [], []
        for k, s in enumerate(self.scenes):
            for r in _grid_starts(s.shape[0], c):
                for q in _grid_starts(s.shape[1], c):
                    labels, _ = window_targets(s, slice(r, r + c), slice(q, q + c), [], {})
                    n = np.count_nonzero(labels != IGNORE)
                    (full if n >= self.cfg.min_labeled * c * c else some if n else []).append((k, r, q))
        if not full and not some:
            raise InputError("no training chip has a labelled pixel: check the labels and the image nodata")
        return full or some

    def _anchors(self) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Per class, the labelled training pixels (at most ``MAX_ANCHORS`` per class and
        scene, a seeded subset) chips are centred on; every class present is drawn equally
        often (class-balanced; the chips still hold their neighbourhood, mostly of the
        common classes)."""
        counts = np.zeros(IGNORE, np.int64)
        per_scene: list[np.ndarray] = []
        for s in self.scenes:
            labels = np.where(s.valid(), s.labels, IGNORE) if s.has_invalid else s.labels
            per_scene.append(labels)
            counts += np.bincount(labels.ravel(), minlength=256)[:IGNORE]
        classes = np.flatnonzero(counts)
        if not classes.size:
            raise InputError("no training chip has a labelled pixel: check the labels and the image nodata")
        table: list[list[np.ndarray]] = []
        for c in classes:
            row = []
            for labels in per_scene:
                idx = np.flatnonzero(labels.ravel() == c)
                if idx.size > MAX_ANCHORS:
                    idx = np.sort(self.rng.choice(idx, MAX_ANCHORS, replace=False))
                row.append(idx)
            table.append(row)
        self.anchor_classes = classes
        self.anchor_p = np.full(classes.size, 1.0 / classes.size)
        return classes, table

    def balanced_chip(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A chip containing a labelled pixel of a class drawn with :attr:`anchor_p`, at a
        random position within the chip."""
        assert self.anchors is not None
        c, rng = self.cfg.chip_size, self.rng
        _, table = self.anchors
        ci = int(rng.choice(len(self.anchor_p), p=self.anchor_p))
        sizes = np.array([a.size for a in table[ci]], np.float64)
        k = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
        s = self.scenes[k]
        flat = int(table[ci][k][int(rng.integers(0, sizes[k]))])
        ar, aq = divmod(flat, s.shape[1])
        r = int(np.clip(ar - int(rng.integers(0, c)), 0, s.shape[0] - c))
        q = int(np.clip(aq - int(rng.integers(0, c)), 0, s.shape[1] - c))
        return self._make(k, r, q)

    def chip(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A random chip with at least ``min_labeled`` labelled pixels (if one is found in 50 draws)."""
        c, rng = self.cfg.chip_size, self.rng
        for _ in range(50):
            k = int(rng.choice(len(self.scenes), p=self.p))
            s = self.scenes[k]
            r = int(rng.integers(0, s.shape[0] - c + 1))
            q = int(rng.integers(0, s.shape[1] - c + 1))
            labels, masks = window_targets(s, slice(r, r + c), slice(q, q + c), self.heads, self.mask_classes)
            if np.count_nonzero(labels != IGNORE) >= self.cfg.min_labeled * c * c:
                break
        return self._make(k, r, q, labels, masks)

    def _make(self, k: int, r: int, q: int, labels: np.ndarray | None = None,
              masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        s, c = self.scenes[k], self.cfg.chip_size
        rows, cols = slice(r, r + c), slice(q, q + c)
        if labels is None:
            labels, masks = window_targets(s, rows, cols, self.heads, self.mask_classes)
        valid = s.valid(rows, cols) if s.has_invalid else None
        x = _normalize(s.image[:, rows, cols], self.mean, self.inv, valid)
        if self.with_valid:
            # the validity travels as an extra "band" through the geometric augmentation
            v = np.ones((1, c, c), np.float32) if valid is None else valid[None].astype(np.float32)
            x = np.concatenate([x, v])
        if self.cfg.augment:
            x, labels, masks = self._augment(x, labels, masks)
        return x, labels, masks

    def _augment(self, x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None) -> tuple:
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
        n = x.shape[0] - (1 if self.with_valid else 0)
        x[:n] = jitter(x[:n], rng, cfg.contrast, cfg.brightness, cfg.noise)
        return x, out[1][0], (out[2] if masks is not None else None)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``n`` random chips as ``(x, labels, masks)`` tensors."""
        return self._collate([self.chip() for _ in range(n)])

    def _collate(self, chips: list) -> tuple:
        x = torch.from_numpy(np.stack([c[0] for c in chips]))
        y = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
        m = None
        if self.heads:
            m = torch.from_numpy(np.stack([c[2] for c in chips]))
        if self.with_valid:
            return x[:, :-1].contiguous(), y, m, x[:, -1] > 0.5
        return x, y, m

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The batches of one epoch (:attr:`steps` of them)."""
        bs = self.cfg.batch_size
        if self.anchors is not None:
            for _ in range(self.steps):
                yield self._collate([self.balanced_chip() for _ in range(bs)])
            return
        if self.positions is None:
            for _ in range(self.steps):
                yield self.batch(bs)
            return
        order = self.rng.permutation(len(self.positions))
        for i in range(0, len(order), bs):
            yield self._collate([self._make(*self.positions[j]) for j in order[i : i + bs]])
