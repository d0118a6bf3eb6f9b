"""ONNX models through onnxruntime, with their contract from Deepness/GeoDeep metadata.

ONNX files are data (a protobuf graph of standard operators); nothing in them runs as
Python. Needs the optional ``onnxruntime`` package: ``pip install 'geoseg[onnx]'``.

Metadata read (``ModelProto.metadata_props``, JSON-decoded where they are JSON), in the
conventions of the Deepness QGIS plugin and GeoDeep:

=========================  ==========================================================
``model_type``             must be ``"Segmentor"`` when given
``class_names``            ``{"0": "name", ...}``, a list, or Deepness' list of dicts
``resolution``             cm/pixel (the model's GSD)
``tile_size``/``tiles_size``  the tile size the tools use (a fixed input size wins)
``tiles_overlap``          percent: the overlap of blended tiles
``standardization_mean``/``_std``  applied after dividing uint8 values by 255
``seg_thresh``             probabilities below it count as 0 before the argmax
``geoseg``                 a geoseg contract (or model spec) as JSON: classes, colours,
                           mask heads, bands, halo, downsampling, ...
=========================  ==========================================================

Deepness and GeoDeep feed 8-bit RGB divided by 255, so without a ``geoseg`` entry or a
sidecar the contract is: bands red, green, blue; values 0..255; normalisation
``(x/255 - mean)/std``; the graph outputs probabilities.
"""

from __future__ import annotations

import json
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.runtime import Runtime

__all__ = ["OnnxRuntime", "onnx_fields", "load_onnx"]

_DEEPNESS_KEYS = ("model_type", "class_names", "names", "resolution", "tile_size", "tiles_size", "tiles_overlap",
                  "standardization_mean", "standardization_std", "seg_thresh")


