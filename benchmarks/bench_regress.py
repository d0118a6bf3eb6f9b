"""The speed figures that must not regress, each beside its outside reference, in one run.

In a few minutes on 2 cores (``--quick``: smaller maps), measured in fresh processes:

- ``geoseg run`` on a 4096x4096 synthetic scene (the ``default`` model): its stages from
  the manifest (inference, COGs, polygons), beside the model's trimmed forward over the
  same tiles (``bench_run.forward_seconds``: what the scene costs without any pipeline);
  the pipeline's own overhead is the run's time less that forward;
- ``geoseg vectorize`` against ``gdal_polygonize.py -f GPKG`` (GDAL's whole-map
  polygonizer, Debian's gdal-bin) on three kinds of class map: large blobs (fields, water
  and building masks: few regions, long boundaries), the ``default`` model's map of a
  synthetic scene, and speckle (2x2 px cells of random classes);
- ``geoseg batch`` of 6 small scenes beside the trimmed forward over their tiles;
- with ``--geodeep``: ``geoseg run`` against GeoDeep (the ``geodeep`` package) on the same
  RGB U-Net, geoseg on its bundle and GeoDeep on its ONNX export, time and peak RSS.

Every figure is printed next to the one this script last recorded in BENCHMARKS.md, and
the section is rewritten (``--no-write``: print only). ``--code DIR`` runs the geoseg of
another checkout (e.g. a ``git worktree`` of an older commit) for the before/after.

Usage::

    python benchmarks/bench_regress.py                  # ~4-5 minutes
    python benchmarks/bench_regress.py --geodeep 6144   # + GeoDeep on RGB 6144^2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
SECTION = "regress"
BENCH = Path(__file__).resolve().parent


def child(code: str) -> str:
    """Run Python ``code`` in a child process in this folder (keeps this process small)."""
    return subprocess.run([sys.executable, "-c", code], cwd=BENCH, check=True, capture_output=True, text=True).stdout


def blob_map(size: int, seed: int = 5) -> Path:
    """Few large regions: a smooth random field cut into 6 classes (~64 px features), plus
    ~14k small rectangles of class 4 per 8192^2 (buildings), written by a child process."""
    path = WORK / f"blobs_{size}_s{seed}.tif"
    if not path.exists():
        child(f"""
