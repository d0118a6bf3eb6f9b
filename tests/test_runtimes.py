"""Models from outside geoseg: ONNX, TorchScript, torch.export programs and STAC MLM Items.

Every model here is built in the test from a torch module (a small U-Net with random
weights, whose same weights also run as a geoseg bundle), exported as a user would, with
its contract in Deepness-style ONNX metadata, a sidecar ``MODEL.geoseg.json``, an extra
file in the archive or an MLM Item, and run through the real pipeline on a real GeoTIFF.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read, write_raster

import geoseg
from geoseg.errors import ModelError
from geoseg.models import build_unet, load_model
from geoseg.models.bundle import ModelBundle
from geoseg.models.unet import TilePlan, halo_for

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

RGB = ("red", "green", "blue")
CLASSES = [("water", "#1f78b4"), ("field", "#e6c229"), ("built", "#e31a1c")]
MEAN, STD = [110.0, 120.0, 100.0], [40.0, 45.0, 50.0]


# --------------------------------------------------------------------------- models and scenes


def rgb_scene(path: Path, h: int = 200, w: int = 232, seed: int = 0) -> Path:
    """Smooth random 8-bit RGB (regions of a few dozen pixels), like an orthophoto's colours."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    bands = []
    for _ in range(3):
        f = gaussian_filter(rng.normal(size=(h, w)), 6)
        f = (f - f.min()) / (f.max() - f.min())
        bands.append(np.clip(40 + 180 * f + rng.normal(0, 4, size=(h, w)), 0, 255))
    return write_raster(path, np.stack(bands).astype(np.uint8))


def unet(depth: int = 2, seed: int = 0) -> ModelBundle:
    return build_unet(RGB, CLASSES, mask_heads=("bright",), base_width=4, depth=depth, seed=seed,
                      normalization={"mean": MEAN, "std": STD}, value_range=(0, 255), name="rgb-unet")


