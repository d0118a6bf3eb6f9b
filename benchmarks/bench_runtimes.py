"""Benchmark each model runtime on the same scene: bundle, ONNX, TorchScript, torch.export.

The built-in ``default`` model (U-Net, width 12, depth 3) is exported, with the same weights
and contract, as an ONNX file (onnxruntime, CPU execution provider; contract in a sidecar),
a TorchScript archive and a ``torch.export`` program (contract as an extra file). Each then
runs ``geoseg run`` end to end on one synthetic NxN scene in a fresh process (``--repeat``
rounds, the runtimes in a rotating order); the figure is the median inference time of the
manifest (reading, halo, forwards, stitching) and its ratio to the bundle's, all in one run
of this script so the ratios compare like with like on a shared machine.

The bundle runs geoseg's fastest path (BatchNorm folded, channels_last, U-Net
``forward_tile``); the others run their whole window (core + halo) and crop.

Usage::

    python benchmarks/bench_runtimes.py                 # 2048x2048, 3 rounds
    python benchmarks/bench_runtimes.py --size 1024 --repeat 1 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

from _measure import measure
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("bundle", "onnx", "torchscript", "torch.export")


def prepare(work: Path, size: int) -> None:
    """In a child process: the scene and the default model in every format."""
    import torch

    import geoseg
    from geoseg.models import load_model

    geoseg.synthesize(work / "scene.tif", size, seed=11)
    bundle = load_model("default")
    spec = json.loads(bundle.spec.to_json())
    contract = {k: spec[k] for k in ("name", "bands", "normalization", "value_range", "classes", "mask_heads",
                                     "halo", "downsampling")}
    contract["outputs"] = "logits"
    module = bundle.module.eval()
    x = torch.randn(2, 4, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(work / "default.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
        (work / "default.geoseg.json").write_text(json.dumps(contract))
        torch.jit.save(torch.jit.trace(module, x), str(work / "default.ts"), _extra_files={"geoseg.json": json.dumps(contract)})
    dims = {0: torch.export.Dim("batch"), 2: 8 * torch.export.Dim("h"), 3: 8 * torch.export.Dim("w")}
    program = torch.export.export(module, (x,), dynamic_shapes=(dims,))
    torch.export.save(program, str(work / "default.pt2"), extra_files={"geoseg.json": json.dumps(contract)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="side of the synthetic scene")
    ap.add_argument("--tile-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "runtimes")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.work, args.size)
        return
    subprocess.run([sys.executable, __file__, "--prepare", "--size", str(args.size), "--work", str(args.work)], check=True)
    models = {"bundle": "default", "onnx": args.work / "default.onnx", "torchscript": args.work / "default.ts",
              "torch.export": args.work / "default.pt2"}
    times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    peaks: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    loads: list[float] = []
    for k in range(args.repeat):
        order = RUNTIMES[k % 4:] + RUNTIMES[: k % 4]
        for runtime in order:
            out = args.work / f"out_{runtime}"
            cmd = [sys.executable, "-m", "geoseg", "run", str(args.work / "scene.tif"), "-m", str(models[runtime]),
                   "-o", str(out), "--tile-size", str(args.tile_size), "--device", "cpu", "--no-vectorize",
                   "--overwrite", "--quiet", "--json"]
            loads.append(os.getloadavg()[0])
            _, peak, stdout = measure(cmd)
            manifest = json.loads(stdout)
            times[runtime].append(manifest["timings_s"]["inference"])
            peaks[runtime].append(peak)
            print(f"{runtime:13s} inference {times[runtime][-1]:6.2f} s  peak {peak:6.0f} MiB", flush=True)
    agreement = _agreement(args.work)  # after the measurements: rasterio would grow this process
    mpx = args.size * args.size / 1e6
    base = statistics.median(times["bundle"])
    rows = []
    for runtime in RUNTIMES:
        t = statistics.median(times[runtime])
        rows.append(f"| {runtime} | {t:.2f} ({min(times[runtime]):.2f}-{max(times[runtime]):.2f}) | {mpx / t:.3f} | "
                    f"{base / t:.2f} | {statistics.median(peaks[runtime]):.0f} | "
                    f"{100 * agreement[runtime]:.3f}% |")
    cmd = f"python benchmarks/bench_runtimes.py --size {args.size} --tile-size {args.tile_size} --repeat {args.repeat}"
    body = f"""## Model runtimes (`{cmd}`)

The built-in `default` model with the same weights and contract as a geoseg bundle, an ONNX
file (onnxruntime {_version("onnxruntime")}, CPU execution provider, one thread per tile), a
TorchScript archive and a `torch.export` program, each through `geoseg run` end to end on the
same {args.size}x{args.size} synthetic scene ({args.tile_size}-px tiles, halo {_halo()} px, threaded
scheduler) in a fresh process; medians of {args.repeat} rotating rounds, all in one run. The
machine ({os.cpu_count()} vCPUs, {platform.machine()}) was shared with other jobs while this ran
(1-minute load average {min(loads):.1f}-{max(loads):.1f} at the runs' starts): compare the ratios,
measured side by side, rather than the absolute times, and mind the ranges.

| runtime | inference s, median (range) | Mpx/s | speed vs bundle | peak RSS MiB | class-map pixels equal to the bundle's |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The bundle runs geoseg's trimmed U-Net forward (`forward_tile`, BatchNorm folded,
channels_last); the other runtimes run each whole window (core + halo) and crop it.
"""
    print(body)
    if not args.no_write:
        write_section("runtimes", body)


def _agreement(work: Path) -> dict[str, float]:
    import numpy as np
    import rasterio

    def classes(runtime: str):
        with rasterio.open(work / f"out_{runtime}" / "scene.classes.tif") as ds:
            return ds.read(1)

    ref = classes("bundle")
    return {r: float((classes(r) == ref).mean()) for r in RUNTIMES}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _halo() -> int:
    spec = json.loads(subprocess.run([sys.executable, "-c", "import geoseg; print(geoseg.load_model('default').spec.to_json())"],
                                     capture_output=True, text=True, check=True).stdout)
    return int(spec["halo"])


if __name__ == "__main__":
    main()
