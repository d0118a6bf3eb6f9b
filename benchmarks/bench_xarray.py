"""Benchmark ``geoseg.segment`` (xarray, lazy Dask graph) against ``geoseg run``.

Measured in one run of this script, each figure in a fresh child process:

1. speed: ``geoseg.segment(rioxarray.open_rasterio(scene, chunks=C)).compute()`` (seconds of
   the compute) vs the inference stage of ``geoseg run`` on the same NxN synthetic scene
   (``timings_s.inference`` of its manifest: read, halo, predict, stitch), alternating,
   ``--repeat`` times each; the ratio of the medians (target <= 1.1);
2. memory: peak RSS of ``geoseg.to_cog(geoseg.segment(...), out)`` on a 2048x2048 and on
   the NxN scene (the whole lazy pipeline: read, predict, write the COGs block by block);
   the ratio of the medians (target <= 1.3, as ``geoseg run``'s).

Usage::

    python benchmarks/bench_xarray.py                    # both parts: 8192 vs 2048, chunks 1024
    python benchmarks/bench_xarray.py --part time        # speed only (on a quiet machine)
    python benchmarks/bench_xarray.py --part rss         # memory only (load does not matter)
    python benchmarks/bench_xarray.py --size 4096 --repeat 1 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark: ``bench_xarray``
(speed) and ``bench_xarray_rss`` (memory), each written only by the part that measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]

#: The child that times segment(...).compute(); prints JSON.
SEGMENT = """
import json, sys, time
import rioxarray, geoseg
scene, model, chunks, tile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = rioxarray.open_rasterio(scene, chunks={"x": chunks, "y": chunks}, lock=False)
t0 = time.perf_counter()
ds = geoseg.segment(data, model, tile_size=tile)
t1 = time.perf_counter()
tiles = len(ds.classes.chunks[0]) * len(ds.classes.chunks[1])
ds = ds.compute()
t2 = time.perf_counter()
print(json.dumps({"build": t1 - t0, "compute": t2 - t1, "tiles": tiles}))
"""

#: The child whose peak RSS is measured: the lazy pipeline written to COGs.
TO_COG = """
import sys
import rioxarray, geoseg
scene, model, chunks, tile, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
data = rioxarray.open_rasterio(scene, chunks={"x": chunks, "y": chunks}, lock=False)
geoseg.to_cog(geoseg.segment(data, model, tile_size=tile), out, overwrite=True)
"""


def synth(work: Path, size: int, seed: int) -> Path:
    """The synthetic scene, written once, by a child process (this one must stay small)."""
    path = work / f"synth_{size}_s{seed}.tif"
    if not path.exists():
        cmd = [sys.executable, "-m", "geoseg", "synth", str(path), "--size", str(size), "--seed", str(seed)]
        subprocess.run(cmd, check=True)
    return path


def run_inference(scene: Path, out: Path, model: str, tile: int) -> tuple[float, float]:
    """Seconds of ``geoseg run``'s inference stage (its manifest's ``timings_s.inference``)
    and the run's peak RSS (MiB; without vectorizing, like ``to_cog``)."""
    cmd = [sys.executable, "-m", "geoseg", "run", str(scene), "-o", str(out), "-m", model, "--tile-size", str(tile),
           "--no-vectorize", "--overwrite", "--json", "--quiet"]
    _, rss, stdout = measure(cmd)
    return float(json.loads(stdout)["timings_s"]["inference"]), rss


def segment_compute(scene: Path, model: str, chunks: int, tile: int) -> dict:
    _, _, stdout = measure([sys.executable, "-c", SEGMENT, str(scene), model, str(chunks), str(tile)])
    return json.loads(stdout.strip().splitlines()[-1])


def to_cog_rss(scene: Path, out: Path, model: str, chunks: int, tile: int) -> float:
    _, rss, _ = measure([sys.executable, "-c", TO_COG, str(scene), model, str(chunks), str(tile), str(out)])
    return rss


def timing(args, big: Path) -> dict:
    """Part 1: ``geoseg run``'s inference stage vs ``segment(...).compute()``, alternating."""
    run_s, seg = [], []
    for _ in range(args.repeat):
        run_s.append(run_inference(big, args.work / "run_out", args.model, args.tile_size)[0])
        seg.append(segment_compute(big, args.model, args.chunks, args.tile_size))
        print(f"run inference {run_s[-1]:.1f} s, segment compute {seg[-1]['compute']:.1f} s", flush=True)
    r = {"run": run_s, "segment": [s["compute"] for s in seg], "build": [s["build"] for s in seg], "tiles": seg[0]["tiles"]}
    r["time_ratio"] = statistics.median(r["segment"]) / statistics.median(r["run"])
    return r