class Probabilities(torch.nn.Module):
    """What Deepness/GeoDeep models output: softmax classes, sigmoid masks."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):  # noqa: ANN001, ANN201
        classes, masks = self.net(x)
        return torch.softmax(classes, 1), torch.sigmoid(masks)


def deepness_metadata(**extra) -> dict[str, str]:
    meta = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(i): n for i, (n, _) in enumerate(CLASSES)}),
        "resolution": "1000",
        "standardization_mean": json.dumps([m / 255 for m in MEAN]),
        "standardization_std": json.dumps([s / 255 for s in STD]),
        "tiles_overlap": "15",
        "seg_thresh": "0",
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def to_onnx(bundle: ModelBundle, path: Path, metadata: dict[str, str], size: int | None = None) -> Path:
    """Export as a user would (the legacy TorchScript-based exporter: 0.5 s here against
    15 s for dynamo=True, which works too, see test_dynamo_exported_onnx_runs)."""
    module = Probabilities(bundle.module).eval()
    x = torch.randn(1, 3, size or 64, size or 64)
    axes = None if size else {"x": {0: "n", 2: "h", 3: "w"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["classes", "masks"], dynamic_axes=axes)
    proto = onnx.load(str(path))
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path


def to_torchscript(bundle: ModelBundle, path: Path, extra: dict[str, str] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(bundle.module, torch.randn(1, 3, 64, 64))
    torch.jit.save(traced, str(path), _extra_files=extra or {})
    return path


def to_pt2(bundle: ModelBundle, path: Path, extra: dict[str, str] | None = None) -> Path:
    f = bundle.downsampling
    dims = {0: torch.export.Dim("batch"), 2: f * torch.export.Dim("h"), 3: f * torch.export.Dim("w")}
    program = torch.export.export(bundle.module, (torch.randn(2, 3, 64, 64),), dynamic_shapes=(dims,))
    torch.export.save(program, str(path), extra_files=extra or {})
    return path


def mlm_item(href: str, bundle: ModelBundle, artifact: str, halo: int | None = None) -> dict:
    props = {
        "datetime": "2026-12-01T00:00:00Z",
        "mlm:name": "rgb-unet-mlm",
        "mlm:architecture": "U-Net",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:input": [{
            "name": "rgb", "bands": list(RGB),
            "input": {"shape": [-1, 3, -1, -1], "dim_order": ["batch", "bands", "height", "width"], "data_type": "float32"},
            "value_scaling": [{"type": "z-score", "mean": m, "stddev": s} for m, s in zip(MEAN, STD)],
        }],
        "mlm:output": [
            {"name": "classes", "tasks": ["semantic-segmentation"],
             "classification:classes": [{"value": i, "name": n, "color_hint": c[1:]} for i, (n, c) in enumerate(CLASSES)]},
            {"name": "bright", "tasks": ["semantic-segmentation"]},
        ],
        "geoseg:value_range": [0, 255],
    }
    if halo is not None:
        props["geoseg:halo"] = halo
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/mlm/v1.5.2/schema.json"],
        "id": "rgb-unet", "geometry": None, "properties": props, "links": [],
        "assets": {"model": {"href": href, "roles": ["mlm:model"], "mlm:artifact_type": artifact}},
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("runtimes")
    bundle = unet()
    bundle.save(d / "rgb.safetensors")
    scene = rgb_scene(d / "scene.tif")
    manifest = geoseg.run_scene(scene, d / "bundle_out", model=str(d / "rgb.safetensors"), tile_size=64,
                                vectorize=False, quiet=True, device="cpu")
    ref = {k: read(d / "bundle_out" / f"scene.{k}.tif") for k in ("classes", "confidence", "mask")}
    return {"dir": d, "bundle": bundle, "scene": scene, "ref": ref, "manifest": manifest}


def make_model(kind: str, work: dict, d: Path) -> Path:
    """The same weights as ``work['bundle']`` as a file of ``kind``, with its contract."""
    b = work["bundle"]
    if kind == "onnx":  # Deepness metadata; the mask head the tools don't know: a sidecar
        path = to_onnx(b, d / "m.onnx", deepness_metadata())
        (d / "m.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"]}))
    elif kind == "torchscript":  # the whole contract in a sidecar, halo measured
        path = to_torchscript(b, d / "m.ts")
        (d / "m.geoseg.json").write_text(json.dumps({
            "bands": list(RGB), "normalization": {"mean": MEAN, "std": STD}, "value_range": [0, 255],
            "classes": [{"name": n, "color": c} for n, c in CLASSES], "mask_heads": ["bright"],
        }))
    elif kind == "pt2":  # the geoseg spec embedded as an extra file (halo declared)
        path = to_pt2(b, d / "m.pt2", {"geoseg-spec": b.spec.to_json()})
    elif kind == "mlm":  # an MLM Item whose asset is a TorchScript archive
        to_torchscript(b, d / "asset.ts")
        path = d / "item.json"
        path.write_text(json.dumps(mlm_item("./asset.ts", b, "torch.jit.trace", halo=b.halo)))
    else:
        raise AssertionError(kind)
    return path


def agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# --------------------------------------------------------------------------- the same outputs through every runtime


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "pt2", "mlm"])
@pytest.mark.slow
def test_runtime_matches_bundle_and_is_tile_size_invariant(kind: str, work: dict, tmp_path: Path) -> None:
    path = make_model(kind, work, tmp_path)
    model = load_model(path)
    assert model.bands == RGB and model.class_names == tuple(n for n, _ in CLASSES) and model.mask_heads == ("bright",)
    ref = work["ref"]
    outs = {}
    for tile in (64, 96):
        out = tmp_path / f"out{tile}"
        manifest = geoseg.run_scene(work["scene"], out, model=str(path), tile_size=tile, vectorize=False, quiet=True,
                                    device="cpu")
        assert manifest["parameters"]["seams"] == "exact"
        assert manifest["model"]["sha256"] == model.checksum
        outs[tile] = {k: read(out / f"scene.{k}.tif") for k in ("classes", "confidence", "mask")}
        assert agree(outs[tile]["classes"], ref["classes"]) >= 0.999
        diff = np.abs(outs[tile]["confidence"].astype(int) - ref["confidence"].astype(int))
        assert diff.max() <= 1
        assert agree(outs[tile]["mask"], ref["mask"]) >= 0.999
    assert agree(outs[64]["classes"], outs[96]["classes"]) >= 0.9999  # exact seams: tile size changes nothing
    assert np.abs(outs[64]["confidence"].astype(int) - outs[96]["confidence"].astype(int)).max() <= 1
    assert model.halo == halo_for(TilePlan.for_unet(2, "transpose").input_margin, 4) or model.halo == work["bundle"].halo


def test_fixed_input_size_runs_on_windows_of_exactly_that_size(work: dict, tmp_path: Path) -> None:
    # a static 96x96 graph: onnxruntime refuses any other window size, so a finished run proves the windows
    path = to_onnx(work["bundle"], tmp_path / "fixed.onnx", deepness_metadata(tile_size=96, tiles_size=96), size=96)
    (tmp_path / "fixed.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"]}))
    model = load_model(path)
    assert model.input_size == (96, 96)
    results = []
    for tile in (64, 500):  # --tile-size cannot change the window of a fixed-size model
        out = tmp_path / f"out{tile}"
        manifest = geoseg.run_scene(work["scene"], out, model=str(path), tile_size=tile, vectorize=False, quiet=True,
                                    device="cpu")
        assert manifest["parameters"]["input_size"] == [96, 96]
        assert manifest["parameters"]["tile_size"] == 96 - 2 * model.halo
        results.append(read(out / "scene.classes.tif"))
        assert agree(results[-1], work["ref"]["classes"]) >= 0.999
    assert np.array_equal(results[0], results[1])


def test_fixed_input_size_too_small_for_the_halo_is_one_line(work: dict, tmp_path: Path) -> None:
    path = to_onnx(work["bundle"], tmp_path / "tiny.onnx", deepness_metadata(), size=48)
    (tmp_path / "tiny.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"], "halo": 24, "downsampling": 4}))
    with pytest.raises(geoseg.errors.InputError, match="48x48 windows, too small for its 24-px halo"):
        geoseg.run_scene(work["scene"], tmp_path / "out", model=str(path), vectorize=False, quiet=True, device="cpu")
    assert not (tmp_path / "out" / "scene.classes.tif").exists()


@pytest.mark.slow
def test_dynamo_exported_onnx_runs(work: dict, tmp_path: Path) -> None:
    path = tmp_path / "dynamo.onnx"
    module = Probabilities(work["bundle"].module).eval()
    dims = ({0: torch.export.Dim("n"), 2: 4 * torch.export.Dim("h"), 3: 4 * torch.export.Dim("w")},)
    torch.onnx.export(module, (torch.randn(2, 3, 64, 64),), str(path), dynamo=True, dynamic_shapes=dims)
    proto = onnx.load(str(path))
    for k, v in deepness_metadata().items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(path))
    (tmp_path / "dynamo.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"]}))
    geoseg.run_scene(work["scene"], tmp_path / "out", model=str(path), tile_size=64, vectorize=False, quiet=True, device="cpu")
    assert agree(read(tmp_path / "out" / "scene.classes.tif"), work["ref"]["classes"]) >= 0.999


def test_evaluate_takes_an_onnx_model(work: dict, tmp_path: Path) -> None:
    path = make_model("onnx", work, tmp_path)
    labels = work["dir"] / "bundle_out" / "scene.classes.tif"  # the bundle's own class map as ground truth
    ev = geoseg.evaluate_model(str(path), work["scene"], labels, tile_size=64, device="cpu")
    assert ev.report()["overall_accuracy"] >= 0.999


def test_model_checksum_without_torch_matches_the_loaded_model(work: dict, tmp_path: Path) -> None:
    from geoseg.models.checksum import model_checksum

    path = make_model("onnx", work, tmp_path)
    assert model_checksum(str(path)) == load_model(path).checksum
    before = model_checksum(str(path))
    (tmp_path / "m.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"], "halo": 24}))
    assert model_checksum(str(path)) != before  # the sidecar shapes the outputs: part of the identity


# --------------------------------------------------------------------------- MLM Items, local and over HTTP


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture()
def http_dir(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_mlm_item_over_http(work: dict, tmp_path: Path, http_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_dir
    monkeypatch.setenv("GEOSEG_CACHE", str(tmp_path / "cache"))
    b = work["bundle"]
    to_onnx(b, root / "rgb.onnx", deepness_metadata())
    item = mlm_item("rgb.onnx", b, "onnx", halo=b.halo)  # relative to the Item's URL
    import hashlib

    item["assets"]["model"]["file:checksum"] = "1220" + hashlib.sha256((root / "rgb.onnx").read_bytes()).hexdigest()
    (root / "item.json").write_text(json.dumps(item))
    manifest = geoseg.run_scene(work["scene"], tmp_path / "out", model=f"{url}/item.json", tile_size=64,
                                vectorize=False, quiet=True, device="cpu")
    assert manifest["model"]["ref"] == f"{url}/item.json"
    assert agree(read(tmp_path / "out" / "scene.classes.tif"), work["ref"]["classes"]) >= 0.999
    assert agree(read(tmp_path / "out" / "scene.mask.tif"), work["ref"]["mask"]) >= 0.999
    assert list((tmp_path / "cache").rglob("rgb.onnx"))  # downloaded once into the cache


def test_mlm_item_with_a_torch_save_asset_is_refused(work: dict, tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text(json.dumps(mlm_item("./model.pt", work["bundle"], "torch.save")))
    with pytest.raises(ModelError, match="torch.save pickle.*never unpickles"):
        load_model(tmp_path / "item.json")


# --------------------------------------------------------------------------- missing contract pieces


def geoseg_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_missing_contract_fields_name_the_field_and_where_to_add_it(work: dict, tmp_path: Path) -> None:
    meta = deepness_metadata()
    del meta["class_names"]
    path = to_onnx(work["bundle"], tmp_path / "nameless.onnx", meta)
    line = one_line_error(geoseg_cli("run", work["scene"], "-o", tmp_path / "out", "-m", path, "--no-vectorize"))
    assert "no 'classes'" in line and "ONNX metadata" in line and "nameless.geoseg.json" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    ts = to_torchscript(work["bundle"], tmp_path / "bare.ts")
    with pytest.raises(ModelError, match=r"no 'bands'.*bare\.geoseg\.json"):
        load_model(ts)
    item = mlm_item("./bare.ts", work["bundle"], "torch.jit.trace")
    del item["properties"]["mlm:output"][0]["classification:classes"]
    (tmp_path / "item.json").write_text(json.dumps(item))
    with pytest.raises(ModelError, match=r"no 'classes'.*mlm:output\[0\]\.classification:classes"):
        load_model(tmp_path / "item.json")

    # the sidecar completes the ONNX contract, and a wrong class count is caught before any work
    (tmp_path / "nameless.geoseg.json").write_text(json.dumps({"classes": ["a", "b"], "mask_heads": ["bright"]}))
    with pytest.raises(ModelError, match="outputs 3 class channels but its contract has 2 classes"):
        load_model(path)
    (tmp_path / "nameless.geoseg.json").write_text(json.dumps({"classes": ["a", "b", "c"], "mask_heads": ["bright"]}))
    assert load_model(path).class_names == ("a", "b", "c")


# --------------------------------------------------------------------------- measured halos


@pytest.mark.slow
def test_inspect_measures_the_unet_halo_and_it_is_tight(tmp_path: Path) -> None:
    from geoseg.models.inspect import seam_error

    bundle = unet(depth=3, seed=1)
    path = to_onnx(bundle, tmp_path / "d3.onnx", deepness_metadata())
    (tmp_path / "d3.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"]}))
    proc = geoseg_cli("models", "inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    analytic = halo_for(TilePlan.for_unet(3, "transpose").input_margin, 8)  # what UNet.forward_tile keeps
    assert report["downsampling"] == 8 and report["seams"] == "exact" and report["outputs"] == "probabilities"
    assert report["context"] == TilePlan.for_unet(3, "transpose").input_margin
    assert report["halo"] == analytic == 48
    # tight, on the model's own runtime: the halo gives whole-image outputs, 8 px less does not
    runtime = load_model(path).runtime
    assert seam_error(runtime, 3, 48, 8) < 1e-4
    assert seam_error(runtime, 3, 40, 8) > 1e-3
    from geoseg.cli.inspect import _text

    assert "halo             48 px: exact seams need it" in _text(report)


# --------------------------------------------------------------------------- blended seams


class GlobalContext(torch.nn.Module):
    """Local 3x3 evidence plus a little of the image's mean colour (global average pooling)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.local = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.context = torch.nn.Linear(3, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.local(x) + 0.3 * self.context(x.mean(dim=(2, 3)))[:, :, None, None]


