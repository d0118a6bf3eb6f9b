"""Default ``geoseg train`` vs the built-in random-forest baseline on the labelled real scenes.

For each labelled scene in ``../shared/data/real/`` this script fixes a spatial train/test
split (documented in ``SCENES`` below), writes the training image (a crop where the
split allows one) and training labels, and the test labels on the full image grid, into a
temporary folder; then runs, as a user would:

    geoseg train --image TRAIN.tif --labels TRAIN_LABELS.tif --classes ... --out M --time-budget B
    geoseg evaluate --model M --image IMAGE.tif --labels TEST_LABELS.tif --baseline rf --json

``geoseg train`` runs with its defaults (only the seed, the class names and the time
budget are given); the forest is trained by ``geoseg evaluate --baseline rf`` on the
model's recorded training data (all labelled pixels of the training image, i.e. also the
pixels the model held out for its own validation) and both are scored on the same test
pixels. Training time is the wall time of ``geoseg train``.

Usage::

    python benchmarks/bench_train_real.py [--budget MINUTES] [--only NAME ...] [--seed 0] [--json OUT]
        [--extra-data DIR] [--default-budget]

The data are read from ``../shared/data/real`` (or ``$GEOSEG_REAL_DATA``). Scenes the
training defaults were NOT tuned on (issue 24) are read from ``--extra-data DIR`` (or
``$GEOSEG_EXTRA_DATA``) and skipped when that folder is absent; they are kept out of the
repository (the folder's README.md says how they were made):

- ``eolearn``: Sentinel-2 L1C, 13 bands, ~10 m, 100x101 px, 5 land-cover classes (Slovenia),
  from sentinel-hub/eo-learn example_data (MIT; Copernicus Sentinel data, free and open).
- ``sn7``: Planet monthly mosaic RGB, 4.77 m, 538x701 px, buildings (SpaceNet 7 AOI
  L15-0331E-1257N), from NRCan/geo-deep-learning tests/data (MIT; SpaceNet CC BY-SA 4.0).

``--default-budget`` runs ``geoseg train`` without ``--time-budget`` (its own default).

The machine was shared while these figures were measured: times are wall times.
"""

from __future__ import annotations

