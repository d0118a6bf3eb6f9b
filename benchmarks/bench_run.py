"""Benchmark ``geoseg run``: throughput against the model's floor, and peak memory.

Measured in one run of this script (so the ratios compare like with like):

1. the floor: the model's best forward (BatchNorm folded, channels_last, glibc
   allocator tuned, fp32) over as many 1024x1024 tiles as the scene has pixels,
   without halo and without I/O; and the same forwards with the model's halo around
   each tile (the ceiling of floor/run that exact seams leave before any I/O);
2. ``geoseg run`` with the same model on an NxN synthetic scene, end to end (read,
   halo, inference, stitching, COGs, vectorization, manifest), in a fresh process;
3. peak RSS of ``geoseg run`` on a 2048x2048 and on the NxN scene (medians of
   ``--repeat`` alternating runs: two forwards in flight make the peak vary by
   ~150 MiB from run to run), and on a ``--largest`` scene once.

Usage::

    python benchmarks/bench_run.py                      # 8192 vs 2048, model default
    python benchmarks/bench_run.py --size 4096 --repeat 1 --largest 0 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]


def synth(work: Path, size: int, seed: int) -> Path:
    """The synthetic scene, written once, by a child process (this one must stay small)."""
    import subprocess

    path = work / f"synth_{size}_s{seed}.tif"
    if not path.exists():
        cmd = [sys.executable, "-m", "geoseg", "synth", str(path), "--size", str(size), "--seed", str(seed)]
        subprocess.run(cmd, check=True)
    return path


def forward_seconds(model: str, n_tiles: int, tile: int = 1024) -> dict[str, float]:
    """Seconds of ``n_tiles`` best forwards on ``tile``^2 cores: the floor (no halo), and
    the forward with the halo exact seams need, as an interior tile, both trimmed
    (``UNet.forward_tile``, what ``geoseg run`` does) and untrimmed (whole window, cropped)."""
    import numpy as np
    import torch

    from geoseg.models import load_model

    bundle = load_model(model)
    module = bundle.inference_module()
    h = int(bundle.halo)
    rng = np.random.default_rng(0)

    def batch(size: int):
        x = torch.from_numpy(rng.standard_normal((1, bundle.num_bands, size, size), dtype=np.float32))
        return x.contiguous(memory_format=torch.channels_last)

    x, xh = batch(tile), batch(tile + 2 * h)
    runs = {"floor": lambda: module(x), "untrimmed": lambda: module(xh)}
    if hasattr(module, "forward_tile"):
        runs["trimmed"] = lambda: module.forward_tile(xh, (h, h, h, h), (True, True, True, True))
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            for _ in range(2):  # warm-up
                fn()
            t = time.perf_counter()
            for _ in range(n_tiles):
                fn()
            out[name] = time.perf_counter() - t
    return out


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
    ap.add_argument("--repeat", type=int, default=3, help="Runs of each scene; medians are reported (default 3).")
    ap.add_argument("--largest", type=int, default=16384, help="One more run, on a scene this large, for its peak RSS (0: skip).")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    ap.add_argument("run_args", nargs="*", help="Extra `geoseg run` arguments (after --).")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    big, small = synth(args.work, args.size, 11), synth(args.work, args.small, 12)
    largest = synth(args.work, args.largest, 13) if args.largest else None
    n_tiles = (args.size // 1024) ** 2
    # the runs first, from a small process (a child's peak RSS includes ours: see _measure);
    # big and small alternate, so that a busy spell of the machine hits both
    walls, rss_bigs, rss_smalls = [], [], []
    for _ in range(args.repeat):
        wall, rss, manifest = run_geoseg(big, args.work / "out_big", args.model, args.run_args)
        walls.append(wall)
        rss_bigs.append(rss)
        _, rss, manifest_small = run_geoseg(small, args.work / "out_small", args.model, args.run_args)
        rss_smalls.append(rss)
    largest_run = None
    if largest is not None:
        wall, rss, _ = run_geoseg(largest, args.work / "out_largest", args.model, args.run_args)
        largest_run = {"size": args.largest, "run_s": wall, "rss_mib": rss}
    run_s, rss_big, rss_small = (statistics.median(v) for v in (walls, rss_bigs, rss_smalls))
    fwd = forward_seconds(args.model, n_tiles)
    floor_s = fwd["floor"]
    mpx = args.size**2 / 1e6
    res = {
        "size": args.size,
        "small": args.small,
        "model": args.model,
        "floor_s": floor_s,
        "floor_mpx_s": mpx / floor_s,
        "halo_untrimmed_s": fwd["untrimmed"],
        "halo_trimmed_s": fwd.get("trimmed", fwd["untrimmed"]),
        "run_s": run_s,
        "run_mpx_s": mpx / run_s,
        "ratio_floor_run": floor_s / run_s,
        "rss_big_mib": rss_big,
        "rss_small_mib": rss_small,
        "rss_ratio": rss_big / rss_small,
        "timings": manifest["timings_s"],
        "polygons": manifest["polygons"],
        "timings_small": manifest_small["timings_s"],
        "run_s_all": walls,
        "rss_big_all": rss_bigs,
        "rss_small_all": rss_smalls,
        "largest": largest_run,
    }
    print(json.dumps(res, indent=2))
    if not args.no_write:
        report(res, " ".join(["python", "benchmarks/bench_run.py", *sys.argv[1:]]))


def report(r: dict, command: str) -> None:
    t = r["timings"]
    runs = len(r["run_s_all"])

    def mib(values: list[float]) -> str:
        return ", ".join(f"{v:.0f}" for v in values)

    body = f"""