def global_pooling_model(d: Path):
    """:class:`GlobalContext` as TorchScript ``d/global.ts`` with its sidecar; the traced module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.trace(GlobalContext().eval(), torch.randn(1, 3, 64, 64))
    torch.jit.save(module, str(d / "global.ts"))
    (d / "global.geoseg.json").write_text(json.dumps({
        "bands": list(RGB), "normalization": {"mean": MEAN, "std": STD}, "classes": ["a", "b", "c"]}))
    return module


def test_global_pooling_model_runs_blended_and_matches_whole_image(tmp_path: Path) -> None:
    scene = rgb_scene(tmp_path / "scene.tif", 256, 256, seed=4)
    module = global_pooling_model(tmp_path)
    model = load_model(tmp_path / "global.ts")
    assert model.seams == "blended"
    manifest = geoseg.run_scene(scene, tmp_path / "out", model=str(tmp_path / "global.ts"), tile_size=64,
                                vectorize=False, quiet=True, device="cpu")
    assert manifest["parameters"]["seams"] == "blended" and manifest["parameters"]["overlap"] > 0
    got = read(tmp_path / "out" / "scene.classes.tif")[0]
    # whole-image inference of the same runtime
    x = read(scene).astype(np.float32)
    x = (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    with torch.inference_mode():
        whole = module(torch.from_numpy(x[None])).argmax(1)[0].numpy()
    assert agree(got, whole) >= 0.995
    # cut exactly instead (no overlap, no blending), the seams show: blending is what agrees
    assert agree(got, whole) > (1 - 0.5 * (1 - _cut_agreement(module, x, whole, 64)))


def _cut_agreement(module, x: np.ndarray, whole: np.ndarray, tile: int) -> float:  # noqa: ANN001
    out = np.zeros_like(whole)
    with torch.inference_mode():
        for r in range(0, x.shape[1], tile):
            for c in range(0, x.shape[2], tile):
                out[r:r + tile, c:c + tile] = module(torch.from_numpy(x[None, :, r:r + tile, c:c + tile])).argmax(1)[0].numpy()
    return agree(out, whole)


def test_blending_holds_a_band_of_rows_not_the_scene() -> None:
    """Streamed blending: what BlendSink holds does not grow with the scene's height."""
    from geoseg.grid import TileGrid
    from geoseg.scene.blend import BlendLayout, BlendSink, blend_pieces

    peaks = []
    for height in (512, 1024):
        grid = TileGrid(height, 384, 64, halo=16, factor=8)
        layout = BlendLayout(grid, num_classes=2, num_masks=1)
        written = np.zeros((height, 384), np.int64)
        sink = BlendSink(layout, lambda cores: [written.__setitem__(c.core.slices, written[c.core.slices] + 1) for c in cores])
        for tile in grid:  # row-major, as the pipeline submits them
            h, w = tile.read.height, tile.read.width
            probs = np.full((1, 2, h, w), 0.5, np.float32)
            probs[:, 0] += 0.1
            pieces = blend_pieces(layout, [tile], probs, np.full((1, 1, h, w), 0.9, np.float32),
                                  np.ones((1, h, w), bool), np.array([True]))
            sink.add(pieces)
        assert (written == 1).all()  # every pixel written exactly once
        peaks.append(sink.peak_values)
    assert peaks[0] == peaks[1]
    assert peaks[0] <= 2 * (2 * 16) * 384 * (2 + 1 + 1)  # about one band of rows, float32 values


