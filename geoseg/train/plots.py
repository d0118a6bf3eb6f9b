"""Plots where people look: training curves beside a model, evaluation charts on request.

- :func:`write_training_curves`: ``<model stem>.training.csv`` (per epoch: training loss,
  validation mIoU and overall accuracy, learning rate, seconds) and
  ``<model stem>.training.png`` (loss, and validation mIoU with the best epoch marked and the
  random-forest baseline's mIoU as a line when it was compared), beside the model bundle.
- :func:`write_evaluation_plots`: ``confusion.png`` (the confusion matrix as a heat map, each
  row normalised to the share of its true class, counts in the cells), ``scores.png``
  (per-class IoU and F1 bars; the baseline's beside the model's with ``geoseg evaluate
  --baseline rf``), and the numbers as ``confusion.csv`` and ``scores.csv``.

The CSV files need nothing; the PNGs need matplotlib (``pip install 'geoseg[plots]'``):
without it they are skipped and :data:`PLOTS_MISSING` says so in one line. Figures are drawn
with matplotlib's object API on the Agg canvas (no pyplot, no global state, no display).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geoseg._files import atomic_write
from geoseg.errors import OutputError

__all__ = ["PLOTS_MISSING", "plots_available", "write_evaluation_plots", "write_training_curves"]

#: The notice when matplotlib is absent.
PLOTS_MISSING = "plots skipped: matplotlib is not installed (pip install 'geoseg[plots]'); the CSV files are written"

MODEL_COLOR, BASELINE_COLOR, VAL_COLOR = "#1f5fa8", "#e08a1e", "#2e7d32"


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "plot-") as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}): choose a writable directory") from exc


def _csv(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "geoseg"})
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


# --------------------------------------------------------------------------- training


def write_training_curves(history, model_path: str | Path, baseline: dict | None = None) -> tuple[list[Path], str]:
    """Write the training curves of ``history`` (:class:`geoseg.train.TrainHistory`) beside
    ``model_path``; ``baseline``: :func:`geoseg.train.baseline.compare_on_split`'s result.

    Returns the files written and a notice ("" when the PNG was drawn)."""
    model_path = Path(model_path)
    stem = model_path.name.rsplit(".", 1)[0]
    epochs = list(history.epochs)
    rows: list[list[Any]] = [["epoch", "train_loss", "val_miou", "val_overall_accuracy", "lr", "seconds"]]
    for e in epochs:
        rows.append([e.epoch, _num(e.train_loss), _num(e.val.miou if e.val else None),
                     _num(e.val.accuracy if e.val else None), _num(e.lr), _num(e.seconds)])
    csv_path = model_path.with_name(f"{stem}.training.csv")
    _write(csv_path, _csv(rows))
    if not plots_available():
        return [csv_path], PLOTS_MISSING
    fig = _figure(8.0, 3.4)
    ax_loss, ax_val = fig.subplots(1, 2)
    xs = [e.epoch for e in epochs]
    ax_loss.plot(xs, [e.train_loss for e in epochs], "o-", color=MODEL_COLOR, ms=3, lw=1.5)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    vals = [e.val.miou if e.val else float("nan") for e in epochs]
    if any(not math.isnan(v) for v in vals):
        ax_val.plot(xs, vals, "o-", color=VAL_COLOR, ms=3, lw=1.5, label="model (validation mIoU)")
        best = history.best_epoch
        if best:
            ax_val.axvline(best, color="#9e9e9e", ls=":", lw=1)
            ax_val.annotate(f"best: epoch {best}", (best, vals[best - 1]), textcoords="offset points",
                            xytext=(4, -12), fontsize=8, color="#52606d")
        if baseline and baseline.get("random_forest", {}).get("miou") is not None:
            ax_val.axhline(baseline["random_forest"]["miou"], color=BASELINE_COLOR, ls="--", lw=1.5,
                           label="random forest (same pixels)")
        ax_val.set_ylim(0, 1.05)
        ax_val.legend(fontsize=8, loc="upper left")
    else:
        ax_val.text(0.5, 0.5, "no validation pixels", ha="center", va="center", transform=ax_val.transAxes,
                    color="#52606d")
    ax_val.set(title="validation mIoU", xlabel="epoch", ylabel="mIoU")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if xs:
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    fig.suptitle(f"{model_path.name}: {len(epochs)} epoch(s), stopped by {history.stopped}", fontsize=10)
    png_path = model_path.with_name(f"{stem}.training.png")
    _write(png_path, _png(fig))
    return [csv_path, png_path], ""


# --------------------------------------------------------------------------- evaluation


def write_evaluation_plots(out_dir: str | Path, metrics, class_names: Sequence[str], baseline=None,
                           title: str = "") -> tuple[list[Path], str]:
    """Write the evaluation's charts and numbers into ``out_dir`` (created if needed).

    Args:
        metrics: the model's :class:`geoseg.train.metrics.Metrics`.
        class_names: the class names, in id order.
        baseline: the random forest's :class:`~geoseg.train.metrics.Metrics` on the same
            pixels, drawn beside the model's.
        title: shown above the charts (e.g. the model and scene).

    Returns the files written and a notice ("" when the PNGs were drawn)."""
    out = Path(out_dir)
    names = list(class_names)
    conf = np.asarray(metrics.confusion, np.int64)
    _write(out / "confusion.csv", _csv([["truth \\ prediction", *names], *([n, *map(int, r)] for n, r in zip(names, conf))]))
    head = ["class", "iou", "f1", "precision", "recall"] + (["baseline_iou", "baseline_f1"] if baseline else [])
    rows: list[list[Any]] = [head]
    for i, n in enumerate(names):
        row = [n, _num(metrics.iou[i]), _num(metrics.f1[i]), _num(metrics.precision[i]), _num(metrics.recall[i])]
        if baseline:
            row += [_num(baseline.iou[i]), _num(baseline.f1[i])]
        rows.append(row)
    rows.append(["mean", _num(metrics.miou), "", "", ""] + ([_num(baseline.miou), ""] if baseline else []))
    _write(out / "scores.csv", _csv(rows))
    files = [out / "confusion.csv", out / "scores.csv"]
    if not plots_available():
        return files, PLOTS_MISSING

    # the confusion matrix: shares of each true class (rows), counts written in the cells
    size = max(4.0, 1.0 + 0.62 * len(names))
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    totals = conf.sum(axis=1, keepdims=True)
    share = np.divide(conf, totals, out=np.zeros(conf.shape, float), where=totals > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(conf):
        ax.text(c, r, f"{v:,}\n{share[r, c]:.0%}", ha="center", va="center", fontsize=7,
                color="white" if share[r, c] > 0.55 else "#1f2933")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="prediction", ylabel="truth", title=f"confusion matrix (rows: truth){': ' + title if title else ''}")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    _write(out / "confusion.png", _png(fig))

    # per-class IoU and F1, the baseline's beside the model's
    fig = _figure(max(6.0, 1.2 + 0.9 * len(names)), 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(names))
    series = [("model", metrics, MODEL_COLOR)] + ([("random forest", baseline, BASELINE_COLOR)] if baseline else [])
    width = 0.8 / len(series)
    for ax, (label, attr) in zip(axes, (("IoU", "iou"), ("F1", "f1"))):
        for k, (name, m, color) in enumerate(series):
            values = np.nan_to_num(np.asarray(getattr(m, attr), float), nan=0.0)
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, color=color, label=name)
        ax.set_xticks(x, names, rotation=40, ha="right")
        ax.set_ylim(0, 1.15)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"per-class {label}" + (f" (mIoU {metrics.miou:.3f})" if attr == "iou" else ""))
    axes[0].legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    _write(out / "scores.png", _png(fig))
    return files + [out / "confusion.png", out / "scores.png"], ""
