"""Models: plain-torch networks, safe bundle files (weights + contract), built-ins.

>>> from geoseg.models import load_model
>>> bundle = load_model("spectral")
>>> bundle.bands, bundle.class_names, bundle.halo
(('blue', 'green', 'red', 'nir'), ('water', 'vegetation', 'other'), 0)

The names below load lazily: ``import geoseg.models`` imports no torch until a name that
needs it is used. Model references (built-in names and paths) are resolved in one place,
:mod:`geoseg.models.refs` (torch-free).
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    **dict.fromkeys(
        ("ClassSpec", "ModelBundle", "ModelSpec", "Normalization", "build_module", "bundle_from_bytes", "parse_spec",
         "read_bundle", "save_bundle"),
        "geoseg.models.bundle",
    ),
    **dict.fromkeys(("fuse_for_inference", "measure_throughput", "prepare_for_inference", "tune_cpu_allocator"),
                    "geoseg.models.perf"),
    **dict.fromkeys(("build_spectral", "build_unet", "clear_cache", "list_models", "load_model"), "geoseg.models.registry"),
    **dict.fromkeys(("BUILTINS", "DEFAULT_WEIGHTS", "resolve_model_ref"), "geoseg.models.refs"),
    "model_checksum": "geoseg.models.checksum",
    "SpectralIndexModel": "geoseg.models.spectral",
    **dict.fromkeys(("TilePlan", "UNet", "halo_for", "receptive_radius", "unet_halo"), "geoseg.models.unet"),
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