def test_blending_sums_do_not_depend_on_the_order_windows_arrive_in(monkeypatch) -> None:
    """Where four windows overlap, float sums depend on the order of the terms: the sink
    adds them in tile order whatever order the windows arrive in (threads, a cluster), so
    ``geoseg run`` and ``geoseg.segment`` give the same bytes on any scheduler."""
    from geoseg.grid import PixelWindow, TileGrid
    from geoseg.scene.blend import BlendLayout, BlendSink, blend_pieces

    grid = TileGrid(192, 192, 64, halo=16, factor=8)
    layout = BlendLayout(grid, num_classes=3, num_masks=1)
    rng = np.random.default_rng(0)
    pieces = []
    for tile in grid:
        h, w = tile.read.height, tile.read.width
        probs = rng.random((1, 3, h, w), dtype=np.float32)
        pieces += blend_pieces(layout, [tile], probs, rng.random((1, 1, h, w), dtype=np.float32),
                               np.ones((1, h, w), bool), np.array([True]))
    sums = {}
    original = BlendSink._finish

    def record(self, cell_win, cell, done):
        sums.setdefault(self.order, {})[(cell_win.row, cell_win.col)] = cell.probs.tobytes() + cell.weight.tobytes()
        return original(self, cell_win, cell, done)

    monkeypatch.setattr(BlendSink, "_finish", record)
    for order, seq in (("rows", pieces), ("reversed", pieces[::-1]), ("shuffled", [pieces[i] for i in rng.permutation(len(pieces))])):
        sink = BlendSink(layout, lambda cores: None)
        sink.order = order
        for piece in seq:
            sink.add([piece])
    assert len(sums["rows"]) == len(layout.cells(PixelWindow(0, 0, 192, 192)))
    assert sums["rows"] == sums["reversed"] == sums["shuffled"]


