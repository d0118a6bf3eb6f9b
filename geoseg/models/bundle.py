"""Model bundles: weights plus the model's input/output contract, in one safe file.

A bundle file uses the safetensors layout, written and read by this module (no pickle,
no ``torch.load``, nothing in the file is ever executed)::

    8 bytes   little-endian uint64 N, the length of the JSON header
    N bytes   JSON header (UTF-8, space-padded to a multiple of 8):
              {"__metadata__": {"geoseg": "<ModelSpec as JSON>"},
               "<tensor name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
               ...}
    rest      raw little-endian tensor bytes; offsets are relative to the end of the header

The metadata (:class:`ModelSpec`) is validated with pydantic; an error names the field.
A file that is not such a bundle (a pickle, a ``torch.save`` zip, anything else) is
refused with a :class:`~geoseg.errors.ModelError` before any of its bytes are interpreted
as code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from geoseg._files import atomic_write
from geoseg.errors import ModelError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ClassSpec",
    "Normalization",
    "ModelSpec",
    "ModelBundle",
    "build_module",
    "bundle_bytes",
    "bundle_from_bytes",
    "save_bundle",
    "read_bundle",
]

FORMAT = "geoseg-bundle"
FORMAT_VERSION = 1
_MAX_HEADER = 64 * 1024 * 1024
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")



# --------------------------------------------------------------------------- metadata


class ClassSpec(BaseModel):
    """One output class: its name and display colour (``#rrggbb``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    color: str

    @field_validator("color")
    @classmethod
    def _hex_color(cls, v: str) -> str:
        if not _HEX.match(v):
            raise ValueError(f"colour must be '#rrggbb', not {v!r}")
        return v.lower()


class Normalization(BaseModel):
    """Per-band ``(raw - mean) / std``, in raw input units, one value per band."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have one value per band")
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError("mean values must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError("std values must be finite and > 0")
        return self


class ModelSpec(BaseModel):
    """A model's metadata: architecture, input contract, outputs and provenance.

    Attributes:
        format: Always ``"geoseg-bundle"``.
        format_version: Bundle format version (1).
        name: Model name.
        architecture: ``"unet"``, ``"unet_forest"`` (a U-Net mixed with a random forest,
            :class:`geoseg.models.forest.UNetForest`) or ``"spectral"``.
        arch_params: Keyword arguments of the architecture's constructor (besides the
            band, class and mask-head counts, which come from the fields below).
        bands: Input band names, in the order the model expects.
        normalization: Per-band mean and std in raw input units.
        value_range: ``[lo, hi]`` of valid raw inputs (e.g. ``[0, 10000]``), or None for
            a scale-free model.
        classes: Output classes (names and colours), in logit order.
        mask_heads: Names of the sigmoid mask heads, in logit order.
        halo: Context in full-resolution pixels that tiles need on each side for
            results identical to whole-image inference.
        downsampling: Tile origins and sizes should be multiples of this.
        gsd: Ground sample distance the model was trained at, in metres (e.g. 10 for
            Sentinel-2-like data); a scene at another GSD is read resampled to it. None:
            scale-free (scenes are read as they are).
        description: One line for ``geoseg models``.
        training: Free-form provenance (data, seeds, command, metrics).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["geoseg-bundle"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(min_length=1)
    architecture: Literal["unet", "unet_forest", "spectral"]
    arch_params: dict[str, Any] = Field(default_factory=dict)
    bands: list[str] = Field(min_length=1)
    normalization: Normalization
    value_range: tuple[float, float] | None = None
    classes: list[ClassSpec] = Field(min_length=1)
    mask_heads: list[str] = Field(default_factory=list)
    halo: int = Field(ge=0)
    downsampling: int = Field(ge=1)
    gsd: float | None = Field(default=None, gt=0)
    description: str = ""
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("bands", "mask_heads")
    @classmethod
    def _unique_names(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("names must be non-empty")
        if len(set(v)) != len(v):
            raise ValueError(f"names must be unique, got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[ClassSpec]) -> list[ClassSpec]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        return v

    @field_validator("value_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"value_range must be [lo, hi] with lo < hi, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _normalization_matches_bands(self) -> ModelSpec:
        if len(self.normalization.mean) != len(self.bands):
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} values per statistic "
                f"but the model has {len(self.bands)} bands"
            )
        return self

    def to_json(self) -> str:
        """The spec as compact JSON."""
        return self.model_dump_json()


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(metadata)"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def parse_spec(data: str | bytes | Mapping[str, Any], source: str = "model metadata") -> ModelSpec:
    """Validate metadata (JSON text or a mapping) into a :class:`ModelSpec`.

    Raises:
        ModelError: Naming the invalid field(s).
    """
    try:
        if isinstance(data, (str, bytes)):
            return ModelSpec.model_validate_json(data)
        return ModelSpec.model_validate(dict(data))
    except ValidationError as err:
        raise ModelError(f"{source}: invalid model metadata: {_validation_message(err)}") from None


# --------------------------------------------------------------------------- modules


def _unet_module(spec: ModelSpec) -> nn.Module:
    from geoseg.models.unet import UNet

    allowed = {"base_width", "depth", "upsample"}
    return _construct(
        UNet, spec, allowed, len(spec.bands), len(spec.classes), len(spec.mask_heads)
    )


def _unet_forest_module(spec: ModelSpec) -> nn.Module:
    from geoseg.models.forest import UNetForest

    allowed = {"base_width", "depth", "upsample", "trees", "tree_depth", "scales", "net_weight"}
    return _construct(UNetForest, spec, allowed, len(spec.bands), len(spec.classes), len(spec.mask_heads))


def _spectral_module(spec: ModelSpec) -> nn.Module:
    from geoseg.models.spectral import SPECTRAL_CLASSES, SpectralIndexModel

    if len(spec.classes) != len(SPECTRAL_CLASSES) or len(spec.mask_heads) != 1:
        raise ModelError(
            f"model {spec.name!r}: field 'classes'/'mask_heads': the spectral architecture has "
            f"{len(SPECTRAL_CLASSES)} classes and 1 mask head"
        )
    allowed = {"water_threshold", "vegetation_threshold", "sharpness"}
    return _construct(SpectralIndexModel, spec, allowed, spec.bands)


def _construct(factory: Any, spec: ModelSpec, allowed: set[str], *args: Any) -> nn.Module:
    unknown = sorted(set(spec.arch_params) - allowed)
    if unknown:
        raise ModelError(
            f"model {spec.name!r}: field 'arch_params': unknown parameter(s) {unknown} for "
            f"architecture {spec.architecture!r} (allowed: {sorted(allowed)})"
        )
    try:
        module: nn.Module = factory(*args, **spec.arch_params)
    except (TypeError, ValueError) as err:
        raise ModelError(f"model {spec.name!r}: field 'arch_params': {err}") from None
    factor = getattr(module, "downsampling", 1)
    if factor != spec.downsampling:
        raise ModelError(
            f"model {spec.name!r}: field 'downsampling' is {spec.downsampling} but the "
            f"architecture downsamples by {factor}"
        )
    return module


_ARCHITECTURES = {"unet": _unet_module, "unet_forest": _unet_forest_module, "spectral": _spectral_module}


def build_module(spec: ModelSpec) -> nn.Module:
    """Construct the (untrained, eval-mode) module that ``spec`` describes.

    Raises:
        ModelError: If ``arch_params`` or ``downsampling`` do not fit the architecture.
    """
    return _ARCHITECTURES[spec.architecture](spec).eval()


# --------------------------------------------------------------------------- bundle


@dataclasses.dataclass(eq=False)
class ModelBundle:
    """A model: its ``torch.nn.Module`` (eval mode) and its metadata.

    Bundles returned by :func:`~geoseg.models.load_model` are cached and shared: treat
    them as read-only (:meth:`replace` and :meth:`inference_module` return new objects).

    Attributes:
        module: The network; normalised float32 ``(N, bands, H, W)`` in, class logits
            ``(N, C, H, W)`` out, or ``(class_logits, mask_logits (N, M, H, W))`` when
            the model has mask heads.
        spec: The validated metadata.
        checksum: sha256 (hex) of the bundle file's bytes (for built-ins: of the bytes
            their file would have).
        source: The file it was read from, or ``"builtin:<name>"``.
    """

    module: nn.Module
    spec: ModelSpec
    checksum: str = ""
    source: str = ""
    _fast: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.module.eval()
        if not self.checksum:
            self.checksum = hashlib.sha256(bundle_bytes(self.module, self.spec)).hexdigest()

    # metadata as attributes
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    @property
    def arch_params(self) -> dict[str, Any]:
        return dict(self.spec.arch_params)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.spec.bands)

    @property
    def num_bands(self) -> int:
        return len(self.spec.bands)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.spec.classes)

    @property
    def class_colors(self) -> tuple[str, ...]:
        return tuple(c.color for c in self.spec.classes)

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    @property
    def mask_heads(self) -> tuple[str, ...]:
        return tuple(self.spec.mask_heads)

    @property
    def halo(self) -> int:
        return self.spec.halo

    @property
    def downsampling(self) -> int:
        return self.spec.downsampling

    @property
    def gsd(self) -> float | None:
        """Training ground sample distance in metres (None: scale-free)."""
        return self.spec.gsd

    @property
    def normalization(self) -> Normalization:
        return self.spec.normalization

    @property
    def value_range(self) -> tuple[float, float] | None:
        return self.spec.value_range

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.spec.training)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Normalise raw input ``(N, bands, H, W)`` or ``(bands, H, W)`` to float32."""
        x = np.asarray(x)
        if x.ndim not in (3, 4) or x.shape[-3] != self.num_bands:
            raise ModelError(
                f"model {self.name!r} expects input (N, {self.num_bands}, H, W) or "
                f"({self.num_bands}, H, W), got shape {x.shape}"
            )
        mean = np.asarray(self.spec.normalization.mean, np.float32).reshape(-1, 1, 1)
        inv = (1.0 / np.asarray(self.spec.normalization.std, np.float64)).astype(np.float32).reshape(-1, 1, 1)
        out = x.astype(np.float32, copy=True)
        out -= mean
        out *= inv
        return out

    def inference_module(self) -> nn.Module:
        """A fast eval copy of :attr:`module` (BatchNorm folded, ``channels_last``), built once.

        Feed it ``channels_last`` float32 input; outputs match :attr:`module` within 1e-4.
        """
        with self._lock:
            if self._fast is None:
                from geoseg.models.perf import prepare_for_inference

                self._fast = prepare_for_inference(self.module)
            return self._fast

    def replace(self, module: nn.Module | None = None, **spec_changes: Any) -> ModelBundle:
        """Return a new bundle with another module and/or metadata fields changed.

        Example: ``bundle.replace(module=trained, normalization={"mean": m, "std": s})``.

        Raises:
            ModelError: If the changed metadata is invalid (naming the field).
        """
        data = self.spec.model_dump()
        data.update(spec_changes)
        spec = parse_spec(data, source=f"model {self.name!r}")
        if module is None:
            module = build_module(spec)
            try:
                module.load_state_dict(self.module.state_dict())
            except RuntimeError:
                raise ModelError(
                    f"model {self.name!r}: the new metadata changes the architecture; pass a module"
                ) from None
        return ModelBundle(module=module, spec=spec, source=self.source)

    def save(self, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
        """Write this bundle to ``path`` (see :func:`save_bundle`)."""
        return save_bundle(self.module, self.spec, path, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"ModelBundle(name={self.name!r}, architecture={self.architecture!r}, "
            f"bands={list(self.bands)}, classes={list(self.class_names)}, "
            f"mask_heads={list(self.mask_heads)}, halo={self.halo}, "
            f"downsampling={self.downsampling}, checksum={self.checksum[:12]!r})"
        )


# --------------------------------------------------------------------------- file format


def bundle_bytes(module: nn.Module, spec: ModelSpec, dtype: torch.dtype | None = None) -> bytes:
    """Serialise a module's state dict and its spec to bundle-file bytes (``safetensors``).

    Args:
        module: The network.
        spec: Its metadata, stored as the ``geoseg`` entry of the safetensors metadata.
        dtype: If given (e.g. ``torch.float16``), floating-point tensors are stored in this
            dtype (upcast to the module's dtype when loaded).
    """
    from safetensors.torch import save

    state = {}
    for name, t in module.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.contiguous()
    try:
        return save(state, metadata={"geoseg": spec.to_json()})
    except (ValueError, TypeError) as err:
        raise ModelError(f"cannot store model {spec.name!r} in a bundle: {err}") from None


def save_bundle(
    module: nn.Module,
    spec: ModelSpec,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``module``'s weights and ``spec`` to a bundle file (atomically).

    The module must be what :func:`build_module` makes of ``spec``; this is checked so that
    the file can always be loaded back.

    Returns:
        The path written.

    Raises:
        ModelError: If the module does not fit the spec.
    """
    expected = build_module(spec).state_dict()
    state = module.state_dict()
    if set(expected) != set(state) or any(expected[k].shape != state[k].shape for k in state):
        raise ModelError(
            f"model {spec.name!r}: the module's weights do not match architecture "
            f"{spec.architecture!r} with arch_params {spec.arch_params}"
        )
    path = Path(path)
    data = bundle_bytes(module, spec, dtype=dtype)
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise ModelError(f"cannot write model bundle {path}: {err.strerror or err}") from None
    return path


def _sniff(data: bytes) -> str | None:
    """Describe what a non-bundle file looks like (None if it may be a bundle)."""
    if data[:2] == b"PK":
        return "a zip archive, as written by torch.save"
    if data[:1] == b"\x80" or data[:1] in (b"(", b"]", b"}", b"c"):
        return "a Python pickle"
    if data[:6] == b"\x93NUMPY":
        return "a numpy .npy file"
    if data[:4] == b"\x89HDF":
        return "an HDF5 file"
    return None


def _not_a_bundle(source: str, why: str) -> ModelError:
    return ModelError(
        f"{source} is not a geoseg model bundle ({why}); geoseg never unpickles model files: "
        "load the weights in trusted code and write them with geoseg.models.save_bundle"
    )


def bundle_from_bytes(data: bytes, source: str = "<bytes>", checksum: str | None = None) -> ModelBundle:
    """Parse bundle-file bytes into a :class:`ModelBundle`.

    Raises:
        ModelError: If the bytes are not a valid bundle (nothing in them is executed).
    """
    if len(data) < 8:
        raise _not_a_bundle(source, f"only {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > len(data) or data[8:9] != b"{":
        raise _not_a_bundle(source, _sniff(data) or "no safetensors header")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_a_bundle(source, "unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise _not_a_bundle(source, "unreadable safetensors header")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("geoseg"), str):
        raise _not_a_bundle(source, "a safetensors file without geoseg metadata")
    spec = parse_spec(meta["geoseg"], source=source)

    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))  # the library checks dtypes, shapes, offsets and overlaps
    except SafetensorError as err:
        raise ModelError(f"{source}: invalid tensor data ({err}): the file is truncated or corrupt") from None

    module = build_module(spec)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"{source}: weights do not match architecture {spec.architecture!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(
                f"{source}: tensor {k!r} has shape {list(v.shape)}, the architecture needs "
                f"{list(own[k].shape)}"
            )
        if v.is_floating_point() != own[k].is_floating_point():
            raise ModelError(f"{source}: tensor {k!r} has dtype {v.dtype}, expected {own[k].dtype}")
        tensors[k] = v.to(own[k].dtype)
    module.load_state_dict(tensors, strict=True)
    module.eval()
    if checksum is None:
        checksum = hashlib.sha256(data).hexdigest()
    return ModelBundle(module=module, spec=spec, checksum=checksum, source=source)


def read_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Read a bundle file (uncached; see :func:`~geoseg.models.load_model` for caching).

    Raises:
        ModelError: If the file is missing, not a bundle, or invalid.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror or err}") from None
    return bundle_from_bytes(data, source=str(path))


def class_specs(classes: Sequence[Any]) -> list[ClassSpec]:
    """Coerce class descriptions to :class:`ClassSpec`.

    Accepts names, ``(name, color)`` pairs, mappings with ``name``/``color``, or objects
    with ``.name``/``.color`` (e.g. :class:`geoseg.classes.ClassInfo`); missing colours
    come from a fixed palette.
    """
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, ClassSpec):
            out.append(c)
            continue
        if isinstance(c, str):
            name, color = c, None
        elif isinstance(c, Mapping):
            name, color = c.get("name"), c.get("color")
        elif isinstance(c, (tuple, list)):
            name, color = c[0], (c[1] if len(c) > 1 else None)
        else:
            name, color = getattr(c, "name", None), getattr(c, "color", None)
        try:
            out.append(ClassSpec(name=name, color=color or _PALETTE[i % len(_PALETTE)]))
        except ValidationError as err:
            raise ModelError(f"class {i}: {_validation_message(err)}") from None
    return out


_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
