"""Where the GDAL shared library that rasterio uses lives (for the few C calls made with ctypes).

Several wheels may each bring a libgdal into the process (rasterio's and pyogrio's): calls
that must act on rasterio's GDAL state (its VSI caches, its datasets) have to use that one.
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

__all__ = ["GdalBindings", "gdal_library_path"]


def gdal_library_path() -> str | None:
    """The path of the GDAL shared library rasterio's extension modules are linked to."""
    import rasterio._base

    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "libgdal" in line and "/" in line}
    except OSError:
        loaded = set()
    rasterio_libs = Path(rasterio._base.__file__).resolve().parent.parent / "rasterio.libs"
    # rasterio's own copy first (pyogrio's sits in the same site-packages), then any other
    candidates = sorted(loaded, key=lambda p: (not p.startswith(str(rasterio_libs)), "rasterio" not in p, p))
    if not candidates:
        candidates = sorted(glob.glob(str(rasterio_libs / "libgdal*")))
    return candidates[0] if candidates else None


class GdalBindings:
    """Prototypes of some GDAL C functions, bound with ctypes in a subclass's ``__init__``
    (``self.fn(name, restype, *argtypes)``), over rasterio's libgdal."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)

    def fn(self, name: str, restype, *argtypes):
        f = getattr(self.lib, name)
        f.restype, f.argtypes = restype, list(argtypes)
        return f

    @classmethod
    def load(cls):
        """The bindings, or None where callers fall back to another route: rasterio's
        libgdal not found, ``GEOSEG_GDAL_CTYPES=0`` in the environment, or a function or
        driver the subclass needs missing (an older GDAL)."""
        path = gdal_library_path()
        if path is None or os.environ.get("GEOSEG_GDAL_CTYPES", "1") == "0":
            return None
        try:
            return cls(path)
        except (OSError, AttributeError):
            return None
