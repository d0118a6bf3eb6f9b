"""Tests for the trainer: data handling, statistics, augmentation, losses, learning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geoseg._constants import IGNORE
from geoseg.classes import LANDCOVER_CLASSES
from geoseg.errors import InputError
from geoseg.models import build_unet
from geoseg.train import (
    ChipSampler,
    LabeledScene,
    TrainConfig,
    class_frequencies,
    compute_normalization,
    evaluate,
    load_scene,
    metrics_from_confusion,
    split_scene,
    train,
)
from geoseg.train.losses import mask_loss

BANDS = ["blue", "green", "red", "nir"]
BUILT_UP = {"built_up": [4, 5]}


@pytest.fixture(scope="module")
def scenes() -> tuple[LabeledScene, LabeledScene]:
    """A small synthetic training scene and a spatially separate validation window."""
    from geoseg.synthetic import render_window

    img, lab = render_window(0, 0, 320, 320, seed=3)
    vimg, vlab = render_window(512, 512, 192, 192, seed=3)
    return LabeledScene(img, lab, name="train"), LabeledScene(vimg, vlab, name="val")


def _tiny(seed: int = 0):
    return build_unet(BANDS, LANDCOVER_CLASSES, ["built_up"], base_width=8, depth=2, seed=seed)


FAST = {"chip_size": 64, "batch_size": 8, "lr": 1e-2, "class_weights": "auto", "mask_classes": BUILT_UP,
        "progress": False, "num_threads": 1}


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_tiny_model_learns(scenes) -> None:
    train_scene, val_scene = scenes
    bundle = _tiny()
    before = evaluate(bundle.replace(normalization=compute_normalization([train_scene])), val_scene,
                      mask_classes=BUILT_UP)
    threads = torch.get_num_threads()
    module, history = train(bundle, train_scene, val_scene, epochs=6, chips_per_epoch=192, **FAST)
    assert torch.get_num_threads() == threads  # restored
    assert not module.training
    best = history.best
    assert best is not None and history.best_epoch == int(np.nanargmax([e.val_miou for e in history.epochs])) + 1
    assert best.val_miou > 0.5 > before.miou + 0.2  # chance level is ~0.1-0.2
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert best.val.mask_iou["built_up"] > 0.3
    # the returned weights are the best epoch's
    trained = bundle.replace(module=module, normalization=history.normalization)
    assert evaluate(trained, val_scene, mask_classes=BUILT_UP).miou == pytest.approx(best.val_miou, abs=1e-6)
    summary = history.summary()
    json.dumps(summary)
    assert summary["best_epoch"] == history.best_epoch and len(summary["loss"]) == 6


def test_reproducible(scenes) -> None:
    train_scene, val_scene = scenes
    runs = [
        train(_tiny(), train_scene, val_scene, epochs=2, chips_per_epoch=16, restore_best=False, **FAST)
        for _ in range(2)
    ]
    (m1, h1), (m2, h2) = runs
    assert [e.train_loss for e in h1.epochs] == [e.train_loss for e in h2.epochs]
    assert [e.val_miou for e in h1.epochs] == [e.val_miou for e in h2.epochs]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    _, h3 = train(_tiny(), train_scene, val_scene, epochs=2, chips_per_epoch=16, restore_best=False,
                  **{**FAST, "seed": 1})
    assert [e.train_loss for e in h3.epochs] != [e.train_loss for e in h1.epochs]


def test_input_bundle_not_modified(scenes) -> None:
    bundle = _tiny()
    before = {k: v.clone() for k, v in bundle.module.state_dict().items()}
    train(bundle, scenes[0], scenes[1], epochs=1, chips_per_epoch=8, **FAST)
    for k, v in bundle.module.state_dict().items():
        assert torch.equal(v, before[k])


def test_split_validation_and_time_limit(scenes) -> None:
    _, history = train(_tiny(), scenes[0], None, epochs=3, chips_per_epoch=8, time_limit=0.0,
                       schedule="cosine", val_split="strip", **FAST)
    assert history.stopped == "time_limit" and len(history.epochs) == 1
    assert history.epochs[0].val is not None and history.epochs[0].val.pixels == 64 * 320


def test_early_stopping(scenes) -> None:
    unlabeled = LabeledScene(scenes[1].image, np.full_like(scenes[1].labels, IGNORE))
    _, history = train(_tiny(), scenes[0], unlabeled, epochs=4, chips_per_epoch=8, early_stopping=1, **FAST)
    assert history.stopped == "early_stopping" and len(history.epochs) == 1


# --------------------------------------------------------------------------- data and statistics


def test_compute_normalization_ignores_nodata() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(100, 1000, size=(3, 40, 50)).astype(np.uint16)
    img[:, :10, :] = 0  # nodata strip
    scene = LabeledScene(img, np.zeros((40, 50), np.uint8), nodata=0)
    stats = compute_normalization([scene], block=16)
    valid = img[:, 10:, :].reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], valid.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], valid.std(1), rtol=1e-6)
    no_nodata = compute_normalization([LabeledScene(img, scene.labels)])
    assert no_nodata["mean"][0] < stats["mean"][0]
    with pytest.raises(InputError, match="no valid"):
        compute_normalization([LabeledScene(np.zeros((3, 8, 8)), np.zeros((8, 8), np.uint8), nodata=0)])


def test_constant_band_gets_unit_std() -> None:
    img = np.full((2, 8, 8), 5.0)
    img[1] = np.arange(64).reshape(8, 8)
    stats = compute_normalization([LabeledScene(img, np.zeros((8, 8), np.uint8))])
    assert stats["std"][0] == 1.0 and stats["std"][1] > 1


def test_class_frequencies() -> None:
    labels = np.array([[0, 0, 1, IGNORE]], np.uint8)
    freq = class_frequencies([LabeledScene(np.zeros((1, 1, 4)), labels)], 3)
    np.testing.assert_allclose(freq, [2 / 3, 1 / 3, 0])


def test_split_scene() -> None:
    scene = LabeledScene(np.zeros((1, 100, 20)), np.zeros((100, 20), np.uint8))
    tr, va = split_scene(scene, 0.2, gap=10)
    assert tr.shape == (70, 20) and va.shape == (20, 20)
    assert np.shares_memory(tr.image, scene.image)  # views, no copies
    with pytest.raises(InputError):
        split_scene(scene, 0.95, gap=10)


def test_augmentation_keeps_image_and_labels_aligned() -> None:
    """The chip's pixels and its labels/masks go through the same flips and rotations."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(64, 64)).astype(np.uint8)
    image = np.stack([labels * 100.0, labels * 10.0 + 5])  # band 0 encodes the label
    scene = LabeledScene(image, labels)
    cfg = TrainConfig(chip_size=16, brightness=0.0, contrast=0.0, mask_classes=BUILT_UP)
    sampler = ChipSampler([scene], cfg, {"mean": [0.0, 0.0], "std": [100.0, 1.0]}, ["built_up"],
                           np.random.default_rng(1))
    seen = set()
    for _ in range(30):
        x, y, m = sampler.chip()
        np.testing.assert_array_equal(np.rint(x[0]).astype(np.uint8), y)
        np.testing.assert_array_equal(m[0], np.isin(y, [4, 5]))
        seen.add(x.tobytes())
    assert len(seen) == 30


