"""Models on held-out synthetic scenes: invented end-members and measured spectra per sensor.

Renders, as ``pipelines/train_default_model.py`` does for its held-out test, the invented-spectra
scene of seed 1000 (with a nodata border) and scenes rendered from measured spectra through the
Sentinel-2 (seed 1001) and Landsat 8 (seed 1002) band responses (product DNs turned back into
reflectance x 10000), and prints each model's mIoU and per-class IoU on them.

Usage::

    python benchmarks/bench_sensor_scenes.py [--size 512] MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="built-in names or bundle paths")
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "pipelines"))
    from train_default_model import MASK_CLASSES, _scene

    from geoseg.models import load_model
    from geoseg.train.validation import evaluate

    with tempfile.TemporaryDirectory() as d:
        scenes = {"invented:1000": _scene(Path(d), 1000, args.size, nodata_border=True),
                  "sentinel2:1001": _scene(Path(d), 1001, args.size, sensor="sentinel2"),
                  "landsat8:1002": _scene(Path(d), 1002, args.size, sensor="landsat8")}
        print("| model | scene | mIoU | " + " | ".join(load_model(args.models[0]).class_names) + " |")
        for ref in args.models:
            model = load_model(ref if ref in ("default", "spectral") else str(Path(ref).resolve()))
            for name, scene in scenes.items():
                r = evaluate(model, scene, mask_classes=MASK_CLASSES)
                iou = r.as_dict(list(model.class_names))["iou"]
                print(f"| {Path(ref).name} | {name} | {r.miou:.3f} | "
                      + " | ".join("-" if v is None else f"{v:.2f}" for v in iou.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
