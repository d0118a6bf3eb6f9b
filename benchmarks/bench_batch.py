"""Benchmark ``geoseg batch``: a catalog of N scenes against N single ``geoseg run`` calls.

Measured in one run of this script, every command in a fresh process:

1. ``geoseg run`` of one NxN synthetic scene (default threads);
2. ``geoseg batch`` of a catalog of ``--scenes`` such scenes (seeds 101, 102, ...), with
   the threaded default and with ``--workers 2``; the ratio batch / (scenes x single);
3. the same ``geoseg batch`` again, when every scene is up to date and skipped.

It also counts the pixels in which the two batches' class maps, masks and confidence differ
(the scheduling does not change outputs; torch's float sums can, with 1 thread per worker
process against 2 in one process, by 1 percentage point of confidence here and there).

With ``--outputs-s3`` it measures instead the output store (issue 21): the same threaded
``geoseg batch`` with ``out:`` to a local directory and to ``s3://bench/out/{id}`` on
moto's S3 server on loopback (started here, in this process), alternated ``--repeat``
times; the ratio S3 / local of the fastest runs (target <= 1.15), and the rerun that skips
every scene from the bucket.

With ``--cluster`` it measures instead where the work runs on a real cluster (issue 21): a
``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` started by this script (address
by ``--scheduler-file``), and

4. ``geoseg batch`` of the catalog on that cluster: the client's CPU seconds over all CPU
   seconds (client + scheduler + workers, from ``psutil`` on the real processes; the client's
   from ``getrusage`` of the finished child), and its wall time over the same catalog's on
   local threads (same cores);
5. one ``--tile-scene``-sized scene with tile placement (``geoseg run --scheduler-file``) over
   local threads.

``--code DIR`` runs every process (client, scheduler, workers) on the geoseg source tree in DIR
(e.g. an export of an older commit, for before/after figures; it then passes ``--scheduler``).

Usage::

    python benchmarks/bench_batch.py                                 # 8 scenes of 2048x2048, model default
    python benchmarks/bench_batch.py --size 512 --scenes 2 --no-write
    python benchmarks/bench_batch.py --outputs-s3 --scenes 4 --repeat 2
    python benchmarks/bench_batch.py --cluster --size 1024 --scenes 8 --tile-scene 4096

Results go into BENCHMARKS.md between the markers of this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _report import write_section

ROOT = Path(__file__).resolve().parents[1]

#: The ``geoseg`` command, as the console script runs it.
GEOSEG = [sys.executable, "-m", "geoseg"]


def timed(cmd: list[str]) -> float:
    """Wall seconds of one command (a fresh process); exits on failure."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:] if cmd[:3] == GEOSEG else cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def make_scenes(work: Path, size: int, n: int) -> Path:
    from geoseg.synthetic import synthesize

    d = work / "scenes"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = d / f"scene_{i + 1:02d}.tif"
        if not path.exists():
            synthesize(path, size, seed=101 + i)
    for extra in sorted(d.glob("scene_*.tif"))[n:]:
        extra.unlink()
    return d


def catalog(work: Path, name: str, model: str, out: str | None = None) -> Path:
    path = work / f"{name}.yaml"
    out = out or f"out_{name}/{{id}}"
    path.write_text(f"defaults:\n  model: {model}\n  out: \"{out}\"\nscenes:\n  - glob: scenes/scene_*.tif\n")
    shutil.rmtree(work / f"out_{name}", ignore_errors=True)
    return path


