"""`geoseg batch`: skip-if-done, reruns, failure isolation, the lock, SIGKILL and resume,
and a separately started Dask scheduler and worker giving identical outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from xml.etree import ElementTree
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from conftest import UTM33_PIXEL_M2, read, write_raster

import geoseg
from geoseg.io.store import SCENE_OUTPUTS
from geoseg.batch.lock import BatchLock
from geoseg.batch.runner import format_summary, run_batch
from geoseg.cli.batch import batch_command
from geoseg.errors import LockedError
from geoseg.io.raster import file_sha256
from geoseg.models.checksum import model_checksum
from geoseg.synthetic import synthesize

#: The `geoseg` command, as the console script runs it.
GEOSEG = [sys.executable, "-m", "geoseg"]


def scenes(d: Path, n: int, size: int = 96) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    return [Path(synthesize(d / f"s{i}.tif", size, seed=i).path) for i in range(1, n + 1)]


def write_catalog(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def statuses(report) -> dict[str, str]:
    return {s.id: s.status for s in report.scenes}


def final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def hidden_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(".*") if p.is_file())


@pytest.fixture
def three(tmp_path) -> Path:
    """Three 96x96 scenes and a catalog (spectral model, 64-px tiles): one by path, two by glob."""
    scenes(tmp_path / "data", 3)
    return write_catalog(tmp_path / "catalog.yaml", """
        defaults:
          model: spectral
          tile_size: 64
          out: out/{id}
        scenes:
          - path: data/s1.tif
            id: a
          - glob: data/s[23].tif
        """)


def test_runs_then_skips_then_reruns_only_what_changed(three, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_batch(three, quiet=True, report=tmp_path / "report.json")
    assert statuses(first) == {"a": "done", "s2": "done", "s3": "done"} and first.exit_code == 0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["counts"] == {"done": 3} and on_disk["exit_code"] == 0
    scene = on_disk["scenes"][0]
    assert scene["megapixels"] == pytest.approx(96 * 96 / 1e6, abs=1e-3) and scene["mpx_s"] > 0
    assert sum(scene["class_areas_m2"].values()) == pytest.approx(96 * 96 * UTM33_PIXEL_M2, rel=1e-6)
    for sid, stem in (("a", "s1"), ("s2", "s2"), ("s3", "s3")):
        names = {p.name for p in (out / sid).iterdir()}
        assert names == {f"{stem}.{k}".replace("*", "water") for k in SCENE_OUTPUTS if k != "probabilities.tif"}  # legends and quicklooks included
        assert json.loads((out / sid / f"{stem}.stac.json").read_text())["id"] == sid
    catalog = json.loads((out / "catalog.json").read_text())
    assert [ln["href"] for ln in catalog["links"] if ln["rel"] == "item"] == ["./a/s1.stac.json", "./s2/s2.stac.json", "./s3/s3.stac.json"]
    stamps = {p: p.stat().st_mtime_ns for p in final_files(out) if p.name != "catalog.json"}

    second = run_batch(three, quiet=True)
    assert statuses(second) == {"a": "skipped", "s2": "skipped", "s3": "skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    assert "skipped" in format_summary(second) and "water km2" in format_summary(second)

    # a changed input reruns that scene only
    synthesize(tmp_path / "data" / "s2.tif", 96, seed=99)
    third = run_batch(three, quiet=True)
    assert statuses(third) == {"a": "skipped", "s2": "done", "s3": "skipped"}
    assert third.scenes[1].reason == "input changed"
    # a changed parameter reruns that scene only
    three.write_text(three.read_text().replace("glob: data/s[23].tif", "glob: data/s[23].tif\n    vectorize: false"))
    fourth = run_batch(three, quiet=True)
    assert statuses(fourth) == {"a": "skipped", "s2": "done", "s3": "done"}
    assert fourth.scenes[2].reason == "parameters changed: vectorize"
    assert not (out / "s3" / "s3.gpkg").exists()  # not an output of this configuration
    assert "vectors" not in json.loads((out / "s3" / "s3.stac.json").read_text())["assets"]
    # a lost output reruns its scene; a touched but unchanged one does not
    (out / "a" / "s1.gpkg").unlink()
    os.utime(out / "s3" / "s3.classes.tif")
    fifth = run_batch(three, quiet=True)
    assert statuses(fifth) == {"a": "done", "s2": "skipped", "s3": "skipped"}
    assert fifth.scenes[0].reason == "output gpkg missing or changed"
    # --only, --force, --dry-run
    assert statuses(run_batch(three, quiet=True, only=["s3"], force=True)) == {"s3": "done"}
    synthesize(tmp_path / "data" / "s3.tif", 96, seed=98)
    dry = run_batch(three, dry_run=True, quiet=True)
    assert statuses(dry) == {"a": "would-skip", "s2": "would-skip", "s3": "would-run"}
    assert dry.scenes[2].reason == "input changed"
    assert run_batch(three, quiet=True, only=["s3"]).scenes[0].status == "done"
    assert not hidden_files(out)


def test_model_checksum_matches_the_loaded_bundle(small_unet) -> None:
    assert model_checksum("default") == geoseg.load_model("default").checksum
    assert model_checksum("spectral") == geoseg.load_model("spectral").checksum
    assert model_checksum(str(small_unet)) == geoseg.load_model(str(small_unet)).checksum == file_sha256(small_unet)


def test_one_failing_scene_does_not_stop_the_others(tmp_path) -> None:
    good = scenes(tmp_path / "data", 2)
    data = read(good[0])
    write_raster(tmp_path / "data" / "two_bands.tif", data[:2])  # the model needs green, red, nir
    corrupt = tmp_path / "data" / "corrupt.tif"
    corrupt.write_bytes(good[1].read_bytes()[: good[1].stat().st_size // 2])  # truncated
    cat = write_catalog(tmp_path / "catalog.yaml", """
        defaults: {model: spectral, tile_size: 64}
        scenes:
          - path: data/s1.tif
          - path: data/two_bands.tif
          - path: data/corrupt.tif
          - path: data/missing.tif
          - path: data/s2.tif
        """)
    result = CliRunner().invoke(batch_command, [str(cat), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == {"done": 2, "failed": 3} and report["exit_code"] == 1
    by_id = {s["id"]: s for s in report["scenes"]}
    assert by_id["s1"]["status"] == by_id["s2"]["status"] == "done"
    assert by_id["two_bands"]["error"]["type"] == "ContractError" and "nir" in by_id["two_bands"]["error"]["message"]
    assert by_id["corrupt"]["error"]["type"] == "RasterReadError" and "truncated" in by_id["corrupt"]["error"]["message"]
    assert by_id["missing"]["error"]["message"].endswith("does not exist: check the path")
    assert "corrupt failed: RasterReadError" in result.output  # the summary (stderr)
    for sid in ("two_bands", "corrupt", "missing"):
        assert not (tmp_path / "outputs" / sid).exists() or not final_files(tmp_path / "outputs" / sid)


def test_a_second_batch_on_the_same_catalog_refuses_to_start(three, tmp_path) -> None:
    with BatchLock(three) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError, match=rf"another geoseg batch \(pid {os.getpid()}\) is running"):
            run_batch(three, quiet=True)
        result = CliRunner().invoke(batch_command, [str(three), "-q"])
        assert result.exit_code == 3
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("geoseg: error: another geoseg batch") and "wait for it" in lines[0]
        assert run_batch(three, dry_run=True, quiet=True).scenes  # a dry run only reads
    assert not lock.path.exists()
    assert run_batch(three, quiet=True).exit_code == 0


def test_cli_errors_and_options(three, tmp_path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(batch_command, ["--help"]).output
    for opt in ("--scheduler", "--scheduler-file", "--placement", "--workers", "--only", "--dry-run", "--force", "--report",
                "--json", "--debug"):
        assert opt in help_text
    # where the work goes needs a cluster; a scheduler file must hold an address (one line each)
    result = runner.invoke(batch_command, [str(three), "--placement", "scene"])
    assert result.exit_code == 1 and "--placement scene places work on a Dask cluster" in result.output
    (tmp_path / "notes.json").write_text("{}")
    result = runner.invoke(batch_command, [str(three), "--scheduler-file", str(tmp_path / "notes.json")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is not a Dask scheduler file: it holds no scheduler address" in result.output
    assert not (tmp_path / "out").exists()
    bad = write_catalog(tmp_path / "bad.yaml", "scenes:\n  - path: data/s1.tif\n    tile_size: big\n")
    result = runner.invoke(batch_command, [str(bad)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"geoseg: error: {bad}:3: scenes[0].tile_size: Input should be a valid integer, "
                                     "unable to parse string as an integer (got 'big')")
    result = runner.invoke(batch_command, [str(three), "--only", "a,nope"])
    assert result.exit_code == 2 and "no scene with id 'nope'" in result.output
    result = runner.invoke(batch_command, [str(three), "--dry-run"])
    assert result.exit_code == 0 and "would-run" in result.output and not (tmp_path / "out").exists()
    result = runner.invoke(batch_command, [str(three), "--json", "--only", "a"])
    assert result.exit_code == 0 and json.loads(result.output)["counts"] == {"done": 1}
    example = tmp_path / "example.yaml"
    example.write_text((Path(__file__).resolve().parents[1] / "catalog.yaml").read_text())
    result = runner.invoke(batch_command, [str(example)])
    assert result.exit_code == 2 and "make the scenes first: mkdir -p examples/tiles && geoseg synth" in result.output


def test_sigkill_mid_batch_then_rerun_completes_only_what_was_missing(tmp_path, small_unet) -> None:
    scenes(tmp_path / "data", 4, size=192)
    cat = write_catalog(tmp_path / "catalog.yaml", f"""
        defaults:
          model: {small_unet}
          tile_size: 64
          out: out/{{id}}
        scenes:
          - glob: data/*.tif
        """)
    out = tmp_path / "out"
    proc = subprocess.Popen([*GEOSEG, "batch", str(cat), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        first_done = None
        while time.monotonic() < deadline and proc.poll() is None:
            manifests = list(out.glob("*/*.run.json"))
            if manifests and first_done is None:
                first_done = time.monotonic()
            # kill while a later scene has temporary files, or soon after the first scene is done
            if manifests and (hidden_files(out) or time.monotonic() - first_done > 0.3):
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the batch ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done_before = {p.parent.name for p in out.glob("*/*.run.json")}
    assert 1 <= len(done_before) < 4
    # whatever has a final name is complete: a manifest's outputs have their checksums,
    # and every raster, GeoPackage and JSON under a final name opens and reads
    for manifest in out.glob("*/*.run.json"):
        for entry in json.loads(manifest.read_text())["outputs"].values():
            assert file_sha256(manifest.parent / entry["path"]) == entry["sha256"]
    for p in final_files(out):
        if p.suffix == ".tif":
            with rasterio.open(p) as ds:
                ds.read()
        elif p.suffix == ".gpkg":
            pyogrio.read_info(p, layer="classes")
        elif p.suffix in (".xml", ".qml"):  # legend side-cars (GDAL PAM, QGIS style)
            ElementTree.fromstring(p.read_text())
        elif p.suffix == ".png":  # quicklooks
            from PIL import Image

            with Image.open(p) as im:
                im.load()
        else:
            json.loads(p.read_text())
    assert (tmp_path / ".catalog.yaml.lock").exists()  # left by the killed batch, but its flock died with it
    report = run_batch(cat, quiet=True, report=tmp_path / "report.json")
    done_after = {s.id for s in report.scenes if s.status == "done"}
    skipped = {s.id for s in report.scenes if s.status == "skipped"}
    assert skipped == done_before and done_after == {"s1", "s2", "s3", "s4"} - done_before
    assert not hidden_files(out)  # stale partial files of the killed scene were removed
    assert len(list(out.glob("*/*.run.json"))) == 4


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=log.parent)


