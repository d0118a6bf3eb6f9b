"""Tests for the networks, inference speed-ups, halo and the built-in registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from geoseg.errors import ModelError
from geoseg.models import (
    DEFAULT_WEIGHTS,
    SpectralIndexModel,
    TilePlan,
    UNet,
    build_spectral,
    build_unet,
    fuse_for_inference,
    halo_for,
    list_models,
    load_model,
    measure_throughput,
    prepare_for_inference,
    receptive_radius,
    tune_cpu_allocator,
    unet_halo,
)


def _randomize_batchnorm(module: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    bundle = build_unet(4, 6, ["built_up"], seed=0)
    _randomize_batchnorm(bundle.module)
    return bundle.module.eval()


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_unet_shapes(depth: int) -> None:
    net = UNet(3, 5, mask_heads=2, base_width=4, depth=depth).eval()
    assert net.downsampling == 2**depth
    with torch.no_grad():
        logits, masks = net(torch.randn(2, 3, 48, 64))
    assert logits.shape == (2, 5, 48, 64)
    assert masks.shape == (2, 2, 48, 64)


def test_unet_without_mask_heads_returns_tensor() -> None:
    net = UNet(4, 3, base_width=4).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 32, 32)


def test_unet_any_size_and_channels_last(net: nn.Module) -> None:
    x = torch.randn(1, 4, 37, 61)
    with torch.no_grad():
        a = net(x)
        b = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        net.to(memory_format=torch.contiguous_format)
    assert a[0].shape == (1, 6, 37, 61) and a[1].shape == (1, 1, 37, 61)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)


def test_unet_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        UNet(4, 3, depth=0)
    with pytest.raises(ValueError):
        UNet(4, 3, upsample="nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_unet_trains_one_step(upsample: str) -> None:
    torch.manual_seed(0)
    net = UNet(4, 3, mask_heads=1, base_width=4, depth=2, upsample=upsample)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(2, 4, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = []
    for _ in range(5):
        logits, _ = net(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- speed-ups


def test_fuse_for_inference_matches(net: nn.Module) -> None:
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # input unchanged
    x = torch.randn(2, 4, 64, 80)
    with torch.no_grad():
        ref, got = net(x), fused(x)
    for r, g in zip(ref, got):
        assert (r - g).abs().max().item() < 1e-4


def test_prepare_for_inference_channels_last(net: nn.Module) -> None:
    fast = prepare_for_inference(net)
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        ref = net(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert (ref[0] - got[0]).abs().max().item() < 1e-4


def test_tune_cpu_allocator_idempotent() -> None:
    first = tune_cpu_allocator()
    assert isinstance(first, bool)
    assert tune_cpu_allocator() is first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_release_free_memory_returns_what_the_tuned_allocator_keeps() -> None:
    """With the tuned allocator a freed 256 MB buffer stays resident; after
    release_free_memory() it is gone (a fresh process: the tuning is process-wide)."""
    code = """
import numpy as np
from geoseg.allocator import release_free_memory, tune_cpu_allocator
assert tune_cpu_allocator()
rss = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024
base = rss()
a = np.ones(256 * 2**20, np.uint8)
del a
kept = rss() - base
assert release_free_memory()
print(kept, rss() - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    kept, after = map(int, out.split())
    assert kept > 200 and after < 50, (kept, after)


def test_measure_throughput_positive() -> None:
    fast = prepare_for_inference(UNet(4, 2, base_width=4, depth=2))
    assert measure_throughput(fast, 4, size=64, repeats=1) > 0


# --------------------------------------------------------------------------- halo


def test_receptive_radius_of_simple_stacks() -> None:
    convs = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 5, padding=2))
    assert receptive_radius(convs, 1, 1) == 3
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1), nn.Upsample(scale_factor=2))
    # pooling cell (1 px) + one 3x3 conv at half resolution (2 px)
    assert receptive_radius(pooled, 2, 1) == 3


def test_unet_halo_values() -> None:
    radius, halo = unet_halo(3)
    assert radius == 51 and halo == 56
    assert halo == halo_for(radius, 8) and halo % 8 == 0
    assert unet_halo(2) == (23, 24)
    assert build_unet(4, 2).halo == 56


