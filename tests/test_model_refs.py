"""One model resolver, one cache key: built-in names win over files, and a bundle rewritten
in place is the bundle that runs (regression tests for two bugs of the flat layout)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read

import geoseg
from geoseg.errors import ModelError
from geoseg.models import build_unet
from geoseg.models.checksum import model_checksum
from geoseg.models.refs import resolve_model_ref


def test_builtin_names_win_and_paths_are_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_bytes(b"")
    (tmp_path / "spectral").mkdir()
    assert resolve_model_ref("default") == "default"
    assert resolve_model_ref("spectral") == "spectral"
    assert resolve_model_ref("./default") == str(tmp_path / "default")
    assert resolve_model_ref("m.safetensors", base="/data/models") == "/data/models/m.safetensors"
    assert resolve_model_ref("~/m.safetensors") == str(Path.home() / "m.safetensors")
    assert geoseg.load_model("default").name == "default"
    with pytest.raises(ModelError, match="not a geoseg model bundle"):
        geoseg.load_model("./default")
    with pytest.raises(ModelError, match="empty model reference"):
        resolve_model_ref("")


def test_a_file_and_a_folder_named_like_builtins_do_not_break_run(tmp_path: Path, synth_scene) -> None:
    """`geoseg run scene.tif` in a directory holding a file `default` and a folder `spectral`."""
    scene, _ = synth_scene
    (tmp_path / "default").write_bytes(b"")
    (tmp_path / "spectral").mkdir()
    for model in ("default", "spectral"):
        out = subprocess.run(
            [sys.executable, "-m", "geoseg", "run", str(scene), "-o", f"out_{model}", "-m", model, "--no-vectorize",
             "--tile-size", "256", "--json"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
        )
        assert out.returncode == 0, out.stderr
        manifest = json.loads(out.stdout)
        assert manifest["model"]["name"] == model and manifest["model"]["ref"] == model
        assert (read(tmp_path / f"out_{model}" / "scene.classes.tif") != 255).any()


def test_a_bundle_rewritten_in_place_is_reloaded(tmp_path: Path, synth_scene) -> None:
    """The predictor cache is keyed on content: the second run uses the new weights."""
    scene, _ = synth_scene
    bands = ("blue", "green", "red", "nir")
    norm = {"mean": [1000.0] * 4, "std": [800.0] * 4}
    a = build_unet(bands, 3, base_width=4, depth=2, normalization=norm, seed=1)
    b = build_unet(bands, 3, base_width=4, depth=2, normalization=norm, seed=2)
    path = tmp_path / "m.safetensors"

    def run(model: Path, out: str) -> tuple[dict, np.ndarray]:
        manifest = geoseg.run_scene(scene, tmp_path / out, model=str(model), quiet=True, vectorize=False, tile_size=128)
        return manifest, read(tmp_path / out / "scene.classes.tif")

    a.save(path)
    first, classes_a = run(path, "a")
    b.save(path)  # same path, new weights, same process
    second, classes_b_in_place = run(path, "b")
    fresh = tmp_path / "b.safetensors"
    shutil.copy(path, fresh)
    _, classes_b = run(fresh, "b_fresh")

    assert first["model"]["sha256"] != second["model"]["sha256"] == model_checksum(path)
    assert not np.array_equal(classes_a, classes_b), "the two random models should disagree somewhere"
    np.testing.assert_array_equal(classes_b_in_place, classes_b)


def test_a_task_refuses_a_model_that_changed_since_the_client_loaded_it(tmp_path: Path) -> None:
    from geoseg.scene.predict import get_predictor

    path = tmp_path / "m.safetensors"
    build_unet(2, 2, base_width=4, depth=1, seed=1).save(path)
    old = geoseg.load_model(path).checksum
    build_unet(2, 2, base_width=4, depth=1, seed=2).save(path)
    with pytest.raises(ModelError, match="changed during the run"):
        get_predictor(str(path), old, "cpu")
