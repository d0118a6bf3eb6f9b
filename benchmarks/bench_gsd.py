"""Benchmark resolution handling and areas of interest.

Measured in one run of this script (so the ratios compare like with like):

1. **GSD.** An NxN synthetic scene at 5 m through the built-in ``default`` model (10 m),
   against the same ground at 10 m (the 5 m scene averaged 2x2, (N/2)^2, uint16, same
   block size and compression): ``geoseg run --no-vectorize`` in fresh processes, the two
   alternating ``--repeat`` times; medians of the manifest's ``inference`` stage (reads of
   4x the pixels, the area average onto the model grid, the forwards, the nearest-neighbour
   write-back onto the 5 m grid) and of its ``write_cogs`` stage (COGs of 4x the pixels).
   Target: the 5 m inference stage at most 1.3x the 10 m one.
2. **AOI.** Bytes that a loopback HTTP server (started here: honours ``Range``, counts
   what it sends) sent while ``geoseg run --bbox`` segmented an area of 5% of an MxM scene,
   against the file's size and against the whole-scene run. Until geoseg reads URLs itself
   the scene is opened through a local VRT whose source is the ``/vsicurl/`` URL. Target:
   under 10% of the file.

Usage::

    python benchmarks/bench_gsd.py --aoi-size 8192      # N=4096 (5 m), M=8192, 3 repeats
    python benchmarks/bench_gsd.py --only gsd --size 2048 --repeat 1 --no-write

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
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def child(code: str) -> None:
    """Run ``code`` in a fresh interpreter (keeps this process small and torch-free)."""
    subprocess.run([PY, "-c", code], check=True, cwd=ROOT)


def scenes_5m_10m(work: Path, size: int, seed: int) -> tuple[Path, Path]:
    """The 5 m scene and the same ground averaged to 10 m, written once."""
    s5, s10 = work / f"gsd5_{size}_s{seed}.tif", work / f"gsd10_{size // 2}_s{seed}.tif"
    if not s5.exists():
        child(f"from geoseg.synthetic import synthesize; synthesize({str(s5)!r}, {size}, seed={seed}, pixel_size=5.0)")
    if not s10.exists():
        child(f"""
