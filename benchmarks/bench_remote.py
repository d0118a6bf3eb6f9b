"""Benchmark ``geoseg run`` on the same scene read locally, as a STAC Item of per-band
COGs over loopback HTTP, and from an S3-compatible server (moto), in one run.

1. An NxN synthetic 4-band scene (``geoseg synth``, a child process); split into four
   single-band deflate COGs (512-px blocks) plus a STAC Item with relative hrefs.
2. The servers run in this process: a range-request HTTP server (Python's
   ``http.server``; tests/remote_servers.py) that counts requests and bytes, and moto's
   S3 server. Both are single Python processes sharing the machine's cores with the
   measured run, so the remote figures include serving costs a real server would not.
3. ``geoseg run SOURCE --no-vectorize`` in a fresh process for each source, alternating
   (local, http, s3, http with GDAL's own defaults) ``--repeat`` times; medians of the
   manifest's inference time (reads, halo, model, stitching) and of the whole run.

Usage::

    python benchmarks/bench_remote.py --size 2048 --repeat 3
    python benchmarks/bench_remote.py --size 8192 --repeat 1

Results go into BENCHMARKS.md between the markers of this benchmark (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _report import write_section

#: GDAL's own defaults for the options geoseg sets (geoseg.io.remote.REMOTE_DEFAULTS)
GDAL_DEFAULTS = {"GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "NO", "GDAL_INGESTED_BYTES_AT_OPEN": "16384", "VSI_CACHE": "TRUE",
                 "CPL_VSIL_CURL_USE_HEAD": "YES"}


def split(scene: Path, d: Path) -> None:
    import rasterio

    names = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
    with rasterio.open(scene) as src:
        profile, bounds = src.profile, list(src.bounds)
        assets = {}
        for i, (common, key) in enumerate(names.items(), 1):
            with rasterio.open(d / f"{key}.tif", "w", driver="COG", width=src.width, height=src.height, count=1,
                               dtype=src.dtypes[0], crs=profile["crs"], transform=profile["transform"],
                               compress="deflate", blocksize=512) as dst:
                dst.write(src.read(i), 1)
            assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"], "eo:bands": [{"name": key, "common_name": common}]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "bench", "geometry": None, "bbox": bounds,
            "properties": {"datetime": "2026-06-01T00:00:00Z"}, "links": [], "assets": assets}
    (d / "item.json").write_text(json.dumps(item))


def run(source: str, out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "geoseg", "run", source, "-o", str(out), "--no-vectorize", "--overwrite", "--json", "-q"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{source}: {r.stderr.strip()[-1500:]}")
    m = json.loads(r.stdout)
    return {"wall": wall, "inference": m["timings_s"]["inference"], "total": m["timings_s"]["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from remote_servers import RangeServer, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    try:
        scene = work / "scene.tif"
        subprocess.run([sys.executable, "-m", "geoseg", "synth", str(scene), "--size", str(args.size)], check=True,
                       capture_output=True)
        served = work / "served"
        served.mkdir()
        split(scene, served)
        size = sum((served / f"{k}.tif").stat().st_size for k in ("B02", "B03", "B04", "B08"))
        times: dict[str, list[dict]] = {k: [] for k in ("local", "http", "s3", "http-gdal-defaults")}
        traffic: dict[str, tuple[int, int]] = {}
        with RangeServer(served) as http, S3Server() as s3:
            s3.upload("bench", {f"s/{p.name}": p for p in served.iterdir()})
            base = {**os.environ, "PYTHONPATH": str(ROOT)}
            sources = {"local": (str(scene), base), "http": (f"{http.url}/item.json", base),
                       "s3": ("s3://bench/s/item.json", base),
                       "http-gdal-defaults": (f"{http.url}/item.json", {**base, **GDAL_DEFAULTS})}
            for _ in range(args.repeat):
                for name, (src, env) in sources.items():
                    http.reset()
                    times[name].append(run(src, work / f"out_{name}", env))
                    if name.startswith("http"):
                        traffic[name] = (len(http.requests), http.raster_bytes)
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("inference", "total")} for k, v in times.items()}
        lines = [
            "## Remote sources: local file vs STAC Item of per-band COGs over HTTP and S3",
            "",
            (f"`python benchmarks/bench_remote.py --size {args.size} --repeat {args.repeat}` "
             f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, shared and loaded machine; "
             "servers in the benchmark's own process). Medians of fresh-process runs, alternating."),
            "",
            f"Scene {args.size}x{args.size}, 4 bands uint16; the four COGs total {size / 2**20:.1f} MiB.",
            "",
            "| source | inference s | run s | inference / local | requests | raster bytes fetched / COG bytes |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in med.items():
            req, got = traffic.get(k, (None, None))
            lines.append(
                f"| {k} | {v['inference']:.2f} | {v['total']:.2f} | {v['inference'] / med['local']['inference']:.2f} | "
                f"{req if req is not None else '-'} | {f'{got / size:.2f}' if got is not None else '-'} |"
            )
        body = "\n".join(lines)
        print(body)
        if not args.no_write:
            write_section("bench_remote", body)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
