"""Benchmark ``geoseg run`` on the same scene read locally, as a STAC Item of per-band
COGs over loopback HTTP, and from an S3-compatible server (moto), in one run.

1. An NxN synthetic 4-band scene (``geoseg synth``, a child process); split into four
   single-band deflate COGs (512-px blocks, with overviews) plus a STAC Item with relative
   hrefs. With ``--work DIR`` both are kept there and reused by the next run.
2. The servers run in this process: a range-request HTTP server (Python's
   ``http.server``; tests/remote_servers.py) that counts requests and bytes, and moto's
   S3 server. Both are Python servers sharing the machine's cores with the measured run,
   so the remote figures include serving costs a real server would not have (moto reads
   the whole object for every range request it answers).
3. ``geoseg run SOURCE --no-vectorize`` in a fresh process for each source, alternating
   (local, http, s3; with ``--gdal-defaults`` also http with GDAL's own defaults for the
   options geoseg sets) ``--repeat`` times; medians of the manifest's inference time
   (reads, halo, model, stitching) and of the whole run. For the HTTP runs the server's
   counts: GET requests, bytes sent, and these against the bytes of the COGs'
   full-resolution blocks (what a run needs; the overviews are never read).

Usage::

    python benchmarks/bench_remote.py --size 2048 --repeat 3
    python benchmarks/bench_remote.py --size 8192 --repeat 1 --work /tmp/bench_remote_8192

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

#: GDAL's own defaults (3.10) for the options geoseg.io.remote.REMOTE_DEFAULTS tunes
GDAL_DEFAULTS = {"GDAL_INGESTED_BYTES_AT_OPEN": "16384", "GDAL_MAX_RAW_BLOCK_CACHE_SIZE": "10485760"}
KEYS = ("B02", "B03", "B04", "B08")


def split(scene: Path, d: Path) -> None:
    """Four single-band COGs and an Item (written under temporary names, renamed last)."""
    import rasterio

    names = dict(zip(("blue", "green", "red", "nir"), KEYS))
    with rasterio.open(scene) as src:
        profile, bounds = src.profile, list(src.bounds)
        assets = {}
        for i, (common, key) in enumerate(names.items(), 1):
            tmp = d / f".{key}.tif"
            with rasterio.open(tmp, "w", driver="COG", width=src.width, height=src.height, count=1,
                               dtype=src.dtypes[0], crs=profile["crs"], transform=profile["transform"],
                               compress="deflate", predictor=2, blocksize=512) as dst:
                dst.write(src.read(i), 1)
            tmp.replace(d / f"{key}.tif")
            assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"], "eo:bands": [{"name": key, "common_name": common}]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "bench", "geometry": None, "bbox": bounds,
            "properties": {"datetime": "2026-06-01T00:00:00Z"}, "links": [], "assets": assets}
    (d / "item.json").write_text(json.dumps(item))


def full_resolution_bytes(d: Path) -> int:
    """The bytes of the COGs' full-resolution blocks (what a run at native resolution reads)."""
    import rasterio

    total = 0
    for key in KEYS:
        with rasterio.open(d / f"{key}.tif") as ds:
            bh, bw = ds.block_shapes[0]
            for by in range(-(-ds.height // bh)):
                for bx in range(-(-ds.width // bw)):
                    total += int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    return total


def prepare(work: Path, size: int) -> tuple[Path, Path]:
    scene, served = work / f"scene_{size}.tif", work / f"served_{size}"
    if not scene.exists():
        subprocess.run([sys.executable, "-m", "geoseg", "synth", str(scene), "--size", str(size)], check=True,
                       capture_output=True)
    if not (served / "item.json").exists():
        served.mkdir(parents=True, exist_ok=True)
        split(scene, served)
    return scene, served


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
    ap.add_argument("--work", type=Path, default=None, help="keep the scene and the COGs here (reused)")
    ap.add_argument("--gdal-defaults", action="store_true",
                    help="also run HTTP with GDAL's own defaults for the options geoseg sets")
    ap.add_argument("--sources", default="local,http,s3", help="which of local,local-item,http,s3 to run (comma-separated; local-item: the "
                    "served Item and COGs read from the local disk, which separates the COGs' decoding from the network)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from remote_servers import RangeServer, S3Server

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_remote_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        scene, served = prepare(work, args.size)
        cog_bytes = sum((served / f"{k}.tif").stat().st_size for k in KEYS)
        needed = full_resolution_bytes(served)
        names = [k for k in ("local", "local-item", "http", "s3") if k in args.sources.split(",")]
        names += ["http-gdal-defaults"] if args.gdal_defaults else []
        times: dict[str, list[dict]] = {k: [] for k in names}
        traffic: dict[str, list[tuple[int, int]]] = {k: [] for k in names if k.startswith("http")}
        with RangeServer(served) as http, S3Server() as s3:
            s3.upload("bench", {f"s/{p.name}": p for p in served.iterdir() if not p.name.startswith(".")})
            base = {**os.environ, "PYTHONPATH": str(ROOT)}
            sources = {"local": (str(scene), base), "local-item": (str(served / "item.json"), base), "http": (f"{http.url}/item.json", base),
                       "s3": ("s3://bench/s/item.json", base),
                       "http-gdal-defaults": (f"{http.url}/item.json", {**base, **GDAL_DEFAULTS})}
            for _ in range(args.repeat):
                for name in names:
                    src, env = sources[name]
                    http.reset()
                    times[name].append(run(src, work / f"out_{name}", env))
                    if name in traffic:
                        traffic[name].append((len(http.gets(".tif")), http.raster_bytes))
                    print(name, times[name][-1], traffic.get(name, [None])[-1], file=sys.stderr)
        load_after = os.getloadavg()
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("inference", "total")} for k, v in times.items()}
        cmd = f"python benchmarks/bench_remote.py --size {args.size} --repeat {args.repeat}" + (
            " --gdal-defaults" if args.gdal_defaults else "") + (
            f" --sources {args.sources}" if args.sources != "local,http,s3" else "")
        lines = [
            "## Remote sources: local file vs STAC Item of per-band COGs over HTTP and S3",
            "",
            (f"`{cmd}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; servers in the benchmark's own process). "
             f"Medians of {args.repeat} fresh-process run(s) per source, alternating."),
            "",
            (f"Scene {args.size}x{args.size}, 4 bands uint16: the local file is the synthetic GeoTIFF "
             f"({scene.stat().st_size / 2**20:.1f} MiB, zstd, 256-px blocks, pixel-interleaved); the four COGs "
             f"total {cog_bytes / 2**20:.1f} MiB (deflate, 512-px blocks), of which {needed / 2**20:.1f} MiB are "
             "full-resolution blocks."),
            "",
            "| source | inference s | run s | inference / local | run / local | GET requests | MiB sent | "
            "sent / full-res blocks | requests per MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, v in med.items():
            ref = med.get("local", v)
            row = (f"| {k} | {v['inference']:.2f} | {v['total']:.2f} | {v['inference'] / ref['inference']:.2f} | "
                   f"{v['total'] / ref['total']:.2f} |")
            if k in traffic:
                req = statistics.median(t[0] for t in traffic[k])
                got = statistics.median(t[1] for t in traffic[k])
                row += f" {req:.0f} | {got / 2**20:.1f} | {got / needed:.3f} | {req / (got / 2**20):.2f} |"
            else:
                row += " - | - | - | - |"
            lines.append(row)
        if "local-item" in med:
            ref = med["local-item"]["inference"]
            lines += ["", "Inference against the same Item and COGs read from the local disk (the network's own cost): "
                      + ", ".join(f"{k} {v['inference'] / ref:.2f}" for k, v in med.items() if k not in ("local", "local-item"))
                      + "."]
        body = "\n".join(lines)
        print(body)
        print(json.dumps({"times": times, "traffic": traffic, "needed": needed, "cog_bytes": cog_bytes}), file=sys.stderr)
        if not args.no_write:
            write_section("bench_remote", body)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
