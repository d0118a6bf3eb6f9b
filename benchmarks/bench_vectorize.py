"""Benchmark ``geoseg vectorize`` against ``gdal_polygonize.py -f GPKG``.

On the same NxN class map (by default the 8192x8192 class map the ``default`` model
makes of synthetic scene seed 11: ~75k polygons), measured in one run of this script,
alternating the two tools ``--repeat`` times, each in a fresh process:

- wall time of each, and the ratio GDAL / geoseg (target: >= 2 on 2 cores);
- peak RSS of each process (``wait4``'s ``ru_maxrss``);
- the polygon count and total area per class of both outputs (they must match: the
  script fails if they do not).

``gdal_polygonize.py`` comes with Debian's gdal-bin (``apt-get install -y gdal-bin``).

Usage::

    python benchmarks/bench_vectorize.py                # 8192, 3 repeats, writes BENCHMARKS.md
    python benchmarks/bench_vectorize.py --size 2048 --repeat 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"


def class_map(size: int, seed: int) -> Path:
    """The ``default`` model's class map of a synthetic scene (made once, in child
    processes so that this one stays small: see ``_measure``)."""
    bench = WORK / f"classmap_{size}_s{seed}.tif"  # alone in its folder: no confidence sibling
    if bench.exists():
        return bench
    scene = WORK / f"synth_{size}_s{seed}.tif"
    if not scene.exists():
        subprocess.run([sys.executable, "-m", "geoseg", "synth", str(scene), "--size", str(size), "--seed", str(seed)],
                       check=True)
    out = WORK / f"vec_{size}_s{seed}"
    subprocess.run([sys.executable, "-m", "geoseg", "run", str(scene), "-o", str(out), "--no-vectorize",
                    "--overwrite", "-q"], check=True)
    shutil.copy(out / f"{scene.stem}.classes.tif", bench)
    return bench


def per_class(path: Path, layer: str | None, field: str) -> dict[int, tuple[int, float]]:
    """Polygon count and total polygon area (from the geometries) per class."""
    import numpy as np
    import pyogrio
    import shapely

    _, _, wkb, (cls,) = pyogrio.raw.read(path, layer=layer, columns=[field])
    area = shapely.area(shapely.from_wkb(wkb))
    out = {}
    for c in np.unique(cls):
        sel = cls == c
        out[int(c)] = (int(sel.sum()), float(area[sel].sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = ap.parse_args()

    gdal = shutil.which("gdal_polygonize.py")
    if gdal is None:
        raise SystemExit("gdal_polygonize.py not found: apt-get update && apt-get install -y gdal-bin")
    WORK.mkdir(parents=True, exist_ok=True)
    cmap = class_map(args.size, args.seed)
    out_gdal, out_geoseg = WORK / "vec_gdal.gpkg", WORK / "vec_geoseg.gpkg"
    gdal_version = subprocess.run(["gdalinfo", "--version"], check=True, capture_output=True, text=True).stdout.strip()

    runs = []
    for _ in range(args.repeat):
        out_gdal.unlink(missing_ok=True)
        g = measure([gdal, "-q", "-f", "GPKG", str(cmap), str(out_gdal)])[:2]
        s = measure([sys.executable, "-m", "geoseg", "vectorize", str(cmap), str(out_geoseg), "--overwrite", "-q"])[:2]
        runs.append((g, s))
        print(f"gdal_polygonize.py {g[0]:.2f} s {g[1]:.0f} MiB | geoseg vectorize {s[0]:.2f} s {s[1]:.0f} MiB "
              f"| ratio {g[0] / s[0]:.2f}", flush=True)

    ref = per_class(out_gdal, None, "DN")
    ours = per_class(out_geoseg, "classes", "class_id")
    import pyogrio

    _, _, _, (cid, area_attr) = pyogrio.raw.read(out_geoseg, layer="classes", columns=["class_id", "area_m2"])
    rows, ok = [], True
    for c in sorted(set(ref) | set(ours)):
        (n_r, a_r), (n_o, a_o) = ref.get(c, (0, 0.0)), ours.get(c, (0, 0.0))
        attr = float(area_attr[cid == c].sum())
        rel = abs(a_o - a_r) / a_r if a_r else abs(a_o)
        ok &= n_r == n_o and rel <= 1e-6 and abs(attr - a_r) <= 1e-6 * a_r
        rows.append(f"| {c} | {n_r} | {n_o} | {a_r:.1f} | {a_o:.1f} | {attr:.1f} | {rel:.1e} |")
    total_r, total_o = sum(v[0] for v in ref.values()), sum(v[0] for v in ours.values())
    print("\n".join(rows))
    if not ok:
        raise SystemExit("polygon counts or areas differ between gdal_polygonize.py and geoseg vectorize")

    ratios = [g[0] / s[0] for g, s in runs]
    med = statistics.median
    body = f"""## `geoseg vectorize` vs `gdal_polygonize.py -f GPKG` (issue 3)

Command: `python benchmarks/bench_vectorize.py --size {args.size} --repeat {args.repeat}`
(needs `gdal_polygonize.py`: `apt-get install -y gdal-bin`). Machine: {platform.machine()},
{os.cpu_count()} cores; {gdal_version} (Debian) vs geoseg's GDAL via rasterio.

Input: the `default` model's {args.size}x{args.size} class map of synthetic scene seed
{args.seed} (`benchmarks/_work/classmap_{args.size}_s{args.seed}.tif`), {total_r} polygons.
Both tools polygonize it with 4-connectivity into a GeoPackage with a spatial index;
geoseg also writes class names, `area_m2`, `perimeter_m` and a QGIS style. Each tool
ran {args.repeat} times, alternating, each in a fresh process.

| run | gdal_polygonize.py s | geoseg vectorize s | ratio GDAL/geoseg | GDAL peak RSS MiB | geoseg peak RSS MiB |
|---|---|---|---|---|---|
""" + "\n".join(
        f"| {i + 1} | {g[0]:.2f} | {s[0]:.2f} | {g[0] / s[0]:.2f} | {g[1]:.0f} | {s[1]:.0f} |"
        for i, (g, s) in enumerate(runs)
    ) + f"""

**Median ratio: geoseg is {med(ratios):.2f}x faster** (target: at least 2x on this
2-core machine). Peak RSS: GDAL {med([g[1] for g, _ in runs]):.0f} MiB, geoseg
{med([s[1] for _, s in runs]):.0f} MiB (geoseg holds the output polygons in memory before
writing them; its per-block working memory is bounded by `--block-size`).

Polygons per class and total area per class (m², from the geometries; geoseg's
`area_m2` attribute summed in its own column) match:

| class | GDAL polygons | geoseg polygons | GDAL area | geoseg area | geoseg `area_m2` | rel. diff |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Totals: {total_r} polygons (GDAL) and {total_o} (geoseg).
"""
    print(body)
    if not args.no_write:
        write_section("vectorize", body)


if __name__ == "__main__":
    main()