import numpy as np, rasterio
from affine import Affine
from scipy import ndimage
size, rng = {size}, np.random.default_rng({seed})
low = ndimage.gaussian_filter(rng.standard_normal((size // 64 + 3, size // 64 + 3)).astype(np.float32), 1.0)
qs = np.quantile(low, [0.2, 0.4, 0.55, 0.7, 0.85])
n = int(14000 * (size / 8192) ** 2)
ry, rx = rng.integers(0, size - 24, n), rng.integers(0, size - 24, n)
rh, rw = rng.integers(4, 24, n), rng.integers(4, 24, n)
profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=255, crs="EPSG:32633",
               transform=Affine(10, 0, 500000, 0, -10, 5500000), tiled=True, compress="deflate")
with rasterio.open("{path}", "w", **profile) as ds:
    for r in range(0, size, 1024):
        h = min(1024, size - r)
        y, x = np.meshgrid(np.arange(r, r + h) / 64, np.arange(size) / 64, indexing="ij")
        blk = np.digitize(ndimage.map_coordinates(low, [y, x], order=3), qs).astype(np.uint8)
        for k in np.flatnonzero((ry < r + h) & (ry + rh > r)):
            blk[max(ry[k] - r, 0): ry[k] + rh[k] - r, rx[k]: rx[k] + rw[k]] = 4
        ds.write(blk[None], window=((r, r + h), (0, size)))
""")
    return path


def model_map(size: int) -> Path:
    return Path(child(f"import bench_vectorize as b; b.WORK.mkdir(parents=True, exist_ok=True); print(b.class_map({size}, 11))").strip())


def speckle(size: int) -> Path:
    return Path(child(f"import bench_vectorize as b; b.WORK.mkdir(parents=True, exist_ok=True); print(b.speckle_map({size}))").strip())


def geoseg_cmd(code: Path | None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return [sys.executable, "-m", "geoseg"], env


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    return measure(cmd, env)


def trimmed_forward(model: str, tiles: int) -> float:
    out = child(f"""
from geoseg.allocator import tune_cpu_allocator
tune_cpu_allocator()
import bench_run, json
print(json.dumps(bench_run.forward_seconds({model!r}, {tiles})))
""")
    f = json.loads(out.strip().splitlines()[-1])
    return f.get("trimmed", f["untrimmed"])


def vectorize_pair(name: str, path: Path, geoseg: list[str], env: dict) -> dict:
    gdal = shutil.which("gdal_polygonize.py")
    out_g, out_s = WORK / f"regress_{name}_gdal.gpkg", WORK / f"regress_{name}_geoseg.gpkg"
    out_g.unlink(missing_ok=True)
    g = timed([gdal, "-q", "-f", "GPKG", str(path), str(out_g)])
    s = timed([*geoseg, "vectorize", str(path), str(out_s), "--overwrite", "-q", "--json"], env)
    summary = json.loads(s[2])
    row = {"map": name, "gdal_s": g[0], "gdal_mib": g[1], "geoseg_s": s[0], "geoseg_mib": s[1],
           "ratio": s[0] / g[0], "features": summary["layers"][0]["features"],
           "block_size": summary["options"].get("block_size")}
    n_gdal = int(child(f"import pyogrio; print(pyogrio.read_info({str(out_g)!r})['features'])"))
    if n_gdal != row["features"]:
        raise SystemExit(f"{name}: {n_gdal} polygons from GDAL, {row['features']} from geoseg")
    print(f"vectorize {name}: geoseg {s[0]:.2f} s {s[1]:.0f} MiB | GDAL {g[0]:.2f} s {g[1]:.0f} MiB | "
          f"ratio {row['ratio']:.2f} | {n_gdal} polygons, blocks {row['block_size']}", flush=True)
    return row


def run_scene(size: int, geoseg: list[str], env: dict) -> dict:
    scene = Path(child(f"import bench_run; from pathlib import Path; print(bench_run.synth(Path('{WORK}'), {size}, 21))").strip())
    wall, rss, out = timed([*geoseg, "run", str(scene), "-o", str(WORK / f"regress_run_{size}"), "--overwrite", "--json",
                            "-q"], env)
    t = json.loads(out)["timings_s"]
    fwd = trimmed_forward("default", (size // 1024) ** 2)
    row = {"size": size, "wall_s": wall, "rss_mib": rss, "forward_s": fwd, **{k: float(v) for k, v in t.items()}}
    row["overhead_s"] = wall - fwd
    print(f"run {size}^2: {wall:.2f} s ({rss:.0f} MiB), trimmed forward {fwd:.2f} s, overhead {row['overhead_s']:.2f} s; "
          + ", ".join(f"{k} {float(v):.2f}" for k, v in t.items()), flush=True)
    return row


def run_batch(n: int, size: int, geoseg: list[str], env: dict) -> dict:
    d = WORK / f"regress_batch_{size}"
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        p = d / f"s{k}.tif"
        if not p.exists():
            subprocess.run([*geoseg, "synth", str(p), "--size", str(size), "--seed", str(200 + k)], check=True, env=env,
                           capture_output=True)
    cat = d / "catalog.yaml"
    cat.write_text(f"defaults:\n  model: default\n  out: {d}/out/{{id}}\nscenes:\n  - glob: {d}/s*.tif\n")
    wall, rss, _ = timed([*geoseg, "batch", str(cat), "--force", "--report", str(d / "report.json")], env)
    fwd = trimmed_forward("default", n * max(1, (size // 1024) ** 2))
    print(f"batch {n} x {size}^2: {wall:.2f} s ({rss:.0f} MiB), trimmed forward {fwd:.2f} s", flush=True)
    return {"scenes": n, "size": size, "wall_s": wall, "rss_mib": rss, "forward_s": fwd, "ratio": wall / fwd}


def run_geodeep(size: int, geoseg: list[str], env: dict) -> dict:
    """geoseg run vs GeoDeep on the same RGB U-Net: the ``default`` model's weights without
    its NIR input (NIR at its mean), on the red, green and blue bands of a synthetic scene
    as 8-bit values (reflectance / 40), so that the map has land-cover structure."""
    d = WORK / f"regress_geodeep_{size}"
    d.mkdir(parents=True, exist_ok=True)
    scene, model, onnx = d / "rgb.tif", d / "rgb.safetensors", d / "rgb.onnx"
    if not onnx.exists():
        synth = Path(child(f"import bench_run; from pathlib import Path; print(bench_run.synth(Path('{WORK}'), {size}, 31))").strip())
        child(f"""
import numpy as np, rasterio
from geoseg.models import build_unet, load_model
from geoseg.models.export import export_model
src = load_model("default")
spec = src.spec
norm = {{k: [v / 40 for v in getattr(spec.normalization, k)[:3]] for k in ("mean", "std")}}
b = build_unet(["blue", "green", "red"], [c.model_dump() for c in spec.classes], mask_heads=spec.mask_heads,
               base_width=12, depth=3, normalization=norm, value_range=(0, 255), name="rgb", gsd=spec.gsd)
sd = {{k: v.clone() for k, v in src.module.state_dict().items()}}
sd["inc.0.weight"] = sd["inc.0.weight"][:, :3]
b.module.load_state_dict(sd)
b.save("{model}")
with rasterio.open("{synth}") as s:
    prof = dict(s.profile, count=3, dtype="uint8", photometric="RGB", nodata=None)
    with rasterio.open("{scene}", "w", **prof) as ds:
        for i, n in enumerate(("red", "green", "blue"), 1):
            ds.set_band_description(i, n)
        for _, w in s.block_windows(1):
            ds.write(np.clip(s.read((3, 2, 1), window=w) / 40, 0, 255).astype("uint8"), window=w)
export_model("{model}", "{onnx}", "onnx", tile_size=256, resolution=1000)
""")
    s = timed([*geoseg, "run", str(scene), "-o", str(d / "out"), "-m", str(model), "--overwrite", "-q"], env)
    gd = shutil.which("geodeep")
    g = timed([gd, str(scene), str(onnx), "-t", "geojson", "-o", str(d / "geodeep.geojson")])
    print(f"geodeep {size}^2 RGB: geoseg {s[0]:.2f} s {s[1]:.0f} MiB | GeoDeep {g[0]:.2f} s {g[1]:.0f} MiB | "
          f"time {s[0] / g[0]:.2f}, memory {s[1] / g[1]:.2f}", flush=True)
    return {"size": size, "geoseg_s": s[0], "geoseg_mib": s[1], "geodeep_s": g[0], "geodeep_mib": g[1],
            "time_ratio": s[0] / g[0], "rss_ratio": s[1] / g[1]}


def recorded() -> dict:
    """The figures of the last run of this script, from its BENCHMARKS.md section."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    m = re.search(r"<!-- regress:start -->.*?```json\n(.*?)\n```", text, flags=re.S)
    return json.loads(m.group(1)) if m else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Smaller maps (4096^2 vectorize, 1024^2 speckle).")
    ap.add_argument("--geodeep", type=int, default=0, help="Also run GeoDeep on an RGB scene this large (0: skip).")
    ap.add_argument("--code", type=Path, default=None, help="Run the geoseg of this checkout (PYTHONPATH).")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = ap.parse_args()
    if shutil.which("gdal_polygonize.py") is None:
        raise SystemExit("gdal_polygonize.py not found: apt-get update && apt-get install -y gdal-bin")
    WORK.mkdir(parents=True, exist_ok=True)
    geoseg, env = geoseg_cmd(args.code)
    if args.code is not None:  # `python -m geoseg` imports from the working directory first
        os.chdir(args.code)
    big = 4096 if args.quick else 8192
    maps = {"blobs": blob_map(big), "model": model_map(big), "speckle": speckle(1024 if args.quick else 2048)}
    load0 = os.getloadavg()[0]
    res: dict = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "code": str(args.code) if args.code else "this checkout", "vectorize": []}
    res["run"] = run_scene(4096, geoseg, env)
    for name, path in maps.items():
        res["vectorize"].append(vectorize_pair(name, path, geoseg, env))
    res["batch"] = run_batch(6, 1024, geoseg, env)
    if args.geodeep:
        res["geodeep"] = run_geodeep(args.geodeep, geoseg, env)
    res["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]

    before = recorded()
    lines = ["| figure | recorded | now |", "|---|---|---|"]

    def add(label: str, old, new, fmt="{:.2f}") -> None:
        lines.append(f"| {label} | {fmt.format(old) if old is not None else '-'} | {fmt.format(new)} |")

    old_v = {v["map"]: v for v in before.get("vectorize", [])}
    for v in res["vectorize"]:
        add(f"vectorize {v['map']}: geoseg / GDAL time", old_v.get(v["map"], {}).get("ratio"), v["ratio"])
    r, ro = res["run"], before.get("run", {})
    add("run 4096^2: wall s", ro.get("wall_s"), r["wall_s"])
    add("run 4096^2: pipeline overhead s (wall - trimmed forward)", ro.get("overhead_s"), r["overhead_s"])
    for stage in ("inference", "write_cogs", "vectorize"):
        if stage in r:
            add(f"run 4096^2: {stage} s", ro.get(stage), r[stage])
    add("batch 6 x 1024^2: wall / trimmed forward", before.get("batch", {}).get("ratio"), res["batch"]["ratio"])
    if "geodeep" in res:
        go = before.get("geodeep", {})
        add(f"geoseg run / GeoDeep time (RGB {args.geodeep}^2)", go.get("time_ratio"), res["geodeep"]["time_ratio"])
        add(f"geoseg run / GeoDeep peak RSS (RGB {args.geodeep}^2)", go.get("rss_ratio"), res["geodeep"]["rss_ratio"])
    table = "\n".join(lines)
    print(table)
    cmd = "python benchmarks/bench_regress.py" + (" --quick" if args.quick else "") + (
        f" --geodeep {args.geodeep}" if args.geodeep else "")
    vrows = "\n".join(f"| {v['map']} | {v['features']} | {v['block_size']} | {v['gdal_s']:.2f} | {v['geoseg_s']:.2f} | "
                      f"**{v['ratio']:.2f}** | {v['gdal_mib']:.0f} | {v['geoseg_mib']:.0f} |" for v in res["vectorize"])
    body = f"""## Regression check: run, vectorize, batch beside their references

Command: `{cmd}` ({res['date']}; {res['machine']}; load average {res['load'][0]} before, {res['load'][1]}
after; geoseg from {res['code']}). Ratios come from one run of the script; each tool ran once, in a
fresh process.

| map | polygons | geoseg block px | gdal_polygonize.py s | geoseg vectorize s | geoseg / GDAL | GDAL MiB | geoseg MiB |
|---|---|---|---|---|---|---|---|
{vrows}

Against the previous run of this script ({before.get('date', '-')}, geoseg from {before.get('code', '-')}):

{table}

The figures, for the next run to compare against:

```json
{json.dumps(res, indent=1)}
```
"""
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
