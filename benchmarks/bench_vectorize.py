"""Benchmark ``geoseg vectorize`` against ``gdal_polygonize.py -f GPKG``.

On the same NxN class map (by default the 8192x8192 class map the ``default`` model
makes of synthetic scene seed 11: ~75k polygons), measured in one run of this script,
alternating the two tools ``--repeat`` times, each in a fresh process:

- wall time of each, and the ratio GDAL / geoseg (target: >= 2 on 2 cores);
- peak RSS of each process (``wait4``'s ``ru_maxrss``);
- the polygon count and total area per class of both outputs (they must match: the
  script fails if they do not).

``gdal_polygonize.py`` comes with Debian's gdal-bin (``apt-get install -y gdal-bin``).

``--speckle N[,M...]`` measures streaming instead (issue 14): speckled NxN class maps (2x2 px
cells of random classes, ~1/8 polygon per pixel, the polygon count of an untrained model),
GDAL and geoseg on the first size, geoseg alone on the others (GDAL needs >10 min per
4096^2 on 2 cores), and geoseg's peak RSS of each size against the first.

Usage::

    python benchmarks/bench_vectorize.py                # 8192, 3 repeats, writes BENCHMARKS.md
    python benchmarks/bench_vectorize.py --size 2048 --repeat 1 --no-write
    python benchmarks/bench_vectorize.py --speckle 4096,8192 --repeat 1
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


def speckle_map(size: int, seed: int = 0) -> Path:
    """A speckled class map (2x2 px cells of random classes), written block by block."""
    import numpy as np
    import rasterio
    from affine import Affine

    path = WORK / f"speckle_{size}_s{seed}.tif"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=255, crs="EPSG:32633",
                   transform=Affine(10, 0, 500000, 0, -10, 5500000), tiled=True, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, size, 512):
            cells = rng.choice(6, size=(256, size // 2), p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05]).astype(np.uint8)
            ds.write(np.kron(cells, np.ones((2, 2), np.uint8))[None], window=((r, r + 512), (0, size)))
    return path


def speckle_bench(sizes: list[int], repeat: int, write: bool) -> None:
    import datetime

    gdal = None if os.environ.get("BENCH_NO_GDAL") else shutil.which("gdal_polygonize.py")
    maps = {n: speckle_map(n) for n in sizes}
    load_before, date = os.getloadavg(), datetime.date.today().isoformat()
    rows, peaks = [], {}
    for n in sizes:
        out = WORK / f"speckle_{n}.gpkg"
        for _ in range(repeat):
            g = None
            if n == sizes[0] and gdal:
                (WORK / "speckle_gdal.gpkg").unlink(missing_ok=True)
                g = measure([gdal, "-q", "-f", "GPKG", str(maps[n]), str(WORK / "speckle_gdal.gpkg")])[:2]
            s = measure([sys.executable, "-m", "geoseg", "vectorize", str(maps[n]), str(out), "--overwrite", "-q"])[:2]
            peaks.setdefault(n, []).append(s[1])
            rows.append((n, g, s))
            print(n, g, s, flush=True)
    load_after = os.getloadavg()
    # after all measurements: reading millions of polygons here would make this process (and so the
    # peak RSS the children inherit, see _measure) larger
    import pyogrio

    feats = {n: pyogrio.read_info(WORK / f"speckle_{n}.gpkg", layer="classes")["features"] for n in sizes}
    check = ""
    if gdal:
        ref = per_class(WORK / "speckle_gdal.gpkg", None, "DN", exact=True)
        ours = per_class(WORK / f"speckle_{sizes[0]}.gpkg", "classes", "class_id", exact=True)
        lines = [f"| {c} | {ref.get(c, (0, 0))[0]} | {ours.get(c, (0, 0))[0]} | {ref.get(c, (0, 0.0))[1]:.0f} "
                 f"| {ours.get(c, (0, 0.0))[1]:.0f} | {'yes' if ref.get(c) == ours.get(c) else '**no**'} |"
                 for c in sorted(set(ref) | set(ours))]
        total = (sum(v[0] for v in ref.values()), sum(v[0] for v in ours.values()))
        check = f"""
Output check, {sizes[0]}x{sizes[0]}: polygons per class and total polygon area per class (m², summed
from the geometries; every area is a whole number of 100 m² pixels, so the sums are exact) of
`gdal_polygonize.py`'s layer (field `DN`) and geoseg's (`class_id`), compared for equality:

