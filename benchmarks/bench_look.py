"""Benchmark what looking costs (issue 25): the batch report page and the quicklooks.

1. **report.html of a 100-scene batch.** A catalog of ``--scenes`` small synthetic scenes
   (``--small`` px, the ``spectral`` model) is run once by ``geoseg batch`` (not timed).
   Then, ``--repeat`` times alternately in this process, the report is written as JSON only
   (``report.json``, what a batch wrote before) and as ``BatchReport.write`` writes it now
   (``report.json`` and ``report.html``: every manifest and STAC Item read, every thumbnail
   inlined, the footprint map drawn); the difference of the medians is what the page adds
   to the batch. ``geoseg report report.json`` (a fresh process) is timed once too.
2. **Quicklooks of an 8192^2 scene.** ``geoseg run`` (a fresh process, ``--model``, default
   options) of a ``--big`` px synthetic scene: the manifest's ``timings_s.quicklooks``
   against its ``timings_s.total``; then the quicklook stage alone (``stage_quicklooks`` on
   the finished COGs) ``--repeat`` times in this process.

Usage::

    python benchmarks/bench_look.py --part report                  # 100 scenes of 128 px
    python benchmarks/bench_look.py --part quicklooks              # an 8192^2 scene, model default
    python benchmarks/bench_look.py --scenes 10 --big 2048 --no-write

Results go into BENCHMARKS.md between the markers of this benchmark.
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
import time
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
GEOSEG = [sys.executable, "-m", "geoseg"]


def report_cost(work: Path, n: int, size: int, repeat: int) -> dict:
    from geoseg._files import write_json
    from geoseg.batch.runner import run_batch
    from geoseg.synthetic import synthesize

    d = work / "look_scenes"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = d / f"s{i:03d}.tif"
        if not p.exists():
            # a 10 x 10 grid of scenes 2 km apart
            synthesize(p, size, seed=1000 + i, origin=(500000.0 + 2000.0 * (i % 10), 5500000.0 - 2000.0 * (i // 10)))
    for extra in sorted(d.glob("s*.tif"))[n:]:
        extra.unlink()
    cat = work / "look_catalog.yaml"
    cat.write_text("defaults:\n  model: spectral\n  vectorize: false\n  out: look_out/{id}\nscenes:\n"
                   "  - glob: look_scenes/s*.tif\n")
    t = time.perf_counter()
    rep = run_batch(cat, quiet=True)  # scenes up to date from an earlier run are skipped: the page is the same work
    batch_s = time.perf_counter() - t
    assert rep.counts.get("done", 0) + rep.counts.get("skipped", 0) == n, rep.counts
    out = work / "look_report"
    out.mkdir(exist_ok=True)
    json_only, both = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        write_json(out / "json_only.json", rep.to_dict())
        json_only.append(time.perf_counter() - t)
        t = time.perf_counter()
        rep.write(out / "report.json")
        both.append(time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run([*GEOSEG, "report", str(out / "report.json"), "-o", str(out / "cli.html")], check=True,
                   capture_output=True)
    cli_s = time.perf_counter() - t
    counts = ", ".join(f"{v} {k}" for k, v in rep.counts.items())
    return {"scenes": n, "size": size, "batch_s": batch_s, "counts": counts, "json_only": json_only, "with_html": both,
            "html_bytes": (out / "report.html").stat().st_size, "cli_s": cli_s}


def quicklook_cost(work: Path, size: int, model: str, repeat: int) -> dict:
    from geoseg.io.quicklook import stage_quicklooks
    from geoseg.io.store import OutputStore
    from geoseg.models.registry import load_model
    from geoseg.synthetic import synthesize

    scene = work / f"synth_{size}_s11.tif"
    if not scene.exists():
        synthesize(scene, size, seed=11)
    out = work / f"look_run_{size}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([*GEOSEG, "run", str(scene), "-o", str(out), "--model", model, "--quiet", "--json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    manifest = json.loads((out / f"{scene.stem}.run.json").read_text())
    timings = manifest["timings_s"]
    bundle = load_model(model)
    finals = {"classes": out / f"{scene.stem}.classes.tif", "mask": out / f"{scene.stem}.mask.tif"}
    alone = []
    for _ in range(repeat):
        outputs = OutputStore(out, overwrite=True)
        t = time.perf_counter()
        stage_quicklooks(finals, list(bundle.class_names), list(bundle.class_colors), list(bundle.mask_heads), outputs)
        alone.append(time.perf_counter() - t)
        outputs.discard()
    sizes = {k: manifest["outputs"][k]["bytes"] for k in manifest["outputs"] if k.endswith(".png")}
    return {"size": size, "model": model, "wall": wall, "timings": timings, "alone": alone, "png_bytes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["report", "quicklooks", "all"], default="all")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--small", type=int, default=128)
    ap.add_argument("--big", type=int, default=8192)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sections = []
    if args.part in ("report", "all"):
        load = os.getloadavg()[0]
        r = report_cost(args.work, args.scenes, args.small, args.repeat)
        med_json, med_both = statistics.median(r["json_only"]), statistics.median(r["with_html"])
        sections.append(("look_report", f"""### The batch report page (issue 25)

