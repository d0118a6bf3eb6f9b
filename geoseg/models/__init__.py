"""Models: plain-torch networks, safe bundle files (weights + contract), built-ins.

>>> from geoseg.models import load_model
>>> bundle = load_model("spectral")
>>> bundle.bands, bundle.class_names, bundle.halo
(('blue', 'green', 'red', 'nir'), ('water', 'vegetation', 'other'), 0)
"""

from __future__ import annotations

import os

# Spinning OpenMP waiters make torch 10-100x slower whenever another process holds a core
# (measured on a 2-vCPU machine); sleeping waiters cost nothing measurable for our model
# sizes. libgomp reads this once, when torch is first imported, so it only takes effect if
# geoseg.models is imported before torch; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from geoseg.models.bundle import (  # noqa: E402
    ClassSpec,
    ModelBundle,
    ModelSpec,
    Normalization,
    build_module,
    bundle_from_bytes,
    parse_spec,
    read_bundle,
    save_bundle,
)
from geoseg.models.perf import (  # noqa: E402
    fuse_for_inference,
    measure_throughput,
    prepare_for_inference,
    tune_cpu_allocator,
)
from geoseg.models.registry import (  # noqa: E402
    DEFAULT_WEIGHTS,
    build_spectral,
    build_unet,
    clear_cache,
    list_models,
    load_model,
)
from geoseg.models.spectral import SpectralIndexModel  # noqa: E402
from geoseg.models.unet import TilePlan, UNet, halo_for, receptive_radius, unet_halo  # noqa: E402

__all__ = [
    "DEFAULT_WEIGHTS",
    "ClassSpec",
    "ModelBundle",
    "ModelSpec",
    "Normalization",
    "SpectralIndexModel",
    "TilePlan",
    "UNet",
    "build_module",
    "build_spectral",
    "build_unet",
    "bundle_from_bytes",
    "clear_cache",
    "fuse_for_inference",
    "halo_for",
    "list_models",
    "load_model",
    "measure_throughput",
    "parse_spec",
    "prepare_for_inference",
    "read_bundle",
    "receptive_radius",
    "save_bundle",
    "tune_cpu_allocator",
    "unet_halo",
]
