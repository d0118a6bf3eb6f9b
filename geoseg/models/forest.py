"""A random forest on per-pixel features as a torch module, and the U-Net + forest model.

:class:`PixelForest` holds a random forest (fitted by scikit-learn in
:mod:`geoseg.train.hybrid`) as complete binary trees of fixed depth in plain tensors, so
it is saved in a bundle's safetensors like any weights and runs without scikit-learn:

- **Features** (:func:`pixel_features`): each pixel's normalised band values plus the mean
  of each band over a square window at each of ``scales`` (5 and 17 px, as the built-in
  random-forest baseline), clipped at the window's edges. The window's edges are the
  image's edges (plus the zero padding to the downsampling factor that whole-image and
  tiled inference both add at the bottom and right), so the forest's halo is
  ``max(scales) // 2`` pixels and tiled output equals whole-image output.
- **Trees**: tree ``t`` stores ``2**depth - 1`` split nodes in breadth-first order
  (``feature``, ``threshold``: go right when the value is greater) and ``2**depth`` leaf
  class distributions; a branch that ends early is padded with splits that always go
  left. Prediction walks every tree ``depth`` steps with index arithmetic and averages
  the leaves' distributions (what scikit-learn's ``predict_proba`` does).

:class:`UNetForest` is the combined model ``geoseg train`` writes when the forest helps on
validation: class probabilities ``w * softmax(unet) + (1 - w) * forest`` (``w`` =
``net_weight``), returned as their logarithm so that every consumer's softmax gives the
mixture back; mask heads come from the U-Net. It has ``forward_tile`` like the U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.unet import UNet

__all__ = ["PixelForest", "UNetForest", "pixel_features"]

#: Pixels whose trees are walked at once (bounds the (pixels, trees) index tensors).
CHUNK = 32_768


def pixel_features(x: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """``(N, B * (1 + len(scales)), H, W)``: the bands and their box means at each scale
    (over the pixels inside the window only)."""
    feats = [x]
    for s in scales:
        feats.append(F.avg_pool2d(x, int(s), stride=1, padding=int(s) // 2, count_include_pad=False))
    return torch.cat(feats, dim=1)


class PixelForest(nn.Module):
    """A random forest of complete binary trees over :func:`pixel_features`.

    Args:
        in_channels: Bands.
        num_classes: Classes.
        trees: Number of trees.
        tree_depth: Depth of every (padded) tree.
        scales: Window sides of the mean features (odd).

    ``forward(x)`` takes normalised ``(N, bands, H, W)`` and returns class probabilities
    ``(N, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, trees: int, tree_depth: int,
                 scales: Sequence[int] = (5, 17)) -> None:
        super().__init__()
        if trees < 1 or not 1 <= tree_depth <= 16:
            raise ValueError("PixelForest needs trees >= 1 and 1 <= tree_depth <= 16")
        if any(int(s) < 1 or int(s) % 2 == 0 for s in scales):
            raise ValueError(f"the forest's scales must be odd window sides >= 1, got {list(scales)}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.trees, self.tree_depth, self.scales = trees, tree_depth, tuple(int(s) for s in scales)
        self.num_features = in_channels * (1 + len(self.scales))
        splits, leaves = 2**tree_depth - 1, 2**tree_depth
        self.register_buffer("feature", torch.zeros(trees, splits, dtype=torch.int64))
        self.register_buffer("threshold", torch.full((trees, splits), float("inf")))
        self.register_buffer("leaf", torch.full((trees, leaves, num_classes), 1.0 / num_classes))

    @property
    def halo(self) -> int:
        """Context pixels a core pixel's features need on each side."""
        return max(self.scales, default=1) // 2

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(P, C)`` of feature rows ``(P, F)``."""
        t_idx = torch.arange(self.trees, device=feats.device)
        split_base = (t_idx * self.feature.shape[1])[None]
        leaf_base = (t_idx * self.leaf.shape[1])[None]
        feature, threshold = self.feature.reshape(-1), self.threshold.reshape(-1)
        leaf = self.leaf.reshape(-1, self.num_classes)
        out = []
        for i in range(0, feats.shape[0], CHUNK):
            f = feats[i:i + CHUNK].float()
            node = torch.zeros(f.shape[0], self.trees, dtype=torch.int64, device=f.device)
            for _ in range(self.tree_depth):
                at = node + split_base
                right = f.gather(1, feature[at]) > threshold[at]
                node = 2 * node + 1 + right.to(torch.int64)
            out.append(leaf[node - (self.feature.shape[1]) + leaf_base].mean(dim=1))
        return torch.cat(out) if out else feats.new_zeros((0, self.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.on_core(pixel_features(x, self.scales), (0, 0, 0, 0))

    def on_core(self, feats: torch.Tensor, context: tuple[int, int, int, int]) -> torch.Tensor:
        """Probabilities ``(N, C, h, w)`` of the core of feature maps ``(N, F, H, W)``."""
        t, b, l, r = context
        n, nf, h, w = feats.shape
        core = feats[:, :, t:h - b, l:w - r]
        ch, cw = core.shape[-2:]
        rows = core.permute(0, 2, 3, 1).reshape(-1, nf)
        return self.probabilities(rows).reshape(n, ch, cw, self.num_classes).permute(0, 3, 1, 2)


class UNetForest(nn.Module):
    """A U-Net and a :class:`PixelForest` whose class probabilities are mixed.

    Args:
        in_channels, num_classes, mask_heads, base_width, depth, upsample: The U-Net's.
        trees, tree_depth, scales: The forest's.
        net_weight: ``w`` of ``w * softmax(unet) + (1 - w) * forest``, in [0, 1].
    """

    def __init__(self, in_channels: int, num_classes: int, mask_heads: int = 0, base_width: int = 16,
                 depth: int = 3, upsample: str = "transpose", trees: int = 50, tree_depth: int = 10,
                 scales: Sequence[int] = (5, 17), net_weight: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(net_weight) <= 1.0:
            raise ValueError(f"net_weight must be in [0, 1], got {net_weight}")
        self.net = UNet(in_channels, num_classes, mask_heads, base_width, depth, upsample)  # type: ignore[arg-type]
        self.forest = PixelForest(in_channels, num_classes, trees, tree_depth, scales)
        self.net_weight = float(net_weight)
        self.downsampling = self.net.downsampling
        self.num_mask_heads = mask_heads

    def _mix(self, net_out, forest_prob: torch.Tensor):
        logits, masks = net_out if isinstance(net_out, tuple) else (net_out, None)
        w = self.net_weight
        prob = forest_prob if w == 0.0 else w * torch.softmax(logits.float(), dim=1) + (1.0 - w) * forest_prob
        out = torch.log(prob.clamp_min(1e-12))
        return out if masks is None else (out, masks)

    def _needs_net(self) -> bool:
        return self.net_weight > 0.0 or self.num_mask_heads > 0

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        f = self.downsampling
        ph, pw = (-h) % f, (-w) % f
        padded = F.pad(x, (0, pw, 0, ph)) if ph or pw else x  # as UNet.forward pads: the same features
        forest = self.forest.on_core(pixel_features(padded, self.forest.scales), (0, ph, 0, pw))
        if not self._needs_net():
            return self._mix(forest, forest)
        return self._mix(self.net(x), forest)

    def tile_problem(self, height: int, width: int, context: tuple[int, int, int, int],
                     inner: tuple[bool, bool, bool, bool]) -> str | None:
        """Why :meth:`forward_tile` cannot take this window (see :meth:`UNet.tile_problem`)."""
        if any(inn and c < self.forest.halo for inn, c in zip(inner, context)):
            return f"the forest needs >= {self.forest.halo} px of context on inner sides, got {context}"
        return self.net.tile_problem(height, width, context, inner)

    def forward_tile(self, x: torch.Tensor, context: tuple[int, int, int, int],
                     inner: tuple[bool, bool, bool, bool]):
        """Outputs for the core of a tile (as :meth:`UNet.forward_tile`): the U-Net's on
        the core, the forest's on the core's pixels only."""
        t, b, l, r = context
        h, w = x.shape[-2:]
        core_h, core_w = h - t - b, w - l - r
        f = self.downsampling
        ph = 0 if inner[1] else (-(core_h + b)) % f
        pw = 0 if inner[3] else (-(core_w + r)) % f
        padded = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        forest = self.forest.on_core(pixel_features(padded, self.forest.scales), (t, b + ph, l, r + pw))
        if not self._needs_net():
            return self._mix(forest, forest)
        return self._mix(self.net.forward_tile(x, context, inner), forest)
