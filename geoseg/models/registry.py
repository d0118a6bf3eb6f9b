"""Built-in models and loading by name or path, with a per-process cache.

Built-ins:

- ``default``: a small U-Net for 4-band (blue, green, red, nir) imagery, six land-cover
  classes and a ``built_up`` mask head, trained on synthetic scenes by
  ``pipelines/train_default_model.py``; its weights ship in ``geoseg/models/weights``.
- ``spectral``: training-free NDWI/NDVI classes (water / vegetation / other).
- ``unet``: the untrained U-Net family, built with :func:`build_unet`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import ModelError
from geoseg.models.bundle import ModelBundle, ModelSpec, build_module, bundle_from_bytes, class_specs
from geoseg.models.refs import BUILTIN_GSD, BUILTINS, DEFAULT_WEIGHTS, is_url, resolve_model_ref

__all__ = ["DEFAULT_WEIGHTS", "list_models", "load_model", "build_unet", "build_spectral", "clear_cache"]

_CACHE_SIZE = 8
_cache: OrderedDict[str, ModelBundle] = OrderedDict()
_cache_lock = threading.Lock()


def _declare_gsd(bundle: ModelBundle, gsd: float | None) -> ModelBundle:
    """``bundle`` with ``gsd`` declared when its file records none (same weights and
    checksum: the checksum stays the file's)."""
    if bundle.spec.gsd is not None or gsd is None:
        return bundle

    def make() -> ModelBundle:
        spec = bundle.spec.model_copy(update={"gsd": float(gsd)})
        return ModelBundle(module=bundle.module, spec=spec, checksum=bundle.checksum, source=bundle.source)

    return _cached(f"gsd:{bundle.checksum}", make)


def list_models() -> list[tuple[str, str]]:
    """List the built-in models as ``(name, description)`` pairs."""
    return list(BUILTINS.items())


def clear_cache() -> None:
    """Forget all cached bundles."""
    with _cache_lock:
        _cache.clear()


def _cached(key: str, make: Any) -> ModelBundle:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    bundle = make()
    with _cache_lock:
        bundle = _cache.setdefault(key, bundle)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return bundle


def _load_file(path: Path) -> ModelBundle:
    from geoseg.models.external import is_external, load_external

    if is_external(path):  # ONNX, TorchScript, torch.export, an MLM Item (geoseg.models.external)
        return load_external(str(path), cached=_cached)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"model path {path} is a directory, not a bundle file") from None
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror or err}") from None
    checksum = hashlib.sha256(data).hexdigest()
    return _cached(checksum, lambda: bundle_from_bytes(data, source=str(path), checksum=checksum))


def load_model(name_or_path: str | os.PathLike[str] | ModelBundle) -> ModelBundle:
    """Load a built-in model by name, a bundle file by path, or any other model file.

    Besides bundles, a path or ``http(s)`` URL may name an ONNX file, a TorchScript archive,
    a ``torch.export`` program (``.pt2``) or a STAC MLM Item; those load as an
    :class:`~geoseg.models.contract.ExternalModel` with the same attributes
    (:mod:`geoseg.models.external`).

    Built-in names win over files of the same name (see :mod:`geoseg.models.refs`).

    Loaded bundles are cached by checksum (LRU, per process) and shared between callers:
    treat them as read-only.

    Args:
        name_or_path: ``"default"``, ``"spectral"``, a path to a bundle file, or a
            :class:`ModelBundle` (returned as is).

    Raises:
        ModelError: Unknown name, missing or invalid file, or missing default weights.
    """
    if isinstance(name_or_path, ModelBundle):
        return name_or_path
    ref = resolve_model_ref(name_or_path)
    if is_url(ref):  # an MLM Item or model file on a web server (geoseg.models.mlm)
        from geoseg.models.external import load_external

        return load_external(ref, cached=_cached)
    if ref == "default":
        if not DEFAULT_WEIGHTS.is_file():
            raise ModelError(
                f"the default model's weights are missing ({DEFAULT_WEIGHTS}); "
                "run `python pipelines/train_default_model.py` to train them"
            )
        return _declare_gsd(_load_file(DEFAULT_WEIGHTS), BUILTIN_GSD["default"])
    if ref == "spectral":
        return _cached("builtin:spectral", build_spectral)
    if ref == "unet":
        raise ModelError(
            "'unet' is an untrained architecture family, not a model: build one with "
            "geoseg.models.build_unet(bands, classes, ...) or load a trained bundle file"
        )
    path = Path(ref)
    if not path.exists():
        raise ModelError(
            f"unknown model {os.fspath(name_or_path)!r}: not a built-in "
            f"({', '.join(n for n in BUILTINS if n != 'unet')}) and no such file"
        )
    return _load_file(path)


