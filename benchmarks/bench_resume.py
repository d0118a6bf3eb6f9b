"""Benchmark resuming a killed scene: ``geoseg run --resume`` after a SIGKILL at half time.

Measured in one run of this script, every command in a fresh process (wall time including
start-up and model loading):

1. ``geoseg run`` of one NxN synthetic scene, uninterrupted (the reference, T_full);
2. the same run killed with SIGKILL at T_full / 2, then ``geoseg run --resume``: its wall
   time, the tiles it found journaled and checked (``execution.tiles_resumed``) and the
   ones it computed; the finished COGs and legends compared byte for byte with step 1's;
3. the uninterrupted run again with a checkpoint after every tile
   (``GEOSEG_CHECKPOINT_SECONDS=0``): the cost of journaling, against step 1's default
   checkpoint every 10 s.

Usage::

    python benchmarks/bench_resume.py                         # 4096x4096, 512-px tiles, model default
    python benchmarks/bench_resume.py --size 1024 --tile-size 256 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
GEOSEG = [sys.executable, "-m", "geoseg"]
COMPARED = ("classes.tif", "confidence.tif", "mask.tif", "classes.tif.aux.xml", "mask.tif.aux.xml", "classes.qml", "mask.qml")


def run(args: list[str], env: dict | None = None) -> tuple[float, dict]:
    """Wall seconds and manifest of one ``geoseg run`` (a fresh process); exits on failure."""
    t = time.perf_counter()
    proc = subprocess.run([*GEOSEG, "run", *args, "--quiet", "--json"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"geoseg run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)


def killed_at(args: list[str], seconds: float) -> int:
    """Start ``geoseg run``, SIGKILL it after ``seconds``; returns the tiles its journal holds."""
    proc = subprocess.Popen([*GEOSEG, "run", *args, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=seconds)
        raise SystemExit(f"the run finished before {seconds:.1f} s: nothing to resume")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = Path(args[args.index("-o") + 1])
    journal = next(out.glob(".*.run.json.journal.partial.jsonl"), None)
    return max(0, len(journal.read_text().splitlines()) - 1) if journal else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geoseg_bench_resume"))
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    a = ap.parse_args()

    from geoseg.synthetic import synthesize

    a.work.mkdir(parents=True, exist_ok=True)
    scene = a.work / f"scene_{a.size}.tif"
    if not scene.exists():
        synthesize(scene, a.size, seed=31)
    dirs = {k: a.work / k for k in ("full", "resumed", "every_tile")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)

    def args(d: Path) -> list[str]:
        return [str(scene), "-o", str(d), "-m", a.model, "--tile-size", str(a.tile_size), "--no-vectorize"]

    t_full, ref = run(args(dirs["full"]))
    tiles = ref["execution"]["tiles"]
    journaled = killed_at(args(dirs["resumed"]), t_full / 2)
    t_resume, m = run([*args(dirs["resumed"]), "--resume"])
    same = all((dirs["full"] / f"{scene.stem}.{k}").read_bytes() == (dirs["resumed"] / f"{scene.stem}.{k}").read_bytes()
               for k in COMPARED if (dirs["full"] / f"{scene.stem}.{k}").exists())
    t_every, _ = run(args(dirs["every_tile"]), env={"GEOSEG_CHECKPOINT_SECONDS": "0"})

    ex = m["execution"]
    rows = [
        ("uninterrupted `geoseg run` (T_full)", f"{t_full:.1f} s"),
        (f"killed (SIGKILL) at T_full / 2 = {t_full / 2:.1f} s: tiles in its journal", f"{journaled} of {tiles}"),
        ("`geoseg run --resume`: tiles resumed (checked) / computed", f"{ex['tiles_resumed']} / {ex['tiles_computed']}"),
        ("`geoseg run --resume` wall time", f"{t_resume:.1f} s"),
        ("**resume / full run**", f"**{t_resume / t_full:.2f}**"),
        ("killed half + resume / full run (the work a kill costs)", f"{(t_full / 2 + t_resume) / t_full:.2f}"),
        ("COGs and legends byte-identical to the uninterrupted run's", "yes" if same else "**NO**"),
        ("uninterrupted, checkpoint after every tile / default (every 10 s)", f"{t_every / t_full:.2f}"),
    ]
    body = (
        "## Resuming a killed scene (issue 14)\n\n"
        f"Command: `python benchmarks/bench_resume.py --size {a.size} --tile-size {a.tile_size}` "
        f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs: "
        f"the machine was loaded, so read the ratios, measured within this one run; model `{a.model}`, "
        f"a {a.size}x{a.size} synthetic scene, {tiles} tiles, `--no-vectorize`; wall times include start-up "
        "and model loading).\n\n"
        "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    )
    print(body)
    if not same:
        raise SystemExit("resumed outputs differ from the uninterrupted run's")
    if not a.no_write:
        write_section("resume", body)


if __name__ == "__main__":
    main()