# --------------------------------------------------------------------------- pickled payloads never run


class Payload:
    """Creates the file ``path`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            tail = info.filename.split("/", 1)[1]
            zout.writestr(info, replace.get(tail, zin.read(info)))


def _refused(model: Path, work: dict, tmp_path: Path, *needles: str) -> None:
    out = tmp_path / "out"
    line = one_line_error(geoseg_cli("run", work["scene"], "-o", out, "-m", model, "--no-vectorize"))
    assert line.startswith("geoseg: error: ")
    for n in needles:
        assert n in line, line
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.slow
def test_pickle_named_onnx_is_refused_and_never_runs(work: dict, tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control))).close()
    assert control.exists()  # the payload is live
    sentinel = tmp_path / "sentinel"
    (tmp_path / "evil.onnx").write_bytes(pickle.dumps(Payload(sentinel)))
    _refused(tmp_path / "evil.onnx", work, tmp_path, "Python pickle", "never unpickles")
    assert not sentinel.exists()


@pytest.mark.slow
def test_torchscript_carrying_a_pickled_payload_is_refused_and_never_runs(work: dict, tmp_path: Path) -> None:
    good = to_torchscript(work["bundle"], tmp_path / "good.ts")
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps(Payload(sentinel), protocol=2)
    _rewrite_zip(good, tmp_path / "evil.ts", {"constants.pkl": payload})
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control), protocol=2)).close()
    assert control.exists()
    _refused(tmp_path / "evil.ts", work, tmp_path, "constants.pkl", "pickled Python payload", "io.open")
    assert not sentinel.exists()
    # a torch.save archive (a full pickle of a module) is not TorchScript, whatever its name
    torch.save(work["bundle"].module, tmp_path / "module.ts")
    _refused(tmp_path / "module.ts", work, tmp_path, "torch.save archive", "never unpickles")


@pytest.mark.slow
def test_pt2_carrying_a_pickled_payload_is_refused_and_never_runs(work: dict, tmp_path: Path) -> None:
    good = to_pt2(work["bundle"], tmp_path / "good.pt2")
    buf = io.BytesIO()
    control = tmp_path / "control"
    torch.save({"x": Payload(control)}, buf)
    _rewrite_zip(good, tmp_path / "control.pt2", {"data/sample_inputs/model.pt": buf.getvalue()})
    try:  # torch's own loader falls back to the full unpickler when weights_only refuses...
        torch.export.load(tmp_path / "control.pt2")
    except Exception:  # noqa: BLE001 - whether it then fails or not, the payload has run
        pass
    assert control.exists()  # ...and runs the payload: the reason geoseg checks first

    sentinel = tmp_path / "sentinel"
    buf = io.BytesIO()
    torch.save({"x": Payload(sentinel)}, buf)
    _rewrite_zip(good, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": buf.getvalue()})
    _refused(tmp_path / "evil.pt2", work, tmp_path, "sample_inputs", "pickled Python payload")
    assert not sentinel.exists()

    # a weight stored as a pickle (use_pickle), which torch.export.load unpickles in full
    with zipfile.ZipFile(good) as z:
        config_name = next(n for n in z.namelist() if n.endswith("weights_config.json"))
        config = json.loads(z.read(config_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    _rewrite_zip(good, tmp_path / "weights.pt2", {config_name.split("/", 1)[1]: json.dumps(config).encode()})
    _refused(tmp_path / "weights.pt2", work, tmp_path, "pickled Python payload", first)


# --------------------------------------------------------------------------- geoseg.segment with these models


def _segment_equals_run(scene: Path, model: Path, out: Path, chunks: int, tile_size: int, heads=(),
                        batch_size: int | None = None) -> dict:
    """``geoseg.segment`` of the scene (read by rioxarray in ``chunks``-px blocks, and as a
    numpy-backed array) gives ``run_scene``'s class, confidence and mask COGs byte for byte."""
    rioxarray = pytest.importorskip("rioxarray")
    manifest = geoseg.run_scene(scene, out, model=str(model), tile_size=tile_size, vectorize=False, quiet=True,
                                device="cpu", threads=2, batch_size=batch_size)  # windows arrive in any order
    want = {k: read(out / f"{scene.stem}.{k}.tif") for k in ("classes", "confidence", *(["mask"] if heads else []))}
    for data in (rioxarray.open_rasterio(scene, chunks=chunks, lock=False), rioxarray.open_rasterio(scene).load()):
        got = geoseg.segment(data, model=str(model), tile_size=tile_size, device="cpu", batch_size=batch_size).compute()
        assert np.array_equal(got["classes"].values, want["classes"][0])
        assert np.array_equal(got["confidence"].values, want["confidence"][0])
        for m, head in enumerate(heads):
            assert np.array_equal(got[head].values, want["mask"][m]), head
    return manifest


