"""The optional packages of :mod:`geoseg.xr`, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

#: pip extra that installs xarray, rioxarray and geopandas.
EXTRA = "xarray"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs the package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'geoseg[{EXTRA}]'"
        ) from exc
