"""Work on a real Dask cluster whose workers share no disk with the client.

The test starts ``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` processes on
loopback (the address handed over by ``--scheduler-file``). The workers run in a private mount
namespace with a tmpfs over the client's directory (``unshare -m``; skipped where that is not
allowed), so they see none of its files: the scenes come from an HTTP range server on
loopback and the outputs go to a destination both see (``dest``, a directory outside the
hidden one). Checked: a batch placed scene by scene gives the same bytes as local threads; a
scene whose tiles span the cluster too (and its polygons); a worker SIGKILLed mid-scene (the
scene resumes elsewhere, exit 0, the same bytes); a bad scene fails once; a worker with
another geoseg is refused in one line; ``geoseg vectorize --scheduler-file`` on a class map the
workers cannot see is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyogrio
import pytest
import rasterio
from remote_servers import RangeServer

from geoseg.batch.runner import run_batch
from geoseg.io.raster import file_sha256
from geoseg.synthetic import synthesize

ROOT = Path(__file__).resolve().parents[1]
GEOSEG = [sys.executable, "-m", "geoseg"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
       "GEOSEG_CHECKPOINT_SECONDS": "0"}  # a journal line after every tile: the kill test waits for one
PRODUCTS = ("classes.tif", "confidence.tif")
SCENES = {"s1": 256, "s2": 256, "s3": 256}


def _can_hide() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, check=False)
    return shutil.which("unshare") is not None and probe.returncode == 0


def _dask(args: list[str], log: Path, hide: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dask", *args]
    if hide is not None:  # the worker sees a tmpfs where the client's files are
        cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{hide}" && exec "$0" "$@"', *cmd]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env or ENV, cwd=log.parent,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait_workers(client, n: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while len(client.scheduler_info(n_workers=-1)["workers"]) != n:
        assert time.monotonic() < deadline, f"the cluster did not reach {n} workers:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _tiled_scene(path: Path, size: int, seed: int) -> None:
    """A synthetic scene written with 64-px blocks: a tile row of the run reads its own blocks."""
    raw = path.with_suffix(".raw.tif")
    synthesize(raw, size, seed=seed)
    with rasterio.open(raw) as src:
        with rasterio.open(path, "w", **dict(src.profile, tiled=True, blockxsize=64, blockysize=64)) as dst:
            dst.write(src.read())
    raw.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The client's own directory (hidden from the workers), the destination both see, the
    HTTP server of the scenes, and a scheduler with two single-thread workers."""
    from distributed import Client

    if not _can_hide():
        pytest.skip("needs `unshare -m` and tmpfs mounts (root): the workers must not see the client's files")
    home = tmp_path_factory.mktemp("client")
    dest = tmp_path_factory.mktemp("dest")  # a destination the workers can write and the client read
    logs = tmp_path_factory.mktemp("logs")
    data = home / "data"
    data.mkdir()
    for i, (sid, size) in enumerate({**SCENES, "k": 512}.items()):
        _tiled_scene(data / f"{sid}.tif", size, seed=11 + i)
    (data / "bad.tif").write_text("this is not a raster\n" * 100)
    sched_file = logs / "scheduler.json"
    procs = [_dask(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                    str(sched_file)], logs / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, (logs / "scheduler.log").read_text()
            time.sleep(0.1)
        procs.append(_dask(["worker", "--scheduler-file", str(sched_file), "--nworkers", "2", "--nthreads", "1",
                            "--no-dashboard", "--memory-limit", "0"], logs / "workers.log", hide=home))
        with RangeServer(data) as http, Client(scheduler_file=str(sched_file), timeout="30s") as client:
            _wait_workers(client, 2, logs / "workers.log")
            # the workers see none of the client's files, and the destination
            assert not any(client.run(os.path.exists, str(data / "s1.tif")).values())
            assert all(client.run(os.path.isdir, str(dest)).values())
            yield {"home": home, "dest": dest, "logs": logs, "file": sched_file, "http": http, "client": client,
                   "procs": procs}
    finally:
        for p in reversed(procs):
            _stop(p)


def _catalog(cl, name: str, scenes: list[str], out: Path) -> Path:
    lines = "\n".join(f"  - path: {cl['http'].url}/{s}.tif\n    id: {s}" for s in scenes)
    path = cl["home"] / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        defaults:
          model: spectral
          tile_size: 128
          out: {out}/{{id}}
        scenes:
        """) + lines + "\n")
    return path


def _batch(cat: Path, *extra: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    report = cat.with_suffix(".report.json")
    proc = subprocess.run([*GEOSEG, "batch", str(cat), "-q", "--report", str(report), *extra], capture_output=True,
                          text=True, env=ENV, cwd=cat.parent, timeout=timeout, check=False)
    return proc, json.loads(report.read_text()) if report.exists() else {}


@pytest.fixture(scope="module")
def reference(cluster) -> Path:
    """The scenes run on local threads by the client: the bytes every cluster run must give."""
    out = cluster["home"] / "threads"
    report = run_batch(_catalog(cluster, "threads", [*SCENES, "k"], out), quiet=True)
    assert report.exit_code == 0 and report.scheduler == {"scheduler": "threads"}
    return out


def _same_outputs(a: Path, b: Path, ids) -> None:
    for sid in ids:
        for product in PRODUCTS:
            assert file_sha256(a / sid / f"{sid}.{product}") == file_sha256(b / sid / f"{sid}.{product}"), (sid, product)
        ta = pyogrio.raw.read(a / sid / f"{sid}.gpkg", layer="classes")
        tb = pyogrio.raw.read(b / sid / f"{sid}.gpkg", layer="classes")
        assert ta[2].tolist() == tb[2].tolist() and all((x == y).all() for x, y in zip(ta[3], tb[3])), sid


def test_scene_placement_gives_the_bytes_of_local_threads(cluster, reference) -> None:
    """Three scenes, two workers: each scene one task; the workers read the scenes over HTTP
    and write every output to the destination themselves."""
    out = cluster["dest"] / "scene"
    cat = _catalog(cluster, "scene", list(SCENES), out)
    proc, report = _batch(cat, "--scheduler-file", str(cluster["file"]))
    assert proc.returncode == 0, proc.stderr
    assert report["scheduler"]["placement"] == "scene" and report["scheduler"]["workers"] == 2
    workers = set(cluster["client"].scheduler_info(n_workers=-1)["workers"])
    for s in report["scenes"]:
        assert s["status"] == "done" and s["placement"] == "scene" and s["worker"] in workers, s
        execution = json.loads((out / s["id"] / f"{s['id']}.run.json").read_text())["execution"]
        assert execution["placement"] == "scene" and execution["worker"] == s["worker"] and execution["threads"] == 1
    _same_outputs(reference, out, SCENES)
    assert json.loads((out / "catalog.json").read_text())["type"] == "Catalog"  # written by the client
    # a rerun checks the manifests and skips every scene: nothing is submitted
    again = run_batch(cat, scheduler_file=cluster["file"], quiet=True)
    assert again.exit_code == 0 and {s.status for s in again.scenes} == {"skipped"}


def test_tile_placement_spreads_a_scene_and_its_polygons(cluster, reference) -> None:
    """`geoseg run --scheduler-file`: one scene's tiles and polygonize blocks on the cluster."""
    out = cluster["dest"] / "tile"
    proc = subprocess.run([*GEOSEG, "run", f"{cluster['http'].url}/s2.tif", "-o", str(out / "s2"), "-m", "spectral",
                           "--tile-size", "128", "--scheduler-file", str(cluster["file"]), "--json"],
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    execution = json.loads(proc.stdout)["execution"]
    assert execution["placement"] == "tile" and execution["vectorize"] == "cluster"  # the workers see the destination
    for product in PRODUCTS:
        assert file_sha256(out / "s2" / f"s2.{product}") == file_sha256(reference / "s2" / f"s2.{product}")
    ta = pyogrio.raw.read(out / "s2" / "s2.gpkg", layer="classes")
    assert ta[2].tolist() == pyogrio.raw.read(reference / "s2" / "s2.gpkg", layer="classes")[2].tolist()
    # `geoseg vectorize --scheduler-file` of one of the client's own files (the workers open
    # class maps by path): refused in one line, before any block is sent
    hidden = reference / "s2" / "s2.classes.tif"
    bad = subprocess.run([*GEOSEG, "vectorize", str(hidden), str(cluster["home"] / "v.gpkg"),
                          "--scheduler-file", str(cluster["file"]), "-q"], capture_output=True, text=True, env=ENV,
                         timeout=300, check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "cannot read" in bad.stderr and str(hidden) in bad.stderr
    assert not (cluster["home"] / "v.gpkg").exists()


def test_a_bad_scene_fails_once_and_alone(cluster) -> None:
    http = cluster["http"]
    http.reset()
    assert run_batch(_catalog(cluster, "bad_local", ["bad"], cluster["home"] / "bad_local"), quiet=True).exit_code == 1
    gets_one_run = len(http.gets("/bad.tif"))
    http.reset()
    out = cluster["dest"] / "bad"
    report = run_batch(_catalog(cluster, "bad", ["s1", "bad"], out), scheduler_file=cluster["file"], placement="scene",
                       quiet=True)
    assert report.exit_code == 1
    status = {s.id: s for s in report.scenes}
    assert status["s1"].status == "done" and status["bad"].status == "failed"
    assert "\n" not in status["bad"].error["message"] and "bad.tif" in status["bad"].error["message"]
    assert len(http.gets("/bad.tif")) == gets_one_run  # run once: a failure of the scene itself is not retried
    assert not (out / "bad").exists() or not list((out / "bad").glob("*.run.json"))


def test_a_worker_killed_mid_scene(cluster, reference) -> None:
    """SIGKILL the worker running scene k once its journal holds a tile (its later reads are
    held by the server meanwhile): the scene runs again on another worker, resuming from the
    journal; the batch exits 0 with the bytes of local threads."""
    client, http = cluster["client"], cluster["http"]
    out = cluster["dest"] / "killed"
    journal = out / "k" / ".k.run.json.journal.partial.jsonl"

    def journaled() -> bool:
        try:
            return len(journal.read_text().splitlines()) >= 2  # the key, then one line per tile
        except OSError:
            return False

    http.reset()
    http.hold = lambda path: path == "/k.tif" and journaled()
    cat = _catalog(cluster, "killed", ["k", "s1", "s2", "s3"], out)
    report_path = cat.with_suffix(".report.json")
    batch = subprocess.Popen([*GEOSEG, "batch", str(cat), "-q", "--report", str(report_path), "--scheduler-file",
                              str(cluster["file"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                             cwd=cat.parent)
    try:
        deadline = time.monotonic() + 180
        while not http.held:
            assert batch.poll() is None, f"the batch ended before scene k could be caught: {batch.communicate()}"
            assert time.monotonic() < deadline, "scene k never journaled a tile"
            time.sleep(0.05)
        running = {w: keys for w, keys in client.processing().items() if any(str(k).startswith("geoseg-scene-k-") for k in keys)}
        (victim,) = running
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
    finally:
        http.release()
    stdout, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 0, stderr
    report = json.loads(report_path.read_text())
    assert {s["id"]: s["status"] for s in report["scenes"]} == dict.fromkeys(["k", "s1", "s2", "s3"], "done")
    execution = json.loads((out / "k" / "k.run.json").read_text())["execution"]
    assert execution["worker"] != victim and execution["tiles_resumed"] >= 1  # elsewhere, from what was durable
    _same_outputs(reference, out, ["k", "s1", "s2", "s3"])
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no journal, stripes or partial file left
    _wait_workers(client, 2, cluster["logs"] / "workers.log")  # the nanny restarted the killed worker


def test_a_worker_with_another_geoseg_is_refused(cluster, tmp_path) -> None:
    """A third worker imports a copy of geoseg whose version differs: nothing runs, one line says why."""
    fake = tmp_path / "fake"
    shutil.copytree(ROOT / "geoseg", fake / "geoseg", ignore=shutil.ignore_patterns("__pycache__"))
    constants = fake / "geoseg" / "_constants.py"
    constants.write_text(constants.read_text().replace('VERSION: Final = "', 'VERSION: Final = "0.0.0+other-'))
    env = {**ENV, "PYTHONPATH": str(fake)}
    client = cluster["client"]
    log = cluster["logs"] / "fake.log"
    proc = _dask(["worker", "--scheduler-file", str(cluster["file"]), "--nworkers", "1", "--nthreads", "1",
                  "--no-dashboard", "--memory-limit", "0"], log, env=env)
    try:
        _wait_workers(client, 3, log)
        out = cluster["dest"] / "refused"
        report = run_batch(_catalog(cluster, "refused", ["s1", "s2"], out), scheduler_file=cluster["file"], quiet=True)
        assert report.exit_code == 1
        messages = {s.error["message"] for s in report.scenes}
        (message,) = messages
        assert "runs geoseg 0.0.0+other-" in message and "(this client: " in message and "\n" not in message
        assert not list(out.rglob("*.run.json")) and not list(out.rglob("*.tif"))  # refused before work started
        run = subprocess.run([*GEOSEG, "run", f"{cluster['http'].url}/s1.tif", "-o", str(out / "run"), "-m", "spectral",
                              "--scheduler-file", str(cluster["file"]), "-q"], capture_output=True, text=True, env=ENV,
                             timeout=300, check=False)
        assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "runs geoseg 0.0.0+other-" in run.stderr
    finally:
        _stop(proc)
    _wait_workers(client, 2, cluster["logs"] / "workers.log")