def test_brightness_contrast_augmentation_changes_values() -> None:
    labels = np.zeros((32, 32), np.uint8)
    scene = LabeledScene(np.ones((2, 32, 32)), labels)
    cfg = TrainConfig(chip_size=16, brightness=0.2, contrast=0.2, noise=0.0)
    sampler = ChipSampler([scene], cfg, {"mean": [0.0, 0.0], "std": [1.0, 1.0]}, [], np.random.default_rng(0))
    x, _, m = sampler.chip()
    assert m is None
    assert not np.allclose(x, 1.0) and np.all(np.abs(x - 1.0) <= 0.2 * 1.0 + 0.2 + 1e-6)
    assert np.ptp(x[0]) < 1e-6  # one gain and shift per band and chip
    noisy = ChipSampler([scene], TrainConfig(chip_size=16, brightness=0.0, contrast=0.0, noise=0.05),
                        {"mean": [0.0, 0.0], "std": [1.0, 1.0]}, [], np.random.default_rng(0))
    x, _, _ = noisy.chip()
    assert 0.03 < float(np.std(x - 1.0)) < 0.07  # Gaussian noise of std 0.05 per pixel


def test_chips_avoid_unlabelled_areas() -> None:
    labels = np.full((64, 64), IGNORE, np.uint8)
    labels[:, :32] = 1
    scene = LabeledScene(np.ones((1, 64, 64)), labels)
    cfg = TrainConfig(chip_size=16, augment=False, min_labeled=0.9)
    sampler = ChipSampler([scene], cfg, {"mean": [0.0], "std": [1.0]}, [], np.random.default_rng(0))
    for _ in range(20):
        _, y, _ = sampler.chip()
        assert np.mean(y != IGNORE) >= 0.9


