"""A full disk at every writing stage of `geoseg run` (a real, small tmpfs): a one-line
error naming the directory and what was being written, GDAL's messages inside it,
a non-zero exit, nothing under a final name; and the run resumes once there is space."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from geoseg.errors import OutputError


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib)``: a fresh tmpfs of that size (skips where mounting is not allowed)."""
    if not _can_mount():
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Fill the filesystem of ``directory`` to the last byte."""
    fd = os.open(directory / f"ballast-{uuid.uuid4().hex[:6]}", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * chunk) < chunk:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def final_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith((".", "ballast")))


def _fill_before(monkeypatch, owner, name: str, directory: Path) -> None:
    """Fill the disk the first time ``owner.name`` is called, then call it."""
    real = getattr(owner, name)
    state = {"done": False}

    def wrapper(*a, **kw):
        if not state["done"]:
            state["done"] = True
            fill(directory)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapper)


def _stages():
    import geoseg.vector.api as vector_api
    from geoseg.io import cog
    from geoseg.scene import journal, pipeline

    return {
        "journal": (journal.TileJournal, "start_fresh", "the resume journal"),
        "tiles": (journal.TileJournal, "record", "the partial scene."),
        "cogs": (cog.RasterProduct, "finish", "(COG)"),
        "geopackage": (vector_api, "vectorize_products", "scene.gpkg"),
        "legends": (pipeline, "stage_legend", "the legend scene."),
        "stac": (pipeline, "_stage_stac_item", "the STAC Item scene.stac.json"),
        "manifest": (pipeline, "_stage_manifest", "the run manifest scene.run.json"),
    }


@pytest.mark.parametrize("stage", ["journal", "tiles", "cogs", "geopackage", "legends", "stac", "manifest"])
def test_full_disk_at_each_stage(stage, small_disk, monkeypatch, synth_scene, small_unet) -> None:
    from geoseg import run_scene

    monkeypatch.setenv("GEOSEG_CHECKPOINT_SECONDS", "0")
    disk = small_disk(16 * 1024)
    out = disk / "out"
    owner, name, what = _stages()[stage]
    _fill_before(monkeypatch, owner, name, disk)
    with pytest.raises(OutputError) as info:
        run_scene(synth_scene[0], out, small_unet, tile_size=128, quiet=True, stac=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"in {out}: no space left on device" in msg and what in msg, msg
    assert "--resume" in msg
    assert final_names(out) == []  # nothing under a final name
    left = {p.name for p in out.iterdir()}
    assert not [n for n in left if ".cog-" in n or ".gpkg-" in n or ".json-" in n or ".legend-" in n], left


def _geoseg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, **kw, check=False)


def test_cli_full_disk_is_one_line_then_resume_finishes(small_disk, synth_scene, small_unet) -> None:
    disk = small_disk(48)  # room for the journal and empty stripes, not for the tiles
    out = disk / "out"
    r = _geoseg("run", synth_scene[0], "-o", out, "-m", small_unet, "--tile-size", "128", "--quiet")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # no traceback, no libtiff line of its own
    assert lines[0].startswith("geoseg: error: cannot write ") and f"in {out}: no space left on device" in lines[0]
    assert "_tiffWriteProc: No space left on device" in lines[0] or "No space left" in lines[0]
    assert final_names(out) == []
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    r = _geoseg("run", synth_scene[0], "-o", out, "-m", small_unet, "--tile-size", "128", "--quiet", "--resume")
    assert r.returncode == 0, r.stderr
    assert {"scene.classes.tif", "scene.run.json"} <= set(final_names(out))
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_vectorize_onto_a_full_disk_is_one_line(small_disk, tmp_path) -> None:
    import numpy as np
    from conftest import write_raster

    rng = np.random.default_rng(0)
    classes = write_raster(tmp_path / "speckle.tif", rng.integers(0, 4, (256, 256)).astype("uint8"))
    disk = small_disk(64)  # far too small for ~30,000 polygons
    r = _geoseg("vectorize", classes, disk / "v.gpkg", "--quiet")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"geoseg: error: cannot write the polygons v.gpkg in {disk}: ")
    assert final_names(disk) == []
