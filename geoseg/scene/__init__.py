"""One scene: a raster through the per-tile graph into products, COGs, polygons and a manifest.

- :mod:`~geoseg.scene.pipeline`: :func:`run_scene` and :class:`RunOptions`: the grid, the
  tile tasks, stitching into COGs, vectorizing, the manifest.
- :mod:`~geoseg.scene.predict`: the pure per-tile kernel (:class:`Predictor`) and the
  per-process predictor cache (keyed on the model's content checksum).
- :mod:`~geoseg.scene.manifest`: the run manifest.
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    "RunOptions": "geoseg.scene.pipeline",
    "run_scene": "geoseg.scene.pipeline",
    "predict_batch": "geoseg.scene.pipeline",
    "Prediction": "geoseg.scene.predict",
    "Predictor": "geoseg.scene.predict",
    "get_predictor": "geoseg.scene.predict",
    "predict_tiles": "geoseg.scene.predict",
    "resolve_device": "geoseg.scene.predict",
    "build_manifest": "geoseg.scene.manifest",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
