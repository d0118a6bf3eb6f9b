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

__all__ = ["ChipSampler"]


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
        self.positions = self._grid() if cfg.sampling == "grid" else None

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
        valid = None if s.nodata is None else s.valid(rows, cols)
        x = _normalize(s.image[:, rows, cols], self.mean, self.inv, valid)
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
        gain = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast, size=(x.shape[0], 1, 1)).astype(np.float32)
        shift = rng.uniform(-cfg.brightness, cfg.brightness, size=(x.shape[0], 1, 1)).astype(np.float32)
        x = x * gain + shift
        return x, out[1][0], (out[2] if masks is not None else None)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``n`` random chips as ``(x, labels, masks)`` tensors."""
        return self._collate([self.chip() for _ in range(n)])

    def _collate(self, chips: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(np.stack([c[0] for c in chips]))
        y = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
        m = None
        if self.heads:
            m = torch.from_numpy(np.stack([c[2] for c in chips]))
        return x, y, m

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The batches of one epoch (:attr:`steps` of them)."""
        bs = self.cfg.batch_size
        if self.positions is None:
            for _ in range(self.steps):
                yield self.batch(bs)
            return
        order = self.rng.permutation(len(self.positions))
        for i in range(0, len(order), bs):
            yield self._collate([self._make(*self.positions[j]) for j in order[i : i + bs]])
