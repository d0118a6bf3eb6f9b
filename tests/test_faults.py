"""A full disk, or a disk that turns read-only, at every writing stage of `geoseg run` and
`geoseg vectorize` (real filesystems: a small tmpfs; ext4 on a loop device, aborted): a
one-line error naming the directory and what was being written, GDAL's messages inside
it, a non-zero exit, nothing under a final name; and the run resumes once there is space."""

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


def _once_before(monkeypatch, owner, name: str, action) -> None:
    """Run ``action()`` the first time ``owner.name`` is called, then call it."""
    real = getattr(owner, name)
    state = {"done": False}

    def wrapper(*a, **kw):
        if not state["done"]:
            state["done"] = True
            action()
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapper)


def _fill_before(monkeypatch, owner, name: str, directory: Path) -> None:
    """Fill the disk the first time ``owner.name`` is called, then call it."""
    _once_before(monkeypatch, owner, name, lambda: fill(directory))


@pytest.fixture
def failing_disk(tmp_path):
    """``failing_disk()``: a fresh, small ext4 filesystem (a file on a loop device), and
    ``turn_read_only(d)``, which aborts it: from then on every write fails with EROFS, on
    files already open too, as when the kernel remounts a disk read-only after an I/O
    error (``errors=remount-ro``). A tmpfs cannot stand in: ``mount -o remount,ro`` refuses
    (EBUSY) while a file is open for writing, and a run always has one open (the journal).
    Skips where loop mounts are not allowed."""
    if not _can_mount() or shutil.which("mkfs.ext4") is None:
        pytest.skip("an ext4 loop mount needs root, mount(8) and mkfs.ext4")
    mounted: list[Path] = []

    def make() -> Path:
        image = tmp_path / f"disk{len(mounted)}.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        for cmd in (["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(d)]):
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot make an ext4 loop mount here ({' '.join(cmd[:1])}): {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)


def turn_read_only(d: Path) -> None:
    subprocess.run(["mount", "-o", "remount,abort", str(d)], check=True, capture_output=True)
    with pytest.raises(OSError):  # the filesystem itself refuses writes now
        (d / "probe").write_bytes(b"")


def _read_only_before(monkeypatch, owner, name: str, directory: Path) -> None:
    """Turn the disk read-only the first time ``owner.name`` is called, then call it."""
    _once_before(monkeypatch, owner, name, lambda: turn_read_only(directory))


def _stages():
    import geoseg.vector.api as vector_api
    from geoseg.io import cog
    from geoseg.io.store import OutputStore
    from geoseg.scene import journal, pipeline

    return {
        "journal": (journal.TileJournal, "start_fresh", "the resume journal"),
        "tiles": (journal.TileJournal, "record", "the partial scene."),
        "cogs": (cog.RasterProduct, "finish", "(COG)"),
        "geopackage": (vector_api, "vectorize_products", "scene.gpkg"),
        "legends": (pipeline, "stage_legend", "the legend scene."),
        "quicklooks": (pipeline, "stage_quicklooks", "the quicklook scene.classes.png"),
        "stac": (pipeline, "_stage_stac_item", "the STAC Item scene.stac.json"),
        "manifest": (OutputStore, "commit", "the run manifest scene.run.json"),
    }


@pytest.mark.parametrize("stage", ["journal", "tiles", "cogs", "geopackage", "legends", "quicklooks", "stac", "manifest"])
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
    assert not [n for n in left if ".cog-" in n or ".gpkg-" in n or ".json-" in n or ".legend-" in n or ".ql-" in n], left


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


@pytest.mark.parametrize("stage", ["journal", "tiles", "cogs", "geopackage", "legends", "quicklooks", "stac", "manifest"])
def test_disk_turning_read_only_at_each_stage(stage, failing_disk, monkeypatch, synth_scene, small_unet) -> None:
    """Not only a full disk: an output filesystem that stops taking writes at any stage
    gives the same one line, and leaves nothing under a final name."""
    from geoseg import run_scene

    monkeypatch.setenv("GEOSEG_CHECKPOINT_SECONDS", "0")
    disk = failing_disk()
    out = disk / "out"
    owner, name, what = _stages()[stage]
    _read_only_before(monkeypatch, owner, name, disk)
    with pytest.raises(OutputError) as info:
        run_scene(synth_scene[0], out, small_unet, tile_size=128, quiet=True, stac=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"in {out}: read-only file system" in msg and what in msg, msg
    assert "--resume" in msg
    assert final_names(out) == []  # nothing under a final name


#: ``python -c`` program: the ``geoseg`` command, with the disk ``sys.argv[1]`` turned read-only
#: the ``sys.argv[4]``-th time ``sys.argv[2]``.``sys.argv[3]`` is called; the command's own
#: arguments follow.
_CLI_TURNING_READ_ONLY = """
import importlib, subprocess, sys
disk, module, attr, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
owner_path, _, name = attr.rpartition(".")
owner = importlib.import_module(module)
for part in filter(None, owner_path.split(".")):
    owner = getattr(owner, part)
real, calls = getattr(owner, name), [0]
def hook(*a, **kw):
    calls[0] += 1
    if calls[0] == nth:
        subprocess.run(["mount", "-o", "remount,abort", disk], check=True)
    return real(*a, **kw)
setattr(owner, name, hook)
from geoseg.vector.formats import LayerWriter
LayerWriter.BATCH = 97  # many batches (with small blocks): the disk fails in the middle of the layer
from geoseg.cli import main
sys.argv = ["geoseg", *sys.argv[5:]]
main()
"""


def _geoseg_turning_read_only(disk: Path, hook: str, nth: int, *args):
    module, attr = hook.split(":")
    cmd = [sys.executable, "-c", _CLI_TURNING_READ_ONLY, str(disk), module, attr, str(nth), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_vectorize_onto_a_disk_turning_read_only_is_one_line(failing_disk, tmp_path) -> None:
    """The GeoPackage writer (GDAL through ctypes) fails in the middle of a layer: GDAL's
    message is in the one line, exit 1, no file under the final name."""
    import numpy as np
    from conftest import write_raster

    rng = np.random.default_rng(0)
    classes = write_raster(tmp_path / "speckle.tif", rng.integers(0, 4, (256, 256)).astype("uint8"))
    out = failing_disk() / "out"
    r = _geoseg_turning_read_only(out.parent, "geoseg.vector._ogr:GpkgLayer.write", 5, "vectorize", classes,
                                  out / "v.gpkg", "--block-size", "32", "--quiet")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"geoseg: error: cannot write the polygons v.gpkg in {out}: read-only file system (")
    assert "GDAL failed to " in lines[0]  # what GDAL said, inside the line
    assert final_names(out) == []


@pytest.mark.parametrize("hook,what", [("geoseg.io.cog:RasterProduct.finish", "(COG)"),
                                       ("geoseg.io.store:OutputStore.commit", "the run manifest scene.run.json")])
def test_cli_run_onto_a_disk_turning_read_only_is_one_line(hook, what, failing_disk, synth_scene, small_unet) -> None:
    disk = failing_disk()
    out = disk / "out"
    r = _geoseg_turning_read_only(disk, hook, 1, "run", synth_scene[0], "-o", out, "-m", small_unet,
                                  "--tile-size", "128", "--quiet")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("geoseg: error: cannot write ") and f"in {out}: read-only file system" in lines[0]
    assert what in lines[0] and "--resume" in lines[0]
    assert final_names(out) == []
