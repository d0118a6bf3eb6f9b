"""Benchmark ``geoseg run``: throughput against the model's floor, and peak memory.

Measured in one run of this script (so the ratios compare like with like):

1. the floor: the model's best forward (BatchNorm folded, channels_last, glibc
   allocator tuned, fp32) over as many 1024x1024 tiles as the scene has pixels,
   without halo and without I/O;
2. ``geoseg run`` with the same model on an NxN synthetic scene, end to end (read,
   halo, inference, stitching, COGs, vectorization, manifest), in a fresh process;
3. peak RSS of ``geoseg run`` on a 2048x2048 and on the NxN scene.

Usage::

    python benchmarks/bench_run.py                      # 8192 vs 2048, model default
    python benchmarks/bench_run.py --size 4096 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]


def synth(work: Path, size: int, seed: int) -> Path:
    path = work / f"synth_{size}_s{seed}.tif"
    if not path.exists():
        from geoseg.synthetic import synthesize

        synthesize(path, size, seed=seed)
    return path


def floor_seconds(model: str, n_tiles: int, tile: int = 1024) -> tuple[float, float]:
    """Total seconds of ``n_tiles`` best forwards on ``tile``^2 inputs; and Mpx/s."""
    import numpy as np
    import torch

    from geoseg.models import load_model
    bundle = load_model(model)
    module = bundle.inference_module()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, bundle.num_bands, tile, tile), dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            module(x)
        t = time.perf_counter()
        for _ in range(n_tiles):
            module(x)
        dt = time.perf_counter() - t
    return dt, n_tiles * tile * tile / 1e6 / dt


def run_geoseg(scene: Path, out: Path, model: str, extra: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MiB) and manifest of one ``geoseg run`` process."""
    cmd = [sys.executable, "-m", "geoseg", "run", str(scene), "-o", str(out), "-m", model, "--overwrite", "--json", *extra]
    wall, rss, stdout = measure(cmd)
    return wall, rss, json.loads(stdout)


def main() -> None:
    from geoseg.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # the floor gets the best allocator settings, as `geoseg` does
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--small", type=int, default=2048)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    ap.add_argument("run_args", nargs="*", help="Extra `geoseg run` arguments (after --).")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    big, small = synth(args.work, args.size, 11), synth(args.work, args.small, 12)
    n_tiles = (args.size // 1024) ** 2
    # the runs first, from a small process (a child's peak RSS includes ours: see _measure)
    run_s, rss_big, manifest = run_geoseg(big, args.work / "out_big", args.model, args.run_args)
    _, rss_small, manifest_small = run_geoseg(small, args.work / "out_small", args.model, args.run_args)
    floor_s, floor_mpx = floor_seconds(args.model, n_tiles)
    mpx = args.size**2 / 1e6
    res = {
        "size": args.size,
        "small": args.small,
        "model": args.model,
        "floor_s": floor_s,
        "floor_mpx_s": floor_mpx,
        "run_s": run_s,
        "run_mpx_s": mpx / run_s,
        "ratio_floor_run": floor_s / run_s,
        "rss_big_mib": rss_big,
        "rss_small_mib": rss_small,
        "rss_ratio": rss_big / rss_small,
        "timings": manifest["timings_s"],
        "polygons": manifest["polygons"],
        "timings_small": manifest_small["timings_s"],
    }
    print(json.dumps(res, indent=2))
    if not args.no_write:
        report(res, " ".join(["python", "benchmarks/bench_run.py", *sys.argv[1:]]))


def report(r: dict, command: str) -> None:
    t = r["timings"]
    body = f"""
## `geoseg run` throughput and memory (issue: geoseg run)

Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs,
torch threads default, model `{r['model']}`; all figures from this one run).

| measure | value |
|---|---|
| floor: best forward, {(r['size'] // 1024) ** 2} x 1024^2 tiles, no halo, no I/O | {r['floor_s']:.1f} s ({r['floor_mpx_s']:.2f} Mpx/s) |
| `geoseg run` {r['size']}x{r['size']}, end to end (fresh process) | {r['run_s']:.1f} s ({r['run_mpx_s']:.2f} Mpx/s) |
| **ratio floor / run** (target >= 0.8) | **{r['ratio_floor_run']:.2f}** |
| run stages (manifest) | validate {t.get('validate', 0):.1f} s, inference+stitch {t.get('inference', 0):.1f} s, COGs {t.get('write_cogs', 0):.1f} s, vectorize {t.get('vectorize', 0):.1f} s |
| polygons written | {', '.join(f'{k}: {v}' for k, v in r['polygons'].items())} |
| peak RSS, {r['small']}x{r['small']} scene | {r['rss_small_mib']:.0f} MiB |
| peak RSS, {r['size']}x{r['size']} scene | {r['rss_big_mib']:.0f} MiB |
| **RSS ratio large / small** (target <= 1.3) | **{r['rss_ratio']:.2f}** |
"""
    write_section("bench_run", body)


if __name__ == "__main__":
    main()
