"""TorchScript archives (``torch.jit.save``) and exported programs (``torch.export.save``, ``.pt2``).

Both are zip archives of code (TorchScript, or a serialised FX graph) and tensors. Before
torch reads one, :func:`geoseg.models.safety.check_archive` refuses any pickled Python
payload in it, so loading never reaches Python's full unpickler.

A contract may be embedded as an extra file: ``geoseg.json`` or ``geoseg-spec`` (a geoseg
contract or model spec, JSON) or ``mlm-metadata`` (the properties of a STAC MLM Item, as
stac-model writes them); a sidecar ``MODEL.geoseg.json`` overrides it.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.runtime import Runtime
from geoseg.models.safety import check_archive

__all__ = ["TorchProgram", "load_torchscript", "load_pt2"]

#: Extra files that may carry a contract, in order of precedence (last wins).
EXTRA_FILES = ("mlm-metadata", "geoseg-spec", "geoseg.json")


class TorchProgram(Runtime):
    """A TorchScript module or an exported program's module, on one device."""

    def __init__(self, kind: str, data: bytes, source: str, device: str = "cpu") -> None:
        import torch

        self.kind, self.data, self.source, self.device = kind, data, source, device
        self.input_size = None
        try:
            if kind == "torchscript":
                with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; its archives still load
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(io.BytesIO(data), map_location=device)
            else:
                program = torch.export.load(io.BytesIO(data))
                self.input_size = _static_size(program)
                module = program.module()
                if device != "cpu":
                    module = module.to(device)
        except ModelError:
            raise
        except Exception as err:  # torch raises many types for a bad archive
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelError(f"{source}: torch cannot load this {kind} archive ({text[:200]})") from None
        self.module = module.eval() if kind == "torchscript" else module

    def on_device(self, device: str) -> TorchProgram:
        if device == self.device:
            return self
        return TorchProgram(self.kind, self.data, self.source, device)

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.module(x.contiguous())


def _extra(members: dict[str, bytes], source: str) -> dict[str, Any]:
    """Contract fields from the archive's extra files (``extra/NAME`` in .pt2, ``extra/NAME`` in TorchScript)."""
    from geoseg.models.mlm import item_fields
    from geoseg.models.onnx import from_spec

    fields: dict[str, Any] = {}
    for name in EXTRA_FILES:
        raw = members.get(f"extra/{name}")
        if raw is None:
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ModelError(f"{source}: the extra file {name!r} is not JSON") from None
        if name == "mlm-metadata":
            props = value.get("properties", value) if isinstance(value, dict) else {}
            fields.update(item_fields(props, f"{source} ({name})"))
        else:
            fields.update(from_spec(value))
    return fields


def _static_size(program: Any) -> tuple[int, int] | None:
    """The (height, width) an exported program was specialised to, if it was."""
    try:
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
        shape = node.meta["val"].shape
        h, w = shape[-2], shape[-1]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None
    except Exception:
        return None


def load_torchscript(data: bytes, source: str) -> tuple[TorchProgram, dict[str, Any]]:
    """The runtime of a TorchScript archive and the contract fields of its extra files."""
    members = check_archive(data, source, "torchscript")
    runtime = TorchProgram("torchscript", data, source)
    return runtime, _extra(members, source)


def load_pt2(data: bytes, source: str) -> tuple[TorchProgram, dict[str, Any]]:
    """The runtime of a ``torch.export`` program and the contract fields of its extra files."""
    members = check_archive(data, source, "pt2")
    return TorchProgram("torch.export", data, source), _extra(members, source)