| class | GDAL polygons | geoseg polygons | GDAL area m² | geoseg area m² | equal |
|---|---|---|---|---|---|
""" + "\n".join(lines) + f"""

Totals: {total[0]} polygons (GDAL), {total[1]} (geoseg): **{'identical' if ref == ours else 'DIFFERENT'}**.
"""
        print(check)
        if ref != ours:
            raise SystemExit(f"speckle {sizes[0]}: polygon counts or areas differ: {ref} vs {ours}")
    import statistics

    base = statistics.median(peaks[sizes[0]])
    table = "\n".join(
        f"| {n}x{n} | {feats[n]} | " + (f"{g[0]:.1f} | {g[1]:.0f} | " if g else "not run | not run | ")
        + f"{s[0]:.1f} | {s[1]:.0f} | " + (f"{g[0] / s[0]:.2f} | {s[1] / g[1]:.2f} |" if g else "| |")
        + f" {s[1] / base:.2f} |"
        for n, g, s in rows
    )
    body = f"""## Streaming polygons on speckled class maps (issue 14)

Command: `python benchmarks/bench_vectorize.py --speckle {','.join(map(str, sizes))} --repeat {repeat}`
({date}; {platform.machine()}, {os.cpu_count()} cores shared with other jobs: load average
{load_before[0]:.1f} before and {load_after[0]:.1f} after the measurements, so read the ratios, which
come from one run, rather than the absolute times; peak RSS does not depend on the load). Maps: 2x2 px
cells of random classes (`benchmarks/_work/speckle_N_s0.tif`); both tools write a GeoPackage with
4-connectivity; GDAL ran on the first size only{'' if gdal else ' (here: not at all, BENCH_NO_GDAL)'}.

| map | polygons | gdal_polygonize.py s | GDAL peak RSS MiB | geoseg s | geoseg peak RSS MiB | GDAL/geoseg time | geoseg/GDAL RSS | geoseg RSS / first size |
|---|---|---|---|---|---|---|---|---|
{table}
{check}"""
    print(body)
    if write:
        write_section("vectorize_speckle", body)


def per_class(path: Path, layer: str | None, field: str, exact: bool = False) -> dict[int, tuple[int, float]]:
    """Polygon count and total polygon area (from the geometries) per class (rounded to
    1e-3 unless ``exact``)."""
    import numpy as np
    import pyogrio
    import shapely

    _, _, wkb, (cls,) = pyogrio.raw.read(path, layer=layer, columns=[field])
    area = shapely.area(shapely.from_wkb(wkb))
    out = {}
    for c in np.unique(cls):
        sel = cls == c
        total = float(area[sel].sum())
        out[int(c)] = (int(sel.sum()), total if exact else round(total, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    ap.add_argument("--speckle", default="", help="Comma-separated sizes of speckled maps to measure instead.")
    args = ap.parse_args()
    if args.speckle:
        WORK.mkdir(parents=True, exist_ok=True)
        speckle_bench([int(v) for v in args.speckle.split(",")], args.repeat, not args.no_write)
        return

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
    import rasterio

    from geoseg.vector.areas import mean_pixel_area_m2

    with rasterio.open(cmap) as ds:  # area_m2 is the ground area: UTM's scale factor apart from planar
        scale = mean_pixel_area_m2(ds.crs.to_wkt(), ds.transform, ds.height, ds.width) / abs(ds.transform.determinant)
    rows, ok = [], True
    for c in sorted(set(ref) | set(ours)):
        (n_r, a_r), (n_o, a_o) = ref.get(c, (0, 0.0)), ours.get(c, (0, 0.0))
        attr = float(area_attr[cid == c].sum()) / scale
        rel = abs(a_o - a_r) / a_r if a_r else abs(a_o)
        ok &= n_r == n_o and rel <= 1e-6 and abs(attr - a_r) <= 1e-4 * a_r
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
{med([s[1] for _, s in runs]):.0f} MiB (geoseg streams: memory is the blocks in flight, bounded
by `--block-size`, plus the regions waiting on the open boundary; its imports, rasterio,
shapely and pyproj among them, take ~90 MiB).

Polygons per class and total area per class (m², from the geometries; geoseg's
`area_m2` attribute, a ground area, summed in its own column divided by the map's mean
ground/planar pixel area ratio {scale:.6f}) match:

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
