"""A ResNet-encoder U-Net as users export it: its factor and seams measured, no declaration.

The model is written here in plain torch in the segmentation_models_pytorch layout (a
stride-32 ResNet encoder of basic residual blocks with batch norm, a U-Net decoder that
upsamples and concatenates the encoder's skips), with random but seeded weights and batch
norm statistics, exported to ONNX with dynamic height and width. Its receptive field (about
280 px each way) is wider than half the first 512 px probe, and it only runs on multiples
of 32 px; its sidecar holds only bands, normalisation and classes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read, write_raster
from torch import nn

import geoseg
from geoseg.models import load_model
from test_runtimes import geoseg_cli

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BANDS = ("blue", "green", "red", "nir")
MEAN, STD = [800.0, 900.0, 800.0, 2500.0], [300.0, 300.0, 400.0, 900.0]
CLASSES = ["water", "vegetation", "other"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # noqa: ANN001, ANN201
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetUNet(nn.Module):
    """ResNet-34's layout (7x7/2 stem, 3x3/2 max pool, four stages of 3, 4, 6, 3 basic blocks, the
    last three striding by 2) at small widths, and smp's U-Net decoder (nearest x2, concat, 2 conv-bn-relu)."""

    def __init__(self, blocks=(3, 4, 6, 3), widths=(8, 8, 12, 16, 24), decoder=(16, 12, 8, 8, 4), classes: int = 3) -> None:  # noqa: ANN001
        super().__init__()
        self.conv1 = nn.Conv2d(len(BANDS), widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths[1:])):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2),
                                        *[BasicBlock(cout, cout, 1) for _ in range(n - 1)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.blocks = nn.ModuleList()
        for skip, d in zip((widths[3], widths[2], widths[1], widths[0], 0), decoder):
            self.blocks.append(nn.Sequential(
                nn.Conv2d(cin + skip, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(),
                nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU()))
            cin = d
        self.head = nn.Conv2d(cin, classes, 3, 1, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        features = [torch.relu(self.bn1(self.conv1(x)))]
        y = self.maxpool(features[0])
        for stage in self.stages:
            y = stage(y)
            features.append(y)
        for block, skip in zip(self.blocks, (features[3], features[2], features[1], features[0], None)):
            y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(y if skip is None else torch.cat([y, skip], 1))
        return self.head(y)


#: ResNet-34's stages, and a deeper last stage whose receptive field outgrows the first probe's centre.
LAYOUTS = {"resnet34": (3, 4, 6, 3), "deep": (2, 2, 2, 6)}


def resnet_unet(blocks: tuple[int, ...], seed: int = 0) -> ResNetUNet:
    """Random but fixed weights, and batch-norm statistics that are not the identity."""
    torch.manual_seed(seed)
    model = ResNetUNet(blocks)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def export(d: Path, layout: str) -> Path:
    """``d/LAYOUT.onnx`` (dynamic batch, height and width) and a sidecar of bands, normalisation, classes."""
    path = d / f"{layout}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet_unet(LAYOUTS[layout]), (torch.randn(1, len(BANDS), 64, 64),), str(path), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    (d / f"{layout}.geoseg.json").write_text(json.dumps({
        "bands": list(BANDS), "normalization": {"mean": MEAN, "std": STD}, "classes": CLASSES}))
    return path


def scene(path: Path, h: int, w: int, seed: int = 0) -> Path:
    """Smooth random reflectance x 10000 in 4 bands (regions of a few dozen pixels)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    bands = [np.clip(m + 2.5 * s * gaussian_filter(rng.normal(size=(h, w)), 8) + rng.normal(0, 0.05 * s, (h, w)), 0, 10000)
             for m, s in zip(MEAN, STD)]
    return write_raster(path, np.stack(bands).astype(np.uint16))


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("encoders"), "deep")


def test_resnet34_unet_factor_and_seams_are_measured_without_a_declaration(tmp_path: Path) -> None:
    """The issue's failure: 'cannot measure the downsampling factor' on the 512 px probe."""
    proc = geoseg_cli("models", "inspect", export(tmp_path, "resnet34"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["downsampling"] == 32 and report["probe"] == 512  # compared in the probe's centre
    assert report["seams"] == report["seams_measured"] == "blended" and report["context"] is None


def test_a_receptive_field_wider_than_the_probe_is_measured_on_a_larger_one(deep: Path) -> None:
    model = load_model(deep)
    measured = model.inspection()
    assert measured.downsampling == 32 and measured.probe > 512  # the first probe's centre sees its borders
    assert model.downsampling == 32 and model.seams == "blended" and model.halo > 0


def test_resnet_unet_runs_in_tiles_and_agrees_with_whole_image_inference(deep: Path, tmp_path: Path) -> None:
    exported = deep
    h, w = 352, 416
    path = scene(tmp_path / "scene.tif", h, w)
    manifest = geoseg.run_scene(path, tmp_path / "out", model=str(exported), tile_size=128, vectorize=False,
                                quiet=True, device="cpu")
    assert manifest["parameters"]["seams"] == "blended"
    got = read(tmp_path / "out" / "scene.classes.tif")[0]
    # the whole image at once, padded to the factor at the bottom/right as geoseg pads windows
    x = (read(path).astype(np.float32) - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    x = np.pad(x, ((0, 0), (0, -h % 32), (0, -w % 32)))
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    whole = session.run(None, {"x": x[None]})[0][0, :, :h, :w].argmax(0)
    assert float((got == whole).mean()) >= 0.995
