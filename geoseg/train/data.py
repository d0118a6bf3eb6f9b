"""Labelled training data: a raster and its ground truth as in-memory arrays.

A :class:`LabeledScene` holds a whole image, its class labels (255 = :data:`IGNORE`, no
ground truth) and optional mask-head targets on the same grid. :func:`load_scene` reads
one from files, putting label rasters on any grid and polygons onto the image grid with
:mod:`geoseg.io.labels`; :func:`split_scene` holds out a spatially separate validation
strip; :func:`compute_normalization` and :func:`class_frequencies` are the statistics
the trainer takes over the training scenes; :func:`window_targets` gives a window's
labels and mask targets as the losses and metrics see them.

Example::

    scene = load_scene("s0.tif", "s0_labels.tif")
    train_part, val_part = split_scene(scene, val_fraction=0.2, gap=64)
    norm = compute_normalization([train_part])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg._constants import IGNORE
from geoseg.errors import InputError
from geoseg.grid import GeoBox
from geoseg.io.labels import LabelOptions, read_labels

__all__ = [
    "IGNORE",
    "LabeledScene",
    "class_frequencies",
    "compute_normalization",
    "load_scene",
    "split_scene",
    "window_targets",
]

# --------------------------------------------------------------------------- scenes


@dataclass
class LabeledScene:
    """A raster and its ground truth, as in-memory arrays on the same grid.

    Attributes:
        image: Raw ``(bands, H, W)`` values (any numeric dtype).
        labels: ``(H, W)`` uint8 class ids; 255 = no label.
        masks: Optional ``(M, H, W)`` uint8 targets of the mask heads (0/1, 255 = no
            label); when None they are derived from the labels (``mask_classes``).
        nodata: Image nodata value: pixels where every band equals it are invalid
            (excluded from statistics, labels treated as 255).
        name: For messages.
        hidden: Optional ``(H, W)`` bool: pixels training must not see (validation
            blocks of a :func:`geoseg.train.split.block_split`): invalid like nodata.
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    nodata: float | None = None
    name: str = ""
    hidden: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise InputError(f"scene {self.name!r}: image must be (bands, H, W), got shape {self.image.shape}")
        if self.labels.shape != self.image.shape[1:]:
            raise InputError(
                f"scene {self.name!r}: labels shape {self.labels.shape} does not match image "
                f"{self.image.shape[1:]}"
            )
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[1:] != self.labels.shape):
            raise InputError(f"scene {self.name!r}: masks must be (M, H, W) on the labels' grid")
        if self.hidden is not None and self.hidden.shape != self.labels.shape:
            raise InputError(f"scene {self.name!r}: hidden must be (H, W) on the labels' grid")

    @property
    def has_invalid(self) -> bool:
        """Whether some pixels may be invalid (an image nodata value or hidden pixels)."""
        return self.nodata is not None or self.hidden is not None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.labels.shape  # type: ignore[return-value]

    def valid(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Boolean ``(h, w)``: not nodata (all bands) and not hidden, in the window."""
        if self.nodata is None:
            valid = np.ones(self.labels[rows, cols].shape, bool)
        else:
            valid = ~np.all(self.image[:, rows, cols] == self.nodata, axis=0)
        if self.hidden is not None:
            valid &= ~self.hidden[rows, cols]
        return valid

    def window(self, rows: slice, cols: slice) -> LabeledScene:
        """A view of a window of the scene."""
        masks = None if self.masks is None else self.masks[:, rows, cols]
        hidden = None if self.hidden is None else self.hidden[rows, cols]
        return LabeledScene(self.image[:, rows, cols], self.labels[rows, cols], masks, self.nodata, self.name, hidden)


def load_scene(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    mask_paths: Sequence[str | os.PathLike[str]] = (),
    *,
    label_options: LabelOptions | None = None,
    class_names: Sequence[str] | None = None,
) -> LabeledScene:
    """Read an image and its labels (and optional mask-head targets) as in-memory arrays.

    The labels may be a class raster on any grid and CRS (reprojected with nearest
    neighbour) or polygons (rasterised), and are put onto the image's grid by
    :mod:`geoseg.io.labels`; so are the mask files (any labelled non-zero value is 1).

    Args:
        image_path: The image (all bands are read).
        labels_path: Class raster or vector file.
        mask_paths: One label file per mask head, in head order.
        label_options: A :class:`geoseg.io.labels.LabelOptions` (field, background, nodata ...).
        class_names: Class names, for text-field polygons and a background given by name.

    Raises:
        InputError: If the labels do not overlap the image or are not class ids.
    """
    from geoseg.io.raster import open_raster

    options = label_options or LabelOptions()
    with open_raster(image_path, env=False) as src:
        image = src.read()
        nodata = src.nodata
        geobox = GeoBox(src.height, src.width, src.transform, src.crs.to_wkt() if src.crs else None)
    labels = read_labels(labels_path, geobox, options, class_names)
    masks = None
    if mask_paths:
        mask_options = dataclasses.replace(options, field=None, background="auto")
        masks = np.stack([read_labels(p, geobox, mask_options, binary=True) for p in mask_paths])
    return LabeledScene(image, labels, masks, nodata, name=os.fspath(image_path))


def split_scene(scene: LabeledScene, val_fraction: float = 0.2, gap: int = 64) -> tuple[LabeledScene, LabeledScene]:
    """Split a scene into a training part (top) and a validation strip (bottom).

    ``gap`` rows between the two are used by neither, so that training chips and
    validation pixels are spatially separate.
    """
    h = scene.shape[0]
    n_val = round(h * val_fraction)
    if not 0 < n_val < h - gap:
        raise InputError(
            f"scene {scene.name!r}: cannot split {h} rows into training and validation with "
            f"val_fraction={val_fraction} and a gap of {gap} rows: use a smaller val_fraction or gap, "
            "or give separate validation scenes"
        )
    train_part = scene.window(slice(0, h - n_val - gap), slice(None))
    val_part = scene.window(slice(h - n_val, h), slice(None))
    return train_part, val_part


# --------------------------------------------------------------------------- statistics


def compute_normalization(scenes: Iterable[LabeledScene], block: int = 512) -> dict[str, list[float]]:
    """Per-band mean and std over valid (non-nodata) pixels of all scenes.

    Computed in float64 block by block (no full-size float copies).

    Raises:
        InputError: If there are no valid pixels or the band counts differ.
    """
    total = None
    count = 0
    for s in scenes:
        h, w = s.shape
        for r in range(0, h, block):
            for c in range(0, w, block):
                rows, cols = slice(r, r + block), slice(c, c + block)
                px = s.image[:, rows, cols].reshape(s.image.shape[0], -1).astype(np.float64)
                px = px[:, s.valid(rows, cols).ravel()]
                sums = np.stack([px.sum(1), np.square(px).sum(1)])
                if total is None:
                    total = sums
                elif total.shape != sums.shape:
                    raise InputError("scenes have different band counts")
                else:
                    total += sums
                count += px.shape[1]
    if total is None or count == 0:
        raise InputError("no valid (non-nodata) pixels to compute normalisation statistics from")
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean**2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def class_frequencies(scenes: Iterable[LabeledScene], num_classes: int) -> np.ndarray:
    """Fraction of labelled pixels in each class."""
    counts = np.zeros(num_classes, np.int64)
    for s in scenes:
        labels = np.where(s.valid(), s.labels, IGNORE) if s.has_invalid else s.labels
        counts += np.bincount(labels.ravel(), minlength=256)[:num_classes]
    return counts / max(counts.sum(), 1)


# --------------------------------------------------------------------------- targets


def window_targets(scene: LabeledScene, rows: slice, cols: slice, heads: Sequence[str],
                   mask_classes: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (255 on nodata) and mask targets (255 = ignore) of a window."""
    labels = scene.labels[rows, cols].copy()
    if scene.has_invalid:
        labels[~scene.valid(rows, cols)] = IGNORE
    if not heads:
        return labels, None
    if scene.masks is not None:
        masks = scene.masks[:, rows, cols].copy()
        masks[:, labels == IGNORE] = IGNORE
    else:
        masks = np.empty((len(heads),) + labels.shape, np.uint8)
        for i, head in enumerate(heads):
            masks[i] = np.isin(labels, list(mask_classes[head]))
        masks[:, labels == IGNORE] = IGNORE
    return labels, masks
