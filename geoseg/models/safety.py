"""Refusing model files that carry a pickled Python payload, before anything loads them.

TorchScript archives (``torch.jit.save``) and exported programs (``torch.export.save``,
``.pt2``) are zip archives that hold pickles next to their tensors and code:

- ``torch.jit.load`` unpickles ``data.pkl``/``constants.pkl`` with TorchScript's own C++
  unpickler (no Python callables), but a file may be a plain ``torch.save`` archive whose
  pickle names any Python callable.
- ``torch.export.load`` calls ``torch.load(weights_only=False)`` on weights and constants
  marked ``use_pickle``, ``pickle.loads`` on custom-object constants, and falls back to
  ``torch.load(weights_only=False)`` when the sample inputs do not load with
  ``weights_only=True``: each is Python's full unpickler, which runs whatever a pickle says.

:func:`check_archive` reads every pickle in such an archive with :mod:`pickletools` (which
parses opcodes and executes nothing) and refuses any reference to a Python callable outside
the few that rebuild tensors, and every ``use_pickle`` payload of a ``.pt2``. What passes
contains nothing the restricted (``weights_only``) unpickler would refuse, so torch never
reaches its full unpickler on it.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections.abc import Iterable

from geoseg.errors import ModelError

__all__ = ["check_archive", "sniff", "is_pickle"]

#: Callables a tensor pickle may name (what ``torch.load(weights_only=True)`` allows for
#: plain tensors and state dicts), as ``(module, name)``; ``*`` matches any name.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch", "Size"),
        ("torch", "device"),
        ("collections", "OrderedDict"),
        ("torch.jit._pickle", "*"),  # TorchScript's list/dict type tags
    }
)

# opcodes that push a string (the operands of STACK_GLOBAL)
_STRINGS = {
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
    "SHORT_BINSTRING", "BINSTRING", "STRING", "SHORT_BINBYTES",
}
_MEMO = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


def is_pickle(data: bytes) -> bool:
    """Whether ``data`` starts like a pickle (protocol 2+ header, or a protocol 0/1 opcode)."""
    return data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5


def sniff(data: bytes) -> str:
    """What a model file is, from its first bytes (and, for zips, its members).

    Returns one of ``"pickle"``, ``"torch.save"`` (a zip whose pickle is the payload),
    ``"torchscript"``, ``"pt2"``, ``"safetensors"``, ``"json"``, ``"zip"`` or ``"other"``
    (ONNX protobufs have no magic bytes).
    """
    if data[:2] == b"PK":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return "zip"
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
            return "pt2"
        if any(t.startswith("code/") for t in tails) and "data.pkl" in tails:
            return "torchscript"
        if "data.pkl" in tails:
            return "torch.save"
        return "zip"
    if is_pickle(data) or data[:1] in (b"(", b"]", b"}"):
        return "pickle"
    if len(data) >= 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return "safetensors"
    if data.lstrip()[:1] == b"{":
        return "json"
    return "other"


def _globals(payload: bytes, where: str) -> Iterable[tuple[str, str]]:
    """The ``(module, name)`` pairs a pickle references; refuses what cannot be read safely."""
    recent: list[str | None] = []
    try:
        for op, arg, _ in pickletools.genops(payload):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield module, attr
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    raise ModelError(f"{where}: a pickle whose callables cannot be read without running it")
                yield str(recent[-2]), str(recent[-1])
            elif name in ("EXT1", "EXT2", "EXT4", "OBJ"):
                raise ModelError(f"{where}: a pickle that calls Python code through {name}")
            if name in _STRINGS:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name not in _MEMO:
                recent.append(None)
            del recent[:-2]
    except ModelError:
        raise
    except Exception as err:  # malformed pickle stream
        raise ModelError(f"{where}: an unreadable pickle ({err})") from None


def _check_pickle(payload: bytes, where: str, torchscript: bool) -> None:
    for module, attr in _globals(payload, where):
        if torchscript and module.startswith("__torch__"):
            continue  # a TorchScript class, defined by the archive's TorchScript code
        if (module, attr) in SAFE_GLOBALS or (module, "*") in SAFE_GLOBALS:
            continue
        if module == "torch" and attr.endswith("Storage"):
            continue
        raise ModelError(
            f"{where} carries a pickled Python payload (it calls {module}.{attr}); geoseg never "
            "unpickles model files: export the model with torch.jit.save, torch.export.save or to ONNX"
        )


def check_archive(data: bytes, source: str, kind: str) -> dict[str, bytes]:
    """Refuse a TorchScript or ``.pt2`` archive that carries a pickled Python payload.

    Args:
        data: The archive's bytes.
        source: The file, for messages.
        kind: ``"torchscript"`` or ``"pt2"``.

    Returns:
        The archive's members by name (prefix folder removed).

    Raises:
        ModelError: naming the member and the callable it would have run.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as err:
        raise ModelError(f"{source}: not a readable {kind} archive ({err})") from None
    for name, payload in members.items():
        where = f"{source} (member {name})"
        if name.endswith("pkl") or is_pickle(payload):
            _check_pickle(payload, where, torchscript=kind == "torchscript")
        elif payload[:2] == b"PK":  # a torch.save archive inside (the .pt2's sample inputs)
            inner = check_archive(payload, where, "torch.save")
            if not any(n.endswith("data.pkl") for n in inner):
                raise ModelError(f"{where}: a nested archive that is not a tensor file")
    if kind == "pt2":
        for name, payload in members.items():
            if name.endswith("_config.json") and "/data/" in f"/{name}":
                try:
                    config = json.loads(payload).get("config", {})
                except (ValueError, AttributeError):
                    raise ModelError(f"{source} (member {name}): unreadable payload config") from None
                for fqn, meta in config.items():
                    if not isinstance(meta, dict) or meta.get("use_pickle") or meta.get("tensor_meta") is None:
                        raise ModelError(
                            f"{source} (member {name}) carries a pickled Python payload ({fqn!r}); geoseg never "
                            "unpickles model files: export with plain tensor weights and constants"
                        )
            elif "/data/constants/" in f"/{name}" and not name.endswith(".json"):
                if not name.split("/")[-1].startswith("tensor_"):
                    raise ModelError(
                        f"{source} (member {name}) carries a serialised Python object; geoseg never "
                        "unpickles model files: export with plain tensor constants"
                    )
    return {n.split("/", 1)[1] if "/" in n else n: v for n, v in members.items()}
