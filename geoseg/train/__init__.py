"""Model development: training U-Net bundles on labelled scenes and scoring models.

- :mod:`~geoseg.train.config`: :class:`TrainConfig`, the trainer's options.
- :mod:`~geoseg.train.loop`: :func:`train`, the loop; :mod:`~geoseg.train.validation`:
  :func:`predict_scene` and :func:`evaluate` on in-memory scenes.
- :mod:`~geoseg.train.data`, :mod:`~geoseg.train.chips`, :mod:`~geoseg.train.losses`,
  :mod:`~geoseg.train.metrics`, :mod:`~geoseg.train.checkpoint`: the pieces the loop drives.
- :mod:`~geoseg.train.settings` (YAML + flags) and :mod:`~geoseg.train.job`
  (:func:`train_model`): what ``geoseg train`` runs.
- :mod:`~geoseg.train.scoring`: :func:`evaluate_model`, a model through the full pipeline
  on a labelled scene (``geoseg evaluate``).
- :mod:`~geoseg.train.sizing` (defaults sized to the data, time budgets),
  :mod:`~geoseg.train.split` (spatial block validation with a buffer),
  :mod:`~geoseg.train.pseudo` (pseudo-labels) and :mod:`~geoseg.train.baseline` (the
  random-forest baseline, with the ``baseline`` extra).
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    "TrainConfig": "geoseg.train.config",
    "EpochStats": "geoseg.train.loop",
    "TrainHistory": "geoseg.train.loop",
    "train": "geoseg.train.loop",
    "evaluate": "geoseg.train.validation",
    "predict_scene": "geoseg.train.validation",
    "LabeledScene": "geoseg.train.data",
    "class_frequencies": "geoseg.train.data",
    "compute_normalization": "geoseg.train.data",
    "load_scene": "geoseg.train.data",
    "split_scene": "geoseg.train.data",
    "ChipSampler": "geoseg.train.chips",
    "Metrics": "geoseg.train.metrics",
    "confusion_matrix": "geoseg.train.metrics",
    "metrics_from_confusion": "geoseg.train.metrics",
    "TrainResult": "geoseg.train.job",
    "train_model": "geoseg.train.job",
    "TrainSettings": "geoseg.train.settings",
    "load_train_config": "geoseg.train.settings",
    "Evaluation": "geoseg.train.scoring",
    "evaluate_model": "geoseg.train.scoring",
    "score_class_map": "geoseg.train.scoring",
    "IGNORE": "geoseg._constants",
    "TrainPlan": "geoseg.train.sizing",
    "plan_training": "geoseg.train.sizing",
    "block_split": "geoseg.train.split",
    "ForestBaseline": "geoseg.train.baseline",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
