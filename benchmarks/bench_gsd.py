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
   against the file's size and against the blocks the tiles' read windows touch (and, with
   ``--aoi-whole``, the whole-scene run). geoseg reads the URL itself (``/vsicurl/``).
   Target: under 10% of the file.

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
import time
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


def blocks_needed(scene: Path, windows: list[tuple[int, int, int, int]]) -> tuple[int, int, int]:
    """``(blocks, their bytes, all blocks)``: the blocks of ``scene`` (pixel-interleaved)
    that the read windows ``(row, col, height, width)`` touch."""
    import rasterio

    with rasterio.open(scene) as ds:
        bh, bw = ds.block_shapes[0]
        touched = set()
        for r, c, h, w in windows:
            touched |= {(by, bx) for by in range(r // bh, (r + h - 1) // bh + 1) for bx in range(c // bw, (c + w - 1) // bw + 1)}
        size = sum(int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1)) for by, bx in touched)
        return len(touched), size, -(-ds.height // bh) * -(-ds.width // bw)


def tile_windows(size: int, window: list[int], tile_size: int) -> list[tuple[int, int, int, int]]:
    """The read windows of the tiles ``geoseg run --bbox`` predicts with the default model."""
    from geoseg.grid import PixelWindow, TileGrid
    from geoseg.models import load_model

    model = load_model("default")
    grid = TileGrid(size, size, tile_size, halo=int(model.halo), factor=int(model.downsampling))
    return [(t.read.row, t.read.col, t.read.height, t.read.width) for t in grid.tiles_within(PixelWindow(*window))]


def aoi_bytes(work: Path, size: int, seed: int, fraction: float, whole: bool) -> dict:
    """Bytes sent for a ``--bbox`` run over ``fraction`` of the scene (and the whole scene)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from remote_servers import RangeServer

    scene = work / f"aoi_{size}_s{seed}.tif"
    if not scene.exists():
        child(f"from geoseg.synthetic import synthesize; synthesize({str(scene)!r}, {size}, seed={seed}, block=256)")
    side = int(round(size * fraction ** 0.5))
    r0 = c0 = int(size * 0.37)  # anywhere: not aligned to tiles or blocks
    x0, y0 = 500000 + 10 * c0, 5500000 - 10 * (r0 + side)
    bbox = f"{x0},{y0},{x0 + 10 * side},{y0 + 10 * side},EPSG:32633"
    out = {}
    runs = [("aoi", ("--bbox", bbox)), ("aoi_t2048", ("--bbox", bbox, "--tile-size", "2048"))] + ([("whole", ())] if whole else [])
    with RangeServer(work) as srv:
        url = f"{srv.url}/{scene.name}"
        for name, extra in runs:
            srv.reset()
            t = time.perf_counter()
            m = geoseg_run(url, work / f"out_{name}", *extra)
            out[name] = {"bytes": srv.raster_bytes, "requests": len(srv.gets(scene.name)),
                         "seconds": round(time.perf_counter() - t, 1), "inference_s": m["timings_s"]["inference"],
                         "tiles": m["execution"]["tiles"]}
            if name.startswith("aoi"):
                tile = 2048 if name == "aoi_t2048" else 1024
                n, nbytes, total = blocks_needed(scene, tile_windows(size, m["aoi"]["window"], tile))
                out[name].update(blocks=n, block_bytes=nbytes, all_blocks=total)
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
    ap.add_argument("--aoi-whole", action="store_true", help="AOI part: also run the whole scene over HTTP")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    base = "python benchmarks/bench_gsd.py"
    import time

    where = (f"({time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the start)")
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
        load = os.getloadavg()[0]
        aoi = aoi_bytes(work, args.aoi_size, args.seed, 0.05, args.aoi_whole)
        cmd = base + " --only aoi" + ("" if args.aoi_size == 4096 else f" --aoi-size {args.aoi_size}") + (
            " --aoi-whole" if args.aoi_whole else "")
        a = aoi["aoi"]
        lines = [
            "## Areas of interest: bytes read",
            "",
            f"`{cmd}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, load average "
            f"{load:.1f} at the start): `geoseg run URL --bbox` over {100 * aoi['fraction']:.1f}% of a {aoi['size']}^2 "
            f"scene ({aoi['file_bytes'] / 2**20:.1f} MiB GeoTIFF, 256-px blocks, pixel-interleaved, ZSTD, no overviews) "
            "read over loopback HTTP (`/vsicurl/`; the server of tests/remote_servers.py, started by the benchmark, "
            "counts the GET requests and the bytes it sends). \"blocks needed\": the blocks that the tiles' read windows "
            "(the area's window plus the default model's 56-px halo) touch, from the file's block offsets.",
            "",
            "| run | tiles | blocks needed | blocks needed, of the file | bytes sent | sent, of the file | GET requests | inference (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        names = {"aoi": "5% bbox", "aoi_t2048": "5% bbox, `--tile-size 2048`", "whole": "whole scene"}
        for name, label in names.items():
            if name not in aoi:
                continue
            r = aoi[name]
            need = (f"{r['blocks']} of {r['all_blocks']} | {100 * r['block_bytes'] / aoi['file_bytes']:.2f}%"
                    if "blocks" in r else "all | 100%")
            lines.append(f"| {label} | {r['tiles']} | {need} | {r['bytes'] / 2**20:.1f} MiB | "
                         f"{100 * r['bytes'] / aoi['file_bytes']:.2f}% | {r['requests']} | {r['inference_s']:.2f} |")
        lines += ["", f"Target: under 10% of the file for the 5% area: **{100 * a['bytes'] / aoi['file_bytes']:.2f}%**."]
        body = "\n".join(lines)
        print(body)
        print(json.dumps(aoi, indent=1), file=sys.stderr)
        if not args.no_write:
            write_section("bench_aoi", body)


if __name__ == "__main__":
    main()
