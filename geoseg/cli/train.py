"""``geoseg train`` and ``geoseg evaluate``: thin click commands over the training API.

``train_command`` calls :func:`geoseg.train.job.train_model` with settings from a YAML
config (:func:`geoseg.train.settings.load_train_config`) overridden by flags;
``evaluate_command`` calls :func:`geoseg.train.scoring.evaluate_model`.

:mod:`geoseg.cli` registers both; the options they share with the other commands are in
:mod:`geoseg.cli._options`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from geoseg.cli._errors import handle_errors
from geoseg.cli._options import (
    CONTEXT,
    bands_option,
    device_option,
    json_option,
    model_option,
    quiet_option,
    threads_option,
    tile_size_option,
)
from geoseg.errors import InputError

__all__ = ["evaluate_command", "train_command"]


def _label_options(fn: Any) -> Any:
    """The flags that say how label files become class ids (shared by both commands)."""
    options = [
        click.option("--label-field", default=None, metavar="FIELD",
                     help="Polygon labels: the attribute holding class ids or class names. Without it every "
                          "polygon is class 1 on a background of class 0."),
        click.option("--label-layer", default=None, metavar="LAYER", help="Polygon labels: the layer [default: the first]."),
        click.option("--background", default=None, metavar="CLASS",
                     help="Polygon labels: class (id or name) of pixels outside every polygon, or 'none' "
                          "(unlabelled, ignored) [default: class 0 without --label-field, else none]."),
        click.option("--label-nodata", default=None, metavar="auto|none|VALUE",
                     help="Label rasters: 'auto' = their declared nodata is unlabelled; 'none' = the declared "
                          "nodata is a real class (e.g. nodata=0 but 0 = background); or the value of "
                          "unlabelled pixels [default: auto]."),
        click.option("--all-touched", is_flag=True, default=None,
                     help="Polygon labels: burn every pixel a polygon touches, not only those whose centre it covers."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _label_updates(label_field: str | None, label_layer: str | None, background: str | None,
                   label_nodata: str | None, all_touched: bool | None) -> dict[str, Any]:
    return {"field": label_field, "layer": label_layer, "background": background, "nodata": label_nodata,
            "all_touched": all_touched}


def _key_values(text: str | None, what: str, keys: tuple[str, ...]) -> dict[str, float] | None:
    if text is None:
        return None
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in keys:
            raise InputError(f"{what} {text!r}: give KEY=VALUE pairs with keys {', '.join(keys)}, e.g. ce=1,mae=0.5")
        try:
            out[key] = float(value)
        except ValueError:
            raise InputError(f"{what} {text!r}: {value!r} is not a number") from None
    return out


def _class_weights(text: str | None) -> str | list[float] | None:
    if text is None or text.strip().lower() in ("auto", "none"):
        return None if text is None else text.strip().lower()
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--class-weights {text!r}: give auto, none or one number per class, e.g. 1,2.5,1") from None


def _mask_heads(specs: tuple[str, ...]) -> list[dict[str, Any]] | None:
    if not specs:
        return None
    heads = []
    for spec in specs:
        name, sep, classes = spec.partition("=")
        values = [c.strip() for c in classes.split(",") if c.strip()]
        if not name.strip() or not sep or not values:
            raise InputError(
                f"--mask-head {spec!r}: give NAME=CLASS[,CLASS...], e.g. built_up=building,road "
                "(mask files per image go in the config: data: [{..., masks: {NAME: PATH}}])"
            )
        heads.append({"name": name.strip(), "classes": [int(v) if v.isdigit() else v for v in values]})
    return heads


@click.command("train", context_settings=CONTEXT)
@click.option("-c", "--config", type=click.Path(path_type=Path), default=None,
              help="YAML training config (see geoseg.train.settings); flags override its values.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Model bundle to write (for `geoseg run --model`); its checkpoint is OUT.ckpt.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="A training image; repeat with one --labels each.")
@click.option("--labels", "labels", multiple=True, type=click.Path(path_type=Path),
              help="The labels of the --image at the same position: a class raster on any grid and CRS, "
                   "or polygons (any OGR format and CRS).")
@_label_options
@click.option("--classes", default=None, metavar="NAME,...",
              help="Class names in id order [default: from the labels: text fields in sorted order, raster "
                   "tags, else class0, class1, ...].")
@click.option("--mask-head", "mask_heads", multiple=True, metavar="NAME=CLASS[,CLASS...]",
              help="A binary output head, positive on these classes (names or ids); repeatable.")
@click.option("--width", type=click.IntRange(1, 256), default=None,
              help="U-Net base width [default: for the data: 16 with >= 100k labelled pixels, else 12].")
@click.option("--depth", type=click.IntRange(1, 6), default=None,
              help="U-Net depth; downsampling 2**depth [default: for the data: 3, or 2 for scenes under 192 px].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs [default: for the data: 400 + 8 sqrt(labelled pixels) steps, at most 4000].")
@click.option("--chips-per-epoch", type=click.IntRange(min=1), default=None,
              help="Chips per epoch [default: for the data: a 25th of the steps, 8-64 batches].")
@click.option("--chip-size", type=click.IntRange(min=8), default=None,
              help="Chip side in pixels, a multiple of 2**depth [default: 128 for dense labels on large "
                   "scenes, else 64].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Chips per step [default: 16 of 128 px, 32 of 64 px].")
@click.option("--sampling", type=click.Choice(["balanced", "random", "grid"]), default=None,
              help="balanced: chips centred on labelled pixels of a class drawn uniformly (class-balanced); "
                   "random: chips anywhere; grid: every chip of a regular grid "
                   "once per epoch [default: balanced].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate [default: 0.003].")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine", "constant"]), default=None,
              help="Learning-rate schedule of AdamW [default: onecycle].")
@click.option("--seed", type=int, default=None, help="Seed of weights, chips and augmentation: same seed, same model [default: 0].")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop when validation mIoU has not improved for N epochs; 0: never [default: a quarter of "
                   "the epochs, at least 5].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Without validation data in the config: the share of each image's labelled pixels held "
                   "out for validation (--val-split) [default: 0.2].")
@click.option("--val-gap", type=click.IntRange(min=0), default=None,
              help="Pixels between training labels and validation pixels; never less than the model's halo "
                   "with --val-split blocks [default: 64].")
@click.option("--val-split", type=click.Choice(["blocks", "strip"]), default=None,
              help="Without validation data: hold out whole blocks of each image, chosen to keep every class's "
                   "share (blocks), or the bottom strip (strip); training chips never see validation pixels "
                   "[default: blocks].")
@click.option("--class-weights", default=None, metavar="auto|none|W,...",
              help="Cross-entropy class weights [default: auto = none with balanced sampling, else inverse square root of class frequency].")
@click.option("--loss-weights", default=None, metavar="KEY=W,...",
              help="Loss terms: ce (class head), bce and dice (mask heads), mask (scales bce+dice), mae "
                   "(L1 on probabilities) [default: ce=1,bce=1,dice=1,mask=1,mae=0].")
@click.option("--no-augment", is_flag=True, default=None, help="No flips, rotations, per-band gain/offset jitter or noise.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--amp/--no-amp", default=None, help="Mixed precision [default: on CUDA only].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads [default: torch's choice].")
@click.option("--time-limit", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Stop after the epoch during which this much time has passed (--resume continues).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MINUTES",
              help="Train as well as possible within this many minutes: the first steps are timed and the "
                   "number of epochs (and the learning-rate schedule) fitted to the budget. The number "
                   "chosen is recorded; pass it as --epochs to reproduce the run exactly.")
@click.option("--pseudo-labels", type=click.FloatRange(min=0), default=None, metavar="WEIGHT",
              help="Semi-supervised: unlabelled pixels where the model is at least --pseudo-threshold sure "
                   "become targets of a jittered view, weighted by WEIGHT (e.g. 0.5) [default: 0, off].")
@click.option("--pseudo-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Confidence a pseudo-label needs [default: 0.9].")
@click.option("--no-baseline", is_flag=True, default=None,
              help="Do not compare with a random forest at the end (done when scikit-learn is installed).")
@click.option("--no-forest", is_flag=True, default=None,
              help="Write the U-Net alone, not mixed with a random forest weighted on validation (the "
                   "default when scikit-learn is installed; see geoseg.train.hybrid).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose checkpoint is OUT.ckpt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model and checkpoint.")
@quiet_option("No progress bars or per-epoch lines.")
@json_option("Print the training summary as JSON on stdout.")
@handle_errors
def train_command(config, out, images, labels, label_field, label_layer, background, label_nodata, all_touched,
                  classes, mask_heads, width, depth, epochs, chips_per_epoch, chip_size, batch_size, sampling, lr,
                  schedule, seed, patience, val_fraction, val_gap, val_split, class_weights, loss_weights, no_augment,
                  device, amp, threads, time_limit, time_budget, pseudo_labels, pseudo_threshold, no_baseline, no_forest,
                  resume, overwrite, quiet, as_json):
    """Train a segmentation model (a U-Net) and write a bundle for `geoseg run --model OUT`.

    \b
    geoseg train --image scene.tif --labels truth.gpkg --out model.safetensors
    geoseg train --config train.yaml --epochs 20 --out model.safetensors

    Labels are put onto each image's grid (class rasters reprojected with nearest
    neighbour, polygons rasterised); unlabelled and nodata pixels are ignored by the loss.
    Validation is a strip of each image kept apart from the training chips; the
    best epoch by validation mIoU is written, and a checkpoint after every epoch
    (OUT.ckpt) lets --resume continue an interrupted run.
    """
    from geoseg.train.job import train_model
    from geoseg.train.settings import TrainSettings, load_train_config

    if len(images) != len(labels):
        raise InputError(f"give one --labels for each --image (got {len(images)} --image and {len(labels)} --labels)")
    updates: dict[str, Any] = {
        "out": out, "epochs": epochs, "chips_per_epoch": chips_per_epoch, "chip_size": chip_size,
        "batch_size": batch_size, "sampling": sampling, "lr": lr, "schedule": schedule, "seed": seed,
        "patience": patience, "val_fraction": val_fraction, "val_gap": val_gap, "device": device, "amp": amp,
        "threads": threads, "time_limit": time_limit, "class_weights": _class_weights(class_weights),
        "val_split": val_split, "time_budget": time_budget, "pseudo_labels": pseudo_labels,
        "pseudo_threshold": pseudo_threshold, "baseline": False if no_baseline else None,
        "forest": False if no_forest else None,
        "loss_weights": _key_values(loss_weights, "--loss-weights", ("ce", "bce", "dice", "mask", "mae")),
        "labels": _label_updates(label_field, label_layer, background, label_nodata, all_touched),
        "model": {"width": width, "depth": depth},
        "classes": classes, "mask_heads": _mask_heads(mask_heads),
        "augment": False if no_augment else None,
        "data": [{"image": i, "labels": lb} for i, lb in zip(images, labels)] or None,
    }
    if config is not None:
        settings = load_train_config(config).with_overrides(updates)
    else:
        settings = TrainSettings.from_options(updates)
    if not settings.data:
        raise InputError("no training data: give --image IMG --labels LBL (or data: in --config)")
    result = train_model(settings, resume=resume, overwrite=overwrite, progress=not (quiet or as_json),
                         command=["geoseg", *sys.argv[1:]])
    summary = _summary(result)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        best = summary["val"] or {}
        click.echo(
            f"wrote {result.path} ({', '.join(result.bundle.class_names)}): {summary['epochs_run']} epoch(s), "
            f"stopped by {summary['stopped']}, best epoch {summary['best_epoch']} with validation mIoU "
            f"{best.get('miou', float('nan')):.4f}; {summary['seconds']:.1f} s; checkpoint {result.checkpoint}",
            err=True,
        )
    if as_json:
        return
    if result.plots_notice and not quiet:
        click.echo(result.plots_notice, err=True)
    if result.baseline is not None:
        from geoseg.train.baseline import comparison_text

        click.echo(comparison_text(result.baseline, "the validation blocks"), err=True)
        if result.blend is not None:
            click.echo(f"written: {_blend_text(result.blend.weight)} ({result.blend.why})", err=True)
    elif result.baseline_skipped and result.baseline_skipped != "not asked for":
        click.echo(f"no comparison with the random-forest baseline: {result.baseline_skipped}", err=True)
    if result.validation_warning:
        click.echo(f"warning: {result.validation_warning}", err=True)


def _blend_text(weight: float) -> str:
    if weight >= 1.0:
        return "the U-Net alone"
    if weight <= 0.0:
        return "the random forest alone (in the model bundle)"
    return f"{weight:g} x U-Net + {1 - weight:g} x random forest"


def _summary(result: Any) -> dict[str, Any]:
    s = result.history.summary()
    return {
        "model": str(result.path),
        "checkpoint": str(result.checkpoint),
        "classes": list(result.bundle.class_names),
        "mask_heads": list(result.bundle.mask_heads),
        "epochs_run": s["epochs_run"],
        "best_epoch": s["best_epoch"],
        "stopped": s["stopped"],
        "val": s["val"],
        "val_miou": s["val_miou"],
        "loss": s["loss"],
        "seconds": s["seconds"],
        "epochs_planned": s["epochs_planned"],
        "plan": None if result.plan is None else result.plan.as_dict(),
        "baseline": result.baseline,
        "plots": [str(p) for p in result.plots or []],
        "forest": result.bundle.training.get("forest"),
        "validation_warning": result.validation_warning,
        "total_seconds": result.total_seconds,
    }


@click.command("evaluate", context_settings=CONTEXT)
@model_option("A built-in model name or the path of a model bundle.", required=True)
@click.option("--image", required=True, type=click.Path(path_type=Path), help="The scene to segment.")
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="Its ground truth: a class raster on any grid and CRS, or polygons.")
@_label_options
@bands_option("1-based scene bands in the order the model expects (as for `geoseg run`).")
@tile_size_option("Core tile size of the pipeline.", default=None)
@device_option()
@threads_option("Threads of the local scheduler.")
@click.option("--baseline", type=click.Choice(["rf"]), default=None,
              help="Also train a random forest (per-pixel bands plus neighbourhood means at two scales) on the "
                   "model's training pixels and score it on the same pixels (needs scikit-learn: pip install "
                   "'geoseg[baseline]').")
@click.option("--train-image", "train_images", multiple=True, type=click.Path(path_type=Path),
              help="With --baseline: a training image for the forest instead of the model's recorded training "
                   "data; repeat with one --train-labels each.")
@click.option("--train-labels", "train_labels", multiple=True, type=click.Path(path_type=Path),
              help="With --baseline: the labels of the --train-image at the same position.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Also write confusion.png (heat map), scores.png (per-class IoU and F1 bars; with --baseline the "
                   "forest's beside the model's) and their numbers as CSV into DIR (PNGs need matplotlib: "
                   "pip install 'geoseg[plots]').")
@quiet_option("No progress bar.")
@json_option("Print JSON: miou, overall_accuracy, per_class (name, iou, precision, recall, f1), confusion "
             "(and baseline: the forest's scores beside the model's).")
@handle_errors
def evaluate_command(model, image, labels, label_field, label_layer, background, label_nodata, all_touched,
                     bands, tile_size, device, threads, baseline, train_images, train_labels, plots_dir, quiet, as_json):
    """Segment IMAGE with the full tiled pipeline and score it against LABELS.

    Reports the confusion matrix (rows: truth), per-class IoU, precision, recall and F1,
    mean IoU and overall accuracy over labelled pixels; unlabelled pixels and image
    nodata are left out.
    """
    from geoseg.io.labels import LabelOptions
    from geoseg.train.scoring import evaluate_model

    opts = _label_updates(label_field, label_layer, background, label_nodata, all_touched)
    options = LabelOptions(**{k: v for k, v in opts.items() if v is not None})
    if len(train_images) != len(train_labels):
        raise InputError(f"give one --train-labels for each --train-image (got {len(train_images)} and "
                         f"{len(train_labels)})")
    if train_images and not baseline:
        raise InputError("--train-image and --train-labels are for the baseline: add --baseline rf")
    if baseline:
        from geoseg.train.baseline import available

        if not available():
            raise InputError("--baseline rf needs scikit-learn: pip install 'geoseg[baseline]'")
    ev = evaluate_model(model, image, labels, label_options=options, bands=bands, tile_size=tile_size,
                        device=device, threads=threads, quiet=quiet or as_json)
    report = ev.report()
    text = ev.table()
    if baseline:
        from geoseg.models import load_model
        from geoseg.train.baseline import comparison, comparison_text, evaluate_baseline

        bundle = load_model(str(model))
        rf, _ = evaluate_baseline(bundle.training or {}, ev.class_names, image, labels, label_options=options,
                                  bands=bands, train=[(str(i), str(lb)) for i, lb in zip(train_images, train_labels)])
        report["baseline"] = comparison(ev.metrics, rf, ev.class_names)
        text += "\n" + comparison_text(report["baseline"], Path(image).name)
    if plots_dir is not None:
        from geoseg.train.plots import write_evaluation_plots

        files, notice = write_evaluation_plots(plots_dir, ev.metrics, ev.class_names, rf if baseline else None,
                                               title=f"{Path(str(model)).name} on {Path(image).name}")
        if notice:
            click.echo(notice, err=True)
        if not as_json:
            text += "\nwrote " + ", ".join(str(f) for f in files)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(text)
