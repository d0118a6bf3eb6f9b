"""Semi-supervised training: confidence-thresholded pseudo-labels, consistent under augmentation.

With sparse labels (a few polygons per class) most pixels of a training chip are
unlabelled. :func:`pseudo_label_loss` puts them to use, FixMatch-style: the model predicts
a *weakly* changed view of the chip (no noise, no radiometric jitter: the normalised
values the sampler produced before jitter are not kept, so the weak view is the chip
itself) without gradients; where its top class probability reaches ``threshold`` on an
unlabelled valid pixel, that class becomes the pixel's target for the *strongly*
augmented view (per-band gain/offset jitter and noise added here), and the cross-entropy
on those pixels, weighted by ``weight``, joins the loss. Labelled pixels keep their
labels; nodata and hidden (validation) pixels never get a target.

It is off by default (``TrainConfig.pseudo_weight = 0``): on the measurements in
BENCHMARKS.md it did not win (see there).

Example::

    loss = loss + pseudo_label_loss(module, x, labels, valid, weight=0.5, threshold=0.9, rng=rng)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoseg._constants import IGNORE

__all__ = ["pseudo_label_loss", "pseudo_targets"]


def _logits(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def pseudo_targets(module: nn.Module, x: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                   threshold: float) -> torch.Tensor:
    """Targets for unlabelled valid pixels where the model is at least ``threshold`` sure
    (255 elsewhere, and on labelled pixels: they keep their own labels)."""
    was_training = module.training
    module.eval()
    try:
        prob = torch.softmax(_logits(module(x)).float(), 1)
    finally:
        module.train(was_training)
    conf, cls = prob.max(1)
    keep = (labels == IGNORE) & valid & (conf >= threshold)
    return torch.where(keep, cls, torch.full_like(cls, IGNORE))


def strong_view(x: torch.Tensor, rng: np.random.Generator, gain: float = 0.2, offset: float = 0.2,
                noise: float = 0.1) -> torch.Tensor:
    """``x`` with a per-sample, per-band gain and offset and Gaussian noise (seeded)."""
    n, b = x.shape[:2]
    g = torch.from_numpy(1.0 + rng.uniform(-gain, gain, (n, b, 1, 1)).astype(np.float32)).to(x.device)
    o = torch.from_numpy(rng.uniform(-offset, offset, (n, b, 1, 1)).astype(np.float32)).to(x.device)
    e = torch.from_numpy(rng.normal(0.0, noise, tuple(x.shape)).astype(np.float32)).to(x.device)
    return x * g + o + e


def pseudo_label_loss(module: nn.Module, x: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *,
                      weight: float, threshold: float, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """``weight`` x cross-entropy of the strong view on confident pseudo-labels, and the
    share of unlabelled valid pixels that got one."""
    targets = pseudo_targets(module, x, labels, valid, threshold)
    used = targets != IGNORE
    unlabelled = int(((labels == IGNORE) & valid).sum())
    share = float(used.sum()) / max(unlabelled, 1)
    if not bool(used.any()):
        return x.new_zeros(()), share
    logits = _logits(module(strong_view(x, rng))).float()
    return weight * F.cross_entropy(logits, targets, ignore_index=IGNORE), share
