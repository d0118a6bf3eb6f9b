"""The contract of a model that is not a geoseg bundle, and the model object that carries it.

A contract says what a network expects and gives: bands and their order, normalisation,
valid value range, classes and colours, mask heads, the halo and downsampling factor exact
seams need, a fixed input size, and whether its outputs are logits or probabilities. It
comes from what the model file embeds (ONNX metadata in the Deepness/GeoDeep conventions,
an MLM Item, extra files of a TorchScript or ``.pt2`` archive), overridden field by field by
a sidecar ``MODEL.geoseg.json`` next to the model file, e.g.::

    {"bands": ["red", "green", "blue"],
     "normalization": {"mean": [120, 115, 100], "std": [50, 45, 40]},
     "value_range": [0, 255],
     "classes": [{"name": "background", "color": "#000000"}, "building"],
     "mask_heads": [], "halo": 56, "downsampling": 8, "outputs": "logits"}

Halo and downsampling that no source declares are measured on the model's own runtime
(:mod:`geoseg.models.inspect`).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoseg.errors import ModelError
from geoseg.models.bundle import ClassSpec, Normalization, class_specs

__all__ = ["Contract", "ExternalModel", "build_contract"]

class Contract(BaseModel):
    """What a model expects and gives (all that ``geoseg run`` needs besides the runtime).

    Attributes:
        name: Model name.
        description: One line.
        bands: Input band names, in input order.
        normalization: ``(raw - mean) / std`` per band, in raw units.
        value_range: ``[lo, hi]`` of valid raw inputs, or None (scale-free).
        classes: Output classes (names and colours), in output order.
        mask_heads: Names of the mask heads (the second output's channels).
        outputs: ``"logits"`` or ``"probabilities"`` (softmax/sigmoid applied by the model);
            None: measured.
        threshold: Class probabilities below it count as 0 before the argmax (Deepness/GeoDeep
            ``seg_thresh``); 0 keeps the plain argmax.
        halo: Context in pixels exact seams need on each side; None: measured.
        downsampling: Window origins and sizes are multiples of it; None: measured.
        input_size: ``(height, width)`` the model only accepts, or None.
        tile_size: The tile size the model was published for (informational).
        overlap: Percent of a tile by which blended tiles overlap (Deepness ``tiles_overlap``).
        seams: ``"exact"`` or ``"blended"``; None: from the measured receptive field.
        gsd: Ground sample distance the model was trained at, metres.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    bands: list[str] = Field(min_length=1)
    normalization: Normalization
    value_range: tuple[float, float] | None = None
    classes: list[ClassSpec] = Field(min_length=1)
    mask_heads: list[str] = Field(default_factory=list)
    outputs: Literal["logits", "probabilities"] | None = None
    threshold: float = Field(default=0.0, ge=0.0, lt=1.0)
    halo: int | None = Field(default=None, ge=0)
    downsampling: int | None = Field(default=None, ge=1)
    input_size: tuple[int, int] | None = None
    tile_size: int | None = Field(default=None, ge=1)
    overlap: float | None = Field(default=None, ge=0.0, lt=100.0)
    seams: Literal["exact", "blended"] | None = None
    gsd: float | None = Field(default=None, gt=0.0)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        return class_specs(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> Contract:
        if len(self.normalization.mean) != len(self.bands):
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} values per statistic but there are "
                f"{len(self.bands)} bands"
            )
        if self.input_size is not None and min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {list(self.input_size)}")
        return self


#: What the error for a missing field tells the user to add, per kind of model file.
_WHERE = {
    "onnx": "the ONNX metadata (Deepness convention: 'class_names', 'standardization_mean'/'_std') or {sidecar}",
    "torchscript": "{sidecar} (or the archive's extra file 'geoseg.json')",
    "torch.export": "{sidecar} (or the archive's extra file 'geoseg.json')",
    "mlm": "the MLM Item ({mlm}) or {sidecar}",
}
_MLM_FIELD = {
    "bands": "mlm:input[0].bands",
    "normalization": "mlm:input[0].value_scaling",
    "classes": "mlm:output[0].classification:classes",
}


def build_contract(fields: dict[str, Any], kind: str, source: str, sidecar: str) -> Contract:
    """Validate merged fields; a missing or invalid one is a one-line error saying where to add it."""
    fields = dict(fields)
    fields.setdefault("name", Path(source).stem or "model")
    for required in ("bands", "normalization", "classes"):
        if required not in fields:
            where = _WHERE.get(kind, "{sidecar}").format(sidecar=sidecar, mlm=_MLM_FIELD.get(required, required))
            raise ModelError(f"{source}: the model's contract has no '{required}': add it to {where}")
    try:
        return Contract.model_validate(fields)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(contract)"
            parts.append(f"field '{loc}': {e['msg']}")
        raise ModelError(f"{source}: invalid model contract ({'; '.join(parts)}); fix it in {sidecar}") from None


