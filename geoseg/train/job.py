"""A training job: settings (YAML and/or flags) -> labelled scenes -> a model bundle file.

:func:`train_model` is what ``geoseg train`` runs: it reads the images and puts their
labels onto the image grids (:mod:`geoseg.io.labels`), settles the class names (config,
else the labels), builds a U-Net bundle for the images' bands, trains it with
:func:`geoseg.train.train` (checkpoint ``MODEL.ckpt`` next to the model after every
epoch; ``resume=True`` continues from it) and writes the best epoch's weights with their
contract (bands, normalisation, classes and colours, mask heads, halo, value range) as a
bundle that ``geoseg run --model MODEL`` uses directly.

Example::

    settings = TrainSettings.from_options({"data": [{"image": "a.tif", "labels": "a.gpkg"}]})
    result = train_model(settings, "model.safetensors")
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg._constants import IGNORE
from geoseg.errors import InputError, OutputError
from geoseg.io.labels import (
    LabelInfo,
    default_class_names,
    inspect_labels,
    label_class_colors,
    label_class_names,
)
from geoseg.train.checkpoint import checkpoint_path
from geoseg.train.settings import DataPair, TrainSettings

__all__ = ["DEFAULT_TIME_BUDGET", "TrainResult", "time_budget_of", "train_model"]

#: Minutes ``geoseg train`` takes in all when neither --time-budget, --epochs nor
#: --time-limit is given (issue 24: a ~500x500-px scene in under 5 minutes on 2 cores).
DEFAULT_TIME_BUDGET = 4.0
#: Seconds of the budget kept for writing the model and the comparisons after training.
BUDGET_MARGIN_S = 10.0


@dataclass
class TrainResult:
    """What :func:`train_model` wrote.

    Attributes:
        path: The model bundle file.
        bundle: The trained bundle (as written).
        history: Per-epoch statistics (:class:`geoseg.train.TrainHistory`).
        checkpoint: The checkpoint file (kept: ``resume`` continues from it).
    """

    path: Path
    bundle: Any
    history: Any
    checkpoint: Path
    plan: Any = None
    baseline: dict[str, Any] | None = None
    baseline_skipped: str = ""
    plots: list[Path] | None = None  # <stem>.training.csv and .png beside the model (geoseg.train.plots)
    plots_notice: str = ""  # why the PNG was skipped ("" when drawn)
    blend: Any = None
    validation_warning: str = ""
    total_seconds: float = 0.0


def time_budget_of(settings: TrainSettings) -> tuple[float | None, str]:
    """``(minutes, "given" | "default")`` of a run: the given budget, else
    :data:`DEFAULT_TIME_BUDGET` unless ``epochs`` or ``time_limit`` says how long to train."""
    if settings.time_budget is not None:
        return settings.time_budget, "given"
    if settings.epochs is None and settings.time_limit is None:
        return DEFAULT_TIME_BUDGET, "default"
    return None, "none: epochs or time_limit given"


def _check_outputs(out: Path, ckpt: Path, resume: bool, overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: directory {out.parent} does not exist; create it first")
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a directory; give a file name such as model.safetensors")
    if resume:
        if not ckpt.is_file():
            raise InputError(f"no checkpoint {ckpt} to resume from: train without --resume")
        return
    if overwrite:
        return
    if ckpt.exists():
        raise OutputError(
            f"{ckpt} is the checkpoint of an earlier run: pass --resume to continue it, or --overwrite to start over"
        )
    if out.exists():
        raise OutputError(f"{out} exists: pass --overwrite to replace it")


def _band_names(path: Path, count: int) -> list[str]:
    from geoseg.io.raster import open_raster

    with open_raster(path, env=False) as src:
        names = [(d or "").strip() for d in src.descriptions]
    if all(names) and len({n.lower() for n in names}) == count:
        return names
    return [f"band{i + 1}" for i in range(count)]


def _class_ids(spec: Sequence[str | int], names: Sequence[str], head: str) -> list[int]:
    ids = []
    for c in spec:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            k = int(c)
            if not 0 <= k < len(names):
                raise InputError(f"mask head {head!r}: class id {k} is not one of 0..{len(names) - 1}")
            ids.append(k)
        elif c in names:
            ids.append(list(names).index(c))
        else:
            raise InputError(f"mask head {head!r}: {c!r} is not a class ({', '.join(names)})")
    return ids


def _gsd_m(image) -> float | None:
    """The ground sample distance of a training image in metres (None for a geographic or no CRS)."""
    from geoseg.io.raster import open_raster

    with open_raster(image, env=False) as src:
        if src.crs is None or not src.crs.is_projected:
            return None
        a, e = abs(src.transform.a), abs(src.transform.e)
        factor = src.crs.linear_units_factor[1] if src.crs.linear_units_factor else 1.0
    return round((a + e) / 2 * factor, 6)


def _load(pairs: Sequence[DataPair], settings: TrainSettings, names: list[str] | None) -> list[Any]:
    from geoseg.train.data import load_scene

    file_heads = [h.name for h in settings.mask_heads if h.classes is None]
    return [
        load_scene(p.image, p.labels, [p.masks[h] for h in file_heads], label_options=settings.label_options,
                   class_names=names)
        for p in pairs
    ]


def _mask_targets(scenes: Sequence[Any], settings: TrainSettings, names: list[str]) -> dict[str, list[int]]:
    """Class-derived mask heads as ``mask_classes``; with file-based heads too, every
    scene gets its full ``(M, H, W)`` targets instead."""
    by_class = {h.name: _class_ids(h.classes, names, h.name) for h in settings.mask_heads if h.classes is not None}
    if len(by_class) == len(settings.mask_heads):
        return by_class
    for s in scenes:
        files = iter(s.masks if s.masks is not None else [])
        layers = []
        for h in settings.mask_heads:
            if h.classes is None:
                layers.append(next(files))
            else:
                m = np.isin(s.labels, by_class[h.name]).astype(np.uint8)
                m[s.labels == IGNORE] = IGNORE
                layers.append(m)
        s.masks = np.stack(layers)
    return {}


def _check_classes(scenes: Sequence[Any], names: list[str], infos: Sequence[LabelInfo], settings: TrainSettings) -> None:
    counts = np.zeros(256, np.int64)
    for s in scenes:
        labels = s.labels if s.nodata is None else np.where(s.valid(), s.labels, IGNORE)
        counts += np.bincount(labels.ravel(), minlength=256)
    present = np.flatnonzero(counts[:IGNORE])
    bad = present[present >= len(names)]
    if bad.size:
        raise InputError(
            f"the labels hold class ids {bad.tolist()} but there are {len(names)} classes ({', '.join(names)}): "
            "list all classes (--classes or config classes)"
        )
    if present.size >= 2:
        return
    what = f"only class {names[present[0]]!r}" if present.size else "no labelled pixel"
    hints = []
    opts = settings.label_options
    for i in infos:
        if i.kind == "raster" and opts.nodata == "auto" and i.nodata is not None and 0 <= i.nodata < IGNORE:
            v = int(i.nodata) if float(i.nodata).is_integer() else i.nodata
            hints.append(
                f"{i.path} declares nodata={v}; if {v} is a class (e.g. background), pass --label-nodata none "
                "(config labels: {nodata: none})"
            )
        if i.kind == "vector" and opts.field and opts.background_id(names) == IGNORE:
            hints.append("pixels outside the polygons are unlabelled: pass --background CLASS to learn them as a class")
    raise InputError(
        f"the training labels contain {what} (after removing nodata and unlabelled pixels): a model needs at "
        f"least two classes{'; ' + '; '.join(hints) if hints else ''}"
    )


def _value_range(scenes: Sequence[Any]) -> tuple[float, float] | None:
    lo, hi = np.inf, -np.inf
    for s in scenes:
        valid = s.valid()
        if valid.any():
            px = s.image[:, valid]
            lo, hi = min(lo, float(np.nanmin(px))), max(hi, float(np.nanmax(px)))
    if not np.isfinite([lo, hi]).all() or not lo < hi:
        return None
    return float(np.floor(lo)), float(np.ceil(hi))


def train_model(
    settings: TrainSettings,
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[Any], None] | None = None,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train a U-Net on the settings' data and write its bundle.

    Args:
        settings: Data, classes, mask heads, model and training options.
        out: Model file to write (default: ``settings.out``).
        resume: Continue the interrupted run whose checkpoint is ``OUT.ckpt``.
        overwrite: Replace an existing model file and checkpoint.
        progress: Show progress bars and a line per epoch on stderr.
        on_epoch: Called with each epoch's :class:`geoseg.train.EpochStats`.
        command: The command line, for the bundle's provenance.

    Raises:
        InputError: Unusable data or options.
        OutputError: The model or checkpoint exists (without ``overwrite``/``resume``).
    """
    from geoseg.models import build_unet
    from geoseg.models.bundle import class_specs
    from geoseg.train.config import TrainConfig
    from geoseg.train.loop import train

    t0 = time.perf_counter()
    if out is None and settings.out is None:
        raise InputError("give the model file to write: --out MODEL.safetensors (or out: in the config)")
    out = Path(out if out is not None else settings.out)  # type: ignore[arg-type]
    if not settings.data:
        raise InputError("no training data: give --image IMG --labels LBL (or data: in the config)")
    ckpt = checkpoint_path(out)
    _check_outputs(out, ckpt, resume, overwrite)

    options = settings.label_options
    pairs = [*settings.data, *settings.validation]
    infos = [inspect_labels(p.labels, options) for p in pairs]
    given = [c.name for c in settings.classes] if settings.classes else None
    names = label_class_names(infos, options, given)
    scenes = _load(settings.data, settings, names)
    vals = _load(settings.validation, settings, names) if settings.validation else None
    if names is None:
        top = max((int(s.labels[s.labels != IGNORE].max(initial=0)) for s in scenes + (vals or [])), default=0)
        names = default_class_names(infos, max(top + 1, 2))
    _check_classes(scenes, names, infos, settings)
    counts = {s.image.shape[0] for s in scenes + (vals or [])}
    if len(counts) > 1:
        raise InputError(f"the images have different band counts {sorted(counts)}: give images with the same bands")
    bands = settings.model.bands or _band_names(settings.data[0].image, scenes[0].image.shape[0])
    if len(bands) != scenes[0].image.shape[0]:
        raise InputError(f"model.bands names {len(bands)} bands but the images have {scenes[0].image.shape[0]}")
    mask_classes = _mask_targets(scenes + (vals or []), settings, names)

    colors = {c.name: c.color for c in settings.classes or [] if c.color} or label_class_colors(infos)
    specs = class_specs([(n, colors.get(n)) for n in names])
    m = settings.model
    from geoseg.train.sizing import data_stats, plan_training

    plan = plan_training(data_stats(scenes, len(names)), {
        "width": m.width, "depth": m.depth, "chip_size": settings.chip_size, "batch_size": settings.batch_size,
        "chips_per_epoch": settings.chips_per_epoch, "epochs": settings.epochs, "patience": settings.patience})
    bundle = build_unet(
        bands, specs, [h.name for h in settings.mask_heads], base_width=plan.width, depth=plan.depth,
        value_range=_value_range(scenes), name=m.name or out.stem.split(".")[0], seed=settings.seed,
        description=m.description or f"U-Net (width {plan.width}, depth {plan.depth}) trained by geoseg train on "
        f"{len(scenes)} scene(s): {', '.join(names)}",
    )
    if plan.chip_size % bundle.downsampling:
        raise InputError(f"--chip-size {plan.chip_size} must be a multiple of the model's downsampling "
                         f"{bundle.downsampling} (2**depth)")
    lw = settings.loss_weights
    budget, budget_source = time_budget_of(settings)
    from geoseg.train.baseline import available

    forest_skipped = "" if settings.forest else "not asked for (--no-forest)"
    if settings.forest and not available():
        forest_skipped = "scikit-learn is not installed (pip install 'geoseg[baseline]')"
    loop_budget = None if budget is None else budget * 60
    if budget is not None and not forest_skipped:
        from geoseg.train.data import compute_normalization
        from geoseg.train.hybrid import forest_seconds_estimate

        reserve = forest_seconds_estimate(scenes, compute_normalization(scenes), bundle.downsampling, len(names),
                                          settings.seed)
        # the forests are fitted after the network: keep their (timed) share of the budget
        loop_budget = max(budget * 60 - (time.perf_counter() - t0) - reserve - BUDGET_MARGIN_S, 0.25 * budget * 60)
    cfg = TrainConfig(
        epochs=plan.epochs, chips_per_epoch=plan.chips_per_epoch, chip_size=plan.chip_size,
        batch_size=plan.batch_size, sampling=settings.sampling, lr=settings.lr,
        weight_decay=settings.weight_decay, schedule=settings.schedule,
        class_weights=None if settings.class_weights == "none" else settings.class_weights,
        mask_classes=mask_classes or None, mask_loss_weight=lw.mask, ce_weight=lw.ce, bce_weight=lw.bce,
        dice_weight=lw.dice, mae_weight=lw.mae, augment=settings.augment, val_fraction=settings.val_fraction,
        val_gap=settings.val_gap, val_split=settings.val_split, early_stopping=plan.patience or None,
        time_limit=settings.time_limit,
        time_budget=loop_budget,
        pseudo_weight=settings.pseudo_labels, pseudo_threshold=settings.pseudo_threshold,
        seed=settings.seed, num_threads=settings.threads, device=settings.device, amp=settings.amp,
        checkpoint=ckpt, resume=resume, progress=progress,
    )
    module, history = train(bundle, scenes, vals, cfg, on_epoch=on_epoch)
    summary = history.summary()
    baseline = None
    from geoseg.train.baseline import compare_on_split
    from geoseg.train.hybrid import validation_warning

    warning = validation_warning(history.train_scenes, history.val_scenes, names)
    blend = None
    if not forest_skipped:
        module, bundle, blend, baseline = _with_forest(module, bundle, history, scenes, names, settings.seed)
    skipped = ""
    if blend is not None:
        skipped = "" if baseline is not None else "no validation pixels"
    elif not settings.baseline:
        skipped = "not asked for"
    elif not available():
        skipped = "scikit-learn is not installed (pip install 'geoseg[baseline]')"
    elif not history.val_scenes:
        skipped = "no validation pixels"
    else:
        baseline = compare_on_split(history, len(names), seed=settings.seed)
    training = {
        **summary,
        "data": [{"image": str(p.image), "labels": str(p.labels), **({"masks": {k: str(v) for k, v in p.masks.items()}}
                                                                     if p.masks else {})} for p in settings.data],
        "validation": [{"image": str(p.image), "labels": str(p.labels)} for p in settings.validation] or "split",
        "labels": settings.labels.model_dump(),
        "mask_heads": [h.model_dump() for h in settings.mask_heads],
        "mask_classes": {k: list(v) for k, v in mask_classes.items()},
        "gsd_m": _gsd_m(settings.data[0].image),  # read by `geoseg export` (ONNX `resolution`) and MLM Items
        "command": shlex.join(command) if command else shlex.join(sys.argv),
        "plan": plan.as_dict(),
        "split": settings.val_split if not history.split_note else f"none: {history.split_note}",
        "baseline": baseline,
        "forest": blend.as_dict(names) if blend is not None else {"skipped": forest_skipped},
        "validation_warning": warning,
        "time_budget": {"minutes": budget, "source": budget_source} if budget is not None else None,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    from geoseg.io.warp import training_gsd

    gsd = training_gsd([p.image for p in settings.data])  # what `geoseg run` resamples other scenes to
    trained = bundle.replace(module=module, normalization=history.normalization, training=training, gsd=gsd)
    trained.save(out)
    from geoseg.train.plots import write_training_curves

    plots, notice = write_training_curves(history, out, baseline)  # loss and validation curves beside the model
    return TrainResult(out, trained, history, ckpt, plan, baseline, skipped, plots, notice, blend, warning,
                       training["total_seconds"])


def _with_forest(module: Any, bundle: Any, history: Any, scenes: Sequence[Any], names: list[str],
                 seed: int) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """The network mixed with a random forest, weighted on validation
    (:mod:`geoseg.train.hybrid`): ``(module, bundle, blend, validation comparison)``."""
    from geoseg.models.forest import UNetForest
    from geoseg.train.baseline import comparison
    from geoseg.train.hybrid import (
        TREE_DEPTH,
        TREES,
        _labelled,
        choose_weight,
        fit_forest,
        scene_probabilities,
    )

    norm, factor, n = history.normalization, bundle.downsampling, len(names)
    vals = [v for v in history.val_scenes if _labelled(v).any()]
    comparison_ = None
    if vals:
        split_forest = fit_forest(history.train_scenes, norm, factor, n, seed=seed)
        blend = choose_weight([scene_probabilities(module, v, norm, factor) for v in vals],
                              [scene_probabilities(split_forest, v, norm, factor) for v in vals],
                              [np.where(_labelled(v), v.labels, IGNORE) for v in vals], n)
        comparison_ = comparison(blend.candidates[blend.weight], blend.candidates[0.0], names)
        comparison_["network"] = comparison(blend.candidates[1.0], blend.candidates[0.0], names)["model"]
        comparison_["forest_model"] = f"{TREES} trees of depth <= {TREE_DEPTH} on the training blocks"
    else:
        blend = choose_weight([], [], [], n)
    if blend.weight >= 1.0:
        return module, bundle, blend, comparison_
    forest = fit_forest(scenes, norm, factor, n, seed=seed)  # every labelled pixel, as the baseline's
    params = {**bundle.arch_params, "trees": forest.trees, "tree_depth": forest.tree_depth,
              "scales": list(forest.scales), "net_weight": blend.weight}
    combined = UNetForest(bundle.num_bands, n, len(bundle.mask_heads), **params).eval()
    combined.net.load_state_dict(module.state_dict())
    combined.forest.load_state_dict(forest.state_dict())
    halo = max(bundle.halo, -(-forest.halo // factor) * factor)
    return combined, bundle.replace(module=combined, architecture="unet_forest", arch_params=params,
                                    halo=halo), blend, comparison_
