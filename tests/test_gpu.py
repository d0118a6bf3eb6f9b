"""CUDA: the same products as on CPU, the AMP path, and each exported runtime on the GPU.

Skipped without a CUDA device (`benchmarks/bench_gpu.py` runs them on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import read

import geoseg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run(scene, out, model, **kw) -> dict:
    return geoseg.run_scene(scene, out, model=str(model), quiet=True, vectorize=False, **kw)


def test_cuda_equals_cpu(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene
    cpu = run(scene, tmp_path / "cpu", small_unet, tile_size=128, device="cpu")
    gpu = run(scene, tmp_path / "gpu", small_unet, tile_size=128, device="cuda", batch_size=4)
    assert cpu["parameters"]["device"] == "cpu" and gpu["parameters"]["device"].startswith("cuda")
    for product in ("classes.tif", "mask.tif"):
        a, b = read(tmp_path / "cpu" / f"scene.{product}"), read(tmp_path / "gpu" / f"scene.{product}")
        assert (a == b).mean() >= 0.999, product
    ca, cb = read(tmp_path / "cpu" / "scene.confidence.tif"), read(tmp_path / "gpu" / "scene.confidence.tif")
    assert np.abs(ca.astype(int) - cb.astype(int)).max() <= 1


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_path_agrees_with_fp32(tmp_path, synth_scene, small_unet, precision) -> None:
    scene, _ = synth_scene
    run(scene, tmp_path / "fp32", small_unet, tile_size=128, device="cuda")
    manifest = run(scene, tmp_path / precision, small_unet, tile_size=128, device="cuda", precision=precision)
    assert manifest["options"]["precision"] == precision
    a, b = read(tmp_path / "fp32" / "scene.classes.tif"), read(tmp_path / precision / "scene.classes.tif")
    assert (a == b).mean() >= (0.995 if precision == "fp16" else 0.98)


def test_tta_and_probabilities_on_cuda(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene
    run(scene, tmp_path / "cpu", small_unet, tile_size=96, device="cpu", tta=True, probabilities=True)
    run(scene, tmp_path / "gpu", small_unet, tile_size=96, device="cuda", tta=True, probabilities=True)
    for product in ("classes.tif", "probabilities.tif"):
        a, b = read(tmp_path / "cpu" / f"scene.{product}").astype(int), read(tmp_path / "gpu" / f"scene.{product}").astype(int)
        assert (np.abs(a - b) <= 1).mean() >= 0.999, product


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_exported_torch_runtimes_on_cuda(tmp_path, small_unet, fmt) -> None:
    from geoseg.models.export import export_model

    out = tmp_path / f"m.{fmt}"
    export_model(small_unet, out, fmt)
    loaded = torch.jit.load(str(out), map_location="cuda") if fmt == "torchscript" else torch.export.load(str(out)).module().to("cuda")
    bundle = geoseg.load_model(str(small_unet))
    x = torch.randn(2, 4, 128, 160)
    with torch.no_grad():
        got = loaded(x.cuda())
        want = bundle.module(x)
    for g, w in zip(got, want):
        assert torch.allclose(g.cpu(), w, atol=1e-3)


def test_onnx_on_the_cuda_execution_provider(tmp_path, small_unet) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider (pip install onnxruntime-gpu)")
    from geoseg.models.export import export_model

    out = tmp_path / "m.onnx"
    export_model(small_unet, out, "onnx", tile_size=256, resolution=1000)
    x = np.random.default_rng(0).uniform(0, 1, (1, 4, 256, 256)).astype(np.float32)
    cpu = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    session = ort.InferenceSession(str(out), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    gpu = session.run(None, {"image": x})[0]
    assert np.abs(cpu - gpu).max() < 1e-3


def test_segment_fp16_on_cuda_agrees_with_run_scene(tmp_path, synth_scene, small_unet) -> None:
    """geoseg.segment(precision=...) reaches the predictor as run_scene's --precision does."""
    xr = pytest.importorskip("xarray")
    rioxarray = pytest.importorskip("rioxarray")
    scene, _ = synth_scene
    run(scene, tmp_path / "gpu", small_unet, tile_size=128, device="cuda", precision="fp16")
    data = rioxarray.open_rasterio(scene, chunks={"x": 200, "y": 200}, lock=False)
    ds = geoseg.segment(data, str(small_unet), tile_size=128, device="cuda", precision="fp16").compute()
    assert isinstance(ds, xr.Dataset)
    assert (ds.classes.values == read(tmp_path / "gpu" / "scene.classes.tif")).mean() >= 0.999


def test_blended_seams_take_the_precision_on_cuda(tmp_path) -> None:
    """--precision reaches the forward of a blended-seam model (its windows' probabilities),
    and fp16 agrees with fp32 there as it does for exact seams."""
    from test_runtimes import global_pooling_model, rgb_scene

    scene = rgb_scene(tmp_path / "scene.tif", 256, 256, seed=4)
    global_pooling_model(tmp_path)
    out = {}
    for precision in ("fp32", "fp16"):
        manifest = geoseg.run_scene(scene, tmp_path / precision, model=str(tmp_path / "global.ts"), tile_size=64,
                                    vectorize=False, quiet=True, device="cuda", precision=precision)
        assert manifest["parameters"]["seams"] == "blended" and manifest["options"]["precision"] == precision
        out[precision] = {k: read(tmp_path / precision / f"scene.{k}.tif") for k in ("classes", "confidence")}
    assert (out["fp32"]["classes"] == out["fp16"]["classes"]).mean() >= 0.99
    # fp16 did run: half-precision convolutions move some confidences (fp32 all through would not)
    assert (out["fp32"]["confidence"] != out["fp16"]["confidence"]).any()