def _crop_logits(module: nn.Module, x: torch.Tensor, core: tuple[int, int, int, int], halo: int) -> torch.Tensor:
    r0, c0, r1, c1 = core
    h, w = x.shape[-2:]
    R0, C0, R1, C1 = max(r0 - halo, 0), max(c0 - halo, 0), min(r1 + halo, h), min(c1 + halo, w)
    with torch.no_grad():
        out = module(x[..., R0:R1, C0:C1])[0]
    return out[..., r0 - R0 : r1 - R0, c0 - C0 : c1 - C0]


CORES = [
    (0, 0, 64, 64),  # top-left corner of the image
    (64, 96, 104, 136),  # interior
    (192, 176, 250, 236),  # bottom-right corner, image size not a multiple of 8
    (120, 8, 136, 24),  # small core
]


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fused-channels-last"])
def test_halo_tiling_is_exact(net: nn.Module, fast: bool) -> None:
    """Logits of a crop with the model's halo equal whole-image logits on the core."""
    halo = unet_halo(3)[1]
    module = prepare_for_inference(net) if fast else net
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 250, 236, generator=g)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        full = module(x)[0]
    for core in CORES:
        r0, c0, r1, c1 = core
        assert r0 % 8 == 0 and c0 % 8 == 0  # crop origins stay aligned to the factor
        got = _crop_logits(module, x, core, halo)
        assert (got - full[..., r0:r1, c0:c1]).abs().max().item() < 1e-4, core
    # and the test can tell: too small a halo changes the logits
    diff = (_crop_logits(module, x, CORES[1], 24) - full[..., 64:104, 96:136]).abs().max().item()
    assert diff > 1e-3


def test_tile_plan_margins() -> None:
    """What each stage keeps: worked out by hand for depth 3 (see TilePlan's docstring)."""
    plan = TilePlan.for_unet(3, "transpose")
    assert plan.decoder == (0, 1, 2) and plan.concat == (2, 3, 4)
    assert plan.encoder == (44, 20, 8, 2) and plan.input_margin == 46
    # depth 4 needs 94 px: PERF_NOTES measured a 96-px halo as the smallest exact one
    assert TilePlan.for_unet(4, "transpose").input_margin == 94
    for depth in (1, 2, 3, 4, 5):
        for up in ("transpose", "bilinear"):
            plan = TilePlan.for_unet(depth, up)
            assert all(m % 2 == 0 for m in plan.encoder[:-1])  # pooling keeps the image's 2x2 grid
    for depth, up in [(2, "transpose"), (3, "transpose"), (3, "bilinear")]:
        assert TilePlan.for_unet(depth, up).input_margin <= unet_halo(depth, up)[1]  # the bundle's halo suffices


def _tiles_of(h: int, w: int, tile: int, halo: int, factor: int):
    from geoseg.grid import TileGrid

    return list(TileGrid(h, w, tile, halo=halo, factor=factor))


@pytest.mark.parametrize("depth,upsample", [(1, "transpose"), (2, "bilinear"), (3, "transpose"), (4, "transpose"), (3, "bilinear")])
def test_forward_tile_equals_whole_image_inference(depth: int, upsample: str) -> None:
    """Every tile of a grid (edges, corners, interior, cores smaller than the halo) gives
    the whole image's logits and masks on its core, with the tightest halo and a wider one."""
    torch.manual_seed(depth)
    net = UNet(4, 5, mask_heads=2, base_width=4, depth=depth, upsample=upsample).eval()
    _randomize_batchnorm(net, seed=depth)
    f = net.downsampling
    h, w = 203, 181  # not multiples of any factor
    x = torch.randn(1, 4, h, w)
    with torch.no_grad():
        logits, masks = net(x)
    margin = net.tile_plan.input_margin
    for halo in (margin, margin + 2 * f) if depth > 1 else (margin,):
        for tile_size in (f, 64):
            for t in _tiles_of(h, w, tile_size, halo, f):
                window = x[(..., *t.read.slices)]
                with torch.no_grad():
                    got_l, got_m = net.forward_tile(window, t.context, t.inner)
                want = (slice(None), slice(None), *t.core.slices)
                assert got_l.shape == logits[want].shape, t
                assert (got_l - logits[want]).abs().max().item() < 1e-4, t
                assert (got_m - masks[want]).abs().max().item() < 1e-4, t


