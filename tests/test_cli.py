"""The command line as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read, write_raster


def geoseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geoseg: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def no_final_outputs(out: Path) -> bool:
    return not out.exists() or not any(p for p in out.iterdir())


def test_run_help_explains_every_option() -> None:
    proc = geoseg("run", "--help")
    assert proc.returncode == 0
    for opt in ("--out", "--model", "--bands", "--tile-size", "--batch-size", "--device", "--workers",
                "--scheduler", "--scheduler-file", "--placement", "--overwrite", "--quiet", "--json", "--debug"):
        assert opt in proc.stdout
    top = geoseg("--help")
    for cmd in ("run", "synth", "models", "demo"):
        assert cmd in top.stdout


def test_models_lists_builtins() -> None:
    proc = geoseg("models")
    assert proc.returncode == 0
    for name in ("default", "spectral", "unet"):
        assert name in proc.stdout


def test_synth_then_run_with_json(tmp_path) -> None:
    proc = geoseg("synth", tmp_path / "s.tif", "--size", "200", "--seed", "1", "--labels", tmp_path / "l.tif")
    assert proc.returncode == 0, proc.stderr
    proc = geoseg("run", tmp_path / "s.tif", "-m", "spectral", "--json", "--tile-size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["input"]["width"] == 200
    assert (tmp_path / "s_geoseg" / "s.classes.tif").exists()  # default ./<stem>_geoseg/


def test_progress_bar_unless_quiet(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    loud = geoseg("run", scene, "-m", "spectral", "-o", tmp_path / "a", "--tile-size", "64")
    assert loud.returncode == 0 and "tiles" in loud.stderr and "35/35" in loud.stderr  # 5 x 7 tiles of 64 px
    quiet = geoseg("run", scene, "-m", "spectral", "-o", tmp_path / "b", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""


# ---------------------------------------------------------------- bad input
@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def test_missing_path(tmp_path, out) -> None:
    assert_one_line_error(geoseg("run", tmp_path / "nope.tif", "-o", out), "does not exist")
    assert no_final_outputs(out)


def test_directory(tmp_path, out) -> None:
    assert_one_line_error(geoseg("run", tmp_path, "-o", out), "is a directory")
    assert no_final_outputs(out)


def test_non_raster_file(tmp_path, out) -> None:
    p = tmp_path / "notes.tif"
    p.write_text("this is not an image\n")
    assert_one_line_error(geoseg("run", p, "-o", out), "not a raster")
    assert no_final_outputs(out)


def test_truncated_geotiff(tmp_path, synth_scene, out) -> None:
    scene, _ = synth_scene
    data = scene.read_bytes()
    p = tmp_path / "cut.tif"
    p.write_bytes(data[: len(data) * 2 // 3])
    assert_one_line_error(geoseg("run", p, "-m", "spectral", "-o", out), "truncated")
    assert no_final_outputs(out)


def test_raster_without_crs(tmp_path, out) -> None:
    p = write_raster(tmp_path / "nocrs.tif", np.ones((4, 20, 20), np.uint16), crs=None)
    assert_one_line_error(geoseg("run", p, "-m", "spectral", "-o", out), "no CRS")
    assert no_final_outputs(out)


def test_raster_without_transform(tmp_path, out) -> None:
    p = write_raster(tmp_path / "notf.tif", np.ones((4, 20, 20), np.uint16), transform=None)
    assert_one_line_error(geoseg("run", p, "-m", "spectral", "-o", out), "no geotransform")
    assert no_final_outputs(out)


def test_band_count_mismatch_names_both_sides(tmp_path, out) -> None:
    p = write_raster(tmp_path / "rgb.tif", np.ones((3, 20, 20), np.uint16))
    assert_one_line_error(geoseg("run", p, "-m", "spectral", "-o", out), "3 band(s)", "expects 4", "--bands")
    assert_one_line_error(geoseg("run", p, "-m", "spectral", "--bands", "1,2,3,9", "-o", out), "band(s) [9]")
    assert no_final_outputs(out)


def test_dtype_outside_the_model_range(tmp_path, out, small_unet) -> None:
    from geoseg.models import read_bundle

    b = read_bundle(small_unet).replace(value_range=(0.0, 10000.0))
    b.save(tmp_path / "ranged.safetensors")
    p = write_raster(tmp_path / "u8.tif", np.ones((4, 20, 20), np.uint8))
    assert_one_line_error(geoseg("run", p, "-m", tmp_path / "ranged.safetensors", "-o", out), "uint8", "0..10000")
    assert no_final_outputs(out)


def test_unwritable_output_directory(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(geoseg("run", scene, "-m", "spectral", "-o", blocker / "sub"), "cannot write")
    assert_one_line_error(geoseg("run", scene, "-m", "spectral", "-o", blocker), "not a directory")


def test_model_file_that_is_not_a_bundle(tmp_path, synth_scene, out) -> None:
    scene, _ = synth_scene
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(geoseg("run", scene, "-m", junk, "-o", out), "not a geoseg model bundle")
    assert_one_line_error(geoseg("run", scene, "-m", "no-such-model", "-o", out), "no-such-model")
    assert no_final_outputs(out)


class _Payload:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickled_model_is_refused_and_never_runs(tmp_path, synth_scene, out) -> None:
    scene, _ = synth_scene
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Payload(str(sentinel))))
    assert_one_line_error(geoseg("run", scene, "-m", evil, "-o", out), "not a geoseg model bundle")
    assert not sentinel.exists()
    assert no_final_outputs(out)


def test_debug_shows_the_traceback(tmp_path) -> None:
    proc = geoseg("run", tmp_path / "nope.tif", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_failure_mid_run_leaves_no_output(tmp_path, synth_scene) -> None:
    """A read error after work started (corrupt data block) removes every temporary file."""
    import rasterio

    scene = write_raster(tmp_path / "ok.tif", read(synth_scene[0]), compress="deflate")  # 2x2 blocks of 256
    with rasterio.open(scene) as ds:  # a compressed block in the middle of the first band
        off = int(ds.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_0", "TIFF", bidx=1))
    data = bytearray(scene.read_bytes())
    data[off : off + size] = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
    p = tmp_path / "corrupt.tif"
    p.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = geoseg("run", p, "-m", "spectral", "-o", out, "--tile-size", "64", "--quiet")
    assert_one_line_error(proc, "corrupt")
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    proc = geoseg("demo", tmp_path / "demo", "--size", "512")
    assert proc.returncode == 0, proc.stderr
    assert "water" in proc.stdout and "km2" in proc.stdout
    outs = tmp_path / "demo" / "outputs"
    assert (outs / "demo_scene.classes.tif").exists() and (outs / "demo_scene.gpkg").exists()
    assert read(outs / "demo_scene.classes.tif").shape == (1, 512, 512)