## `geoseg run` throughput and memory (issue: geoseg run)

Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs,
torch threads default, model `{r['model']}`; all figures from this one run of the script: medians
of {runs} alternating runs where marked, run stages and polygons from the last {r['size']}^2 run).

| measure | value |
|---|---|
| floor: best forward, {(r['size'] // 1024) ** 2} x 1024^2 tiles, no halo, no I/O | {r['floor_s']:.1f} s ({r['floor_mpx_s']:.2f} Mpx/s) |
| `geoseg run` {r['size']}x{r['size']}, end to end (fresh process; median of {runs}) | {r['run_s']:.1f} s ({r['run_mpx_s']:.2f} Mpx/s) |
| **ratio floor / run** (target >= 0.8) | **{r['ratio_floor_run']:.2f}** |
| the same forwards with the halo exact seams need, as interior tiles, untrimmed (whole window, cropped) | {r['halo_untrimmed_s']:.1f} s: floor / this = {r['floor_s'] / r['halo_untrimmed_s']:.2f} |
| the same, trimmed to what each stage needs (`UNet.forward_tile`, what `geoseg run` does) | {r['halo_trimmed_s']:.1f} s: floor / this = {r['floor_s'] / r['halo_trimmed_s']:.2f} |
| run stages (manifest) | validate {t.get('validate', 0):.1f} s, inference+stitch {t.get('inference', 0):.1f} s, COGs {t.get('write_cogs', 0):.1f} s, vectorize {t.get('vectorize', 0):.1f} s |
| polygons written | {', '.join(f'{k}: {v}' for k, v in r['polygons'].items())} |
| peak RSS, {r['small']}x{r['small']} scene (median of {runs}) | {r['rss_small_mib']:.0f} MiB ({mib(r['rss_small_all'])}) |
| peak RSS, {r['size']}x{r['size']} scene (median of {runs}) | {r['rss_big_mib']:.0f} MiB ({mib(r['rss_big_all'])}) |
| **RSS ratio large / small** (target <= 1.3) | **{r['rss_ratio']:.2f}** |
"""
    if r["largest"]:
        g = r["largest"]
        body += (
            f"| peak RSS, {g['size']}x{g['size']} scene (one run, {g['run_s']:.0f} s) | {g['rss_mib']:.0f} MiB: "
            f"{g['rss_mib'] / r['rss_big_mib']:.2f}x the {r['size']}^2 median for {(g['size'] / r['size']) ** 2:.0f}x the pixels |\n"
        )
    write_section("bench_run", body)


if __name__ == "__main__":
    main()
