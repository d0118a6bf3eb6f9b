"""`geoseg export` and `geoseg models show --stac`: files other tools open, checked with those tools.

ONNX files are opened with onnxruntime the way GeoDeep and Deepness open them (and run by
the real `geodeep` package), TorchScript and torch.export archives are loaded back with
torch, and MLM Items are validated against the STAC JSON schemas offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read, write_raster
from stac_schemas import stac_validator
from affine import Affine

RGB_GSD = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)  # 50 cm/px


def geoseg(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> dict:
    """An RGB U-Net bundle (bands in blue, green, red order: the export reorders them), a
    600x600 uint8 RGB scene at 50 cm and the model exported to ONNX by the CLI."""
    from scipy.ndimage import gaussian_filter

    from geoseg.models import build_unet

    for extra in ("onnx", "onnxscript", "onnxruntime"):  # geoseg[onnx]
        pytest.importorskip(extra)
    d = tmp_path_factory.mktemp("rgb")
    bundle = build_unet(["blue", "green", "red"], ["a", "b", "c", "d"], base_width=8, depth=3, seed=3,
                        normalization={"mean": [120.0, 128.0, 136.0], "std": [40.0, 42.0, 38.0]}, value_range=(0, 255))
    model = bundle.save(d / "rgb.safetensors")
    rng = np.random.default_rng(0)
    img = np.stack([gaussian_filter(rng.normal(size=(600, 600)), 6) for _ in range(3)])
    img = ((img - img.min()) / (img.max() - img.min()) * 255).round().astype("uint8")
    scene = write_raster(d / "rgb.tif", img, transform=RGB_GSD, descriptions=("red", "green", "blue"), photometric="RGB")
    onnx_path = d / "rgb.onnx"
    from geoseg.models.export import export_model

    result = export_model(model, onnx_path, "onnx", tile_size=256, resolution=50)
    assert result.files == [onnx_path] and result.max_abs_diff < 1e-4
    return {"dir": d, "model": model, "bundle": bundle, "scene": scene, "image": img, "onnx": onnx_path}


@pytest.mark.slow
def test_onnx_has_the_metadata_deepness_and_geodeep_read_and_a_fixed_input(rgb) -> None:
    import onnxruntime as ort

    create_session = pytest.importorskip("geodeep.inference").create_session

    session = ort.InferenceSession(str(rgb["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == [3, 256, 256] and not isinstance(inp.shape[0], int)
    assert session.get_outputs()[0].shape[1:] == [4, 256, 256]
    meta = session.get_modelmeta().custom_metadata_map
    # Deepness json-decodes every key (src/deepness/processing/models/model_base.py)
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert json.loads(meta["class_names"]) == {"0": "a", "1": "b", "2": "c", "3": "d"}
    assert json.loads(meta["resolution"]) == 50.0
    assert json.loads(meta["tile_size"]) == json.loads(meta["tiles_size"]) == 256
    overlap = json.loads(meta["tiles_overlap"])
    assert isinstance(overlap, int) and (256 * overlap // 100) // 2 >= 56  # the discarded margin covers the halo
    assert (256 * overlap // 100) % 8 == 0  # tile origins stay on the downsampling grid
    assert json.loads(meta["standardization_mean"]) == [0.0] * 3 and json.loads(meta["standardization_std"]) == [1.0] * 3
    contract = json.loads(meta["geoseg"])  # what the graph takes: raw / 255 in red, green, blue order
    assert contract["bands"] == ["red", "green", "blue"] and contract["outputs"] == "probabilities"
    assert contract["normalization"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
    assert contract["halo"] == 56 and contract["downsampling"] == 8 and contract["input_size"] == [256, 256]
    assert contract["gsd"] == 0.5 and contract["mask_heads"] == [] and [c["name"] for c in contract["classes"]] == list("abcd")
    # GeoDeep's own reader (geodeep/inference.py)
    _, config = create_session(str(rgb["onnx"]))
    assert config["model_type"] == "Segmentor" and config["tiles_size"] == 256 and config["resolution"] == 50.0
    assert config["seg_thresh"] == 0.0 and config["seg_small_segment"] == 0


@pytest.mark.slow
def test_onnx_round_trip_equals_the_bundle(rgb) -> None:
    import onnxruntime as ort

    bundle = rgb["bundle"]
    window = rgb["image"][:, 100:356, 40:296].astype(np.float32)  # red, green, blue
    session = ort.InferenceSession(str(rgb["onnx"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": (window / 255.0)[None]})[0][0]
    x = torch.from_numpy(bundle.normalize(window[::-1].copy())[None])  # the model's blue, green, red
    with torch.no_grad():
        want = torch.softmax(bundle.module(x), dim=1)[0].numpy()
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(0) == want.argmax(0)).mean() > 0.999


@pytest.mark.slow
def test_geodeep_runs_the_export_and_agrees_with_geoseg(rgb, tmp_path) -> None:
    """The real GeoDeep (pip package) on the exported file: its class map equals geoseg's.

    GeoDeep reads 256-px windows stepping by 256 - floor(256 * overlap%) px (the last one
    flush with the raster's edge), drops half the overlap on inner sides, stitches and then
    applies a 5x5 median filter (`geodeep.geodeep.run`); the same filter is applied to
    geoseg's map. With a discarded margin >= the halo and window origins on the model's
    grid (600 - 256 is a multiple of 8), its tiles are exact, so the maps agree everywhere
    up to float rounding; the check leaves 8 px either side of GeoDeep's seams out anyway.
    """
    geodeep = pytest.importorskip("geodeep")  # in the test extra
    from geodeep.utils import median_filter

    proc = geoseg("run", rgb["scene"], "-o", tmp_path / "out", "-m", rgb["model"], "--no-vectorize", "-q",
                  "--tile-size", "128")
    assert proc.returncode == 0, proc.stderr
    ours = read(tmp_path / "out" / "rgb.classes.tif")[0]
    assert len(np.unique(ours)) >= 3  # not a trivial map
    theirs = geodeep.run(str(rgb["scene"]), str(rgb["onnx"]), output_type="raw")
    assert theirs.shape == ours.shape
    ref = median_filter(ours.copy(), 5)
    meta = json.loads(rgb["bundle"].spec.model_dump_json())
    assert meta  # the bundle is what was exported
    overlap = 256 * json.loads(_meta(rgb["onnx"])["tiles_overlap"]) // 100
    step, pad = 256 - overlap, overlap // 2
    keep = np.ones(ours.shape, bool)
    for start in range(0, 600 - 256, step):  # seams: where a window's kept part ends
        seam = start + 256 - pad
        keep[max(0, seam - 8): seam + 8, :] = False
        keep[:, max(0, seam - 8): seam + 8] = False
    assert keep.mean() > 0.8
    agree = (ref == theirs)[keep].mean()
    assert agree >= 0.999, agree


def _meta(path: Path) -> dict:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map


@pytest.fixture(scope="module")
def masked_unet(tmp_path_factory) -> Path:
    from geoseg.models import build_unet

    bundle = build_unet(("blue", "green", "red", "nir"), 3, mask_heads=("bright",), base_width=4, depth=2, seed=1,
                        normalization={"mean": [1000.0] * 4, "std": [800.0] * 4}, name="masked")
    return bundle.save(tmp_path_factory.mktemp("masked") / "masked.safetensors")


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("pt2", marks=pytest.mark.slow)])
def test_torchscript_and_pt2_round_trip_with_their_sidecar(masked_unet, tmp_path, fmt) -> None:
    from geoseg.models import load_model

    out = tmp_path / f"m.{fmt}"
    proc = geoseg("export", masked_unet, out, "--format", fmt, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["max_abs_diff"] is not None and summary["max_abs_diff"] < 1e-4
    side = tmp_path / "m.geoseg.json"
    assert sorted(summary["files"]) == sorted([str(out), str(side)])
    contract = json.loads(side.read_text())
    bundle = load_model(masked_unet)
    assert contract["input_size"] is None and contract["outputs"] == "logits"
    spec = json.loads(bundle.spec.model_dump_json())
    for key in ("name", "bands", "normalization", "classes", "mask_heads", "halo", "downsampling"):
        assert contract[key] == spec[key], key
    x = torch.randn(2, 4, 40, 56)  # a size the export was not traced at (multiples of 4)
    if fmt == "torchscript":
        extra = {"geoseg.json": ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
    else:
        extra = {"geoseg.json": ""}
        loaded = torch.export.load(str(out), extra_files=extra).module()
    assert json.loads(extra["geoseg.json"]) == contract
    with torch.no_grad():
        got, want = loaded(x), bundle.module(x)
    assert len(got) == len(want) == 2  # class and mask logits
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4)


def test_torchscript_with_a_fixed_tile_size(masked_unet, tmp_path) -> None:
    from geoseg.models.export import export_model

    out = tmp_path / "fixed.pt"
    result = export_model(masked_unet, out, "torchscript", tile_size=50)
    assert result.input_size == (52, 52)
    contract = json.loads((tmp_path / "fixed.geoseg.json").read_text())
    assert contract["input_size"] == [52, 52]  # rounded up to the factor 4


def test_export_errors_are_one_line_and_leave_nothing(masked_unet, tmp_path) -> None:
    from geoseg.errors import ModelError, OutputError
    from geoseg.models.export import export_model

    one_line_error(geoseg("export", masked_unet, tmp_path / "m.onnx"), "--resolution")
    with pytest.raises(ModelError, match="--tile-size > 48"):
        export_model(masked_unet, tmp_path / "m.onnx", "onnx", resolution=50, tile_size=44)
    with pytest.raises(ModelError, match="nosuchmodel"):
        export_model("nosuchmodel", tmp_path / "m.pt2", "pt2")
    with pytest.raises(ModelError, match="format must be one of"):
        export_model(masked_unet, tmp_path / "m.x", "keras")
    with pytest.raises(OutputError, match="does not exist"):
        export_model(masked_unet, tmp_path / "nodir" / "m.pt2", "pt2")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.pt2").write_bytes(b"keep")
    one_line_error(geoseg("export", masked_unet, tmp_path / "m.pt2", "--format", "pt2"), "--overwrite")
    assert (tmp_path / "m.pt2").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


# --------------------------------------------------------------------------- MLM Items


def test_mlm_items_validate_for_builtins_and_bundles(masked_unet) -> None:
    import jsonschema

    from geoseg.models import load_model
    from geoseg.models.mlm_item import item_for_model

    validate = stac_validator()
    for ref in ("spectral", masked_unet):
        item = item_for_model(load_model(ref), ref)
        validate(item)
        props = item["properties"]
        assert props["mlm:tasks"] == ["semantic-segmentation"]
        assert props["mlm:input"][0]["input"]["dim_order"] == ["batch", "bands", "height", "width"]
        assert item["assets"]["model"]["mlm:artifact_type"] == "safetensors.torch.save_file"
        assert item["stac_version"] == "1.1.0"  # with the 1.1 bands and, for 1.0 readers, eo:bands
        assert [b["name"] for b in item["assets"]["model"]["bands"]] == props["mlm:input"][0]["bands"]
    proc = geoseg("models", "show", "default", "--stac")
    assert proc.returncode == 0, proc.stderr
    default = json.loads(proc.stdout)
    validate(default)
    assert default["properties"]["mlm:input"][0]["bands"] == ["blue", "green", "red", "nir"]
    assert [c["name"] for c in default["properties"]["mlm:output"][0]["classification:classes"]] == [
        "water", "forest", "cropland", "bare_soil", "building", "road"]
    assert default["properties"]["mlm:output"][1]["name"] == "built_up"
    assert default["properties"]["mlm:hyperparameters"]["halo"] == 56
    # negative control: the validator does reject a broken Item
    assert default["assets"]["model"]["href"].startswith("file://")
    broken = json.loads(json.dumps(default))
    del broken["assets"]["model"]["mlm:artifact_type"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_export_mlm_writes_the_item_and_the_bundle_it_points_to(tmp_path) -> None:
    import hashlib

    from geoseg.models import load_model

    validate = stac_validator()
    proc = geoseg("export", "spectral", tmp_path / "spectral.json", "--format", "mlm")
    assert proc.returncode == 0, proc.stderr
    item = json.loads((tmp_path / "spectral.json").read_text())
    validate(item)
    asset = item["assets"]["model"]
    weights = tmp_path / asset["href"]
    assert weights.is_file()
    data = weights.read_bytes()
    assert asset["file:size"] == len(data) and asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
    assert load_model(weights).class_names == ("water", "vegetation", "other")


def test_onnx_resolution_is_the_gsd_geoseg_train_records(masked_unet) -> None:
    """`geoseg train` stores the images' pixel size (``training.gsd_m``); ONNX `resolution` is it in cm."""
    from geoseg.errors import ModelError
    from geoseg.models import load_model
    from geoseg.models.export import _resolution_cm, onnx_metadata
    from geoseg.models.mlm_item import item_for_model

    bundle = load_model(masked_unet)
    with pytest.raises(ModelError, match="--resolution"):
        _resolution_cm(bundle, None)
    trained = bundle.replace(training={"gsd_m": 0.3})
    assert _resolution_cm(trained, None) == 30.0 and _resolution_cm(trained, 12.5) == 12.5
    meta = onnx_metadata(trained, 512, 30.0, list(trained.bands))
    # 10% of 512 is 51 px (>= 2 x 24 but off the factor-4 grid), 11% is 56 px
    assert json.loads(meta["resolution"]) == 30.0 and json.loads(meta["tiles_overlap"]) == 11
    assert item_for_model(trained)["properties"]["gsd"] == 0.3