Command: `python benchmarks/bench_look.py --part report --scenes {args.scenes} --small {args.small}` ({when},
{platform.node()}, shared 2-core machine, load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; medians of
{args.repeat} alternating runs in one process).

| what | figure |
|---|---|
| `geoseg batch` of {args.scenes} scenes of {args.small}x{args.small} px (`spectral`, no polygons), to have a report ({r['counts']}) | {r['batch_s']:.1f} s |
| report written as JSON only (as before) | {med_json * 1000:.1f} ms ({', '.join(f'{v * 1000:.1f}' for v in r['json_only'])}) |
| report written as JSON + report.html (`BatchReport.write`: every manifest and STAC Item read, thumbnails inlined, the map drawn) | {med_both * 1000:.1f} ms ({', '.join(f'{v * 1000:.1f}' for v in r['with_html'])}); a {r['html_bytes'] / 1e6:.2f} MB page |
| **what the page adds to the batch** | **{med_both - med_json:.3f} s** (target: under 2 s) |
| `geoseg report report.json` (a fresh process, imports included) | {r['cli_s']:.2f} s |
"""))
    if args.part in ("quicklooks", "all"):
        load = os.getloadavg()[0]
        q = quicklook_cost(args.work, args.big, args.model, args.repeat)
        tq, total = q["timings"]["quicklooks"], q["timings"]["total"]
        sections.append(("look_quicklooks", f"""### Quicklooks of a {args.big}x{args.big} scene (issue 25)

Command: `python benchmarks/bench_look.py --part quicklooks --big {args.big} --model {args.model}` ({when},
{platform.node()}, shared 2-core machine, load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; one run).

| what | figure |
|---|---|
| `geoseg run` {args.big}x{args.big}, `--model {q['model']}` (a fresh process, default options) | {q['wall']:.1f} s wall; manifest total {total:.1f} s |
| its quicklook stage (the manifest's `timings_s.quicklooks`: PIL's import and the font included) | {tq:.3f} s = **{100 * tq / total:.2f}% of the run** (target: under 3%) |
| the quicklook stage alone on the finished COGs, {args.repeat} times in one process | median {statistics.median(q['alone']):.3f} s ({', '.join(f'{v:.3f}' for v in q['alone'])}) |
| quicklook PNG sizes | {', '.join(f'{k} {v / 1e3:.0f} kB' for k, v in q['png_bytes'].items())} |

Stage timings of that run (s): {', '.join(f'{k} {v}' for k, v in q['timings'].items())}.
"""))
    for name, body in sections:
        print(body)
        if not args.no_write:
            write_section(name, body)


if __name__ == "__main__":
    main()