@dataclasses.dataclass(eq=False)
class ExternalModel:
    """A model run by a foreign runtime (ONNX, TorchScript, ``torch.export``), with its contract.

    It offers what a :class:`~geoseg.models.ModelBundle` offers the pipeline (``bands``,
    ``class_names``, ``halo``, ``downsampling``, ``normalization``, ``inference_module()``,
    ...); :attr:`module` is the :class:`~geoseg.models.runtime.Runtime`.

    Attributes:
        runtime: The runtime (outputs turned into logits).
        contract: The contract as declared (halo, downsampling, outputs possibly None).
        checksum: sha256 of the model file (and of its sidecar or Item, when there is one).
        source: The model reference it was loaded from.
        origin: Where each contract field came from (``embedded``, ``sidecar``, ``measured``).
    """

    runtime: Any
    contract: Contract
    checksum: str
    source: str
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    _measured: Any = dataclasses.field(default=None, repr=False)
    _scored: Any = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    # --- what ModelBundle offers
    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def architecture(self) -> str:
        return self.runtime.kind

    @property
    def gsd(self) -> float | None:
        """Ground sample distance the model was trained at, metres (None: scale-free or unknown)."""
        return self.contract.gsd

    @property
    def arch_params(self) -> dict[str, Any]:
        return {}

    @property
    def training(self) -> dict[str, Any]:
        return {}

    @property
    def description(self) -> str:
        return self.contract.description or f"{self.runtime.kind} model"

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.contract.bands)

    @property
    def num_bands(self) -> int:
        return len(self.contract.bands)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.contract.classes)

    @property
    def class_colors(self) -> tuple[str, ...]:
        return tuple(c.color for c in self.contract.classes)

    @property
    def num_classes(self) -> int:
        return len(self.contract.classes)

    @property
    def mask_heads(self) -> tuple[str, ...]:
        return tuple(self.contract.mask_heads)

    @property
    def normalization(self) -> Normalization:
        return self.contract.normalization

    @property
    def value_range(self) -> tuple[float, float] | None:
        return self.contract.value_range

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.contract.input_size or self.runtime.input_size

    # --- measured where not declared
    def inspection(self) -> Any:
        """The measured receptive field, downsampling and outputs (measured once)."""
        with self._lock:
            if self._measured is None:
                from geoseg.models.inspect import inspect_runtime

                self._measured = inspect_runtime(
                    self.runtime, self.num_bands, input_size=self.input_size,
                    downsampling=self.contract.downsampling, source=self.source,
                )
            return self._measured

    @property
    def downsampling(self) -> int:
        if self.contract.downsampling is not None:
            return self.contract.downsampling
        return self.inspection().downsampling

    @property
    def seams(self) -> str:
        """``"exact"`` (the halo covers the receptive field) or ``"blended"``."""
        if self.contract.seams is not None:
            return self.contract.seams
        if self.contract.halo is not None:
            return "exact"
        return self.inspection().seams

    @property
    def halo(self) -> int:
        """Context pixels per side: the exact-seam halo, or the blending overlap per side."""
        if self.contract.halo is not None:
            return self.contract.halo
        if self.seams == "blended":
            return self.blend_overlap()
        return self.inspection().halo

    def blend_overlap(self, tile: int | None = None) -> int:
        """Pixels each blended window reaches beyond its core on each side."""
        if self.contract.overlap is not None and (tile or self.input_size):
            size = tile or self.input_size[0]  # type: ignore[index]
            return max(1, int(round(size * self.contract.overlap / 200.0)))
        if self.input_size:
            return max(1, self.input_size[0] // 8)
        return 64

    @property
    def outputs(self) -> str:
        if self.contract.outputs is not None:
            return self.contract.outputs
        return self.inspection().outputs

    def inference_module(self) -> Any:
        """The runtime, its outputs turned into logits (what the Predictor runs)."""
        with self._lock:
            scored = self._scored
        if scored is None:
            from geoseg.models.runtime import Scores

            scored = Scores(self.runtime, self.outputs, len(self.mask_heads), self.contract.threshold)
            with self._lock:
                self._scored = scored
        return scored

    @property
    def module(self) -> Any:
        return self.inference_module()

    def describe(self) -> dict[str, Any]:
        """The contract, with measured values filled in, as JSON-ready data."""
        data = self.contract.model_dump(mode="json")
        data.update(
            runtime=self.runtime.kind, halo=self.halo, downsampling=self.downsampling, seams=self.seams,
            outputs=self.outputs, input_size=list(self.input_size) if self.input_size else None,
            sha256=self.checksum, source=self.source,
        )
        return data

    def __repr__(self) -> str:
        return (
            f"ExternalModel(name={self.name!r}, runtime={self.runtime.kind!r}, bands={list(self.bands)}, "
            f"classes={list(self.class_names)}, mask_heads={list(self.mask_heads)}, checksum={self.checksum[:12]!r})"
        )
