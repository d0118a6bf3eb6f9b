"""Raster files: the one place geoseg opens them; scenes, their validation and windowed reads.

:func:`open_raster` is the only call of ``rasterio.open`` in geoseg (``tests/test_architecture.py``
checks it): every reader and writer, in :mod:`geoseg.io` and elsewhere, goes through it.
A :class:`SceneSource` is a small, picklable description of a validated scene (path,
grid, band selection, nodata): Dask tasks carry it and open the file themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from geoseg._constants import GDAL_CACHE_BYTES, GDAL_ENV, REMOTE_GDAL_CACHE_BYTES
from geoseg.errors import InputError, RasterReadError
from geoseg.grid import GeoBox, PixelWindow

__all__ = [
    "SceneSource",
    "as_float32",
    "check_path",
    "dtype_range",
    "file_sha256",
    "open_raster",
    "open_scene",
    "read_band",
    "size_block_cache",
]

T = TypeVar("T")


def as_float32(raw: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A raw ``(bands, h, w)`` window as float32 model input: a pixel whose bands are all
    NaN or infinite is invalid, and non-finite values become 0. ``valid`` is updated in place."""
    data = raw.astype(np.float32, copy=False)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            valid &= np.any(finite, axis=0)
            data = np.where(finite, data, np.float32(0))
    return data, valid


@contextmanager
def open_raster(path, mode: str = "r", *, env: bool = True, quiet: bool = False, **profile) -> Iterator:
    """Open a raster file with rasterio: the one place in geoseg that does.

    Args:
        path: the file (or a GDAL path).
        mode: ``"r"``, ``"r+"`` or ``"w"`` (then ``profile`` holds the creation options).
        env: open (and use) it under :data:`geoseg._constants.GDAL_ENV` (no directory
            listing; GDAL's block cache is sized per process, :func:`size_block_cache`).
        quiet: silence rasterio's ``NotGeoreferencedWarning`` (for callers that check
            georeferencing themselves).

    Yields:
        The open dataset, closed on exit.
    """
    import rasterio

    size_block_cache()  # bounded in every process that reads (a Dask worker never ran configure_process)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        if env:
            with rasterio.Env(**GDAL_ENV), rasterio.open(path, mode, **profile) as ds:
                yield ds
        else:
            with rasterio.open(path, mode, **profile) as ds:
                yield ds


def read_band(path, band: int, window: PixelWindow, masks: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one band's ``window`` (and its validity mask, with ``masks``) from a raster file."""
    with open_raster(path, env=False) as ds:
        win = window.to_rasterio()
        values = ds.read(band, window=win)
        valid = ds.read_masks(band, window=win) > 0 if masks else None
    return values, valid

_DTYPE_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "uint32": (0, 2**32 - 1),
    "int32": (-(2**31), 2**31 - 1),
}


def dtype_range(dtype: str) -> tuple[float, float]:
    """The representable value range of a raster dtype (floats: +-inf)."""
    return _DTYPE_RANGES.get(dtype, (-np.inf, np.inf))


