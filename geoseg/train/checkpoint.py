"""Training checkpoints: one file next to the model, rewritten atomically after each epoch.

A checkpoint holds what :func:`geoseg.train.train` needs to continue exactly where it
stopped: the model, optimiser, LR-scheduler and gradient-scaler states, the random
generators' states, the best weights so far and the epoch history. It is written with
``torch.save`` under a temporary name and renamed, so an interrupted write never leaves a
half-written checkpoint, and read with ``torch.load(weights_only=True)``: only tensors and
plain containers are unpickled, never arbitrary objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoseg._files import atomic_write
from geoseg.errors import InputError, OutputError

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_path", "load_checkpoint", "save_checkpoint"]

#: Marker and version stored in every checkpoint.
CHECKPOINT_FORMAT = ("geoseg-checkpoint", 1)


def checkpoint_path(model_path: str | os.PathLike[str]) -> Path:
    """The checkpoint of a model file: ``MODEL.ckpt`` next to it."""
    p = Path(model_path)
    return p.with_name(p.name + ".ckpt")


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    Raises:
        OutputError: If the directory is not writable.
    """
    import torch

    path = Path(path)
    payload = {"format": list(CHECKPOINT_FORMAT), **state}
    try:
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        raise OutputError(f"cannot write checkpoint {path}: {err.strerror or err}") from None
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        InputError: If it is missing, unreadable or not a geoseg checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path} to resume from: train without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{path} is not a readable geoseg checkpoint ({first[:200]}): delete it and train without --resume"
        ) from None
    if not isinstance(state, dict) or list(state.get("format", [])) != list(CHECKPOINT_FORMAT):
        raise InputError(f"{path} is not a geoseg checkpoint: delete it and train without --resume")
    return state