def outputs_s3(args, work: Path) -> None:
    """The same threaded batch with outputs to a local directory and to moto's S3 on loopback."""
    import hashlib
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                      AWS_S3_ENDPOINT=f"{host}:{port}", AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE",
                      GEOSEG_SCRATCH=str(work / "scratch"))
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    import resource

    def cpu() -> float:  # CPU seconds of the finished child processes (the batches)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    try:
        local_s, s3_s, local_cpu, s3_cpu = [], [], [], []
        for k in range(args.repeat):
            cat = catalog(work, "local", args.model)
            c0 = cpu()
            local_s.append(batch(cat, work / "report_local.json", [])[0])
            local_cpu.append(cpu() - c0)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
                for o in page.get("Contents", []):
                    s3.delete_object(Bucket="bench", Key=o["Key"])
            cat_s3 = catalog(work, "s3", args.model, "s3://bench/out/{id}")
            c0 = cpu()
            wall, rep = batch(cat_s3, work / "report_s3.json", [])
            s3_cpu.append(cpu() - c0)
            s3_s.append(wall)
            if rep["counts"] != {"done": args.scenes}:
                raise SystemExit(f"s3: expected {args.scenes} scenes done, got {rep['counts']}")
        rerun_s, rep = batch(cat_s3, work / "report_s3_rerun.json", [])
        if rep["counts"] != {"skipped": args.scenes}:
            raise SystemExit(f"s3 rerun: expected {args.scenes} scenes skipped, got {rep['counts']}")
        same = all(
            hashlib.sha256(s3.get_object(Bucket="bench", Key=f"out/{sid}/{sid}.classes.tif")["Body"].read()).digest()
            == hashlib.sha256((work / "out_local" / sid / f"{sid}.classes.tif").read_bytes()).digest()
            for sid in (s["id"] for s in rep["scenes"]))
    finally:
        server.stop()
    res = {"size": args.size, "scenes": args.scenes, "model": args.model, "repeat": args.repeat,
           "local_s": local_s, "s3_s": s3_s, "ratio": min(s3_s) / min(local_s), "rerun_s": rerun_s,
           "local_cpu_s": local_cpu, "s3_cpu_s": s3_cpu, "cpu_ratio": min(s3_cpu) / min(local_cpu),
           "load_average": os.getloadavg(),
           "identical_class_maps": same}
    print(json.dumps(res, indent=2))
    if not args.no_write:
        n, size = args.scenes, args.size
        body = f"""
## Outputs to object storage: S3 (moto, loopback) vs a local directory (issue 21)

Command: `{" ".join(["python", "benchmarks/bench_batch.py", *sys.argv[1:]])}` ({time.strftime('%Y-%m-%d')},
{platform.machine()}, {os.cpu_count()} CPUs, model `{args.model}`; one threaded `geoseg batch` of {n} synthetic
{size}x{size} scenes, `out:` a local directory or `s3://bench/out/{{id}}` on moto's S3 server in the
benchmark's process; the two alternated {args.repeat} time(s), fastest of each; every figure from this one run).

| measure | value |
|---|---|
| batch, outputs to a local directory | {", ".join(f"{x:.1f}" for x in local_s)} s |
| batch, outputs to S3 (COGs, GeoPackage, STAC Item built in local scratch, uploaded, manifest last) | {", ".join(f"{x:.1f}" for x in s3_s)} s |
| **S3 / local, wall** (target <= 1.15) | **{res['ratio']:.3f}** |
| CPU seconds of the batch process, local | {", ".join(f"{x:.1f}" for x in local_cpu)} s |
| CPU seconds of the batch process, S3 (moto's own CPU, in the benchmark process, not counted) | {", ".join(f"{x:.1f}" for x in s3_cpu)} s |
| **S3 / local, CPU seconds** | **{res['cpu_ratio']:.3f}** |
| load average (1, 5, 15 min) at the end, on this shared machine | {", ".join(f"{x:.1f}" for x in res['load_average'])} |
| rerun from the bucket, every scene skipped (one listing + the manifests, no pixel GET) | {rerun_s:.2f} s |
| class maps in the bucket byte-identical to the local ones | {"yes" if same else "NO"} |
"""
        write_section("issue21_store", body)


def batch(cat: Path, report: Path, extra: list[str]) -> tuple[float, dict]:
    wall = timed([*GEOSEG, "batch", str(cat), "--quiet", "--report", str(report), *extra])
    return wall, json.loads(report.read_text())


def compare(a: Path, b: Path, ids: list[str]) -> dict[str, list[int]]:
    """Per product: pixels that differ between two batches' outputs, and the largest difference."""
    import numpy as np
    import rasterio

    out = {}
    for product in ("classes", "mask", "confidence"):
        count, largest = 0, 0
        for sid in ids:
            with rasterio.open(a / sid / f"{sid}.{product}.tif") as x, rasterio.open(b / sid / f"{sid}.{product}.tif") as y:
                d = np.abs(x.read().astype(np.int16) - y.read().astype(np.int16))
            count, largest = count + int((d > 0).sum()), max(largest, int(d.max()))
        out[product] = [count, largest]
    return out