def test_separate_dask_scheduler_and_worker_give_identical_outputs(tmp_path, small_unet) -> None:
    from distributed import Client

    scenes(tmp_path / "data", 2, size=160)
    text = f"""
        defaults:
          model: {small_unet}
          tile_size: 64
          out: OUT/{{id}}
          resources: RESOURCES
        scenes:
          - glob: data/*.tif
        """
    threads = write_catalog(tmp_path / "threads.yaml", text.replace("OUT", "threads").replace("RESOURCES", "null"))
    local = write_catalog(tmp_path / "local.yaml", text.replace("OUT", "local").replace("RESOURCES", "null"))
    remote = write_catalog(tmp_path / "remote.yaml", text.replace("OUT", "remote").replace("RESOURCES", "{GPU: 1}"))
    missing = write_catalog(tmp_path / "missing.yaml", text.replace("OUT", "missing").replace("RESOURCES", "{TPU: 1}"))
    sched_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
        procs.append(_start(["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                             "--memory-limit", "0", "--resources", "GPU=1"], tmp_path / "worker.log"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        report = run_batch(remote, scheduler=address, quiet=True)
        assert statuses(report) == {"s1": "done", "s2": "done"}, report.scenes
        assert report.scheduler["scheduler"] == address
        # tasks that need a resource no worker has fail at once, with what to do
        failed = run_batch(missing, scheduler=address, quiet=True)
        assert statuses(failed) == {"s1": "failed", "s2": "failed"}
        assert "no worker of the Dask cluster offers the resources TPU=1" in failed.scenes[0].error["message"]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert statuses(run_batch(threads, quiet=True)) == {"s1": "done", "s2": "done"}
    report = run_batch(local, workers=1, quiet=True)  # one local cluster for both scenes
    assert statuses(report) == {"s1": "done", "s2": "done"} and report.scheduler == {"scheduler": "LocalCluster", "workers": 1,
                                                                          "placement": "scene"}
    for sid in ("s1", "s2"):
        manifest = json.loads((tmp_path / "remote" / sid / f"{sid}.run.json").read_text())
        assert manifest["execution"]["scheduler"] == address and manifest["execution"]["resources"] == {"GPU": 1.0}
        assert manifest["execution"]["placement"] == "scene"  # two scenes, one worker: each scene one task
        for product in ("classes.tif", "confidence.tif", "mask.tif"):
            digests = {file_sha256(tmp_path / run / sid / f"{sid}.{product}") for run in ("threads", "remote", "local")}
            assert len(digests) == 1, product
        ta = pyogrio.raw.read(tmp_path / "threads" / sid / f"{sid}.gpkg", layer="classes")
        for run in ("remote", "local"):
            tb = pyogrio.raw.read(tmp_path / run / sid / f"{sid}.gpkg", layer="classes")
            assert ta[2].tolist() == tb[2].tolist()  # the same polygons ...
            assert all(np.array_equal(x, y) for x, y in zip(ta[3], tb[3]))  # ... and attributes


def test_nightly_pipeline_exit_codes(three, tmp_path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "pipelines" / "nightly_catalog.py"
    spec = importlib.util.spec_from_file_location("nightly_catalog", path)
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)
    reports = tmp_path / "reports"
    assert nightly.main([str(three), "--report", str(reports / "{date}.json"), "--quiet"]) == 0
    (written,) = reports.glob("*.json")
    assert written.name[:2] == "20" and json.loads(written.read_text())["counts"] == {"done": 3}
    bad = write_catalog(tmp_path / "bad.yaml", "scenes: []\n")
    assert nightly.main([str(bad), "--quiet", "--report", str(tmp_path / "r.json")]) == 2
    with BatchLock(three):
        assert nightly.main([str(three), "--quiet", "--report", str(tmp_path / "r.json")]) == 3
