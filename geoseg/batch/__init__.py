"""Catalogs of scenes: ``catalog.yaml``, resumable failure-isolated batch runs, one lock per catalog.

- :mod:`~geoseg.batch.catalog`: the catalog schema (errors with file and line) and its
  scenes (path, glob, STAC sources).
- :mod:`~geoseg.batch.runner`: :func:`run_batch`: skip-if-done, isolation, one shared cluster.
- :mod:`~geoseg.batch.lock`: :class:`BatchLock`.
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    "BatchReport": "geoseg.batch.runner",
    "EXIT_CATALOG": "geoseg.batch.runner",
    "EXIT_FAILED": "geoseg.batch.runner",
    "EXIT_LOCKED": "geoseg.batch.runner",
    "EXIT_OK": "geoseg.batch.runner",
    "SceneResult": "geoseg.batch.runner",
    "format_summary": "geoseg.batch.runner",
    "run_batch": "geoseg.batch.runner",
    "load_catalog": "geoseg.batch.catalog",
    "BatchLock": "geoseg.batch.lock",
    "model_checksum": "geoseg.models.checksum",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