def test_segment_runs_a_fixed_input_size_model_as_run_scene(work: dict, tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    path = to_onnx(work["bundle"], tmp_path / "fixed.onnx", deepness_metadata(), size=96)  # onnxruntime: 96x96 only
    (tmp_path / "fixed.geoseg.json").write_text(json.dumps({"mask_heads": ["bright"]}))
    manifest = _segment_equals_run(work["scene"], path, tmp_path / "out", chunks=70, tile_size=500, heads=("bright",))
    assert manifest["parameters"]["input_size"] == [96, 96]


def test_segment_blends_the_seams_of_a_global_pooling_model_as_run_scene(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    rioxarray = pytest.importorskip("rioxarray")
    scene = rgb_scene(tmp_path / "scene.tif", 200, 232, seed=4)
    global_pooling_model(tmp_path)
    manifest = _segment_equals_run(scene, tmp_path / "global.ts", tmp_path / "out", chunks=50, tile_size=64)
    assert manifest["parameters"]["seams"] == "blended"
    _segment_equals_run(scene, tmp_path / "global.ts", tmp_path / "out3", chunks=50, tile_size=64, batch_size=3)
    with pytest.raises(geoseg.errors.InputError, match="blended seams"):
        geoseg.segment(rioxarray.open_rasterio(scene, chunks=64), model=str(tmp_path / "global.ts"), tile_size=64,
                       probabilities=True)
