"""The training configuration: a YAML file and/or command-line flags, validated once.

A config file names the data and overrides any default; flags override the file::

    out: buildings.safetensors          # relative paths are relative to this file
    data:
      - {image: west.tif, labels: buildings.gpkg}
      - {image: tile2.tif, labels: tile2_classes.tif, masks: {roofs: tile2_roofs.tif}}
    validation: []                      # default: a strip of each training scene
    classes: [background, {name: building, color: "#e31a1c"}]
    mask_heads:
      - {name: built_up, classes: [building]}
      - {name: roofs}                   # targets from each data entry's masks
    labels: {field: null, layer: null, background: auto, nodata: auto, all_touched: false}
    model: {width: 16, depth: 3}
    epochs: 10
    chip_size: 128
    loss_weights: {ce: 1, bce: 1, dice: 1, mae: 0}

:func:`load_train_config` reads a file, :meth:`TrainSettings.with_overrides` applies flags;
errors name the file (or the flag) and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from geoseg.errors import InputError
from geoseg.io.labels import LabelOptions

__all__ = [
    "ClassEntry",
    "DataPair",
    "LabelSettings",
    "LossWeights",
    "MaskHead",
    "ModelSettings",
    "TrainSettings",
    "load_train_config",
]


#: The ``source`` of settings given as command-line flags (errors then name the flags).
FLAGS = "command-line options"


def _resolve(v: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    v = Path(os.path.expanduser(v))
    return Path(base) / v if base is not None and not v.is_absolute() else v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataPair(_Strict):
    """An image and its labels (class raster or polygons), plus mask-head target files."""

    image: Path
    labels: Path
    masks: dict[str, Path] = Field(default_factory=dict)

    @field_validator("image", "labels")
    @classmethod
    def _paths(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve(v, info)

    @field_validator("masks")
    @classmethod
    def _mask_paths(cls, v: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        return {k: _resolve(p, info) for k, p in v.items()}


class ClassEntry(_Strict):
    """A class: its name and optional display colour (``#rrggbb``)."""

    name: str = Field(min_length=1)
    color: str | None = None

    @field_validator("color")
    @classmethod
    def _color(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from geoseg.classes import hex_to_rgb, rgb_to_hex

        return rgb_to_hex(hex_to_rgb(v))


class MaskHead(_Strict):
    """A binary output: positive where the labels are one of ``classes`` (names or ids),
    or, without classes, where each data entry's mask file for this head is non-zero."""

    name: str = Field(min_length=1)
    classes: list[str | int] | None = None


class LabelSettings(_Strict):
    """How label files become class ids (see :class:`geoseg.io.labels.LabelOptions`)."""

    field: str | None = None
    layer: str | None = None
    background: int | str = "auto"
    nodata: float | Literal["auto", "none"] = "auto"
    all_touched: bool = False

    @field_validator("nodata", mode="before")
    @classmethod
    def _nodata(cls, v: Any) -> Any:
        if v is None:
            return "none"  # YAML ``nodata: null`` / ``none`` both mean "no nodata value"
        if isinstance(v, str):
            if v.strip().lower() in ("auto", "none"):
                return v.strip().lower()
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"must be 'auto', 'none' or a number, not {v!r}") from None
        return v

    def options(self) -> LabelOptions:
        return LabelOptions(self.field, self.layer, self.background, self.nodata, self.all_touched)


class LossWeights(_Strict):
    """Weights of the loss terms: class-head cross-entropy, mask-head BCE and Dice, and
    the L1 (MAE) term on class and mask probabilities; ``mask`` scales BCE + Dice."""

    ce: float = Field(1.0, ge=0)
    bce: float = Field(1.0, ge=0)
    dice: float = Field(1.0, ge=0)
    mae: float = Field(0.0, ge=0)
    mask: float = Field(1.0, ge=0)


class ModelSettings(_Strict):
    """The U-Net to train: base width, depth (downsampling 2**depth), band names; width
    and depth left unset (None) are chosen for the data (:mod:`geoseg.train.sizing`)."""

    name: str | None = None
    width: int | None = Field(None, ge=1, le=256)
    depth: int | None = Field(None, ge=1, le=6)
    bands: list[str] | None = None
    description: str = ""


class TrainSettings(_Strict):
    """Everything ``geoseg train`` needs; defaults train a useful model from data alone.

    ``data`` may be empty here (a config whose data come from flags); training refuses
    to start without any.
    """

    out: Path | None = None
    data: list[DataPair] = Field(default_factory=list)
    validation: list[DataPair] = Field(default_factory=list)
    classes: list[ClassEntry] | None = None
    mask_heads: list[MaskHead] = Field(default_factory=list)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    epochs: int | None = Field(None, ge=1)
    chips_per_epoch: int | None = Field(None, ge=1)
    chip_size: int | None = Field(None, ge=8)
    batch_size: int | None = Field(None, ge=1)
    sampling: Literal["balanced", "random", "grid"] = "balanced"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    seed: int = 0
    patience: int | None = Field(None, ge=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    val_gap: int = Field(64, ge=0)
    val_split: Literal["blocks", "strip"] = "blocks"
    class_weights: Literal["auto", "none"] | list[float] = "auto"
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    augment: bool = True
    device: str = "auto"
    amp: bool | Literal["auto"] = "auto"
    threads: int | None = Field(None, ge=1)
    time_limit: float | None = Field(None, ge=0)
    time_budget: float | None = Field(None, gt=0)
    pseudo_labels: float = Field(0.0, ge=0)
    pseudo_threshold: float = Field(0.9, gt=0, le=1)
    baseline: bool = True
    forest: bool = True

    @field_validator("out")
    @classmethod
    def _out(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _resolve(v, info)

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in (p.strip() for p in v.split(",")) if s]
        if isinstance(v, list):
            return [{"name": c} if isinstance(c, str) else c for c in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainSettings:
        if self.classes is not None:
            names = [c.name for c in self.classes]
            if len(set(names)) != len(names):
                raise ValueError(f"classes: names must be unique, got {names}")
        heads = [h.name for h in self.mask_heads]
        if len(set(heads)) != len(heads):
            raise ValueError(f"mask_heads: names must be unique, got {heads}")
        for i, pair in enumerate([*self.data, *self.validation]):
            unknown = sorted(set(pair.masks) - set(heads))
            if unknown:
                raise ValueError(f"data entry {i} has masks for {unknown}, which are not mask_heads {heads}")
        for h in self.mask_heads:
            if h.classes is None and not all(h.name in p.masks for p in [*self.data, *self.validation]):
                raise ValueError(
                    f"mask head {h.name!r} has no classes: give its classes, or a mask file for it in every "
                    f"data entry (masks: {{{h.name}: PATH}})"
                )
        return self

    @property
    def label_options(self) -> LabelOptions:
        return self.labels.options()

    def with_overrides(self, updates: Mapping[str, Any], source: str = FLAGS) -> TrainSettings:
        """A copy with ``updates`` applied (nested mappings merged, None values skipped).

        Raises:
            InputError: Naming the invalid field.
        """
        return _validate(_merge(self.model_dump(exclude_unset=True), updates), source)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], source: str = FLAGS) -> TrainSettings:
        """Settings from a mapping of options (e.g. command-line flags; None values skipped)."""
        return _validate(_merge({}, values), source)


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            old = out.get(k)
            merged = _merge(dict(old) if isinstance(old, Mapping) else {}, v)
            if merged or isinstance(old, Mapping):
                out[k] = merged
        else:
            out[k] = v
    return out


def _validate(data: Mapping[str, Any], source: str, base: Path | None = None) -> TrainSettings:
    try:
        return TrainSettings.model_validate(dict(data), context={"base": base})
    except ValidationError as err:
        found: dict[str, list[str]] = {}
        for e in err.errors():
            # leave out the union members pydantic adds to a location ('float', "literal['auto']")
            loc = ".".join(str(p) for p in e["loc"] if not _UNION_MEMBER.match(str(p))) or "(top level)"
            msg = e["msg"].removeprefix("Value error, ")
            if msg not in found.setdefault(loc, []):
                found[loc].append(msg)
        if source == FLAGS:
            parts = [f"{_flag(loc)}: {' or '.join(msgs)}" for loc, msgs in found.items()]
            raise InputError(f"invalid option(s): {'; '.join(parts)}") from None
        parts = [f"field '{loc}': {' or '.join(msgs)}" for loc, msgs in found.items()]
        raise InputError(f"{source}: invalid training config: {'; '.join(parts)}") from None

_FLAG_NAMES = {"pseudo_labels": "--pseudo-labels", "baseline": "--no-baseline", "forest": "--no-forest", "labels.background": "--background", "labels.all_touched": "--all-touched", "classes": "--classes",
               "mask_heads": "--mask-head", "loss_weights": "--loss-weights", "data": "--image/--labels",
               "augment": "--no-augment"}


def _flag(loc: str) -> str:
    if loc == "(top level)":
        return "options"
    for prefix, flag in _FLAG_NAMES.items():
        if loc == prefix or loc.startswith(prefix + "."):
            return flag
    head, _, tail = loc.partition(".")
    name = {"labels": f"label_{tail}", "model": tail}.get(head, loc)
    return "--" + name.replace("_", "-")


_UNION_MEMBER = re.compile(r"^(float|int|str|bool|none|literal\[.*\]|list\[.*\]|dict\[.*\]|function-.*)$")


def load_train_config(path: str | os.PathLike[str]) -> TrainSettings:
    """Read and validate a YAML training config; relative paths are relative to its folder.

    Raises:
        InputError: A missing or unreadable file, invalid YAML, or invalid fields (named).
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"training config {p} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read training config {p}: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{p}: not valid YAML{where} ({problem}): fix the file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: a training config must be a mapping of fields (data:, epochs:, ...), not a "
                         f"{type(data).__name__}")
    return _validate(data, str(p), p.parent)