@dataclass(frozen=True)
class SceneSource:
    """A validated input scene: where it is, its grid, which bands feed the model."""

    path: str
    geobox: GeoBox
    count: int
    dtype: str
    band_indexes: tuple[int, ...]  # 1-based, in model input order
    band_names: tuple[str, ...]  # descriptions of all bands ('' where none)
    nodata: float | None
    mask_band: bool  # validity from a per-dataset mask / alpha band instead of nodata
    #: what GDAL opens when it is not ``path``: ``/vsicurl/URL``, ``/vsis3/...`` or a VRT
    #: (XML) stacking a STAC Item's assets (:mod:`geoseg.io.stac_source`). ``path`` stays
    #: the name the user gave (URLs without credentials), for messages and the manifest.
    dataset: str | None = None
    #: per dataset band ``(scale, offset)`` that turn raw values into the model's units
    #: (STAC ``raster:scale``/``raster:offset``, else the GeoTIFF's own); applied in
    #: :meth:`read` when ``apply_scale``. None: the input has none.
    scale_offset: tuple[tuple[float, float], ...] | None = None
    apply_scale: bool = False
    scale_source: str | None = None  # "raster:bands" and/or "geotiff" (recorded in the manifest)
    kind: str = "file"  # "file", "url" (a remote raster) or "stac-item"
    stem: str | None = None  # output file stem (an Item's id) when not the path's stem
    #: STAC Item sources: the Item (canonical JSON), where it is, its matched asset keys
    item_json: str | None = None
    item_base: str | None = None
    asset_keys: tuple[str, ...] = ()
    #: the remote files behind the source (GDAL paths), whose cached state a retry clears
    inputs: tuple[str, ...] = ()
    #: when the source was opened (remote): a later run of the same URL never reads
    #: through a handle (and blocks) held from an earlier one
    opened_at: float = 0.0
    #: remote sources: the windows this run will read, merged into horizontal strips
    #: (:func:`geoseg.grid.strips`); the shared handle fetches ahead the blocks of a strip's
    #: rows, one request per row of blocks, instead of a few blocks per tile
    read_plan: tuple[PixelWindow, ...] = ()

    @property
    def output_stem(self) -> str:
        """The stem of the output files: an Item's id, else the file name's stem."""
        return self.stem or Path(self.path.split("?", 1)[0]).stem

    @property
    def gdal_path(self) -> str:
        """What GDAL opens (``dataset``, else ``path``)."""
        return self.dataset or self.path

    @property
    def remote(self) -> bool:
        return self.kind != "file"

    def describe_scaling(self) -> dict | None:
        """What the manifest records about scale/offset (None: the input has none)."""
        if not self.scale_offset:
            return None
        return {
            "applied": self.apply_scale,
            "source": self.scale_source,
            "bands": [{"scale": self.scale_offset[b - 1][0], "offset": self.scale_offset[b - 1][1]} for b in self.band_indexes],
        }

    def scaled_range(self) -> tuple[float, float]:
        """The range of values the model sees: the dtype's range through scale/offset."""
        lo, hi = dtype_range(self.dtype)
        if not (self.apply_scale and self.scale_offset):
            return lo, hi
        ends = []
        for b in self.band_indexes:
            sc, off = self.scale_offset[b - 1]
            ends += [lo * sc + off, hi * sc + off]
        return min(ends), max(ends)

    @contextmanager
    def open(self) -> Iterator:
        """The open dataset, under GDAL's settings for this source (remote: opened with
        bounded retries, see :mod:`geoseg.io.remote`)."""
        if not self.remote:
            with open_raster(self.gdal_path) as ds:
                yield ds
            return
        import rasterio

        from .remote import remote_env, retrying

        with rasterio.Env(**{**GDAL_ENV, **remote_env()}):
            def enter():
                cm = open_raster(self.gdal_path, env=False)
                return cm, cm.__enter__()

            cm, ds = retrying(enter, self.path, clear=self.inputs)
            try:
                yield ds
            finally:
                cm.__exit__(None, None, None)

    def with_dataset(self, fn: Callable[[Any], T]) -> T:
        """``fn(dataset)`` with this source open: a local file is opened for the call; a
        remote source is read through the one handle all threads of the process share
        (:class:`SharedDataset`: GDAL's block cache keeps the blocks that neighbouring
        tiles' halos share, whichever thread reads them), under the remote GDAL settings;
        a transient failure is retried (the whole call, bounded) and a permanent one is
        reported by URL."""
        if not self.remote:
            with self.open() as ds:
                return fn(ds)
        import rasterio

        from .remote import remote_env, retrying

        def attempt():
            shared = SharedDataset.of(self)
            try:
                with rasterio.Env(**{**GDAL_ENV, **remote_env()}):
                    return fn(shared)
            except BaseException:
                shared.close()  # a retry (here or in another thread) starts from a fresh handle
                raise

        return retrying(attempt, self.path, clear=self.inputs)

    def release(self) -> None:
        """Close this process's shared handle of a remote source (:meth:`with_dataset`),
        freeing the blocks GDAL cached for it; a later read opens it again."""
        if self.remote:
            SharedDataset.release((self.gdal_path, self.opened_at))

    def read_windows(self, windows: list[PixelWindow]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read` of several windows through one open dataset (:meth:`with_dataset`)."""
        return self.with_dataset(lambda ds: [self.read(w, ds) for w in windows])

    @property
    def height(self) -> int:
        return self.geobox.height

    @property
    def width(self) -> int:
        return self.geobox.width

    def select(self, bands=None, model_bands: tuple[str, ...] | None = None) -> SceneSource:
        """Pick the bands that feed the model, in model input order.

        Args:
            bands: 1-based band indexes (GDAL convention), e.g. ``(3, 2, 1, 4)``.
            model_bands: band names the model expects; matched against the band
                descriptions when ``bands`` is not given, and used to check the count.

        Raises:
            InputError: an index outside the scene's bands.
            ContractError: the number of bands does not match the model.
        """
        from geoseg.errors import ContractError

        names, count, path = self.band_names, self.count, self.path
        described = ", ".join(f"{i}:{n or '?'}" for i, n in enumerate(names, 1))
        if bands is not None:
            bad = [b for b in bands if not 1 <= int(b) <= count]
            if bad:
                raise InputError(
                    f"--bands {','.join(map(str, bands))} names band(s) {bad} but {path} has {count} band(s) "
                    f"({described}): use 1-based indexes from 1 to {count}"
                )
            selected = tuple(int(b) for b in bands)
        else:
            lower = [n.lower() for n in names]
            if model_bands is not None and all(b.lower() in lower for b in model_bands):
                selected = tuple(lower.index(b.lower()) + 1 for b in model_bands)
            else:
                selected = tuple(range(1, count + 1))
        if model_bands is not None and len(selected) != len(model_bands):
            raise ContractError(
                f"{path} gives {len(selected)} band(s) ({described}) but the model expects "
                f"{len(model_bands)} ({', '.join(model_bands)}): pass --bands with {len(model_bands)} "
                f"1-based indexes in that order"
            )
        return replace(self, band_indexes=selected)

    def read(self, window: PixelWindow, dataset=None) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` of the selected bands as float32 plus a validity mask.

        Returns ``(data (bands, h, w) float32, valid (h, w) bool)``. A pixel is
        invalid where every selected band equals nodata (or is NaN), or where the
        dataset's mask says so. ``dataset`` lets a caller reuse an open handle.
        """
        import rasterio

        if dataset is None and self.remote:
            return self.read_windows([window])[0]
        try:
            if dataset is None:
                with self.open() as ds:
                    return self.read(window, ds)
            win = window.to_rasterio()
            raw = dataset.read(list(self.band_indexes), window=win)
            if self.mask_band:
                valid = dataset.read_masks(self.band_indexes[0], window=win) > 0
            elif self.nodata is not None and not np.isnan(self.nodata):
                valid = np.any(raw != raw.dtype.type(self.nodata), axis=0)
            else:
                valid = np.ones(raw.shape[1:], dtype=bool)
            data, valid = as_float32(raw, valid)
            if self.apply_scale and self.scale_offset:
                so = np.array([self.scale_offset[b - 1] for b in self.band_indexes], dtype=np.float32)
                data = data * so[:, 0, None, None] + so[:, 1, None, None]
            return data, valid
        except rasterio.errors.RasterioError as exc:
            if self.remote and isinstance(exc, rasterio.errors.RasterioIOError):
                raise  # retried, and reported with the URL, by read_windows()
            raise RasterReadError(
                f"cannot read {self.path} at rows {window.row}-{window.row_end}, cols "
                f"{window.col}-{window.col_end} ({_gdal_reason(exc)}): the file is truncated or corrupt"
            ) from exc


#: The most a shared handle's read-ahead (or prefetch) decodes at once
#: (:meth:`SharedDataset._read_ahead`): a quarter of GDAL's block cache while a remote source
#: is read, which must keep those blocks until the tiles read them.
READ_AHEAD_BYTES = REMOTE_GDAL_CACHE_BYTES // 4

_cache_lock = threading.Lock()
_cache_floor = GDAL_CACHE_BYTES
_cache_bindings: Any = False  # not loaded yet


def size_block_cache(at_least: int = GDAL_CACHE_BYTES) -> int:
    """Size GDAL's block cache, which is one per process, for geoseg's reads.

    :data:`~geoseg._constants.GDAL_CACHE_BYTES` while only local rasters have been read;
    a remote source raises it to :data:`~geoseg._constants.REMOTE_GDAL_CACHE_BYTES` when
    its shared handle opens, and it stays there (another thread may be reading one). Nothing
    changes when the user chose the size (``GDAL_CACHEMAX`` in the environment before
    :func:`geoseg.allocator.configure_process`).

    Returns:
        The size geoseg wants now, in bytes.
    """
    global _cache_floor, _cache_bindings
    from geoseg.allocator import chosen_by_user

    with _cache_lock:
        _cache_floor = max(_cache_floor, at_least)
        if _cache_bindings is False:
            from ._libgdal import GdalBindings

            class _Cache(GdalBindings):
                def __init__(self, path: str) -> None:
                    import ctypes

                    super().__init__(path)
                    self.get = self.fn("GDALGetCacheMax64", ctypes.c_int64)
                    self.set = self.fn("GDALSetCacheMax64", None, ctypes.c_int64)

            _cache_bindings = _Cache.load()
        if chosen_by_user("GDAL_CACHEMAX"):
            return _cache_floor
        if _cache_bindings is None:  # GDAL applies the option at once (a process-wide setting)
            from rasterio.env import set_gdal_config

            set_gdal_config("GDAL_CACHEMAX", _cache_floor)
        elif _cache_bindings.get() != _cache_floor:
            _cache_bindings.set(_cache_floor)
        return _cache_floor


def _read_ahead_budget() -> int:
    """:data:`READ_AHEAD_BYTES`, or a quarter of GDAL's block cache when the user chose a
    smaller one (the shared handle sized the cache when it opened)."""
    size = int(_cache_bindings.get()) if _cache_bindings else _cache_floor
    return max(1, min(READ_AHEAD_BYTES, size // 4))


def _col_runs(cols: list[int]) -> list[tuple[int, int]]:
    """Sorted block columns as runs of contiguous ones, ``(first, last)``."""
    runs = []
    start = prev = cols[0]
    for c in [*cols[1:], None]:
        if c is None or c != prev + 1:
            runs.append((start, prev))
            start = c
        prev = c
    return runs


def _row_window(ds, br: int, c0: int, c1: int):
    """The rasterio window of block row ``br``, block columns ``c0..c1`` (clipped to ``ds``)."""
    from rasterio.windows import Window

    bh, bw = ds.block_shapes[0]
    r, c = br * bh, c0 * bw
    return Window(c, r, min((c1 + 1) * bw, ds.width) - c, min(r + bh, ds.height) - r)


def _bands(indexes) -> list:
    """Band indexes as a list (``ds.read`` takes one or several)."""
    return list(indexes) if isinstance(indexes, (list, tuple)) else [indexes]


class SharedDataset:
    """The open dataset of a remote source, shared by every thread of the process.

    GDAL's block cache belongs to a dataset handle. A handle per tile batch fetched again the
    COG blocks that neighbouring tiles' halos share (1.7x the file's bytes); a handle per
    thread still fetched them once per thread that read a neighbour (a 5% area of interest
    cost 11% of the file with two threads, 8% with one: benchmarks/bench_gsd.py --only aoi).
    One handle per process reads every block once while the block cache holds it. GDAL
    handles are not reentrant, so :meth:`read` and :meth:`read_masks` hold a lock while
    GDAL fetches and decodes; the float conversion, scaling and resampling that follow run
    in parallel. A handle closed after a failure is reopened by the next read.

    With the run's read plan (:attr:`SceneSource.read_plan`), :meth:`read` first reads ahead
    the planned blocks of the window's rows of blocks (:meth:`_read_ahead`): one request per
    row of blocks and file instead of one per row, file and tile (an 8192^2 Item of four
    COGs: ~80 requests instead of ~500). After a read it also fetches, in the background,
    the blocks of the plan's next strip (:meth:`_prefetch`): the next row of tiles then
    finds its blocks cached, and the requests' latency (and the server's time) overlaps
    the model's work on the current row instead of stalling a tile.
    """

    _registry: dict[tuple[str, float], SharedDataset] = {}
    _registry_lock = threading.Lock()
    #: sources kept open at once (a batch reads one scene after another)
    KEEP = 4

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._cm = None
        self._ds = None
        self._plan: tuple[PixelWindow, ...] = ()
        self._planned: dict[int, set[int]] | None = None  # block row -> planned block columns
        self._fetched: set[tuple[int, int]] = set()  # (block row, block column) read ahead
        self._prefetching: set[int] = set()  # first rows of the strips handed to the prefetcher
        self._generation = 0  # bumped by close() and a new plan: a prefetch of an older one stops

    def plan(self, windows: tuple[PixelWindow, ...]) -> None:
        """The windows (strips) the run will read: the blocks :meth:`read` may fetch ahead."""
        with self.lock:
            if windows != self._plan:
                self._plan, self._planned, self._fetched = windows, None, set()
                self._prefetching, self._generation = set(), self._generation + 1

    @classmethod
    def of(cls, source: SceneSource) -> SharedDataset:
        """The shared handle of ``source`` (a later open of the same URL gets a new one)."""
        key = (source.gdal_path, source.opened_at)
        with cls._registry_lock:
            shared = cls._registry.pop(key, None) or cls(source.gdal_path)
            cls._registry[key] = shared  # most recently used last
            evicted = [cls._registry.pop(k) for k in list(cls._registry)[: max(0, len(cls._registry) - cls.KEEP)]]
        shared.plan(source.read_plan)  # waits for the handle's lock: not under the registry's
        for old in evicted:
            old.close()
        return shared

    def _dataset(self):
        if self._ds is None:
            size_block_cache(REMOTE_GDAL_CACHE_BYTES)  # the read-ahead keeps rows of blocks there
            cm = open_raster(self.path, env=False)
            self._ds = cm.__enter__()
            self._cm = cm
        return self._ds

    def read(self, indexes, window, **kwargs) -> np.ndarray:
        with self.lock:
            ds = self._dataset()
            if self._plan:
                self._read_ahead(ds, indexes, window)
            out = ds.read(indexes, window=window, **kwargs)
            upcoming = self._next_strips(int(window.row_off)) if self._plan else ()
            if upcoming:
                self._prefetching.add(upcoming[0].row)
                generation = self._generation
        if upcoming:
            with contextlib.suppress(RuntimeError):  # the interpreter is shutting down: no prefetch
                _prefetcher().submit(self._prefetch, indexes, upcoming, generation)
        return out

    def _next_strips(self, row: int) -> tuple[PixelWindow, ...]:
        """The plan's strips that start on the first row after ``row`` (the next row of tiles),
        unless the prefetcher already has them."""
        nxt = min((s.row for s in self._plan if s.row > row), default=None)
        if nxt is None or nxt in self._prefetching:
            return ()
        return tuple(s for s in self._plan if s.row == nxt)

    def _prefetch(self, indexes, strips: tuple[PixelWindow, ...], generation: int) -> None:
        """Read the planned blocks of ``strips`` that are not cached yet into GDAL's block
        cache, one row of blocks (one request per file) at a time, the lock released between
        rows so that tiles read meanwhile; at most :data:`READ_AHEAD_BYTES` decoded (whole
        rows, at least one; the tiles' own reads fetch the rest). Stops when the handle is
        closed or given a new plan, and at a read error: the tiles' own reads, which are
        retried and report by URL, fetch those blocks."""
        import rasterio

        from .remote import remote_env

        try:
            with rasterio.Env(**{**GDAL_ENV, **remote_env()}):
                with self.lock:
                    if generation != self._generation or self._ds is None:
                        return
                    ds = self._ds
                    bh = ds.block_shapes[0][0]
                    block_bytes = self._block_bytes(ds, indexes)
                    runs: list[tuple[int, int, int]] = []  # (block row, first col, last col)
                    budget = _read_ahead_budget()
                    for br in sorted({br for s in strips for br in range(s.row // bh, (s.row_end - 1) // bh + 1)}):
                        cols = sorted(c for c in (self._planned or {}).get(br, ()) if (br, c) not in self._fetched)
                        if not cols:
                            continue
                        if runs and budget < len(cols) * block_bytes:
                            break
                        budget -= len(cols) * block_bytes
                        runs += [(br, c0, c1) for c0, c1 in _col_runs(cols)]
                # the last row first, as _read_ahead (no range starts where the previous one ended);
                # one band (one file of an Item) per hold of the lock: a tile's read waits for one
                # request at most
                for br, c0, c1 in sorted(runs, reverse=True):
                    window = _row_window(ds, br, c0, c1)
                    for band in _bands(indexes):
                        time.sleep(0.001)  # a tile's read waiting for the lock takes it first
                        with self.lock:
                            if generation != self._generation or self._ds is None:
                                return
                            if all((br, bc) in self._fetched for bc in range(c0, c1 + 1)):
                                break  # a tile's read-ahead took the row meanwhile
                            ds.read(band, window=window)
                    with self.lock:
                        if generation == self._generation:
                            self._fetched.update((br, bc) for bc in range(c0, c1 + 1))
        except rasterio.errors.RasterioError:
            pass  # a remote fault: the tiles' own reads fetch those blocks, retried and reported by URL
        except Exception:  # noqa: BLE001 - a bug here must not fail the run, whose reads do not depend on it
            logging.getLogger(__name__).warning("prefetch of %s failed", self.path, exc_info=True)

    def _read_ahead(self, ds, indexes, window) -> None:
        """Before reading ``window``, read into GDAL's block cache the planned blocks of its
        rows of blocks that are not there yet: GTiff then fetches each row of contiguous blocks
        in one request (a COG's blocks are stored row by row), where tile-sized windows cost a
        request per band, row of blocks and tile. What one read-ahead decodes is bounded by
        :data:`READ_AHEAD_BYTES` (the window's blocks first, then those right of it, then left);
        whatever GDAL's cache drops before a tile reads it is fetched again by that tile's read."""
        bh, bw = ds.block_shapes[0]
        if self._planned is None:
            self._planned = {}
            for w in self._plan:
                cols = range(w.col // bw, (w.col_end - 1) // bw + 1)
                for br in range(w.row // bh, (w.row_end - 1) // bh + 1):
                    self._planned.setdefault(br, set()).update(cols)
        row0, row1 = int(window.row_off), int(window.row_off + window.height)
        col0, col1 = int(window.col_off), int(window.col_off + window.width)
        rows = range(row0 // bh, (row1 - 1) // bh + 1)
        first, last = col0 // bw, (col1 - 1) // bw
        todo = [br for br in rows if any((br, bc) not in self._fetched for bc in range(first, last + 1))]
        if not todo:
            return
        per_row = max(last - first + 1, _read_ahead_budget() // self._block_bytes(ds, indexes) // len(todo))
        runs: dict[tuple[int, int], list[int]] = {}  # (first col, last col) -> block rows
        for br in todo:
            wanted = [c for c in self._planned.get(br, set()) | set(range(first, last + 1)) if (br, c) not in self._fetched]
            cols = sorted(sorted(wanted, key=lambda c: (c < first, abs(c - first)))[:per_row])  # the window's first
            for run in _col_runs(cols):
                runs.setdefault(run, []).append(br)
        # One read per row of blocks, the last row first: each is one exact range request.
        # A read of several whole rows is one contiguous range, which GDAL fetches through
        # /vsicurl/'s sequential reader, and a range that starts where the previous download
        # of that file ended is taken for sequential reading and fetched as large as that one
        # (measured: a 9 MB overshoot, evicted from /vsicurl/'s 16 MB cache before the next
        # tile row read it, 1.04x the blocks' bytes at 4096^2).
        for (c0, c1), brs in runs.items():
            for br in sorted(brs, reverse=True):
                ds.read(indexes, window=_row_window(ds, br, c0, c1))
                self._fetched.update((br, bc) for bc in range(c0, c1 + 1))

    @staticmethod
    def _block_bytes(ds, indexes) -> int:
        """Decoded bytes of one block of the bands ``indexes``."""
        bh, bw = ds.block_shapes[0]
        return bh * bw * len(_bands(indexes)) * np.dtype(ds.dtypes[0]).itemsize

    def read_masks(self, *args, **kwargs) -> np.ndarray:
        with self.lock:
            return self._dataset().read_masks(*args, **kwargs)

    def close(self) -> None:
        with self.lock:
            cm, self._cm, self._ds = self._cm, None, None
            self._fetched = set()  # the block cache goes with the handle
            self._prefetching, self._generation = set(), self._generation + 1
        if cm is not None:
            with contextlib.suppress(Exception):  # closing a handle that failed
                cm.__exit__(None, None, None)

    @classmethod
    def release(cls, key: tuple[str, float]) -> None:
        with cls._registry_lock:
            shared = cls._registry.pop(key, None)
        if shared is not None:
            shared.close()


_PREFETCHER = None
_PREFETCHER_LOCK = threading.Lock()


def _prefetcher():
    """The process's one background thread for :meth:`SharedDataset._prefetch`."""
    global _PREFETCHER
    with _PREFETCHER_LOCK:
        if _PREFETCHER is None:
            from concurrent.futures import ThreadPoolExecutor

            _PREFETCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-prefetch")
        return _PREFETCHER


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's own message behind a rasterio error, on one line."""
    cause = exc.__cause__ or exc.__context__ or exc
    return " ".join(str(cause).split()) or type(cause).__name__


def check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise RasterReadError(f"{p} does not exist: check the path")
    if p.is_dir():
        raise RasterReadError(f"{p} is a directory: give the path of a raster file (e.g. a GeoTIFF)")
    if not os.access(p, os.R_OK):
        raise RasterReadError(f"{p} is not readable: check its permissions")
    return p


def _probe_blocks(ds, path: Path) -> None:
    """Read the first and last block of each band: catches truncated files early."""
    import rasterio

    size = path.stat().st_size
    for bidx in ds.indexes:
        if ds.driver == "GTiff":
            rows, cols = ds.block_shapes[bidx - 1]
            nby, nbx = -(-ds.height // rows), -(-ds.width // cols)
            item = ds.get_tag_item
            for by, bx in ((0, 0), (nby - 1, nbx - 1)):
                try:
                    off = item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=bidx)
                    cnt = item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=bidx)
                except Exception:  # pragma: no cover - driver without these tags
                    off = cnt = None
                if off and cnt and int(off) + int(cnt) > size:
                    raise RasterReadError(
                        f"{path} is truncated (its last data block ends at byte {int(off) + int(cnt)}, "
                        f"the file has {size} bytes): copy or download it again"
                    )
        try:
            h, w = ds.block_shapes[bidx - 1]
            ds.read(bidx, window=((0, min(h, ds.height)), (0, min(w, ds.width))))
            r0 = (ds.height - 1) // h * h  # exactly the last block
            c0 = (ds.width - 1) // w * w
            ds.read(bidx, window=((r0, ds.height), (c0, ds.width)))
        except rasterio.errors.RasterioError as exc:
            raise RasterReadError(
                f"{path} is truncated or corrupt ({_gdal_reason(exc)}): copy or download it again"
            ) from exc


def open_scene(path: str | os.PathLike, *, scale_offset: str = "apply") -> SceneSource:
    """Open and validate a scene (all bands selected; see :meth:`SceneSource.select`).

    Args:
        path: a raster GDAL can read, with a CRS and a geotransform: a local path, or an
            ``http(s)://`` or ``s3://`` URL read with range requests only (``/vsicurl/``,
            ``/vsis3/``; credentials from the standard AWS/GDAL environment). STAC Items:
            :func:`geoseg.io.sources.open_source`.
        scale_offset: ``"apply"`` the raster's own per-band scale/offset (when not 1/0)
            before the model's normalisation, or ``"ignore"`` them.

    Raises:
        RasterReadError: missing, a directory, not a raster, truncated; remote: 404/403,
            unknown host, or still failing after bounded retries (one line, with the URL).
        InputError: no CRS or transform, mixed or complex data types.
    """
    import rasterio
    from rasterio.enums import MaskFlags

    from .remote import (
        clear_cache,
        display_url,
        gdal_path,
        is_remote,
        remote_env,
        retrying,
    )

    if scale_offset not in ("apply", "ignore"):
        raise InputError(f"scale_offset must be 'apply' or 'ignore', got {scale_offset!r}")
    remote = is_remote(path)
    if remote:
        name, dataset = display_url(path), gdal_path(path)
        label = name.split("?", 1)[0].rsplit("/", 1)[-1]
    else:
        p = check_path(path)
        name, dataset, label = str(p.resolve()), None, p.name

    def enter():
        cm = open_raster(dataset or name, env=False, quiet=True)
        return cm, cm.__enter__()

    try:
        with rasterio.Env(**{**GDAL_ENV, **(remote_env() if remote else {})}):
            if remote:
                clear_cache(dataset)  # what GDAL remembers of an earlier open (a failure too)
            cm, ds = retrying(enter, dataset, what="cannot open") if remote else enter()
            try:
                if ds.count < 1:
                    raise RasterReadError(f"{name} has no raster bands: give an image with at least one band")
                if not remote:
                    _probe_blocks(ds, p)
                if ds.crs is None:
                    raise InputError(
                        f"{name} has no CRS: assign one (e.g. gdal_edit.py -a_srs EPSG:32633 {label}) and retry"
                    )
                if ds.transform.is_identity and not ds.gcps[0]:
                    raise InputError(
                        f"{name} has no geotransform: georeference it (e.g. gdal_edit.py -a_ullr ...) and retry"
                    )
                if ds.transform.b != 0 or ds.transform.d != 0:
                    raise InputError(f"{name} has a rotated geotransform: warp it to a north-up grid first (gdalwarp)")
                dtypes = set(ds.dtypes)
                if len(dtypes) > 1:
                    raise InputError(f"{name} mixes band data types {sorted(dtypes)}: convert to one type first")
                dtype = ds.dtypes[0]
                if np.dtype(dtype).kind == "c":
                    raise InputError(f"{name} has complex-valued bands ({dtype}): geoseg needs real-valued imagery")
                names = tuple(d or "" for d in ds.descriptions)
                flags = ds.mask_flag_enums[0]
                mask_band = ds.nodata is None and (MaskFlags.per_dataset in flags or MaskFlags.alpha in flags)
                geobox = GeoBox(ds.height, ds.width, ds.transform, ds.crs.to_wkt())
                so = tuple((float(a), float(b)) for a, b in zip(ds.scales, ds.offsets))
                scaled = any(pair != (1.0, 0.0) for pair in so)
                return SceneSource(
                    path=name,
                    geobox=geobox,
                    count=ds.count,
                    dtype=dtype,
                    band_indexes=tuple(range(1, ds.count + 1)),
                    band_names=names,
                    nodata=None if ds.nodata is None else float(ds.nodata),
                    mask_band=mask_band,
                    dataset=dataset,
                    scale_offset=so if scaled else None,
                    apply_scale=scaled and scale_offset == "apply",
                    scale_source="geotiff" if scaled else None,
                    kind="url" if remote else "file",
                    inputs=(dataset,) if remote else (),
                    opened_at=time.time() if remote else 0.0,
                )
            finally:
                cm.__exit__(None, None, None)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterReadError(
            f"{name} is not a raster GDAL can read ({str(exc).splitlines()[0]}): give a GeoTIFF or another GDAL raster"
        ) from exc


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