import numpy as np, rasterio
from affine import Affine
from rasterio.windows import Window
src = rasterio.open({str(s5)!r})
prof = src.profile
t = src.transform
prof.update(width=src.width // 2, height=src.height // 2, transform=Affine(10, 0, t.c, 0, -10, t.f))
with rasterio.open({str(s10)!r} + '.tmp', 'w', **prof) as dst:
    dst.descriptions = src.descriptions
    step = 1024
    for r in range(0, src.height, step):
        a = src.read(window=Window(0, r, src.width, min(step, src.height - r))).astype(np.float32)
        b, h, w = a.shape
        avg = a.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        dst.write(np.round(avg).astype('uint16'), window=Window(0, r // 2, w // 2, h // 2))
import os; os.replace({str(s10)!r} + '.tmp', {str(s10)!r})
""")
    return s5, s10


def geoseg_run(scene: Path | str, out: Path, *extra: str) -> dict:
    cmd = [PY, "-m", "geoseg", "run", str(scene), "-o", str(out), "--no-vectorize", "--overwrite", "--json", "-q", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- loopback HTTP


class CountingHandler(SimpleHTTPRequestHandler):
    """Static files with single ``Range: bytes=a-b`` requests; counts the body bytes sent."""

    counter: dict = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _count(self, n: int) -> None:
        with self.lock:
            self.counter["bytes"] = self.counter.get("bytes", 0) + n
            self.counter["requests"] = self.counter.get("requests", 0) + 1

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        rng = self.headers.get("Range")
        start, end = 0, size - 1
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].split(",")[0].partition("-")
            start = int(a) if a else max(0, size - int(b))
            end = min(size - 1, int(b)) if a and b else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Type", "image/tiff")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.wfile.write(data)
        self._count(len(data))

    def do_HEAD(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()


def aoi_bytes(work: Path, size: int, seed: int, fraction: float) -> dict:
    """Bytes sent for a ``--bbox`` run over ``fraction`` of the scene vs the whole scene."""
    scene = work / f"aoi_{size}_s{seed}.tif"
    if not scene.exists():
        child(f"from geoseg.synthetic import synthesize; synthesize({str(scene)!r}, {size}, seed={seed}, block=256)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(work)))
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"/vsicurl/http://127.0.0.1:{port}/{scene.name}"
        vrt = work / f"aoi_{size}_s{seed}_{port}.vrt"
        child(f"import rasterio; from rasterio.shutil import copy; copy({url!r}, {str(vrt)!r}, driver='VRT')")
        side = int(round(size * fraction ** 0.5))
        r0 = c0 = int(size * 0.37)  # anywhere: not aligned to tiles or blocks
        x0, y0 = 500000 + 10 * c0, 5500000 - 10 * (r0 + side)
        bbox = f"{x0},{y0},{x0 + 10 * side},{y0 + 10 * side},EPSG:32633"
        out = {}
        runs = (("aoi", ("--bbox", bbox)), ("aoi_t2048", ("--bbox", bbox, "--tile-size", "2048")), ("whole", ()))
        for name, extra in runs:
            CountingHandler.counter = {}
            t = time.perf_counter()
            m = geoseg_run(vrt, work / f"out_{name}", *extra)
            out[name] = {"bytes": CountingHandler.counter.get("bytes", 0), "requests": CountingHandler.counter.get("requests", 0),
                         "seconds": round(time.perf_counter() - t, 1), "inference_s": m["timings_s"]["inference"],
                         "tiles": m["execution"]["tiles"]}
        vrt.unlink(missing_ok=True)
    finally:
        server.shutdown()
    return {"file_bytes": scene.stat().st_size, "size": size, "side": side, "fraction": side * side / size / size, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="side of the 5 m scene (the 10 m one has half)")
    ap.add_argument("--aoi-size", type=int, default=4096, help="side of the scene of the AOI benchmark")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "geoseg_bench_gsd")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--only", choices=("gsd", "aoi"), default=None, help="run one of the two parts")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    base = "python benchmarks/bench_gsd.py"
    where = f"({platform.machine()}, {os.cpu_count()} cores, shared with other jobs while measured)"
    if args.only != "aoi":
        s5, s10 = scenes_5m_10m(work, args.size, args.seed)
        runs: dict[str, list[dict]] = {"5m": [], "10m": []}
        for _ in range(args.repeat):
            for name, scene in (("10m", s10), ("5m", s5)):
                m = geoseg_run(scene, work / f"out_{name}")
                runs[name].append(m["timings_s"])
        med = {k: {s: statistics.median(r[s] for r in v) for s in ("inference", "write_cogs", "total")} for k, v in runs.items()}
        ratio = med["5m"]["inference"] / med["10m"]["inference"]
        cmd = base + " --only gsd" + ("" if args.size == 4096 else f" --size {args.size}") + (
            "" if args.repeat == 3 else f" --repeat {args.repeat}")
        n, h = args.size, args.size // 2
        body = "\n".join([
            "## Resolution: a 5 m scene through the 10 m model",
            "",
            f"`{cmd}` {where}; medians of {args.repeat} alternating runs in fresh processes, `--no-vectorize`:",
            "",
            "| scene | pixels read | model grid | inference (s) | write COGs (s) | total (s) |",
            "|---|---|---|---|---|---|",
            f"| {h}^2 at 10 m (the 5 m scene averaged 2x2) | {h}^2 | {h}^2 | {med['10m']['inference']:.2f} | "
            f"{med['10m']['write_cogs']:.2f} | {med['10m']['total']:.2f} |",
            f"| {n}^2 at 5 m through the 10 m model | {n}^2 | {h}^2 | {med['5m']['inference']:.2f} | "
            f"{med['5m']['write_cogs']:.2f} | {med['5m']['total']:.2f} |",
            "",
            f"Inference stage (reads of 4x the pixels, area average onto the model grid, forwards, nearest "
            f"write-back) of the 5 m scene: **{ratio:.2f}x** the native 10 m run (target <= 1.3x). The COG stage "
            "writes 4x the pixels and costs what 4x the pixels cost.",
        ])
        print(body)
        print(json.dumps(runs, indent=1), file=sys.stderr)
        if not args.no_write:
            write_section("bench_gsd", body)
    if args.only != "gsd":
        aoi = aoi_bytes(work, args.aoi_size, args.seed, 0.05)
        cmd = base + " --only aoi" + ("" if args.aoi_size == 4096 else f" --aoi-size {args.aoi_size}")
        lines = [
            "## Areas of interest: bytes read",
            "",
            f"`{cmd}` {where}: `geoseg run --bbox` over {100 * aoi['fraction']:.1f}% of a {aoi['size']}^2 scene "
            f"({aoi['file_bytes'] / 2**20:.1f} MiB GeoTIFF, 256-px blocks, ZSTD) read over loopback HTTP (`/vsicurl/` "
            "through a local VRT; the server, started by the benchmark, counts the bytes it sends):",
            "",
            "| run | tiles | bytes sent | of the file | requests | inference (s) |",
            "|---|---|---|---|---|---|",
        ]
        names = {"aoi": "5% bbox", "aoi_t2048": "5% bbox, `--tile-size 2048`", "whole": "whole scene"}
        for name, label in names.items():
            r = aoi[name]
            lines.append(f"| {label} | {r['tiles']} | {r['bytes'] / 2**20:.1f} MiB | "
                         f"{100 * r['bytes'] / aoi['file_bytes']:.1f}% | {r['requests']} | {r['inference_s']:.2f} |")
        body = "\n".join(lines)
        print(body)
        print(json.dumps(aoi, indent=1), file=sys.stderr)
        if not args.no_write:
            write_section("bench_aoi", body)


if __name__ == "__main__":
    main()
