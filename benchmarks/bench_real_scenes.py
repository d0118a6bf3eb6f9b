"""Built-in models on real multispectral surface-reflectance scenes, scored on real labels.

For each scene this runs, as a user would, ``geoseg.run_scene`` with today's shipped
``default``, a candidate ``default`` (``--new MODEL``), the training-free ``spectral`` model,
and fits a random forest on a handful of labelled points of the same scene (``--points``
per class, seeded; bands plus NDVI and NDWI); the forest's points are left out of its score.
Each model's classes are mapped onto the coarse classes the labels share (``water``,
``vegetation`` = forest or cropland, ``bare`` = bare soil, ``built`` = building or road;
``spectral``'s ``other`` counts as right for ``bare`` and ``built``, which it cannot tell
apart), and the recall of each labelled class is reported per scene.

Scenes are described in ``scenes.json`` in the data folder (``$GEOSEG_REAL_SCENES``, default
``/work/data-extra/real_scenes``; see its README.md): a list of objects with ``name``,
``image`` (a GeoTIFF, relative to the folder), ``bands`` (1-based band of ``blue``, ``green``,
``red``, ``nir``), ``scale``/``offset`` (raw value -> reflectance x 10000), ``labels`` (a
vector file), ``label_field``, ``classes`` (label value -> coarse class), ``source``,
``licence`` and ``labels_source`` (who drew the labels, from what). The labelled real scenes
of ``../shared/data/real`` that lack a near-infrared band are listed as skipped. Without a
data folder the script says so and exits 0.

Usage::

    python benchmarks/bench_real_scenes.py [--new NEW.safetensors] [--points 5] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GEOSEG_REAL_SCENES", "/work/data-extra/real_scenes"))
COARSE = ("water", "vegetation", "bare", "built")
DEFAULT_TO_COARSE = {"water": "water", "forest": "vegetation", "cropland": "vegetation", "bare_soil": "bare",
                     "building": "built", "road": "built"}
SPECTRAL_TO_COARSE = {"water": "water", "vegetation": "vegetation", "other": "other"}


def _scene_arrays(spec: dict, folder: Path) -> tuple[np.ndarray, dict, np.ndarray]:
    """Reflectance x 10000 (4, H, W) in blue, green, red, nir; the profile; coarse labels (255: none)."""
    import rasterio
    from rasterio.features import rasterize

    import geopandas as gpd

    with rasterio.open(folder / spec["image"]) as ds:
        raw = np.stack([ds.read(spec["bands"][b]).astype(np.float32) for b in ("blue", "green", "red", "nir")])
        profile = {"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width}
        nodata = ds.nodata
    valid = ~(raw == (nodata if nodata is not None else -1e30)).all(0) & (raw > 0).any(0)
    refl = np.clip(raw * spec.get("scale", 1.0) + spec.get("offset", 0.0), 1, 10000)
    refl[:, ~valid] = 0
    frame = gpd.read_file(folder / spec["labels"]).to_crs(profile["crs"])
    codes = {c: i for i, c in enumerate(COARSE)}
    shapes = [(g, codes[spec["classes"][str(v)]]) for g, v in zip(frame.geometry, frame[spec["label_field"]])
              if str(v) in spec["classes"]]
    labels = rasterize(shapes, out_shape=(profile["height"], profile["width"]), transform=profile["transform"],
                       fill=255, dtype="uint8", all_touched=True)
    labels[~valid] = 255
    return refl.astype(np.uint16), profile, labels


def _run(model: str, image: Path, out: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    import rasterio

    import geoseg
    from geoseg.models import load_model

    geoseg.run_scene(image, out, model=model, vectorize=False, quiet=True, overwrite=True)
    with rasterio.open(out / f"{image.stem}.classes.tif") as ds:
        return ds.read(1), load_model(model).class_names


def _recalls(pred_coarse: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for i, name in enumerate(COARSE):
        m = (labels == i) & keep
        if not m.any():
            out[name] = None
            continue
        right = pred_coarse[m] == name
        if name in ("bare", "built"):
            right |= pred_coarse[m] == "other"
        out[name] = float(right.mean())
    return out


def _forest(refl: np.ndarray, labels: np.ndarray, points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random forest on ``points`` random labelled pixels per class; its coarse map and the pixels it saw."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = refl.astype(np.float32)
    ndvi = (x[3] - x[2]) / np.maximum(x[3] + x[2], 1)
    ndwi = (x[1] - x[3]) / np.maximum(x[1] + x[3], 1)
    feats = np.concatenate([x, ndvi[None], ndwi[None]]).reshape(6, -1).T
    flat = labels.ravel()
    seen = np.zeros(flat.shape, bool)
    for c in np.unique(flat[flat != 255]):
        idx = np.flatnonzero(flat == c)
        seen[rng.choice(idx, size=min(points, len(idx)), replace=False)] = True
    rf = RandomForestClassifier(n_estimators=100, random_state=seed).fit(feats[seen], flat[seen])
    pred = np.array(COARSE)[rf.predict(feats)].reshape(labels.shape)
    return pred, ~seen.reshape(labels.shape)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new", default=None, help="a candidate default bundle to score beside today's")
    ap.add_argument("--points", type=int, default=5, help="labelled points per class for the random forest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args(argv)
    import rasterio

    shared = ROOT.parent / "shared" / "data" / "real"
    skipped = []
    if shared.is_dir():
        with rasterio.open(shared / "landsat8_parana_bgr.tif") as ds:
            skipped.append(f"landsat8_parana_bgr.tif ({ds.count} bands: blue, green, red; no near infrared)")
    specs = json.loads((DATA / "scenes.json").read_text()) if (DATA / "scenes.json").is_file() else []
    if not specs:
        print(f"no real multispectral scenes described in {DATA / 'scenes.json'} (set GEOSEG_REAL_SCENES); "
              f"skipped: {'; '.join(skipped) or '-'}")
        return 0
    models = [("default (today)", "default"), ("spectral", "spectral")]
    if args.new:
        models.insert(1, ("default (new)", str(Path(args.new).resolve())))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            refl, profile, labels = _scene_arrays(spec, DATA)
            image = Path(tmp) / f"{spec['name']}.tif"
            with rasterio.open(image, "w", driver="GTiff", count=4, dtype="uint16", nodata=0, **profile) as ds:
                ds.write(refl)
                ds.descriptions = ("blue", "green", "red", "nir")
            keep = np.ones(labels.shape, bool)
            for title, ref in models:
                classes, names = _run(ref, image, Path(tmp) / f"{spec['name']}_{len(rows)}")
                table = SPECTRAL_TO_COARSE if ref == "spectral" else DEFAULT_TO_COARSE
                lut = np.array([table.get(n, "none") for n in names] + ["none"] * (256 - len(names)))
                rows.append((spec["name"], title, _recalls(lut[classes], labels, keep)))
            pred, unseen = _forest(refl, labels, args.points, args.seed)
            rows.append((spec["name"], f"random forest ({args.points} points/class)", _recalls(pred, labels, unseen)))
    head = "| scene | model | " + " | ".join(COARSE) + " |\n|---|---|" + "---|" * len(COARSE)
    body = "\n".join(f"| {s} | {m} | " + " | ".join("-" if r[c] is None else f"{r[c]:.2f}" for c in COARSE) + " |"
                     for s, m, r in rows)
    text = head + "\n" + body
    print(text)
    if skipped:
        print("skipped: " + "; ".join(skipped))
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import write_section

        command = "python benchmarks/bench_real_scenes.py " + " ".join(argv if argv is not None else sys.argv[1:])
        sources = "\n".join(f"- `{s['name']}`: {s['source']}; labels: {s['labels_source']}" for s in specs)
        write_section("issue23_real_scenes", "## Issue 23: built-in models on real scenes (recall per class)\n\n"
                      f"`{command.strip()}` (data: `$GEOSEG_REAL_SCENES`, see the script's docstring)\n\n"
                      f"{text}\n\n{sources}\n" + (f"\nSkipped: {'; '.join(skipped)}.\n" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
