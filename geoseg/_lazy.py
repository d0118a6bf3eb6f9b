"""Lazy package attributes (PEP 562): a package lists where each public name lives, and the
module is imported on first access, so importing a package costs nothing until it is used
(``import geoseg`` loads neither torch, dask nor rasterio). The names are the real objects,
with their real signatures and docstrings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attach(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in module ``where[name]``."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
