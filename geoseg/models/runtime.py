"""One small interface for every way geoseg runs a network: :class:`Runtime`.

A runtime is what the :class:`~geoseg.scene.predict.Predictor` calls: a normalised float32
``(N, bands, H, W)`` torch tensor in, class *logits* ``(N, C, H, W)`` out (a tuple
``(class_logits, mask_logits (N, M, H, W))`` when the model has mask heads), on the input's
device. geoseg's own bundles run their ``torch.nn.Module`` directly; ONNX files
(:mod:`geoseg.models.onnx`), TorchScript archives and exported programs
(:mod:`geoseg.models.torchscript`) are wrapped in a :class:`Runtime` subclass, and
:class:`Scores` turns whatever they output (probabilities, one sigmoid channel, thresholds
in the Deepness/GeoDeep conventions) into those logits.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Runtime", "Scores", "split_outputs"]


class Runtime:
    """A model's forward on one device, whatever runs it.

    Attributes:
        kind: ``"onnx"``, ``"torchscript"`` or ``"torch.export"``.
        input_size: ``(height, width)`` the model only accepts, or None for any size.
        device: The torch device string it runs on.
    """

    kind: str = "runtime"
    input_size: tuple[int, int] | None = None
    device: str = "cpu"

    def __call__(self, x: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def on_device(self, device: str) -> Runtime:
        """This runtime on another torch device (``"cpu"``, ``"cuda:0"``...)."""
        raise NotImplementedError  # pragma: no cover - interface

    def eval(self) -> Runtime:
        return self


def split_outputs(out: Any) -> tuple[Any, Any]:
    """``(classes, masks or None)`` of a forward's output (a tensor, tuple, list or dict)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class Scores(Runtime):
    """Turns a runtime's raw outputs into the logits the Predictor expects.

    Args:
        inner: The runtime.
        outputs: ``"logits"`` or ``"probabilities"`` (softmax / sigmoid already applied).
        num_masks: Mask heads (the second output's channels).
        threshold: Deepness/GeoDeep ``seg_thresh``: class probabilities below it count as 0
            before the argmax (a pixel with none left is class 0); 0 keeps the plain argmax.
    """

    def __init__(self, inner: Runtime, outputs: str, num_masks: int, threshold: float = 0.0) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.input_size = inner.input_size
        self.device = inner.device
        self.outputs = outputs
        self.num_masks = num_masks
        self.threshold = float(threshold)

    def on_device(self, device: str) -> Scores:
        return Scores(self.inner.on_device(device), self.outputs, self.num_masks, self.threshold)

    def __call__(self, x: Any) -> Any:
        import torch

        classes, masks = split_outputs(self.inner(x))
        classes = classes.float()
        if self.outputs == "probabilities":
            if classes.shape[1] == 1:  # one sigmoid channel: background / foreground
                classes = torch.cat([1 - classes, classes], dim=1)
            prob = classes.clamp(0, 1)
        elif self.threshold > 0:
            prob = torch.softmax(classes, dim=1)
        else:
            prob = None
        if prob is not None:
            if self.threshold > 0:
                prob = torch.where(prob < self.threshold, torch.zeros_like(prob), prob)
                none = prob.sum(dim=1, keepdim=True) == 0
                first = torch.zeros_like(prob)
                first[:, :1] = 1
                prob = torch.where(none, first, prob)
            classes = torch.log(prob.clamp_min(1e-30))
        if not self.num_masks:
            return classes
        if masks is None:
            raise ValueError(f"the model has {self.num_masks} mask head(s) but only one output")
        masks = masks.float()
        if self.outputs == "probabilities":
            p = masks.clamp(1e-7, 1 - 1e-7)
            masks = torch.log(p) - torch.log1p(-p)
        return classes, masks


def pad_multiple(value: int, factor: int) -> int:
    """``value`` rounded up to a multiple of ``factor``."""
    return int(math.ceil(value / factor) * factor)
