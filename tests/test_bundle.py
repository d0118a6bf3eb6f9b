"""Tests for the bundle file format: round trips, validation, and refusing pickles."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.errors import ModelError
from geoseg.models import (
    ModelBundle,
    ModelSpec,
    build_spectral,
    build_unet,
    bundle_from_bytes,
    load_model,
    parse_spec,
    read_bundle,
    save_bundle,
)
from geoseg.models.bundle import bundle_bytes


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    b = build_unet(
        ["blue", "green", "red", "nir"],
        [("water", "#1F78B4"), ("land", "#33a02c"), "other"],
        ["built_up"],
        base_width=4,
        depth=2,
        normalization={"mean": [500.0, 600.0, 700.0, 2000.0], "std": [100.0, 120.0, 150.0, 800.0]},
        value_range=(0, 10000),
        name="tiny",
        seed=0,
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in b.module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return ModelBundle(module=b.module, spec=b.spec)  # checksum of the modified weights


def _outputs(b: ModelBundle, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = b.module(x)
    return out if isinstance(out, tuple) else (out,)


# --------------------------------------------------------------------------- round trips


def test_round_trip(bundle: ModelBundle, tmp_path: Path) -> None:
    path = save_bundle(bundle.module, bundle.spec, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and data[8:9] == b"{"
    loaded = read_bundle(path)
    assert loaded.spec == bundle.spec
    assert loaded.checksum == hashlib.sha256(data).hexdigest() == bundle.checksum
    assert loaded.source == str(path)
    x = torch.randn(2, 4, 24, 20)
    for a, b in zip(_outputs(bundle, x), _outputs(loaded, x)):
        assert torch.equal(a, b)
    assert not loaded.module.training


def test_metadata_attributes(bundle: ModelBundle) -> None:
    assert bundle.name == "tiny" and bundle.architecture == "unet"
    assert bundle.bands == ("blue", "green", "red", "nir") and bundle.num_bands == 4
    assert bundle.class_names == ("water", "land", "other") and bundle.num_classes == 3
    assert bundle.class_colors[0] == "#1f78b4"  # normalised to lower case
    assert bundle.mask_heads == ("built_up",)
    assert (bundle.halo, bundle.downsampling) == (24, 4)
    assert bundle.value_range == (0.0, 10000.0)
    assert bundle.normalization.mean == [500.0, 600.0, 700.0, 2000.0]
    assert bundle.arch_params == {"base_width": 4, "depth": 2, "upsample": "transpose"}
    assert "tiny" in repr(bundle)


def test_normalize(bundle: ModelBundle) -> None:
    raw = np.array([600, 720, 850, 2800], np.uint16).reshape(4, 1, 1)
    out = bundle.normalize(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [1.0, 1.0, 1.0, 1.0], rtol=1e-6)
    assert bundle.normalize(np.zeros((2, 4, 3, 3))).shape == (2, 4, 3, 3)
    with pytest.raises(ModelError, match="expects input"):
        bundle.normalize(np.zeros((3, 8, 8)))


def test_fp16_storage(bundle: ModelBundle, tmp_path: Path) -> None:
    p32 = bundle.save(tmp_path / "f32.safetensors")
    p16 = bundle.save(tmp_path / "f16.safetensors", dtype=torch.float16)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    loaded = read_bundle(p16)
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    x = torch.randn(1, 4, 32, 32)
    for a, b in zip(_outputs(bundle, x), _outputs(loaded, x)):
        assert (a - b).abs().max().item() < 0.05


def test_spectral_round_trip(tmp_path: Path) -> None:
    b = build_spectral()
    loaded = read_bundle(b.save(tmp_path / "s.safetensors"))
    assert loaded.spec == b.spec and loaded.checksum == b.checksum
    x = torch.rand(1, 4, 8, 8) * 3000
    assert torch.equal(_outputs(b, x)[0], _outputs(loaded, x)[0])


def test_replace(bundle: ModelBundle) -> None:
    new = bundle.replace(name="renamed", training={"epochs": 3})
    assert new.name == "renamed" and new.training == {"epochs": 3}
    assert new.checksum != bundle.checksum and bundle.name == "tiny"
    with pytest.raises(ModelError, match="normalization"):
        bundle.replace(normalization={"mean": [0.0], "std": [1.0]})


def test_deterministic_bytes(bundle: ModelBundle) -> None:
    assert bundle_bytes(bundle.module, bundle.spec) == bundle_bytes(bundle.module, bundle.spec)


# --------------------------------------------------------------------------- caching


def test_load_model_caches_by_checksum(bundle: ModelBundle, tmp_path: Path) -> None:
    p1 = bundle.save(tmp_path / "a.safetensors")
    p2 = tmp_path / "copy.safetensors"
    shutil.copy(p1, p2)
    first = load_model(p1)
    assert load_model(str(p1)) is first
    assert load_model(p2) is first  # same bytes, same checksum
    assert load_model(first) is first
    other = bundle.replace(name="other").save(tmp_path / "b.safetensors")
    assert load_model(other) is not first


# --------------------------------------------------------------------------- refusing unsafe files


class _Payload:
    """Pickles to a call that creates the file ``path`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    # control: the payload is live, unpickling it does create its file
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()

    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(sentinel)}))
    with pytest.raises(ModelError, match="not a geoseg model bundle.*pickle.*never unpickles"):
        load_model(path)
    with pytest.raises(ModelError, match="not a geoseg model bundle"):
        read_bundle(path)
    assert not sentinel.exists()


def test_torch_save_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    control = tmp_path / "control"
    torch.save({"x": _Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(3), "x": _Payload(sentinel)}, path)
    with pytest.raises(ModelError, match="not a geoseg model bundle.*zip.*torch.save.*never unpickles"):
        load_model(path)
    assert not sentinel.exists()


def test_plain_state_dict_torch_save_is_refused(bundle: ModelBundle, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(bundle.module.state_dict(), path)
    with pytest.raises(ModelError, match="save_bundle"):
        load_model(path)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "only 0 bytes"),
        (b"hello world, not a model", "no safetensors header"),
        (struct.pack("<Q", 10**6) + b"{}", "no safetensors header"),
        (struct.pack("<Q", 2) + b"{}", "without geoseg metadata"),
        (struct.pack("<Q", 4) + b"{x:1", "unreadable"),
    ],
)
def test_garbage_is_refused(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=why):
        read_bundle(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_bundle(tmp_path / "nope.safetensors")
    with pytest.raises(ModelError, match="directory"):
        load_model(tmp_path)


def _rewrite(data: bytes, edit) -> bytes:  # noqa: ANN001
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _edit_spec(**changes):  # noqa: ANN003, ANN202
    def edit(header: dict) -> None:
        spec = json.loads(header["__metadata__"]["geoseg"])
        spec.update(changes)
        header["__metadata__"]["geoseg"] = json.dumps(spec)

    return edit


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"normalization": {"mean": [0, 0, 0, 0], "std": [1, 0, 1, 1]}}, "normalization"),
        ({"normalization": {"mean": [0, 0], "std": [1, 1]}}, "normalization"),
        ({"classes": [{"name": "a", "color": "red"}]}, "classes.0.color"),
        ({"bands": ["a", "a", "b", "c"]}, "bands"),
        ({"halo": -8}, "halo"),
        ({"architecture": "resnet"}, "architecture"),
        ({"format_version": 2}, "format_version"),
        ({"value_range": [10, 0]}, "value_range"),
        ({"surprise": 1}, "surprise"),
        ({"arch_params": {"base_width": 4, "depth": 2, "upsample": "transpose", "dropout": 0.1}}, "arch_params"),
        ({"downsampling": 8}, "downsampling"),
    ],
)
def test_invalid_metadata_names_the_field(bundle: ModelBundle, changes: dict, field: str) -> None:
    data = _rewrite(bundle_bytes(bundle.module, bundle.spec), _edit_spec(**changes))
    with pytest.raises(ModelError, match=f"'?{field}"):
        bundle_from_bytes(data, source="m.safetensors")


def test_weights_must_match_architecture(bundle: ModelBundle) -> None:
    data = bundle_bytes(bundle.module, bundle.spec)
    wider = _rewrite(data, _edit_spec(arch_params={"base_width": 8, "depth": 2, "upsample": "transpose"}))
    with pytest.raises(ModelError, match="shape"):
        bundle_from_bytes(wider)

    from safetensors.torch import save

    state = {k: v for k, v in bundle.module.state_dict().items() if k != "head.bias"}
    with pytest.raises(ModelError, match="missing"):
        bundle_from_bytes(save(state, metadata={"geoseg": bundle.spec.to_json()}))
    with pytest.raises(ModelError, match="truncated"):
        bundle_from_bytes(data[:-10])


def test_save_rejects_mismatched_module(bundle: ModelBundle, tmp_path: Path) -> None:
    other = build_unet(4, 3, ["built_up"], base_width=8, depth=2)
    with pytest.raises(ModelError, match="do not match"):
        save_bundle(other.module, bundle.spec, tmp_path / "x.safetensors")


def test_parse_spec_errors_name_fields() -> None:
    good = build_spectral().spec.model_dump()
    assert isinstance(parse_spec(good), ModelSpec)
    with pytest.raises(ModelError, match="field 'name'"):
        parse_spec({**good, "name": ""})
    with pytest.raises(ModelError, match="field 'mask_heads'"):
        parse_spec({**good, "mask_heads": ["a", "a"]})
