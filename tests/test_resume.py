"""Resume inside a scene: SIGKILL or SIGTERM in the middle of a multi-tile scene, then
``--resume`` (and ``geoseg batch``): byte-identical outputs, only the missing tiles redone,
damaged tiles redone, a changed option discards the journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio

RASTERS = ("classes.tif", "confidence.tif", "mask.tif", "classes.tif.aux.xml", "mask.tif.aux.xml", "classes.qml")


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "geoseg", *map(str, args)]


def _env(**extra) -> dict:
    return {**os.environ, "GEOSEG_CHECKPOINT_SECONDS": "0", **extra}


def _journal(out: Path, stem: str = "big") -> Path:
    return out / f".{stem}.run.json.journal.partial.jsonl"


def _journaled(out: Path) -> int:
    j = _journal(out)
    if not j.exists():
        return 0
    return max(0, sum(1 for line in j.read_text().splitlines() if line.strip()) - 1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 512x512 scene: 64 tiles of 64 px."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("resume_scene")
    return Path(synthesize(d / "big.tif", 512, seed=11).path)


RUN = ("--tile-size", "64", "--threads", "2", "--quiet", "--json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scene, small_unet) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("resume_ref")
    r = subprocess.run(_cmd("run", scene, "-o", out, "-m", small_unet, *RUN), capture_output=True, text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def _start_and_stop(scene, out, model, sig, at_least: int, extra=()) -> subprocess.Popen:
    """Start a run, wait until ``at_least`` tiles are journaled, then send ``sig``."""
    p = subprocess.Popen(_cmd("run", scene, "-o", out, "-m", model, *RUN, *extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while _journaled(out) < at_least:
        assert p.poll() is None, f"the run ended before it could be stopped: {p.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(sig)
    return p


def _same_bytes(a: Path, b: Path, stem="big") -> None:
    for kind in RASTERS:
        assert (a / f"{stem}.{kind}").read_bytes() == (b / f"{stem}.{kind}").read_bytes(), kind


@pytest.mark.slow
def test_sigkill_then_resume_redoes_only_missing_tiles(tmp_path, scene, small_unet, reference) -> None:
    ref, ref_manifest = reference
    assert ref_manifest["execution"]["tiles"] == 64
    p = _start_and_stop(scene, tmp_path, small_unet, signal.SIGKILL, at_least=20)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not [q for q in tmp_path.iterdir() if not q.name.startswith(".")], "a final name after a kill"
    done = _journaled(tmp_path)
    assert 20 <= done < 64
    r = subprocess.run(_cmd("run", scene, "-o", tmp_path, "-m", small_unet, *RUN, "--resume"), capture_output=True,
                       text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["execution"]["tiles_resumed"] == done  # every journaled tile checked good and kept
    assert m["execution"]["tiles_computed"] == 64 - done  # only the missing ones redone
    _same_bytes(ref, tmp_path)
    assert m["classes"] == ref_manifest["classes"]
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(q.name for q in ref.iterdir())  # journal gone


@pytest.mark.slow
def test_damaged_tile_is_redone_and_changed_option_starts_over(tmp_path, scene, small_unet, reference) -> None:
    ref, _ = reference
    p = _start_and_stop(scene, tmp_path, small_unet, signal.SIGKILL, at_least=10)
    p.wait(timeout=30)
    done = _journaled(tmp_path)
    first = json.loads(_journal(tmp_path).read_text().splitlines()[1])
    # damage one journaled tile in the partial class map (as a torn block would)
    stripes = tmp_path / ".big.classes.tif.stripes.partial.tif"
    with rasterio.open(stripes, "r+") as ds:
        win = ((first["row"], first["row"] + 64), (first["col"], first["col"] + 64))
        ds.write((ds.read(1, window=win) + 1) % 3, 1, window=win)
    r = subprocess.run(_cmd("run", scene, "-o", tmp_path, "-m", small_unet, *RUN, "--resume"), capture_output=True,
                       text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["execution"]["tiles_resumed"] == done - 1
    assert m["execution"]["tiles_computed"] == 64 - done + 1
    _same_bytes(ref, tmp_path)

    # a changed option discards the journal: kill again, resume with another --min-area
    out2 = tmp_path / "again"
    p = _start_and_stop(scene, out2, small_unet, signal.SIGKILL, at_least=10)
    p.wait(timeout=30)
    r = subprocess.run(_cmd("run", scene, "-o", out2, "-m", small_unet, *RUN, "--resume", "--min-area", "500"),
                       capture_output=True, text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["execution"]["tiles_resumed"] == 0 and m["execution"]["tiles_computed"] == 64


@pytest.mark.slow
def test_sigterm_stops_within_seconds_exit_143_then_resume(tmp_path, scene, small_unet, reference) -> None:
    ref, _ = reference
    p = _start_and_stop(scene, tmp_path, small_unet, signal.SIGTERM, at_least=8)
    t = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t < 10
    assert p.returncode == 143
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: terminated"), err
    assert "--resume" in lines[0]
    assert not [q for q in tmp_path.iterdir() if not q.name.startswith(".")]
    # the journal is consistent: a header, then whole tile entries, each on disk
    rows = _journal(tmp_path).read_text().splitlines()
    assert json.loads(rows[0])["geoseg_journal"] == 1
    entries = [json.loads(x) for x in rows[1:]]
    assert len(entries) >= 8 and len({(e["row"], e["col"]) for e in entries}) == len(entries)
    r = subprocess.run(_cmd("run", scene, "-o", tmp_path, "-m", small_unet, *RUN, "--resume"), capture_output=True,
                       text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["execution"]["tiles_resumed"] == len(entries)
    _same_bytes(ref, tmp_path)


@pytest.mark.slow
def test_batch_resumes_a_killed_scene(tmp_path, scene, small_unet, reference) -> None:
    ref, _ = reference
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        f"defaults:\n  model: {small_unet}\n  tile_size: 64\n  out: {tmp_path}/out/{{id}}\n"
        f"scenes:\n  - path: {scene}\n"
    )
    p = subprocess.Popen(_cmd("batch", catalog, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    out = tmp_path / "out" / "big"
    deadline = time.monotonic() + 120
    while _journaled(out) < 10:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.kill()
    p.wait()
    done = _journaled(out)
    r = subprocess.run(_cmd("batch", catalog, "--json", "--report", tmp_path / "report.json"), capture_output=True,
                       text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "big.run.json").read_text())
    assert m["execution"]["tiles_resumed"] == done
    for kind in ("classes.tif", "confidence.tif", "mask.tif"):
        assert (out / f"big.{kind}").read_bytes() == (ref / f"big.{kind}").read_bytes(), kind


def test_journal_ignores_a_torn_last_line_and_a_foreign_key(tmp_path) -> None:
    from geoseg.scene.journal import TileJournal

    finals = [tmp_path / "s.classes.tif", tmp_path / "s.confidence.tif"]
    j = TileJournal(tmp_path, "s", "key-1", finals)
    j.start_fresh()
    for p in j.stripes.values():
        p.write_bytes(b"")  # the stripes exist (their content is checked by verify, not here)
    j.path.write_text(j.path.read_text() + '{"row": 0, "col": 0, "crc": 1, "skipped": false}\n{"row": 0, "col": 6')
    j.close()
    state = TileJournal(tmp_path, "s", "key-1", finals).open(resume=True)
    assert list(state.tiles) == [(0, 0)]  # the line the kill cut off does not count
    other = TileJournal(tmp_path, "s", "key-2", finals)  # another input, model or option
    assert other.open(resume=True) is None
    assert not j.path.exists() and not any(p.exists() for p in j.stripes.values())  # discarded