import argparse
import shlex
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("GEOSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
EXTRA = Path(os.environ["GEOSEG_EXTRA_DATA"]) if os.environ.get("GEOSEG_EXTRA_DATA") else None
IGNORE = 255
NB_CLASSES = "Building,Hydro,Road,Train,Vegetation"


@dataclass
class Split:
    """A scene and its train/test split.

    Attributes:
        name: Short name.
        image: Image file (in REAL).
        labels: Label file (in REAL) and how it becomes class ids (``label_args``).
        classes: Class names in id order.
        train_window: ``(row, col, height, width)`` of the training crop (None: the whole
            image, with the test pixels' labels removed).
        test: Function of the full label array -> boolean test mask.
        how: What the split is, for BENCHMARKS.md.
    """

    name: str
    image: str
    labels: str
    label_args: list[str]
    classes: str
    train_window: tuple[int, int, int, int] | None
    test: object
    how: str
    train_image: str | None = None
    train_labels_from: str | None = None
    extra: bool = False  # in the extra-data folder (scenes the defaults were not tuned on)

    @property
    def root(self) -> Path:
        return EXTRA if self.extra else REAL


def _cols(lo: int, hi: int):
    """Test mask: every pixel in columns ``lo`` to ``hi - 1``."""
    def test(lab: np.ndarray) -> np.ndarray:
        cols = np.indices(lab.shape)[1]
        return (cols >= lo) & (cols < hi)
    return test


def _parana_test(lab: np.ndarray) -> np.ndarray:
    """The southern 40% of each polygon's rows (its northern 60% minus 2 rows train)."""
    from scipy import ndimage

    out = np.zeros(lab.shape, bool)
    comps, _ = ndimage.label(lab != IGNORE)
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        r0, r1 = sl[0].start, sl[0].stop
        cut = r0 + round(0.6 * (r1 - r0))
        region = np.zeros(lab.shape, bool)
        region[cut:r1, sl[1]] = True
        out |= region & (comps == k)
    return out


def _parana_train(lab: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    out = np.zeros(lab.shape, bool)
    comps, _ = ndimage.label(lab != IGNORE)
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        r0, r1 = sl[0].start, sl[0].stop
        cut = r0 + round(0.6 * (r1 - r0)) - 2
        region = np.zeros(lab.shape, bool)
        region[r0:cut, sl[1]] = True
        out |= region & (comps == k)
    return out


SCENES = [
    Split("parana", "landsat8_parana_bgr.tif", "landsat8_parana_polygons.gpkg", ["--label-field", "name"],
          "crop,developed,tree,water", None, _parana_test,
          "4 polygons, one per class (~80-210 px each): the southern 40% of each polygon's rows is test, "
          "its northern part (2 rows above) trains; one polygon per class allows no halo-wide buffer, so "
          "this measures generalisation within a polygon only"),
    Split("atlanta", "spacenet_atlanta_pan.tif", "spacenet_atlanta_buildings_mask.tif", ["--label-nodata", "none"],
          "background,building", (0, 0, 900, 536), _cols(600, 900),
          "test: columns 600-899 (all pixels); train: a crop of columns 0-535 (64-px buffer)"),
    Split("aerial", "aerial_buildings_image.tif", "aerial_buildings_label.tif", ["--label-nodata", "none"],
          "background,building", (0, 0, 512, 88), _cols(112, 512),
          "test: columns 112-511 (one of the 3 buildings, most of it); train: a crop of columns 0-87 "
          "(2 buildings); 24-px buffer: the 3 buildings lie within 15 px of each other, so no larger "
          "buffer leaves a building on both sides"),
    Split("new_brunswick", "nb_aerial_1.tif", "nb_landcover.gpkg", ["--label-field", "Niveau_2"],
          NB_CLASSES, None, lambda lab: lab != IGNORE,
          "test: all labelled pixels of tile nb_aerial_1; train: tile nb_aerial_2 from row 108 down "
          "(rows 0-43 overlap tile 1's extent; 64 rows of buffer below that)",
          train_image="nb_aerial_2.tif", train_labels_from="nb_landcover.gpkg"),
    Split("eolearn", "eolearn_s2_l1c.tif", "eolearn_lulc.tif", [],
          "cultivated,forest,grassland,shrubland,artificial", (0, 0, 101, 56), _cols(60, 100),
          "test: columns 60-99 (all labelled pixels); train: a crop of columns 0-55 (4-px buffer: the "
          "scene is 100 px wide)", extra=True),
    Split("sn7", "sn7_rgb.tif", "sn7_buildings_mask.tif", ["--label-nodata", "none"],
          "background,building", (0, 0, 701, 300), _cols(340, 538),
          "test: columns 340-537 (all pixels); train: a crop of columns 0-299 (40-px buffer)", extra=True),
]


def _read_labels(image: Path, labels: Path, label_args: list[str], classes: str) -> np.ndarray:
    """The scene's labels on its grid, as geoseg puts them there."""
    sys.path.insert(0, str(ROOT))
    from geoseg.io.labels import LabelOptions
    from geoseg.train.data import load_scene

    opts = {}
    for k, v in zip(label_args[::2], label_args[1::2]):
        opts[{"--label-field": "field", "--label-nodata": "nodata"}[k]] = v
    return load_scene(image, labels, label_options=LabelOptions(**opts), class_names=classes.split(",")).labels


def _write(path: Path, array: np.ndarray, profile: dict, nodata: float | None) -> None:
    p = dict(profile, count=array.shape[0], dtype=array.dtype.name, nodata=nodata, driver="GTiff")
    p.pop("blockxsize", None), p.pop("blockysize", None), p.pop("tiled", None)
    with rasterio.open(path, "w", **p) as dst:
        dst.write(array)


def prepare(split: Split, tmp: Path) -> dict:
    """Write the training image/labels and the test labels; return their paths and counts."""
    REAL = split.root  # noqa: N806 (the scene's folder)
    image = REAL / split.image
    with rasterio.open(image) as src:
        profile, transform = src.profile, src.transform
        full = src.read()
    labels = _read_labels(image, REAL / split.labels, split.label_args, split.classes)
    test = split.test(labels)
    test_labels = np.where(test, labels, IGNORE).astype(np.uint8)
    test_path = tmp / f"{split.name}_test_labels.tif"
    _write(test_path, test_labels[None], profile, IGNORE)
    if split.train_image:  # New Brunswick: the other tile, below the rows that overlap the test tile
        timage = REAL / split.train_image
        with rasterio.open(timage) as src:
            tprofile, ttransform, tfull = src.profile, src.transform, src.read()
        tlabels = _read_labels(timage, REAL / split.train_labels_from, split.label_args, split.classes)
        r0 = 108
        crop = tfull[:, r0:]
        train_labels = tlabels[r0:]
        tprofile = dict(tprofile, height=crop.shape[1], width=crop.shape[2],
                        transform=rasterio.windows.transform(Window(0, r0, crop.shape[2], crop.shape[1]), ttransform))
        train_image_path = tmp / f"{split.name}_train.tif"
        _write(train_image_path, crop, tprofile, tprofile.get("nodata"))
    elif split.train_window is None:  # Parana: the whole image, the polygons' northern parts
        train_labels = np.where(_parana_train(labels), labels, IGNORE).astype(np.uint8)
        train_image_path = image
        tprofile = profile
    else:
        r, c, h, w = split.train_window
        crop = full[:, r:r + h, c:c + w]
        train_labels = labels[r:r + h, c:c + w]
        tprofile = dict(profile, height=h, width=w, transform=rasterio.windows.transform(Window(c, r, w, h), transform))
        train_image_path = tmp / f"{split.name}_train.tif"
        _write(train_image_path, crop, tprofile, profile.get("nodata"))
    train_labels_path = tmp / f"{split.name}_train_labels.tif"
    _write(train_labels_path, train_labels[None].astype(np.uint8), tprofile, IGNORE)
    n = len(split.classes.split(","))
    return {
        "train_image": train_image_path, "train_labels": train_labels_path, "test_labels": test_path,
        "train_pixels": np.bincount(train_labels[train_labels != IGNORE], minlength=n).tolist(),
        "test_pixels": np.bincount(test_labels[test_labels != IGNORE], minlength=n).tolist(),
    }


def run(split: Split, tmp: Path, budget: float, seed: int, extra: list[str] = ()) -> dict:
    files = prepare(split, tmp)
    REAL = split.root  # noqa: N806
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    model = tmp / f"{split.name}.safetensors"
    cmd = [sys.executable, "-m", "geoseg", "train", "--image", str(files["train_image"]), "--labels",
           str(files["train_labels"]), "--classes", split.classes, "--out", str(model),
           *([] if budget is None else ["--time-budget", str(budget)]), "--seed", str(seed), "--overwrite", "--json", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{split.name}: geoseg train failed: {out.stderr[-2000:]}")
    trained = json.loads(out.stdout)
    ev_cmd = [sys.executable, "-m", "geoseg", "evaluate", "--model", str(model), "--image", str(REAL / split.image),
              "--labels", str(files["test_labels"]), "--baseline", "rf", "--json", "--quiet"]
    ev = subprocess.run(ev_cmd, env=env, capture_output=True, text=True, check=False)
    if ev.returncode:
        raise SystemExit(f"{split.name}: geoseg evaluate failed: {ev.stderr[-2000:]}")
    report = json.loads(ev.stdout)
    base = report["baseline"]
    return {
        "scene": split.name, "split": split.how, "train_pixels": files["train_pixels"],
        "test_pixels": files["test_pixels"], "classes": split.classes.split(","),
        "train_seconds": round(seconds, 1), "train_loop_seconds": trained["seconds"], "budget_minutes": budget,
        "epochs_run": trained["epochs_run"], "epochs_planned": trained["epochs_planned"],
        "stopped": trained["stopped"], "plan": trained["plan"],
        "model": base["model"], "random_forest": base["random_forest"], "model_wins": base["model_wins"],
        "val_baseline": trained.get("baseline"), "train_args": list(extra),
        "forest": trained.get("forest"), "validation_warning": trained.get("validation_warning"),
        "train_total_seconds": trained.get("total_seconds"),
    }


def _val_text(r: dict) -> str:
    """The validation scores beside the held-out ones, the mixture's weight, the warning."""
    parts = []
    vb = r.get("val_baseline") or {}
    if vb.get("model"):
        parts.append(f"val mIoU {vb['model']['miou']:.3f} OA {vb['model']['overall_accuracy']:.3f}")
    if (r.get("forest") or {}).get("net_weight") is not None:
        parts.append(f"net weight {r['forest']['net_weight']:g}")
    if r.get("validation_warning"):
        parts.append("validation too small" if "too small" in r["validation_warning"] else r["validation_warning"])
    return f" | {'; '.join(parts)}" if parts else ""


def main() -> None:
    global EXTRA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=20.0, help="--time-budget of geoseg train, minutes")
    ap.add_argument("--only", nargs="*", default=None, help="scene names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--extra-data", type=Path, default=EXTRA,
                    help="folder of the extra scenes (default: $GEOSEG_EXTRA_DATA; absent: skipped)")
    ap.add_argument("--default-budget", action="store_true",
                    help="no --time-budget: geoseg train's own default")
    ap.add_argument("--train-args", default="",
                    help="extra geoseg train options, e.g. '--pseudo-labels 0.5' (default: none, the defaults)")
    args = ap.parse_args()
    EXTRA = args.extra_data
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: nothing to benchmark")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-real-") as tmp:
        for split in SCENES:
            if args.only and split.name not in args.only:
                continue
            if split.extra and (EXTRA is None or not (EXTRA / split.image).is_file()):
                print(f"{split.name:<14} skipped: {split.image} is not in the extra-data folder "
                      f"({EXTRA or 'none given: --extra-data DIR or $GEOSEG_EXTRA_DATA'})", flush=True)
                continue
            r = run(split, Path(tmp), None if args.default_budget else args.budget, args.seed, shlex.split(args.train_args))
            results.append(r)
            m, f = r["model"], r["random_forest"]
            print(f"{r['scene']:<14} model mIoU {m['miou']:.3f} OA {m['overall_accuracy']:.3f} | "
                  f"RF mIoU {f['miou']:.3f} OA {f['overall_accuracy']:.3f} | train {r['train_seconds']:.0f} s "
                  f"({r['epochs_run']}/{r['epochs_planned']} epochs, {r['stopped']}) "
                  f"{'WIN' if r['model_wins'] else 'short'}{_val_text(r)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
