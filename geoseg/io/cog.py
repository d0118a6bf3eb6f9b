"""Output rasters: written window by window under temporary names, finished as COGs.

A :class:`RasterProduct` is one uint8 product (class map, masks or confidence). Tiles
are written into a temporary tiled GeoTIFF as they arrive; :meth:`RasterProduct.finish`
turns it into a Cloud-Optimized GeoTIFF (overviews with mode resampling, the input's
exact grid), staged in a :class:`geoseg._files.OutputSet` that renames every file of a
run to its final name only when all of them are complete.
"""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from geoseg._constants import GDAL_CACHE_BYTES, NODATA
from geoseg._files import OutputSet, remove_files
from geoseg.classes import hex_to_rgb
from geoseg.grid import GeoBox, PixelWindow
from geoseg.io.raster import open_raster

__all__ = ["COG_OPTIONS", "RasterProduct", "class_tags"]

#: Creation options of the COGs geoseg writes. DEFLATE is read by every GIS; mode
#: resampling keeps class ids valid in overviews (GDAL's COG default, cubic, does not).
#: A product may ask for another resampling (the confidence map averages).
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "LEVEL": "6",
    "PREDICTOR": "NO",
    "BLOCKSIZE": "512",
    "OVERVIEW_RESAMPLING": "MODE",
    "OVERVIEWS": "AUTO",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
}


class RasterProduct:
    """A uint8 output raster on the input's grid, written window by window."""

    def __init__(
        self,
        final: Path,
        geobox: GeoBox,
        outputs: OutputSet,
        *,
        count: int = 1,
        descriptions: list[str] | None = None,
        colors: list[str] | None = None,
        tags: dict[str, str] | None = None,
        overview_resampling: str = "MODE",
    ) -> None:

        self.final = final
        self.overview_resampling = overview_resampling
        self.geobox = geobox
        self.outputs = outputs
        self.count = count
        self.tmp = outputs.temp_for(final, "stripes-")
        self._lock = threading.Lock()
        profile = dict(
            driver="GTiff",
            width=geobox.width,
            height=geobox.height,
            count=count,
            dtype="uint8",
            crs=geobox.crs,
            transform=geobox.transform,
            nodata=NODATA,
            tiled=geobox.width > 512 or geobox.height > 512,
            blockxsize=512,
            blockysize=512,
            compress="ZSTD",  # fast scratch compression; the COG uses DEFLATE
            ZSTD_LEVEL=1,
            BIGTIFF="IF_SAFER",
            SPARSE_OK="TRUE",
        )
        if not profile["tiled"]:
            for k in ("tiled", "blockxsize", "blockysize"):
                profile.pop(k)
        self._file = ExitStack()
        self._ds = self._file.enter_context(open_raster(self.tmp, "w", env=False, **profile))
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                self._ds.set_band_description(i, d)
        if colors:
            cmap = {i: (*hex_to_rgb(c), 255) for i, c in enumerate(colors)}
            cmap[NODATA] = (0, 0, 0, 0)
            self._ds.write_colormap(1, cmap)
        if tags:
            self._ds.update_tags(**tags)

    def write(self, window: PixelWindow, array: np.ndarray) -> None:
        """Write ``(count, h, w)`` or ``(h, w)`` uint8 values at ``window``."""
        if array.ndim == 2:
            array = array[None]
        with self._lock:
            self._ds.write(array, window=window.to_rasterio())

    def close(self) -> Path:
        """Finish writing tiles; the stripes file stays readable until :meth:`discard_stripes`."""
        self._file.close()
        return self.tmp

    def finish(self) -> Path:
        """Build the COG from the stripes (still under a temporary name) and stage it."""
        import rasterio
        from rasterio.shutil import copy as rio_copy

        self.close()
        cog = self.outputs.temp_for(self.final, "cog-")
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS"):
                rio_copy(self.tmp, cog, driver="COG", **{**COG_OPTIONS, "OVERVIEW_RESAMPLING": self.overview_resampling})
        except Exception:
            remove_files([cog])
            raise
        self.outputs.stage(self.final, cog)
        return cog

    def discard_stripes(self) -> None:
        """Close and delete the stripes file (after finishing, or after a failure)."""
        try:
            self._file.close()
        finally:
            remove_files([self.tmp])


def class_tags(names: list[str], colors: list[str]) -> dict[str, str]:
    """Metadata tags that name the classes of a class map."""
    classes = [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors))]
    tags = {"CLASS_NAMES": json.dumps(names), "GEOSEG_CLASSES": json.dumps(classes)}
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    return tags
