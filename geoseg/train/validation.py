"""Validation: a model predicted on in-memory labelled scenes with the scene pipeline's
grid and per-tile kernel, then scored (mIoU, per-class IoU, mask-head IoU)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.models.bundle import ModelBundle
from geoseg.models.perf import prepare_for_inference
from geoseg.train.data import LabeledScene, window_targets
from geoseg.train.metrics import Metrics, confusion_matrix, metrics_from_confusion

__all__ = ["evaluate", "predict_scene"]


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
    per-tile kernel (:class:`geoseg.grid.TileGrid`, :class:`geoseg.scene.predict.Predictor`).

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
    from geoseg._constants import NODATA
    from geoseg.grid import TileGrid
    from geoseg.scene.predict import Predictor

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
