"""The training objective: cross-entropy, BCE + soft Dice and an optional L1 (MAE) term.

:func:`total_loss` is what the trainer minimises: ``ce_weight`` x cross-entropy of the
class head (optional class weights), ``mask_loss_weight`` x :func:`mask_loss` (BCE + Dice)
of the mask heads, and ``mae_weight`` x :func:`mae_loss` (mean absolute difference of the
probabilities and the one-hot targets). Pixels labelled 255 (:data:`geoseg._constants.IGNORE`:
unlabelled or nodata) contribute nothing to any term.

Example::

    loss = total_loss(cfg, logits, mask_logits, labels, masks, ce_weight=None)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from geoseg._constants import IGNORE

if TYPE_CHECKING:
    from geoseg.train.config import TrainConfig

__all__ = ["mae_loss", "mask_loss", "total_loss"]


def mask_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
              dice_weight: float = 1.0) -> torch.Tensor:
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
    return bce_weight * bce + dice_weight * dice.mean()


def mae_loss(logits: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None,
             masks: torch.Tensor | None) -> torch.Tensor:
    """Mean |probability - one-hot target| over labelled pixels (and classes), plus the
    same for the mask heads' sigmoid probabilities."""
    keep = labels != IGNORE
    onehot = F.one_hot(torch.where(keep, labels, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    err = (torch.softmax(logits, 1) - onehot).abs().mean(1)
    loss = (err * keep).sum() / keep.sum().clamp_min(1)
    if mask_logits is not None and masks is not None:
        mkeep = masks != IGNORE
        merr = (torch.sigmoid(mask_logits) - (masks == 1).to(mask_logits.dtype)).abs()
        loss = loss + (merr * mkeep).sum() / mkeep.sum().clamp_min(1)
    return loss


def total_loss(cfg: TrainConfig, logits: torch.Tensor, mask_logits: torch.Tensor | None, labels: torch.Tensor,
               masks: torch.Tensor | None, ce_weight: torch.Tensor | None) -> torch.Tensor:
    """The training objective; pixels labelled 255 (unlabelled or nodata) contribute nothing."""
    loss = logits.new_zeros(())
    if cfg.ce_weight and bool((labels != IGNORE).any()):
        loss = loss + cfg.ce_weight * F.cross_entropy(logits, labels, weight=ce_weight, ignore_index=IGNORE)
    if mask_logits is not None and masks is not None and mask_logits.shape[1]:
        loss = loss + cfg.mask_loss_weight * mask_loss(mask_logits, masks, cfg.bce_weight, cfg.dice_weight)
    if cfg.mae_weight:
        loss = loss + cfg.mae_weight * mae_loss(logits, labels, mask_logits, masks)
    return loss
