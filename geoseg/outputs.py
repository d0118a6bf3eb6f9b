"""Output rasters: written window by window under temporary names, finished as COGs.

A :class:`RasterProduct` is one uint8 product (class map, masks or confidence). Tiles
are written into a temporary tiled GeoTIFF as they arrive; :meth:`RasterProduct.finish`
turns it into a Cloud-Optimized GeoTIFF (overviews with mode resampling, the input's
exact grid). An :class:`OutputSet` owns every temporary file of a run and renames them
to their final names only when all of them are complete; on failure it removes them.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classes import hex_to_rgb
from .errors import OutputError
from .grid import GeoBox, PixelWindow
from .io import GDAL_CACHE_BYTES

NODATA = 255

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


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove it is writable."""
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise OutputError(f"output directory {d} exists and is not a directory: choose another -o/--out")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".geoseg-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {d} ({exc.strerror or exc}): choose a writable -o/--out") from exc
    return d


@dataclass
class OutputSet:
    """Final paths and their temporary twins; committed together or not at all."""

    out_dir: Path
    overwrite: bool = False
    _pending: dict[Path, Path] = field(default_factory=dict)

    def check_free(self, finals: list[Path]) -> None:
        """Refuse to start when an output exists and overwrite is off."""
        if self.overwrite:
            return
        existing = [p for p in finals if p.exists()]
        if existing:
            names = ", ".join(p.name for p in existing)
            raise OutputError(f"{names} already exist(s) in {self.out_dir}: pass --overwrite to replace, or choose another -o/--out")

    def temp_for(self, final: Path, tag: str = "") -> Path:
        """A fresh temporary path next to ``final`` (hidden, never a final name)."""
        return final.with_name(f".{final.name}.{tag}{uuid.uuid4().hex[:8]}.partial{final.suffix}")

    @property
    def staged(self) -> dict[Path, Path]:
        """Final path -> finished temporary file, for everything staged so far."""
        return dict(self._pending)

    def stage(self, final: Path, tmp: Path) -> None:
        """Register ``tmp`` as the finished content of ``final``."""
        self._pending[final] = tmp

    def commit(self) -> list[Path]:
        """Rename every staged file to its final name."""
        done = []
        for final, tmp in self._pending.items():
            os.replace(tmp, final)
            done.append(final)
        self._pending.clear()
        return done

    def discard(self, extra: list[Path] = ()) -> None:
        """Remove every staged file and ``extra`` temporary files (after a failure)."""
        remove_files(list(self._pending.values()) + list(extra))
        self._pending.clear()


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON under a temporary name next to ``path``, then rename it into place."""
    tmp = OutputSet(path.parent).temp_for(path, "json-")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        remove_files([tmp])
        raise


def remove_files(paths: list[Path]) -> None:
    """Delete temporary files and their GDAL side-cars, ignoring missing ones."""
    for tmp in paths:
        for p in (Path(tmp), Path(str(tmp) + ".aux.xml"), Path(str(tmp) + ".ovr")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


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
        import rasterio

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
        self._ds = rasterio.open(self.tmp, "w", **profile)
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
        self._ds.close()
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
            self._ds.close()
        finally:
            remove_files([self.tmp])


def class_tags(names: list[str], colors: list[str]) -> dict[str, str]:
    """Metadata tags that name the classes of a class map."""
    classes = [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(names, colors))]
    tags = {"CLASS_NAMES": json.dumps(names), "GEOSEG_CLASSES": json.dumps(classes)}
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    return tags