def memory(args, big: Path, small: Path) -> dict:
    """Part 2: peak RSS of ``to_cog(segment(...))`` on the small and the large scene,
    alternating; ``geoseg run --no-vectorize`` once on each for reference."""
    rss_small, rss_big = [], []
    for _ in range(args.repeat):
        rss_small.append(to_cog_rss(small, args.work / "cog_small" / "scene", args.model, args.chunks, args.tile_size))
        rss_big.append(to_cog_rss(big, args.work / "cog_big" / "scene", args.model, args.chunks, args.tile_size))
        print(f"to_cog peak RSS {rss_small[-1]:.0f} / {rss_big[-1]:.0f} MiB", flush=True)
    r = {"rss_small": rss_small, "rss_big": rss_big,
         "run_rss_small": [run_inference(small, args.work / "run_small", args.model, args.tile_size)[1]],
         "run_rss_big": [run_inference(big, args.work / "run_out", args.model, args.tile_size)[1]]}
    r["rss_ratio"] = statistics.median(rss_big) / statistics.median(rss_small)
    r["run_rss_ratio"] = r["run_rss_big"][0] / r["run_rss_small"][0]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--small", type=int, default=2048)
    ap.add_argument("--model", default="default")
    ap.add_argument("--chunks", type=int, default=1024, help="Input chunk edge in px (rioxarray chunks=).")
    ap.add_argument("--tile-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="Alternating runs of each measurement; medians reported.")
    ap.add_argument("--part", choices=("all", "time", "rss"), default="all",
                    help="time: speed only (needs a quiet machine); rss: peak memory only (insensitive to load).")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    big, small = synth(args.work, args.size, 0), synth(args.work, args.small, 1)
    load = [os.getloadavg()]
    r: dict = {}
    if args.part in ("all", "time"):
        r.update(timing(args, big))
    if args.part in ("all", "rss"):
        r.update(memory(args, big, small))
    load.append(os.getloadavg())
    r["load"] = [[round(v, 1) for v in la] for la in load]
    print(json.dumps(r, indent=1))
    argv = " ".join(sys.argv[1:])
    command = f"python benchmarks/bench_xarray.py{(' ' + argv) if argv else ''}"
    if not args.no_write:
        report(r, args, command)


def report(r: dict, args, command: str) -> None:
    import datetime

    def secs(v: list[float]) -> str:
        return f"{statistics.median(v):.1f} s ({', '.join(f'{x:.1f}' for x in v)})"

    def mib(v: list[float]) -> str:
        return f"{statistics.median(v):.0f} MiB ({', '.join(f'{x:.0f}' for x in v)})"

    n, s = args.size, args.small
    where = (f"Command: `{command}` ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; load average "
             f"(1/5/15 min) {' / '.join(map(str, r['load'][0]))} at the start, {' / '.join(map(str, r['load'][1]))} at the "
             f"end; model `{args.model}`, tile size {args.tile_size}, input read by "
             f"`rioxarray.open_rasterio(chunks={args.chunks}, lock=False)`; medians of {args.repeat} alternating runs, each a "
             "fresh process).")
    if "time_ratio" in r:
        write_section("bench_xarray", f"""## `geoseg.segment` (xarray) against `geoseg run`: speed (issue: lazy xarray segmentation)

{where}

| measure | value |
|---|---|
| `geoseg run` inference stage, {n}x{n} ({r['tiles']} tiles) | {secs(r['run'])} |
| `geoseg.segment(...).compute()`, same scene | {secs(r['segment'])} (the `segment` call itself, model load and torch import included: {statistics.median(r['build']):.1f} s) |
| **ratio segment / run** (target <= 1.1) | **{r['time_ratio']:.2f}** |
""")
    if "rss_ratio" in r:
        write_section("bench_xarray_rss", f"""## `geoseg.to_cog(geoseg.segment(...))`: peak memory, {n}x{n} against {s}x{s}

{where} Peak RSS is the child's `ru_maxrss`; the load changes it only through the order in which the threads allocate (runs of one configuration differ by up to ~10%).

| measure | value |
|---|---|
| peak RSS of `geoseg.to_cog(geoseg.segment(...))`, {s}x{s} | {mib(r['rss_small'])} |
| peak RSS of the same, {n}x{n} | {mib(r['rss_big'])} |
| **RSS ratio large / small** (target <= 1.3) | **{r['rss_ratio']:.2f}** |
| for reference, peak RSS of `geoseg run --no-vectorize`, {s}x{s} / {n}x{n} (one run each) | {mib(r['run_rss_small'])} / {mib(r['run_rss_big'])} (ratio {r['run_rss_ratio']:.2f}) |
""")


if __name__ == "__main__":
    main()