def build_unet(
    bands: Sequence[str] | int,
    classes: Sequence[Any] | int,
    mask_heads: Sequence[str] = (),
    base_width: int = 16,
    depth: int = 3,
    *,
    upsample: str = "transpose",
    normalization: dict[str, Sequence[float]] | None = None,
    value_range: tuple[float, float] | None = None,
    name: str = "unet",
    description: str = "",
    seed: int | None = None,
    gsd: float | None = None,
) -> ModelBundle:
    """Build a randomly initialised U-Net bundle.

    Args:
        bands: Band names in input order, or a count (named ``band1``...).
        classes: Class names, ``(name, color)`` pairs, objects with ``.name``/``.color``
            (e.g. ``geoseg.classes.LANDCOVER_CLASSES``), or a count (``class0``...).
        mask_heads: Names of sigmoid mask heads.
        base_width: Channels at full resolution.
        depth: Number of 2x downsamplings (factor ``2**depth``).
        upsample: ``"transpose"`` or ``"bilinear"``.
        normalization: ``{"mean": [...], "std": [...]}`` in raw units (default: identity).
        value_range: Valid raw input range, or None.
        name: Model name.
        description: One-line description.
        seed: Seed for the initial weights (default: torch's global RNG).
        gsd: Ground sample distance of the training data in metres (None: scale-free).

    Returns:
        A bundle whose halo is the architecture's measured receptive-field radius rounded
        up to the downsampling factor.
    """
    from geoseg.models.unet import unet_halo

    band_names = [f"band{i + 1}" for i in range(bands)] if isinstance(bands, int) else list(bands)
    cls = class_specs([f"class{i}" for i in range(classes)] if isinstance(classes, int) else classes)
    if normalization is None:
        normalization = {"mean": [0.0] * len(band_names), "std": [1.0] * len(band_names)}
    if not isinstance(depth, int) or not 1 <= depth <= 6:
        raise ModelError(f"field 'arch_params.depth': must be an integer in 1..6, got {depth!r}")
    if upsample not in ("transpose", "bilinear"):
        raise ModelError(f"field 'arch_params.upsample': must be 'transpose' or 'bilinear', got {upsample!r}")
    spec = _spec(
        name=name,
        architecture="unet",
        arch_params={"base_width": base_width, "depth": depth, "upsample": upsample},
        bands=band_names,
        normalization=dict(normalization),
        value_range=value_range,
        classes=[c.model_dump() for c in cls],
        mask_heads=list(mask_heads),
        halo=unet_halo(depth, upsample)[1],  # type: ignore[arg-type]
        downsampling=2**depth,
        gsd=gsd,
        description=description or f"U-Net (width {base_width}, depth {depth})",
    )
    if seed is None:
        module = build_module(spec)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = build_module(spec)
    return ModelBundle(module=module, spec=spec, source=f"builtin:{name}")


def build_spectral(
    bands: Sequence[str] = ("blue", "green", "red", "nir"),
    water_threshold: float = 0.0,
    vegetation_threshold: float = 0.3,
    sharpness: float = 20.0,
) -> ModelBundle:
    """Build the training-free spectral-index model for the given band order."""
    from geoseg.models.spectral import SPECTRAL_CLASSES

    spec = _spec(
        name="spectral",
        architecture="spectral",
        arch_params={
            "water_threshold": water_threshold,
            "vegetation_threshold": vegetation_threshold,
            "sharpness": sharpness,
        },
        bands=list(bands),
        normalization={"mean": [0.0] * len(bands), "std": [1.0] * len(bands)},
        value_range=None,
        classes=[{"name": n, "color": c} for n, c in SPECTRAL_CLASSES],
        mask_heads=["water"],
        halo=0,
        downsampling=1,
        description=BUILTINS["spectral"],
    )
    return ModelBundle(module=build_module(spec), spec=spec, source="builtin:spectral")


def _spec(**fields: Any) -> ModelSpec:
    from geoseg.models.bundle import parse_spec

    return parse_spec(fields, source=f"model {fields.get('name')!r}")
