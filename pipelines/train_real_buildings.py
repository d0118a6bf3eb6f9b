"""Train building models on the real scenes of ../shared/data/real; report held-out IoU.

Two cases, each trained with the library call behind ``geoseg train``
(:func:`geoseg.train.job.train_model`) on a GeoTIFF crop of the scene and scored with the
one behind ``geoseg evaluate`` (:func:`geoseg.train.scoring.evaluate_model`: the full tiled
pipeline) on a held-out crop that training never saw:

- ``spacenet``: SpaceNet-4 Atlanta panchromatic (0.5 m, uint16) with its building
  polygons (GeoJSON, no class field: polygons are ``building``, the rest ``background``).
  Training: the west half (columns 0-449; its bottom strip is the validation split).
  Held out: the east half (columns 450-899).
- ``aerial``: a rural RGB orthophoto (0.3 m, uint8) with its building raster, which
  declares ``nodata=0`` although 0 is the background class: read with
  ``--label-nodata none``. The file has three labelled buildings, all in the top-left
  quarter, so no split through the middle keeps buildings on both sides:

  - ``aerial`` splits west/east at column 96, the only place that cuts no building: the
    west (columns 0-95) holds two buildings, the east (columns 96-511) the third, but also
    the road, which the west never shows (the road is where most false positives are).
  - ``aerial_topbottom`` splits at row 96: the top (rows 0-95) holds most of one building
    and a stretch of the road, the bottom (rows 96-511) the other two buildings (the
    top 8 rows of one of them, and the last 3 of the trained one, are on the training side).

  With no building left for a separate validation strip, the training window doubles as
  the validation data (model selection only; the reported IoU is on the held-out window).
Usage::

    python pipelines/train_real_buildings.py                  # both cases, JSON on stdout
    python pipelines/train_real_buildings.py --cases aerial --epochs 4 --threads 2

Each training is capped at ``--time-limit`` seconds (default 230).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (see geoseg.models)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from geoseg.grid import PixelWindow
from geoseg.io.labels import LabelOptions
from geoseg.train.job import train_model
from geoseg.train.scoring import evaluate_model
from geoseg.train.settings import TrainSettings

DATA = REPO.parent / "shared" / "data" / "real"

CASES = {
    "spacenet": {
        "image": "spacenet_atlanta_pan.tif",
        "labels": "spacenet_atlanta_buildings.geojson",
        "split": ("col", 450),
        "labels_options": {},
        "chip_size": 128,
        "val_on_train": False,
    },
    "aerial": {
        "image": "aerial_buildings_image.tif",
        "labels": "aerial_buildings_label.tif",
        "split": ("col", 96),
        "labels_options": {"nodata": "none"},
        "chip_size": 64,
        "val_on_train": True,
    },
    "aerial_topbottom": {
        "image": "aerial_buildings_image.tif",
        "labels": "aerial_buildings_label.tif",
        "split": ("row", 96),
        "labels_options": {"nodata": "none"},
        "chip_size": 64,
        "val_on_train": True,
    },
}
CLASSES = ["background", "building"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder with the real scenes")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--out-dir", type=Path, default=None, help="keep crops and models here (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--chips-per-epoch", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=230.0, help="seconds per training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def crop(src_path: Path, dst_path: Path, window: PixelWindow) -> Path:
    """Write a window of a raster as a GeoTIFF with the window's georeferencing."""
    import rasterio

    with rasterio.open(src_path) as src:
        profile = src.profile
        profile.update(driver="GTiff", width=window.width, height=window.height,
                       transform=src.window_transform(window.to_rasterio()), tiled=False, compress="deflate")
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        data = src.read(window=window.to_rasterio())
        descriptions = src.descriptions
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions, 1):
            if d:
                dst.set_band_description(i, d)
    return dst_path


def run_case(name: str, args: argparse.Namespace, work: Path) -> dict:
    import rasterio

    case = CASES[name]
    image, labels = args.data / case["image"], args.data / case["labels"]
    with rasterio.open(image) as src:
        h, w = src.height, src.width
    axis, k = case["split"]
    if axis == "col":
        train_win, test_win = PixelWindow(0, 0, h, k), PixelWindow(0, k, h, w - k)
        where = (f"columns 0-{k - 1}", f"columns {k}-{w - 1}")
    else:
        train_win, test_win = PixelWindow(0, 0, k, w), PixelWindow(k, 0, h - k, w)
        where = (f"rows 0-{k - 1}", f"rows {k}-{h - 1}")
    train_image = crop(image, work / f"{name}_train.tif", train_win)
    test_image = crop(image, work / f"{name}_heldout.tif", test_win)
    pair = {"image": train_image, "labels": labels}
    settings = TrainSettings.from_options({
        "data": [pair],
        "validation": [pair] if case["val_on_train"] else None,
        "classes": CLASSES,
        "labels": case["labels_options"],
        "model": {"width": args.width, "depth": args.depth, "name": f"{name}-buildings"},
        "epochs": args.epochs, "chips_per_epoch": args.chips_per_epoch, "chip_size": case["chip_size"],
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": args.threads,
        "time_limit": args.time_limit, "device": "auto",
    })
    model = work / f"{name}_buildings.safetensors"
    t0 = time.perf_counter()
    result = train_model(settings, model, overwrite=True, progress=not args.quiet,
                         command=["python", "pipelines/train_real_buildings.py", *sys.argv[1:]])
    train_seconds = time.perf_counter() - t0
    ev = evaluate_model(model, test_image, labels, label_options=LabelOptions(**case["labels_options"]),
                        tile_size=512, quiet=True)
    report = ev.report()
    building = next(c for c in report["per_class"] if c["name"] == "building")
    summary = result.history.summary()
    return {
        "image": case["image"],
        "labels": case["labels"],
        "train_window": f"{where[0]} ({train_win.height}x{train_win.width} px)",
        "heldout_window": f"{where[1]} ({test_win.height}x{test_win.width} px)",
        "validation": "the training window" if case["val_on_train"] else "bottom 20% strip of the training window",
        "heldout_building_iou": building["iou"],
        "heldout_building_precision": building["precision"],
        "heldout_building_recall": building["recall"],
        "heldout_building_f1": building["f1"],
        "heldout_miou": report["miou"],
        "heldout_overall_accuracy": report["overall_accuracy"],
        "heldout_building_pixels": int(sum(report["confusion"][1])),
        "heldout_confusion": report["confusion"],
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(ev.seconds, 1),
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "stopped": summary["stopped"],
        "val_miou": summary["val_miou"],
        "model": {"width": args.width, "depth": args.depth, "chip_size": case["chip_size"],
                  "chips_per_epoch": args.chips_per_epoch, "batch_size": args.batch_size, "lr": args.lr,
                  "seed": args.seed},
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"error: real data not found at {args.data}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "pipelines/train_real_buildings.py", *(sys.argv[1:] if argv is None else argv)])
    results = {}
    with tempfile.TemporaryDirectory(prefix="geoseg-real-") as tmp:
        work = args.out_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.cases:
            results[name] = run_case(name, args, work)
    print(json.dumps({
        "command": command,
        "cases": results,
        "threads": args.threads,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
