"""GPU check and benchmark of ``geoseg run``: one script, under 8 minutes.

On a machine with CUDA it

1. runs the CUDA tests (``tests/test_gpu.py``: CUDA vs CPU agreement, the fp16/bf16 AMP
   path, TTA and probabilities on CUDA, TorchScript/pt2 on CUDA, ONNX on the CUDA
   execution provider when onnxruntime-gpu is installed), with a time limit;
2. measures end-to-end throughput of ``geoseg run --device cuda`` (read, halo,
   inference, stitching, COGs, manifest; ``--no-vectorize``) on a 16384x16384 synthetic
   scene with 1, 4 and 8 Dask worker processes sharing the GPU (one model per worker),
   each in a fresh process, and once with ``--precision fp16``;
3. writes the figures into BENCHMARKS.md (section ``bench_gpu``) with this command.

The 16384^2 scene is a VRT mosaic of 4x4 copies of one 4096^2 ``geoseg synth`` scene
(synthesising 268 Mpx would take minutes of the budget; the model sees the same kind of
content, and GDAL reads a VRT of a local GeoTIFF at the speed of the GeoTIFF).

Without CUDA it says so, runs a tiny CPU smoke run (a 256^2 scene through the default
model) and exits 0 without touching BENCHMARKS.md.

Usage::

    python benchmarks/bench_gpu.py [--work DIR] [--size 16384] [--workers 1,4,8] [--budget 450]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def geoseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "geoseg", *map(str, args)]


def smoke_cpu(work: Path) -> None:
    scene = work / "smoke.tif"
    subprocess.run(geoseg_cmd("synth", scene, "--size", "256", "--seed", "1"), check=True)
    proc = subprocess.run(geoseg_cmd("run", scene, "-o", work / "smoke_out", "--device", "cpu", "--overwrite", "--json",
                                     "--no-vectorize"), check=True, capture_output=True, text=True)
    manifest = json.loads(proc.stdout)
    print(f"CPU smoke run: {manifest['input']['width']}x{manifest['input']['height']} in "
          f"{manifest['timings_s']['total']:.1f} s; outputs: {', '.join(manifest['outputs'])}")


def mosaic(work: Path, size: int, tile: int = 4096) -> Path:
    """A ``size`` x ``size`` VRT made of copies of one ``tile``^2 synthetic scene."""
    base = work / f"synth_{tile}.tif"
    if not base.exists():
        subprocess.run(geoseg_cmd("synth", base, "--size", tile, "--seed", "5"), check=True)
    import rasterio  # outside the package: the benchmark reads the scene's profile directly

    with rasterio.open(base) as ds:
        count, dtype, crs, t = ds.count, ds.dtypes[0], ds.crs.to_wkt(), ds.transform
        descriptions = ds.descriptions
    n = size // tile
    from xml.sax.saxutils import escape

    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">{base.name}</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{tile}\" ySize=\"{tile}\"/>"
            f"<DstRect xOff=\"{j * tile}\" yOff=\"{i * tile}\" xSize=\"{tile}\" ySize=\"{tile}\"/></SimpleSource>"
            for i in range(n) for j in range(n)
        )
        desc = f"<Description>{escape(descriptions[b - 1])}</Description>" if descriptions[b - 1] else ""
        bands.append(f"<VRTRasterBand dataType=\"{ {'uint16': 'UInt16', 'uint8': 'Byte'}.get(dtype, dtype) }\" band=\"{b}\">"
                     f"{desc}{sources}</VRTRasterBand>")
    gt = ", ".join(repr(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    vrt = work / f"mosaic_{size}.vrt"
    vrt.write_text(f"<VRTDataset rasterXSize=\"{n * tile}\" rasterYSize=\"{n * tile}\"><SRS>{escape(crs)}</SRS>"
                   f"<GeoTransform>{gt}</GeoTransform>{''.join(bands)}</VRTDataset>\n")
    return vrt


def run_once(scene: Path, out: Path, workers: int, precision: str, timeout: float) -> dict:
    args = ["run", scene, "-o", out, "--device", "cuda", "--no-vectorize", "--overwrite", "--json",
            "--precision", precision]
    if workers > 1:
        args += ["--workers", str(workers)]
    t = time.perf_counter()
    proc = subprocess.run(geoseg_cmd(*args), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "geoseg run failed")
    m = json.loads(proc.stdout)
    mpx = m["input"]["width"] * m["input"]["height"] / 1e6
    return {"workers": workers, "precision": precision, "wall_s": wall, "total_s": m["timings_s"]["total"],
            "inference_s": m["timings_s"].get("inference"), "mpx": mpx, "mpx_s": mpx / m["timings_s"]["total"],
            "inference_mpx_s": mpx / m["timings_s"]["inference"] if m["timings_s"].get("inference") else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "geoseg_bench_gpu")
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--workers", default="1,4,8")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for everything (stops starting runs after)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU tests and the GPU benchmark need one; running a CPU smoke run instead")
        smoke_cpu(args.work)
        return 0

    gpu = torch.cuda.get_device_name(0)
    print(f"CUDA device: {gpu} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(ROOT / "tests" / "test_gpu.py")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(180, args.budget / 3))
    test_line = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(tests.stdout[-3000:])
    print(f"CUDA tests: exit {tests.returncode}, {time.perf_counter() - t:.0f} s: {test_line}")

    scene = mosaic(args.work, args.size)
    rows, skipped = [], []
    plan = [(int(w), "fp32") for w in args.workers.split(",")] + [(1, "fp16")]
    for workers, precision in plan:
        left = args.budget - (time.perf_counter() - t0)
        if left < 60:
            skipped.append(f"{workers} worker(s) {precision}: budget spent")
            continue
        try:
            r = run_once(scene, args.work / f"out_{workers}_{precision}", workers, precision, timeout=left)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            skipped.append(f"{workers} worker(s) {precision}: {exc}")
            continue
        rows.append(r)
        print(f"{workers} worker(s) {precision}: {r['total_s']:.1f} s, {r['mpx_s']:.1f} Mpx/s end to end, "
              f"inference {r['inference_mpx_s']:.1f} Mpx/s")

    if not args.no_write:
        from _report import write_section

        lines = [
            "## `geoseg run` on a GPU (issue 12)",
            "",
            f"`python benchmarks/bench_gpu.py` on {gpu}, {os.cpu_count()} CPU cores, {platform.platform()}, "
            f"torch {torch.__version__}: a {args.size}x{args.size} 4-band scene (VRT of 4096^2 `geoseg synth` copies), "
            "model `default`, `geoseg run --device cuda --no-vectorize` in a fresh process per row (one model per "
            "Dask worker process, all on the one GPU), batches of 4 tiles of 1024 px.",
            "",
            f"CUDA tests (`tests/test_gpu.py`): exit {tests.returncode}: {test_line}",
            "",
            "| workers | precision | total s | end-to-end Mpx/s | inference Mpx/s |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(f"| {r['workers']} | {r['precision']} | {r['total_s']:.1f} | {r['mpx_s']:.1f} | "
                         f"{r['inference_mpx_s']:.1f} |")
        lines += [f"- not measured: {s}" for s in skipped]
        lines.append(f"\nWhole script: {time.perf_counter() - t0:.0f} s.")
        write_section("bench_gpu", "\n".join(lines))
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