def test_nodata_pixels_become_ignore_and_zero() -> None:
    image = np.full((2, 32, 32), 500, np.uint16)
    image[:, :, :8] = 0
    scene = LabeledScene(image, np.ones((32, 32), np.uint8), nodata=0)
    cfg = TrainConfig(chip_size=32, augment=False, mask_classes={"m": [1]})
    sampler = ChipSampler([scene], cfg, {"mean": [400.0, 400.0], "std": [50.0, 50.0]}, ["m"],
                           np.random.default_rng(0))
    x, y, m = sampler.chip()
    assert np.all(y[:, :8] == IGNORE) and np.all(y[:, 8:] == 1)
    assert np.all(m[0, :, :8] == IGNORE) and np.all(m[0, :, 8:] == 1)
    assert np.all(x[:, :, :8] == 0) and np.allclose(x[:, :, 8:], 2.0)


def test_load_scene(tmp_path: Path) -> None:
    transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 100.0)
    img = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    lab = np.ones((16, 16), np.uint8)
    lab[0, 0] = 9
    kw = {"driver": "GTiff", "width": 16, "height": 16, "crs": "EPSG:32633", "transform": transform}
    with rasterio.open(tmp_path / "img.tif", "w", count=2, dtype="uint16", nodata=0, **kw) as dst:
        dst.write(img)
    with rasterio.open(tmp_path / "lab.tif", "w", count=1, dtype="uint8", nodata=9, **kw) as dst:
        dst.write(lab, 1)
    scene = load_scene(tmp_path / "img.tif", tmp_path / "lab.tif", [tmp_path / "lab.tif"])
    assert scene.image.shape == (2, 16, 16) and scene.nodata == 0
    assert scene.labels[0, 0] == IGNORE and scene.labels[1, 1] == 1
    assert scene.masks is not None and scene.masks.shape == (1, 16, 16)
    # labels on another grid are put onto the image's grid; outside their extent: unlabelled
    with rasterio.open(tmp_path / "other.tif", "w", count=1, dtype="uint8", **{**kw, "width": 8}) as dst:
        dst.write(np.full((1, 16, 8), 2, np.uint8))
    other = load_scene(tmp_path / "img.tif", tmp_path / "other.tif")
    assert np.all(other.labels[:, :8] == 2) and np.all(other.labels[:, 8:] == IGNORE)
    far = {**kw, "transform": Affine(1.0, 0.0, 5000.0, 0.0, -1.0, 100.0)}
    with rasterio.open(tmp_path / "far.tif", "w", count=1, dtype="uint8", **far) as dst:
        dst.write(np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(InputError, match="does not overlap"):
        load_scene(tmp_path / "img.tif", tmp_path / "far.tif")


# --------------------------------------------------------------------------- validation errors


def test_data_errors(scenes) -> None:
    train_scene, val_scene = scenes
    three = LabeledScene(train_scene.image[:3], train_scene.labels)
    with pytest.raises(InputError, match="3 bands"):
        train(_tiny(), three, val_scene, epochs=1, **FAST)
    bad = LabeledScene(train_scene.image, np.full_like(train_scene.labels, 7))
    with pytest.raises(InputError, match=r"label values \[7\]"):
        train(_tiny(), bad, val_scene, epochs=1, **FAST)
    with pytest.raises(InputError, match="built_up"):
        train(_tiny(), train_scene, val_scene, epochs=1, **{**FAST, "mask_classes": None})
    with pytest.raises(InputError, match="multiple"):
        train(_tiny(), train_scene, val_scene, epochs=1, **{**FAST, "chip_size": 66})
    with pytest.raises(InputError, match="schedule"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="does not match"):
        LabeledScene(np.zeros((1, 4, 4)), np.zeros((5, 4), np.uint8))


# --------------------------------------------------------------------------- losses and metrics


def test_mask_loss_ignores_unlabelled_pixels() -> None:
    logits = torch.tensor([[[[5.0, -5.0, 0.0]]]])
    target = torch.tensor([[[[1, 0, IGNORE]]]], dtype=torch.uint8)
    changed = logits.clone()
    changed[..., 2] = 100.0
    assert mask_loss(logits, target).item() == pytest.approx(mask_loss(changed, target).item())
    assert mask_loss(logits, target).item() < mask_loss(-logits, target).item()


def test_metrics_from_confusion() -> None:
    conf = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    m = metrics_from_confusion(conf, {"built_up": [3, 4]})
    assert m.iou[0] == pytest.approx(8 / 11) and m.iou[1] == pytest.approx(9 / 12)
    assert np.isnan(m.iou[2])  # absent class: not part of the mean
    assert m.miou == pytest.approx((8 / 11 + 9 / 12) / 2)
    assert m.accuracy == pytest.approx(17 / 20) and m.pixels == 20
    assert m.mask_iou == {"built_up": 0.75}
    d = m.as_dict(["a", "b", "c"])
    assert d["iou"]["c"] is None and json.dumps(d)


# --------------------------------------------------------------------------- loss terms, sampling, checkpoints


def test_loss_ignores_unlabelled_pixels() -> None:
    """Cross-entropy, BCE + Dice and MAE: logits at pixels labelled 255 change nothing."""
    from geoseg.train.losses import total_loss as _loss

    torch.manual_seed(0)
    logits, mask_logits = torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, :, :3] = IGNORE
    masks = (labels == 2).to(torch.uint8)[:, None]
    masks[labels[:, None] == IGNORE] = IGNORE
    cfg = TrainConfig(mae_weight=0.7, class_weights=None)
    base = _loss(cfg, logits, mask_logits, labels, masks, torch.tensor([1.0, 2.0, 0.5]))
    changed_logits, changed_masks = logits.clone(), mask_logits.clone()
    changed_logits[..., :3] = torch.randn(2, 3, 8, 3) * 50
    changed_masks[..., :3] = 99.0
    other = _loss(cfg, changed_logits, changed_masks, labels, masks, torch.tensor([1.0, 2.0, 0.5]))
    assert other.item() == pytest.approx(base.item(), rel=1e-6)
    # ... and they get no gradient
    x = logits.clone().requires_grad_()
    _loss(cfg, x, mask_logits, labels, masks, None).backward()
    assert torch.all(x.grad[..., :3] == 0) and torch.any(x.grad[..., 3:] != 0)
    # every term counts on labelled pixels; with nothing labelled the loss is 0, not NaN
    assert _loss(TrainConfig(mae_weight=1.0, ce_weight=0.0), logits, None, labels, None, None).item() > 0
    empty = torch.full_like(labels, IGNORE)
    assert _loss(cfg, logits, mask_logits, empty, torch.full_like(masks, IGNORE), None).item() == 0.0