def test_forward_tile_matches_the_fast_default_model() -> None:
    """With the shipped model as geoseg runs it (folded, channels_last), the trimmed
    forward gives the whole window's forward on the core (bit for bit at this size on
    this CPU; oneDNN picks other kernels for tiny shapes, hence the tolerance)."""
    fast = load_model("default").inference_module()
    x = torch.randn(1, 4, 256 + 2 * 56, 256 + 2 * 56, generator=torch.Generator().manual_seed(3))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        full = fast(x)
        tile = fast.forward_tile(x, (56, 56, 56, 56), (True, True, True, True))
    for a, b in zip(full, tile):
        a = a[..., 56:-56, 56:-56]
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
    assert torch.equal(full[0][..., 56:-56, 56:-56].argmax(1), tile[0].argmax(1))


def test_forward_tile_refuses_too_little_context() -> None:
    net = UNet(4, 3, depth=3).eval()
    x = torch.zeros(1, 4, 64 + 2 * 40, 64 + 2 * 40)
    with pytest.raises(ValueError, match="needs >= 46 px of context"):
        net.forward_tile(x, (40, 40, 40, 40), (True, True, True, True))
    # and the plan is tight: 2 px less at the first encoder stage changes the logits
    plan = net.tile_plan
    short = TilePlan(plan.input_margin - 2, (plan.encoder[0] - 2, *plan.encoder[1:]), plan.concat, plan.decoder)
    _randomize_batchnorm(net)
    x = torch.randn(1, 4, 64 + 2 * 48, 64 + 2 * 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net(x)[..., 48:-48, 48:-48]
        net.__dict__["tile_plan"] = short
        got = net.forward_tile(x, (48,) * 4, (True,) * 4)
    assert (got - want).abs().max().item() > 1e-4


def test_predictor_products_cover_the_core_with_either_path() -> None:
    """Predictor.predict returns the core, whether the module can trim (U-Net) or not."""
    from geoseg.scene.predict import Predictor

    torch.manual_seed(0)
    net = UNet(4, 3, mask_heads=1, base_width=4, depth=2).eval()
    pred = Predictor(net, [0.0] * 4, [1.0] * 4, factor=4, num_masks=1)
    h, w = 40 + 2 * 24, 40 + 24  # a core with context 24 above, below and left; right is the edge
    data = np.random.default_rng(0).normal(size=(1, 4, h, w)).astype(np.float32)
    valid = np.ones((1, h, w), bool)
    valid[0, 30, 30] = False
    ctx, inner = (24, 24, 24, 0), (True, True, True, False)
    assert pred._tiled((h, w), ctx, inner) and not pred._tiled((h, w), (8, 24, 24, 0), inner)
    # windows forward_tile cannot take run whole and are cropped instead
    assert not pred._tiled((h + 2, w), (26, 22, 24, 0), inner)  # core offset off the 4-px grid
    assert not pred._tiled((h + 2, w), (24, 24, 24, 0), inner)  # core of 42 px, far side inner
    trimmed = pred.predict(data, valid, ctx, inner)
    cropped = Predictor(nn.Sequential(net), [0.0] * 4, [1.0] * 4, 4, 1).predict(data, valid, ctx, inner)
    assert trimmed.classes.shape == (1, 40, 40) and trimmed.masks.shape == (1, 1, 40, 40)
    np.testing.assert_array_equal(trimmed.classes, cropped.classes)
    np.testing.assert_array_equal(trimmed.masks, cropped.masks)
    assert trimmed.classes[0, 30 - 24, 30 - 24] == 255  # nodata, in core coordinates


# --------------------------------------------------------------------------- spectral


def _pixels(*spectra: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(spectra, dtype=torch.float32).T.reshape(1, 4, 1, len(spectra))


def test_spectral_classes() -> None:
    model = SpectralIndexModel()
    water, forest, soil, road = (800, 780, 570, 250), (350, 535, 300, 3170), (980, 1190, 1490, 1860), (1200, 1250, 1310, 1440)
    logits, mask = model(_pixels(water, forest, soil, road))
    assert logits.shape == (1, 3, 1, 4) and mask.shape == (1, 1, 1, 4)
    assert logits.argmax(1).flatten().tolist() == [0, 1, 2, 2]
    assert (mask.flatten() > 0).tolist() == [True, False, False, False]
    # scale-free: the same reflectances x 10 give the same logits
    logits10, _ = model(_pixels(water, forest, soil, road) * 10)
    assert torch.allclose(logits, logits10, atol=1e-4)
    # confidences are meaningful: a clear water pixel is confident
    assert torch.softmax(logits, 1)[0, 0, 0, 0] > 0.9


def test_spectral_band_order_and_nodata() -> None:
    model = SpectralIndexModel(bands=("nir", "red", "green"))
    x = torch.tensor([250.0, 570.0, 780.0]).reshape(1, 3, 1, 1)  # water, reordered
    logits, _ = model(x)
    assert logits.argmax(1).item() == 0
    zeros, _ = model(torch.zeros(1, 3, 2, 2))
    assert torch.isfinite(zeros).all()
    with pytest.raises(ValueError, match="nir"):
        SpectralIndexModel(bands=("blue", "green", "red"))


def test_build_spectral_bundle() -> None:
    b = build_spectral(("red", "green", "blue", "nir"))
    assert b.halo == 0 and b.downsampling == 1 and b.value_range is None
    assert b.class_names == ("water", "vegetation", "other") and b.mask_heads == ("water",)
    assert b.module.nir == 3


# --------------------------------------------------------------------------- registry


def test_list_models() -> None:
    names = dict(list_models())
    assert {"default", "spectral", "unet"} <= set(names)
    assert all(isinstance(d, str) and d for d in names.values())


def test_load_model_by_name() -> None:
    spectral = load_model("spectral")
    assert spectral is load_model("spectral")  # cached
    with pytest.raises(ModelError, match="build_unet"):
        load_model("unet")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")


def test_build_unet_bundle() -> None:
    b = build_unet(["b1", "b2", "b3", "b4", "b5"], ["a", ("b", "#00ff00")], ["m1", "m2"], base_width=4, depth=2, seed=3)
    assert b.bands == ("b1", "b2", "b3", "b4", "b5") and b.num_classes == 2
    assert b.class_colors[1] == "#00ff00" and b.mask_heads == ("m1", "m2")
    assert (b.halo, b.downsampling) == (24, 4)
    with torch.no_grad():
        logits, masks = b.module(torch.randn(1, 5, 16, 16))
    assert logits.shape == (1, 2, 16, 16) and masks.shape == (1, 2, 16, 16)
    same = build_unet(["b1", "b2", "b3", "b4", "b5"], ["a", ("b", "#00ff00")], ["m1", "m2"], base_width=4, depth=2, seed=3)
    assert same.checksum == b.checksum
    with pytest.raises(ModelError, match="depth"):
        build_unet(4, 2, depth=9)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="default weights not trained yet")
def test_default_model_contract() -> None:
    from geoseg.classes import LANDCOVER_CLASSES

    b = load_model("default")
    assert b.architecture == "unet" and b.name == "default"
    assert b.bands == ("blue", "green", "red", "nir")
    assert b.class_names == tuple(c.name for c in LANDCOVER_CLASSES)
    assert b.class_colors == tuple(c.color.lower() for c in LANDCOVER_CLASSES)
    assert b.mask_heads == ("built_up",)
    assert b.value_range == (0.0, 10000.0)
    assert b.halo % b.downsampling == 0 and b.halo >= unet_halo(b.arch_params["depth"])[0]
    assert DEFAULT_WEIGHTS.stat().st_size < 4 * 1024 * 1024
    assert b.training.get("heldout_miou", 0) >= 0.85
    x = b.normalize(np.full((1, 4, 32, 32), 1000, np.uint16))
    with torch.no_grad():
        logits, masks = b.module(torch.from_numpy(x))
    assert logits.shape == (1, 6, 32, 32) and masks.shape == (1, 1, 32, 32)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="default weights not trained yet")
def test_default_model_tiling_is_exact_and_accurate() -> None:
    from geoseg.synthetic import render_window

    b = load_model("default")
    image, labels = render_window(0, 0, 232, 216, seed=1000)  # the held-out test seed
    x = torch.from_numpy(b.normalize(image[None]))
    fast = b.inference_module()
    with torch.no_grad():
        full = fast(x.contiguous(memory_format=torch.channels_last))[0]
        for core in [(0, 0, 96, 96), (96, 104, 160, 168), (160, 160, 232, 216)]:
            got = _crop_logits(fast, x.contiguous(memory_format=torch.channels_last), core, b.halo)
            r0, c0, r1, c1 = core
            assert (got - full[..., r0:r1, c0:c1]).abs().max().item() < 1e-4
    assert (full[0].argmax(0).numpy() == labels).mean() > 0.9


def test_default_model_missing_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import geoseg.models.registry as registry

    monkeypatch.setattr(registry, "DEFAULT_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(ModelError, match="train_default_model.py"):
        load_model("default")
