"""A training-free spectral-index model written as a torch module.

Classes ``water`` / ``vegetation`` / ``other`` from NDWI (McFeeters: (green - nir) /
(green + nir)) and NDVI ((nir - red) / (nir + red)), plus a ``water`` mask head. Being an
ordinary ``nn.Module`` with a bundle like any other model, it goes through exactly the
same tiled pipeline (halo 0, downsampling factor 1). Indices are ratios, so the model is
scale-free: it takes raw reflectances (its bundle's normalisation is the identity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SpectralIndexModel", "SPECTRAL_CLASSES"]

#: Class names and colours of the spectral model, in logit order.
SPECTRAL_CLASSES: tuple[tuple[str, str], ...] = (
    ("water", "#1f78b4"),
    ("vegetation", "#33a02c"),
    ("other", "#bdbdbd"),
)


class SpectralIndexModel(nn.Module):
    """NDWI/NDVI thresholds as logits.

    Logits are ``sharpness * (ndwi - water_threshold)`` for water,
    ``sharpness * (ndvi - vegetation_threshold)`` for vegetation and 0 for other, so a
    pixel whose indices are both below their thresholds is ``other`` and softmax
    confidences grow with the distance from the thresholds. The mask head ``water`` has
    the water logit.

    Args:
        bands: Band names of the input, in order; must include green, red and nir.
        water_threshold: NDWI above which a pixel is water.
        vegetation_threshold: NDVI above which a pixel is vegetation.
        sharpness: Logit units per index unit.
    """

    def __init__(
        self,
        bands: Sequence[str] = ("blue", "green", "red", "nir"),
        water_threshold: float = 0.0,
        vegetation_threshold: float = 0.3,
        sharpness: float = 20.0,
    ) -> None:
        super().__init__()
        names = [b.lower() for b in bands]
        missing = [b for b in ("green", "red", "nir") if b not in names]
        if missing:
            raise ValueError(f"the spectral model needs bands green, red and nir; missing {missing}")
        self.bands = tuple(bands)
        self.green = names.index("green")
        self.red = names.index("red")
        self.nir = names.index("nir")
        self.water_threshold = float(water_threshold)
        self.vegetation_threshold = float(vegetation_threshold)
        self.sharpness = float(sharpness)
        self.downsampling = 1
        self.num_classes = len(SPECTRAL_CLASSES)
        self.num_mask_heads = 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = x[:, self.green : self.green + 1]
        r = x[:, self.red : self.red + 1]
        n = x[:, self.nir : self.nir + 1]
        eps = torch.finfo(x.dtype).tiny
        ndwi = (g - n) / (g + n).abs().clamp_min(eps)
        ndvi = (n - r) / (n + r).abs().clamp_min(eps)
        water = self.sharpness * (ndwi - self.water_threshold)
        veg = self.sharpness * (ndvi - self.vegetation_threshold)
        logits = torch.cat([water, veg, torch.zeros_like(water)], dim=1)
        return logits, water.clone()
