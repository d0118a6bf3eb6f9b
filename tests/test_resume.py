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


def _journaled(out: Path, stem: str = "big") -> int:
    j = _journal(out, stem)
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


def _start_and_stop(scene, out, model, sig, at_least: int, extra=(), stem: str = "big") -> subprocess.Popen:
    """Start a run, wait until ``at_least`` tiles are journaled, then send ``sig``."""
    p = subprocess.Popen(_cmd("run", scene, "-o", out, "-m", model, *RUN, *extra), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while _journaled(out, stem) < at_least:
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
    # what holds under any load (geoseg.scene.journal): the damaged tile is redone, and so may be
    # journaled tiles whose block a later write was rewriting when the kill landed; every tile is
    # either resumed or computed, and the outputs are the same bytes
    assert 0 < m["execution"]["tiles_resumed"] <= done - 1
    assert m["execution"]["tiles_resumed"] + m["execution"]["tiles_computed"] == 64
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
    assert json.loads(rows[0])["geoseg_journal"] == 2
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
    j.path.write_text(j.path.read_text() + '{"row": 0, "col": 0, "window": [0, 0, 64, 64], "crc": 1, "skipped": false}\n{"row": 0, "col": 6')
    j.close()
    state = TileJournal(tmp_path, "s", "key-1", finals).open(resume=True)
    assert list(state.tiles) == [(0, 0)]  # the line the kill cut off does not count
    other = TileJournal(tmp_path, "s", "key-2", finals)  # another input, model or option
    assert other.open(resume=True) is None
    assert not j.path.exists() and not any(p.exists() for p in j.stripes.values())  # discarded


def test_a_tile_is_journaled_only_once_every_block_it_touches_is_complete(tmp_path) -> None:
    """GDAL rewrites a stripes block in place when a later tile writes into it: a tile is
    journaled only once no tile is still to come in any of its blocks (geoseg.scene.journal)."""
    import numpy as np

    from geoseg.grid import PixelWindow
    from geoseg.scene.journal import TileJournal

    finals = [tmp_path / "s.classes.tif"]
    j = TileJournal(tmp_path, "s", "key", finals)
    # four 64-px tiles of a 128x192 output in 128x128 blocks: tiles a, b, c, d; d alone in block 1
    wins = {k: PixelWindow(r, c, 64, 64) for k, (r, c) in
            {"a": (0, 0), "b": (0, 64), "c": (64, 0), "d": (64, 128)}.items()}
    j.plan(wins.values(), [(128, 128)])
    j.start_fresh()

    def journaled() -> list[tuple[int, int]]:
        return [(e["row"], e["col"]) for e in map(json.loads, j.path.read_text().splitlines()[1:])]

    tile = np.zeros((64, 64), np.uint8)
    for k in ("a", "d", "b"):
        j.record((wins[k].row, wins[k].col), wins[k], [tile], False)
        j.checkpoint()
    assert journaled() == [(64, 128)]  # d's block is complete; a's and b's still waits for c
    j.record((64, 0), wins["c"], [tile], False)
    j.checkpoint()
    assert sorted(journaled()) == [(0, 0), (0, 64), (64, 0), (64, 128)]
    # a block whose planned tiles are not all written (a tile the run did not write): its
    # finished tiles wait until the end of inference, whose checkpoint journals them
    j.plan([PixelWindow(0, 256, 64, 64), PixelWindow(64, 256, 64, 64)], [(128, 128)])
    j.record((0, 256), PixelWindow(0, 256, 64, 64), [tile], False)
    j.checkpoint()
    assert (0, 256) not in journaled()
    j.checkpoint(final=True)
    assert (0, 256) in journaled()
    j.close()


# --------------------------------------------------------------------------- areas of interest, resampled scenes

#: Scene columns and rows 70..450 of the 512x512 10 m scene: 7x7 of its 64 tiles, cut at the edges.
BBOX = ("--bbox", "500700,5495500,504500,5499300,EPSG:32633")


def _kill_resume_compare(scene, out: Path, model, extra, ref: Path, ref_manifest: dict, stem: str, at_least: int) -> dict:
    """SIGKILL a run once ``at_least`` tiles are journaled, resume it: only the missing tiles
    are computed, and the outputs are the bytes of the uninterrupted run ``ref``."""
    total = ref_manifest["execution"]["tiles"]
    p = _start_and_stop(scene, out, model, signal.SIGKILL, at_least=at_least, extra=extra, stem=stem)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not [q for q in out.iterdir() if not q.name.startswith(".")], "a final name after a kill"
    entries = [json.loads(x) for x in _journal(out, stem).read_text().splitlines()[1:]]
    done = len(entries)
    assert at_least <= done < total
    assert len({(e["row"], e["col"]) for e in entries}) == done
    r = subprocess.run(_cmd("run", scene, "-o", out, "-m", model, *RUN, *extra, "--resume"), capture_output=True,
                       text=True, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["execution"]["tiles"] == total
    assert m["execution"]["tiles_resumed"] == done  # every journaled tile found at its window and kept
    assert m["execution"]["tiles_computed"] == total - done  # only the missing ones redone
    _same_bytes(ref, out, stem)
    assert m["classes"] == ref_manifest["classes"]
    assert sorted(q.name for q in out.iterdir()) == sorted(q.name for q in ref.iterdir())  # journal gone
    return entries


@pytest.mark.slow
def test_sigkill_then_resume_with_a_bbox(tmp_path, scene, small_unet) -> None:
    """An area of interest: tiles are written cropped to its window (and masked to it); the
    journal records each at that window and the resumed run checks it there."""
    ref = tmp_path / "ref"
    r = subprocess.run(_cmd("run", scene, "-o", ref, "-m", small_unet, *RUN, *BBOX), capture_output=True, text=True,
                       env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    ref_manifest = json.loads(r.stdout)
    assert ref_manifest["execution"]["tiles"] == 49 and ref_manifest["aoi"]["crop"]
    entries = _kill_resume_compare(scene, tmp_path / "out", small_unet, BBOX, ref, ref_manifest, "big", at_least=12)
    # the windows are on the cropped output grid, not the tile grid
    assert any(e["window"][:2] != [e["row"], e["col"]] for e in entries)


@pytest.fixture(scope="module")
def half_gsd(tmp_path_factory) -> tuple[Path, Path]:
    """A 768x768 scene at 5 m and a model of 10 m GSD: 384x384 on the model grid, 36 tiles."""
    from geoseg.models import build_unet
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("resume_gsd")
    scene = Path(synthesize(d / "s5.tif", 768, seed=12, pixel_size=5.0).path)
    model = d / "m10.safetensors"
    build_unet(("blue", "green", "red", "nir"), [("low", "#1f78b4"), ("mid", "#33a02c"), ("high", "#e31a1c")],
               mask_heads=("bright",), base_width=8, depth=3, normalization={"mean": [1000.0] * 4, "std": [800.0] * 4},
               name="test-unet-10m", seed=0, gsd=10.0).save(model)
    return scene, model


@pytest.mark.slow
def test_sigkill_then_resume_a_scene_at_half_the_model_gsd(tmp_path, half_gsd) -> None:
    """A resampled scene: each model-grid tile's products are mapped back onto the scene
    grid; the journal records and checks each tile at the scene window it wrote."""
    scene, model = half_gsd
    ref = tmp_path / "ref"
    r = subprocess.run(_cmd("run", scene, "-o", ref, "-m", model, *RUN), capture_output=True, text=True, env=_env(),
                       check=False)
    assert r.returncode == 0, r.stderr
    ref_manifest = json.loads(r.stdout)
    assert ref_manifest["gsd"]["ratio"] == [2.0, 2.0] and ref_manifest["execution"]["tiles"] == 36
    entries = _kill_resume_compare(scene, tmp_path / "out", model, (), ref, ref_manifest, "s5", at_least=8)
    assert all(e["window"] == [2 * e["row"], 2 * e["col"], 128, 128] for e in entries)  # 64 px model tiles, 128 px on the scene


@pytest.mark.parametrize(("gsd", "bbox", "crop", "output_grid"), [
    (10.0, None, True, "input"), (16.5, None, True, "input"), (3.7, None, True, "input"),
    (None, "500103,5499102,500811,5499877,EPSG:32633", True, "input"),
    (16.5, "500103,5499102,500811,5499877,EPSG:32633", True, "input"),
    (16.5, "500103,5499102,500811,5499877,EPSG:32633", False, "input"),
    (16.5, "500103,5499102,500811,5499877,EPSG:32633", True, "model"),
])
def test_tiles_write_disjoint_windows_where_the_journal_checks_them(gsd, bbox, crop, output_grid) -> None:
    """SceneView.written_window (where a resumed run reads a journaled tile back) is where
    SceneView.finish puts the tile's products, and no two tiles write the same pixel."""
    import numpy as np
    from affine import Affine
    from pyproj import CRS

    from geoseg.grid import GeoBox, TileGrid
    from geoseg.scene.pipeline import TileResult
    from geoseg.scene.view import plan_view

    gb = GeoBox(203, 187, Affine(5, 0, 500000, 0, -5, 5500000), CRS.from_epsg(32633).to_wkt())
    view = plan_view(gb, gsd, bbox=bbox, aoi_crop=crop, output_grid=output_grid)
    assert not view.trivial
    tiles = view.select(TileGrid(view.tile_geobox.height, view.tile_geobox.width, 16, halo=4))
    results, reads = [], []
    for t in tiles:
        z = np.zeros((t.core.height, t.core.width), np.uint8)
        results.append(TileResult(t.core, z, z.copy(), z[None].copy(), False, tile=(t.core.row, t.core.col)))
        src = view.source_window(t.read)
        reads.append((None, None, (src, np.ones((src.height, src.width), bool))))
    finished = view.finish(tiles, results, reads)
    assert len(finished) == len(tiles) > 4
    cover = np.zeros((view.output.height, view.output.width), np.int64)
    for t, r in zip(tiles, finished):
        w = view.written_window(t)
        assert r.core == w and r.tile == (t.core.row, t.core.col)
        cover[w.slices] += 1
    assert cover.max() == 1  # disjoint
    if bbox is None:
        assert cover.min() == 1  # and, without an area, every output pixel written