def test_grid_sampling_visits_every_chip_once_per_epoch() -> None:
    labels = np.zeros((50, 70), np.uint8)
    labels[:, 60:] = IGNORE  # the last column of chips is mostly unlabelled: left out
    image = np.stack([np.arange(50 * 70, dtype=np.float64).reshape(50, 70)])
    scene = LabeledScene(image, labels)
    cfg = TrainConfig(chip_size=16, batch_size=5, sampling="grid", augment=False, min_labeled=0.5)
    sampler = ChipSampler([scene], cfg, {"mean": [0.0], "std": [1.0]}, [], np.random.default_rng(0))
    # rows 0, 16, 32, 34 (flush with the end) x columns 0, 16, 32, 48 (54 is mostly unlabelled)
    assert sorted(sampler.positions) == [(0, r, c) for r in (0, 16, 32, 34) for c in (0, 16, 32, 48)]
    assert sampler.steps == 4
    for _ in range(2):
        corners = [int(x[i, 0, 0, 0]) for x, _, _ in sampler.epoch() for i in range(x.shape[0])]
        assert sorted(corners) == sorted(r * 70 + c for r in (0, 16, 32, 34) for c in (0, 16, 32, 48))


def test_checkpoint_resume_is_exact_and_checked(scenes, tmp_path: Path) -> None:
    train_scene, val_scene = scenes
    opts = dict(epochs=3, chips_per_epoch=16, **FAST)
    whole, h1 = train(_tiny(), train_scene, val_scene, checkpoint=tmp_path / "a.ckpt", **opts)
    stops = []
    _, h2 = train(_tiny(), train_scene, val_scene, checkpoint=tmp_path / "b.ckpt", time_limit=0.0,
                  on_epoch=stops.append, **opts)
    assert h2.stopped == "time_limit" and len(stops) == 1
    resumed, h3 = train(_tiny(), train_scene, val_scene, checkpoint=tmp_path / "b.ckpt", resume=True, **opts)
    assert [e.train_loss for e in h3.epochs] == [e.train_loss for e in h1.epochs]
    assert h3.best_epoch == h1.best_epoch and h3.stopped == "epochs"
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(InputError, match=r"different training setup \(option lr"):
        train(_tiny(), train_scene, val_scene, checkpoint=tmp_path / "b.ckpt", resume=True, **{**opts, "lr": 0.5})
    with pytest.raises(InputError, match="training scene shapes"):
        train(_tiny(), train_scene.window(slice(0, 256), slice(None)), val_scene, checkpoint=tmp_path / "b.ckpt",
              resume=True, **opts)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_are_never_unpickled_as_objects(tmp_path: Path) -> None:
    import pickle

    from geoseg.train.checkpoint import load_checkpoint, save_checkpoint

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"format": ["geoseg-checkpoint", 1], "x": Boom()}, evil)
    with pytest.raises(InputError, match="not a readable geoseg checkpoint"):
        load_checkpoint(evil)
    (tmp_path / "junk.ckpt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(InputError, match="geoseg checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    path = save_checkpoint(tmp_path / "ok.ckpt", {"t": torch.ones(2), "meta": "{}"})
    assert torch.equal(load_checkpoint(path)["t"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt", "junk.ckpt", "ok.ckpt"]  # no temp files


def test_mixed_precision_path_and_device_errors(scenes) -> None:
    """amp=True runs autocast (bf16 on CPU: slow, so 'auto' keeps it for CUDA); a CUDA
    device that is not there is refused with what to do."""
    train_scene, val_scene = scenes
    module, history = train(_tiny(), train_scene, val_scene, epochs=1, chips_per_epoch=8, amp=True, **FAST)
    assert np.isfinite(history.epochs[0].train_loss) and next(module.parameters()).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cpu"):
            train(_tiny(), train_scene, val_scene, epochs=1, chips_per_epoch=8, device="cuda", **FAST)