# --------------------------------------------------------------------------- on a real cluster


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living children."""
    import psutil

    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


class Cluster:
    """``dask scheduler`` + ``dask worker --nworkers N --nthreads 1`` on loopback, on ``code``'s geoseg."""

    def __init__(self, work: Path, workers: int, env: dict) -> None:
        self.file = work / "scheduler.json"
        self.file.unlink(missing_ok=True)
        self.env = env
        dask = [sys.executable, "-m", "dask"]
        self.scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                           "--scheduler-file", str(self.file)], stdout=subprocess.DEVNULL,
                                          stderr=(work / "scheduler.log").open("w"), env=env, cwd=work)
        deadline = time.monotonic() + 120
        while not self.file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise SystemExit("the scheduler did not start: see scheduler.log")
            time.sleep(0.2)
        self.workers = subprocess.Popen([*dask, "worker", "--scheduler-file", str(self.file), "--nworkers", str(workers),
                                         "--nthreads", "1", "--no-dashboard", "--memory-limit", "0"],
                                        stdout=subprocess.DEVNULL, stderr=(work / "workers.log").open("w"), env=env,
                                        cwd=work)
        from distributed import Client

        with Client(scheduler_file=str(self.file), timeout="60s") as c:
            c.wait_for_workers(workers, timeout=300)
        self.address = json.loads(self.file.read_text())["address"]

    def cpu(self) -> float:
        return _tree_cpu(self.scheduler.pid) + _tree_cpu(self.workers.pid)

    def close(self) -> None:
        for p in (self.workers, self.scheduler):
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def client_run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (with its children) of one client command (run outside this source
    tree: ``python -m`` would import the geoseg of the working directory before PYTHONPATH's)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=Path(env["PYTHONPATH"]).parent)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cluster_main(args, work: Path, scenes: Path) -> dict:
    code = Path(args.code).resolve() if args.code else ROOT
    env = {**os.environ, "PYTHONPATH": str(code)}
    new_cli = (code / "geoseg" / "batch" / "placement.py").exists()
    res: dict = {"size": args.size, "scenes": args.scenes, "model": args.model, "workers": args.workers,
                 "code": str(code), "placement_code": new_cli}
    cat_threads, cat_cluster = catalog(work, "threads", args.model), catalog(work, "cluster", args.model)
    if not args.skip_threads:
        res["threads_s"], res["threads_cpu_s"] = client_run([*GEOSEG, "batch", str(cat_threads), "-q"], env)
    cluster = Cluster(work, args.workers, env)
    try:
        where = ["--scheduler-file", str(cluster.file)] if new_cli else ["--scheduler", cluster.address]
        before = cluster.cpu()
        wall, client_cpu = client_run([*GEOSEG, "batch", str(cat_cluster), "-q", "--report",
                                       str(work / "report_cluster.json"), *where], env)
        cluster_cpu = cluster.cpu() - before
        rep = json.loads((work / "report_cluster.json").read_text())
        if rep["counts"] != {"done": args.scenes}:
            raise SystemExit(f"cluster batch: {rep['counts']}")
        res.update(cluster_s=wall, client_cpu_s=client_cpu, cluster_cpu_s=cluster_cpu,
                   client_share=client_cpu / (client_cpu + cluster_cpu), placement=rep["scheduler"].get("placement"))
        if "threads_s" in res:
            res["wall_ratio"] = wall / res["threads_s"]
            res["differences"] = compare(work / "out_threads", work / "out_cluster", [s["id"] for s in rep["scenes"]])
        if args.tile_scene:
            from geoseg.synthetic import synthesize

            big = work / f"tile_{args.tile_scene}.tif"
            if not big.exists():
                synthesize(big, args.tile_scene, seed=7)
            run = [*GEOSEG, "run", str(big), "-m", args.model, "--overwrite", "-q"]
            res["tile_threads_s"] = client_run([*run, "-o", str(work / "tile_threads")], env)[0]
            before = cluster.cpu()
            res["tile_cluster_s"], res["tile_client_cpu_s"] = client_run([*run, "-o", str(work / "tile_cluster"), *where], env)
            res["tile_cluster_cpu_s"] = cluster.cpu() - before
            res["tile_ratio"] = res["tile_cluster_s"] / res["tile_threads_s"]
            res["tile_size"] = args.tile_scene
    finally:
        cluster.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--model", default="default")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    ap.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    ap.add_argument("--outputs-s3", action="store_true", help="Outputs to moto's S3 vs a local directory (issue 21).")
    ap.add_argument("--repeat", type=int, default=1, help="With --outputs-s3: alternate the two batches this often.")
    ap.add_argument("--cluster", action="store_true", help="Measure on a real 2-worker cluster (see above).")
    ap.add_argument("--code", default=None, help="--cluster: run every process on the geoseg tree in this directory.")
    ap.add_argument("--tile-scene", type=int, default=0, help="--cluster: also one scene of this size, tile placement.")
    ap.add_argument("--skip-threads", action="store_true", help="--cluster: no local-threads batch.")
    ap.add_argument("--json", type=Path, default=None, help="--cluster: also write the figures here.")
    args = ap.parse_args()
    work = args.work / f"batch_{args.size}"
    scenes = make_scenes(work, args.size, args.scenes)
    if args.outputs_s3:
        outputs_s3(args, work)
        return
    if args.cluster:
        res = cluster_main(args, work, scenes)
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return

    single = timed([sys.executable, "-m", "geoseg", "run", str(scenes / "scene_01.tif"), "-o", str(work / "single"),
                    "-m", args.model, "--overwrite", "--quiet"])
    threads_cat, workers_cat = catalog(work, "threads", args.model), catalog(work, "workers", args.model)
    threads_s, threads_rep = batch(threads_cat, work / "report_threads.json", [])
    rerun_s, rerun_rep = batch(threads_cat, work / "report_rerun.json", [])
    workers_s, workers_rep = batch(workers_cat, work / "report_workers.json", ["--workers", str(args.workers)])
    for name, rep, want in (("threads", threads_rep, "done"), ("rerun", rerun_rep, "skipped"), ("workers", workers_rep, "done")):
        if rep["counts"] != {want: args.scenes}:
            raise SystemExit(f"{name}: expected {args.scenes} scenes {want}, got {rep['counts']}")
    diffs = compare(work / "out_threads", work / "out_workers", [s["id"] for s in threads_rep["scenes"]])
    n = args.scenes
    res = {
        "size": args.size, "scenes": n, "model": args.model, "workers": args.workers,
        "single_s": single, "threads_s": threads_s, "workers_s": workers_s, "rerun_s": rerun_s,
        "ratio_threads": threads_s / (n * single), "ratio_workers": workers_s / (n * single),
        "rerun_ratio": rerun_s / threads_s, "differences": diffs,
        "scene_s_threads": [s["seconds"] for s in threads_rep["scenes"]],
        "scene_s_workers": [s["seconds"] for s in workers_rep["scenes"]],
    }
    print(json.dumps(res, indent=2))
    if not args.no_write:
        report(res, " ".join(["python", "benchmarks/bench_batch.py", *sys.argv[1:]]))


def report(r: dict, command: str) -> None:
    n, size, d = r["scenes"], r["size"], r["differences"]
    mpx = n * size * size / 1e6
    body = f"""
## `geoseg batch` over a catalog (issue: geoseg batch)

Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs,
model `{r['model']}`; a catalog of {n} synthetic {size}x{size} scenes; every figure from
this one run, each command in a fresh process, wall time including start-up).

| measure | value |
|---|---|
| one `geoseg run` of one scene | {r['single_s']:.1f} s |
| {n} x one `geoseg run` | {n * r['single_s']:.1f} s |
| `geoseg batch` (threaded default) | {r['threads_s']:.1f} s ({mpx / r['threads_s']:.2f} Mpx/s) |
| **ratio batch / ({n} x single), threaded** (target <= 1.0) | **{r['ratio_threads']:.2f}** |
| `geoseg batch --workers {r['workers']}` | {r['workers_s']:.1f} s ({mpx / r['workers_s']:.2f} Mpx/s) |
| **ratio batch / ({n} x single), `--workers {r['workers']}`** (target <= 1.0) | **{r['ratio_workers']:.2f}** |
| rerun, every scene up to date and skipped | {r['rerun_s']:.2f} s |
| **rerun / first run** (target < 0.05) | **{r['rerun_ratio']:.3f}** |
| pixels that differ, threaded vs `--workers {r['workers']}`: class maps / masks / confidence (largest difference) | {d['classes'][0]} / {d['mask'][0]} / {d['confidence'][0]} ({d['confidence'][1]} %) |
"""
    write_section("batch", body)


if __name__ == "__main__":
    main()