def _session(data: bytes, source: str, device: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(
            f"{source} is an ONNX model, which needs onnxruntime: pip install 'geoseg[onnx]'"
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiles run in parallel, one per core (as torch forwards do)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures surface as exceptions (a rejected input size is a measurement)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError(
                f"{source}: --device {device} needs onnxruntime's CUDA execution provider "
                "(pip install onnxruntime-gpu), or run with --device cpu"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{source} is not an ONNX model onnxruntime can run ({text[:200]})") from None


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxRuntime(Runtime):
    """An ONNX graph in an onnxruntime session (CPU, or CUDA when installed)."""

    kind = "onnx"

    def __init__(self, data: bytes, source: str, device: str = "cpu") -> None:
        self.data, self.source, self.device = data, source, device
        self.session = _session(data, source, device)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [list(i.shape) for i in inputs]
            raise ModelError(f"{source}: geoseg runs ONNX models with one (N, bands, H, W) input, this one has {shapes}")
        shape = inputs[0].shape
        self.input_name = inputs[0].name
        self.batch = _dim(shape[0])
        self.channels = _dim(shape[1])
        h, w = _dim(shape[2]), _dim(shape[3])
        self.input_size = (h, w) if h and w else None
        self.output_channels = [(_dim(o.shape[1]) if len(o.shape) == 4 else None) for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def on_device(self, device: str) -> OnnxRuntime:
        return self if device == self.device else OnnxRuntime(self.data, self.source, device)

    def __call__(self, x: Any) -> Any:
        import numpy as np
        import torch

        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        if self.batch == 1 and arr.shape[0] > 1:  # a graph exported for batch 1
            outs = [self.session.run(None, {self.input_name: arr[i : i + 1]}) for i in range(arr.shape[0])]
            results = [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]
        else:
            results = self.session.run(None, {self.input_name: arr})
        tensors = tuple(torch.from_numpy(np.asarray(r, dtype=np.float32)).to(x.device) for r in results)
        return tensors if len(tensors) > 1 else tensors[0]


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _class_names(value: Any, source: str) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        value = value[0]  # Deepness: one dict per output; the first is the class output
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            raise ModelError(f"{source}: ONNX metadata 'class_names' must map class ids to names, got {value!r}") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ModelError(f"{source}: ONNX metadata 'class_names' must number classes 0..{len(items) - 1}, got {sorted(value)}")
        return [n for _, n in items]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ModelError(f"{source}: ONNX metadata 'class_names' must be {{\"0\": \"name\", ...}} or a list of names, got {value!r}")


def onnx_fields(metadata: dict[str, str], channels: int | None, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Contract fields from ONNX metadata: ``(fields, deepness)``.

    ``fields`` are the contract fields the metadata gives; ``deepness`` the raw Deepness/GeoDeep
    values seen (for ``models inspect``).
    """
    meta = {k: _decode(v) for k, v in metadata.items()}
    deepness = {k: meta[k] for k in _DEEPNESS_KEYS if k in meta}
    fields: dict[str, Any] = {}
    model_type = meta.get("model_type")
    if model_type is not None and str(model_type).lower() != "segmentor":
        raise ModelError(
            f"{source}: ONNX metadata 'model_type' is {model_type!r}; geoseg runs segmentation models ('Segmentor')"
        )
    if deepness:
        # what Deepness and GeoDeep feed: 8-bit RGB divided by 255, then standardised
        n = channels or 3
        mean = meta.get("standardization_mean", [0.0] * n)
        std = meta.get("standardization_std", [1.0] * n)
        if not isinstance(mean, list):
            mean = [float(mean)] * n
        if not isinstance(std, list):
            std = [float(std)] * n
        try:
            fields["normalization"] = {"mean": [255.0 * float(m) for m in mean], "std": [255.0 * float(s) for s in std]}
        except (TypeError, ValueError):
            raise ModelError(f"{source}: ONNX metadata 'standardization_mean'/'standardization_std' must be lists of numbers") from None
        fields["value_range"] = (0.0, 255.0)
        if n == 3:
            fields["bands"] = ["red", "green", "blue"]
        fields["outputs"] = "probabilities"
    names = meta.get("class_names", meta.get("names"))
    if names is not None:
        fields["classes"] = _class_names(names, source)
    for key, field, convert in (
        ("resolution", "gsd", lambda v: float(v) / 100.0),  # cm/px -> m/px
        ("tiles_overlap", "overlap", float),
        ("seg_thresh", "threshold", float),
    ):
        if key in meta:
            try:
                fields[field] = convert(meta[key])
            except (TypeError, ValueError):
                raise ModelError(f"{source}: ONNX metadata {key!r} must be a number, got {meta[key]!r}") from None
    tile = meta.get("tile_size", meta.get("tiles_size"))
    if tile is not None:
        fields["tile_size"] = tile
    own = meta.get("geoseg")
    if own is not None:
        if isinstance(own, str):
            raise ModelError(f"{source}: ONNX metadata 'geoseg' must be a JSON object, got {own[:60]!r}")
        fields.update(from_spec(own, keep_input=not deepness))
    return fields, deepness


#: Fields of a geoseg model spec (bundle metadata) that describe a network's contract.
_SPEC_FIELDS = ("name", "description", "bands", "normalization", "value_range", "classes", "mask_heads",
                "halo", "downsampling", "outputs", "threshold", "input_size", "overlap", "seams", "gsd")


def from_spec(spec: Any, keep_input: bool = True) -> dict[str, Any]:
    """Contract fields of a geoseg model spec or contract (a mapping).

    With ``keep_input=False`` the input scaling (normalisation, value range) is left out:
    a graph that follows the Deepness convention (uint8 / 255) scales its input itself.
    """
    if not isinstance(spec, dict):
        return {}
    out = {k: spec[k] for k in _SPEC_FIELDS if k in spec}
    if not keep_input:
        out.pop("normalization", None)
        out.pop("value_range", None)
    return out


def load_onnx(data: bytes, source: str) -> tuple[OnnxRuntime, dict[str, Any]]:
    """The runtime of an ONNX file and the contract fields of its metadata."""
    runtime = OnnxRuntime(data, source)
    fields, _ = onnx_fields(runtime.metadata, runtime.channels, source)
    return runtime, fields
