"""Output rasters: written window by window under temporary names, finished as COGs.

A :class:`RasterProduct` is one uint8 product (class map, masks or confidence). Tiles
are written into a temporary tiled GeoTIFF as they arrive; :meth:`RasterProduct.finish`
turns it into a Cloud-Optimized GeoTIFF (overviews with mode resampling, the input's
exact grid), staged in a :class:`geoseg.io.store.OutputStore` that commits every file of a
run (rename, or upload to an object store) only when all of them are complete.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from geoseg._constants import NODATA
from geoseg._files import remove_files
from geoseg.classes import hex_to_rgb
from geoseg.errors import OutputError
from geoseg.grid import GeoBox, PixelWindow
from geoseg.io.legend import BandLegend, aux_xml, paletted_qml
from geoseg.io.raster import open_raster
from geoseg.io.store import OutputStore

__all__ = ["COG_OPTIONS", "RasterProduct", "class_tags", "stage_legend"]

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


#: Bytes a :class:`RasterProduct` writes before it flushes them to its stripes file. GDAL
#: keeps written blocks in its block cache until the file is closed (or the cache, up to
#: ``geoseg._constants.GDAL_CACHE_BYTES``, is full): without a flush an 8192^2 scene's products (192 MiB) stayed
#: resident until the end, and ``to_cog``'s peak memory grew with the scene (``run_scene``
#: was spared only by its journal's checkpoints, every 10 s). Only writes from the thread
#: that opened the stripes flush them (rasterio's datasets are bound to that thread).
FLUSH_BYTES = 16 * 2**20


class RasterProduct:
    """A uint8 output raster on the input's grid, written window by window (at most
    :data:`FLUSH_BYTES` of written blocks are held in memory when the thread that created
    it writes; other threads may write too, and the creating thread closes it)."""

    def __init__(
        self,
        final: Path,
        geobox: GeoBox,
        outputs: OutputStore,
        *,
        count: int = 1,
        descriptions: list[str] | None = None,
        colors: list[str] | None = None,
        tags: dict[str, str] | None = None,
        overview_resampling: str = "MODE",
        stripes: Path | None = None,
        reopen: bool = False,
    ) -> None:

        self.final = final
        self.overview_resampling = overview_resampling
        self.geobox = geobox
        self.outputs = outputs
        self.count = count
        # ``stripes``: a fixed hidden path (the resume journal's); ``reopen``: continue the
        # stripes a killed run left there (geoseg.scene.journal) instead of creating them
        self.tmp = stripes if stripes is not None else outputs.temp(final, "stripes-")
        self._lock = threading.Lock()
        self._file = ExitStack()
        self._unflushed = 0  # bytes written since the stripes were last closed
        if reopen:
            try:
                with outputs.writing(f"the partial {final.name}"):
                    self._ds = self._open("r+")
            except TypeError as exc:  # rasterio's error for a file GDAL cannot recognise (killed before its header)
                raise OutputError(f"the partial {final.name} in {final.parent} is unreadable ({exc})") from exc
            return
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
        with outputs.writing(f"the partial {final.name}"):
            self._ds = self._open("w", **profile)
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
        with self._lock, self.outputs.writing(f"the partial {self.final.name}"):
            self._ds.write(array, window=window.to_rasterio())
            self._unflushed += array.nbytes
            if self._unflushed >= FLUSH_BYTES and threading.get_ident() == self._owner:
                self._reopen()  # (only the thread that opened the stripes may close them)

    @property
    def block_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the stripes' blocks (tiles, or strips of rows)."""
        with self._lock:
            return tuple(self._ds.block_shapes[0])

    def read(self, window: PixelWindow) -> np.ndarray:
        """Read ``(count, h, w)`` values back from the stripes at ``window``."""
        with self._lock:
            return self._ds.read(window=window.to_rasterio())

    def sync(self) -> None:
        """Make everything written so far durable: close the stripes (GDAL writes its cached
        blocks and the tile index), ``fsync`` them, and reopen them for update."""
        with self._lock, self.outputs.writing(f"the partial {self.final.name}"):
            self._reopen(fsync=True)

    def _open(self, mode: str, **profile):
        """Open the stripes into ``_file``, owned by this thread: rasterio binds a dataset
        opened outside a GDAL environment to the opening thread, and raises when another
        thread closes it."""
        self._owner = threading.get_ident()
        return self._file.enter_context(open_raster(self.tmp, mode, env=False, **profile))

    def _reopen(self, fsync: bool = False) -> None:
        """Close the stripes (GDAL writes and frees its cached blocks, and writes the tile
        index), optionally ``fsync`` them, and reopen them for update. Holds ``_lock``."""
        self._file.close()
        if fsync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._file = ExitStack()
        self._ds = self._open("r+")
        self._unflushed = 0

    def rebuild(self, windows: list[PixelWindow]) -> None:
        """Replace damaged stripes by a fresh file holding only ``windows`` (read back good)."""
        with self._lock, self.outputs.writing(f"the partial {self.final.name}"):
            old = self._ds
            profile = {**old.profile, "compress": "ZSTD", "ZSTD_LEVEL": 1, "BIGTIFF": "IF_SAFER", "SPARSE_OK": "TRUE"}
            tmp = self.outputs.temp(self.final, "stripes-")  # tracked: a failure discards it
            with open_raster(tmp, "w", env=False, **profile) as new:
                for i, d in enumerate(old.descriptions, 1):
                    if d:
                        new.set_band_description(i, d)
                try:
                    new.write_colormap(1, old.colormap(1))
                except ValueError:  # no colour table
                    pass
                new.update_tags(**old.tags())
                for w in windows:
                    win = w.to_rasterio()
                    new.write(old.read(window=win), window=win)
            self._file.close()
            os.replace(tmp, self.tmp)  # scratch (the stripes), not an output
            self._file = ExitStack()
            self._ds = self._open("r+")
            self._unflushed = 0

    def close(self) -> Path:
        """Finish writing tiles; the stripes file stays readable until :meth:`discard_stripes`."""
        with self._lock, self.outputs.writing(f"the partial {self.final.name}"):
            self._file.close()
        return self.tmp

    def finish(self) -> Path:
        """Build the COG from the stripes (still under a temporary name) and stage it."""
        import rasterio
        from rasterio.shutil import copy as rio_copy

        self.close()
        with self.outputs.staging(self.final, "cog-", f"{self.final.name} (COG)") as cog, \
                rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rio_copy(self.tmp, cog, driver="COG", **{**COG_OPTIONS, "OVERVIEW_RESAMPLING": self.overview_resampling})
        return cog

    def discard_stripes(self) -> None:
        """Close and delete the stripes file (after finishing, or after a failure)."""
        try:
            self._file.close()
        finally:
            remove_files([self.tmp])

    def keep_stripes(self) -> None:
        """Close the stripes file and leave it for a resumed run (after a failure)."""
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - best effort: a resumed run checks every tile's CRC
            pass


def stage_legend(final: Path, legends: list[BandLegend], outputs: OutputStore) -> list[Path]:
    """Write the legend side-cars of the categorical raster ``final``; stage them with it.

    ``<final>.aux.xml`` (GDAL category names and a thematic RAT per band, which GDAL,
    ArcGIS and QGIS read) and ``<stem>.<kind>.qml`` (a QGIS paletted style with one entry
    per class of the first band, which QGIS loads as the layer's default style) are
    written under temporary names and committed with the COG by :meth:`OutputStore.commit`.
    Returns their final paths.
    """
    sidecars = {
        final.with_name(final.name + ".aux.xml"): aux_xml(legends),
        final.with_suffix(".qml"): paletted_qml(legends[0]),
    }
    for path, text in sidecars.items():
        outputs.write_text(path, text, "legend-", what=f"the legend {path.name}")
    return list(sidecars)


def class_tags(names: list[str], colors: list[str]) -> dict[str, str]:
    """Metadata tags that name the classes of a class map."""
    classes = [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors))]
    tags = {"CLASS_NAMES": json.dumps(names), "GEOSEG_CLASSES": json.dumps(classes)}
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    return tags
