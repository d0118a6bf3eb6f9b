"""Where a tile's read window comes from: the array's own source, or the input's Dask blocks.

``segment`` needs, for every tile, the input pixels of its read window (core + halo). Two
ways to get them, chosen per input when the graph is built:

- :class:`SourceWindows`: the input is a plain ``dask.array.from_array`` of an array that
  reads itself window by window (what ``rioxarray.open_rasterio(..., chunks=...)`` and
  xarray's lazily indexed backends give, and a numpy array). The tile's task reads its own
  window from that array, as ``geoseg run`` reads a scene: no input block outlives the
  task that read it. Assembling windows from blocks instead kept up to three rows of input
  blocks across the scene's width resident (a tile's halo reaches into the block rows above
  and below, and the local scheduler reads ahead of the slow model), and those long-lived
  blocks fragmented the tuned allocator's heap: the peak RSS of ``to_cog`` grew with the
  scene (8192^2 / 2048^2: 1.61, see BENCHMARKS.md).
- :class:`BlockWindows`: any other Dask graph (a stack of scenes, stackstac, odc-stac,
  arithmetic on the bands): the task depends on the input blocks its window overlaps and
  cuts the window out of them.

Both give the same raw values for the same window, so the products do not depend on the
way (nor on the chunking). :func:`values` turns a raw window into the float32 data and
validity mask that :meth:`geoseg.io.raster.SceneSource.read` gives ``run_scene``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.grid import PixelWindow, Tile
from geoseg.io.raster import as_float32

__all__ = ["BlockWindows", "SourceWindows", "values", "windows_for"]


def values(raw: np.ndarray, nodata: tuple[float | None, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Raw window ``(bands, h, w)`` -> ``(float32 data, bool validity)``, as
    :meth:`geoseg.io.raster.SceneSource.read`: a pixel is nodata when every band holds its
    declared nodata value (or NaN)."""
    valid = None
    declared = [v is not None and not np.isnan(v) for v in nodata]
    if any(declared):
        hits = []
        for b, nd in enumerate(nodata):
            if not declared[b]:
                hits = None  # a band without nodata: no pixel has every band equal to nodata
                break
            try:
                value = raw.dtype.type(nd)
            except (OverflowError, ValueError):
                hits = None
                break
            hits.append(raw[b] != value)
        if hits is not None:
            valid = np.any(np.stack(hits), axis=0)
    if valid is None:
        valid = np.ones(raw.shape[1:], dtype=bool)
    return as_float32(raw, valid)


@dataclass(frozen=True)
class SourceWindows:
    """Windows read straight from the array under a ``from_array`` (dask's own getter).

    A task gets ``array`` (the graph key ``key`` resolves to it where the task runs) and
    calls :meth:`read` for each tile.
    """

    key: str  # the graph key of the source array
    getter: Any  # dask.array.core.getter (or a variant), as the input's blocks call it
    asarray: bool
    lock: Any

    def task_args(self, lead: tuple[int, ...], tiles: list[Tile]) -> tuple:
        return (self.key, lead)

    def read(self, array, lead: tuple[int, ...], window: PixelWindow) -> np.ndarray:
        """The raw ``(bands, h, w)`` of ``window`` at the leading index ``lead``."""
        index = (*(slice(i, i + 1) for i in lead), slice(None),
                 slice(window.row, window.row_end), slice(window.col, window.col_end))
        raw = self.getter(array, index, asarray=self.asarray, lock=self.lock)
        return np.asarray(raw).reshape(raw.shape[len(lead):])

    def raws(self, tiles: list[Tile], array, lead: tuple[int, ...]):
        for tile in tiles:
            yield self.read(array, lead, tile.read)


@dataclass(frozen=True)
class BlockWindows:
    """Windows cut out of the input's Dask blocks (any graph)."""

    name: str  # the input array's name (its block keys are ``(name, *block index)``)
    lead_offsets: tuple[tuple[int, ...], ...]  # block edges along each leading dimension
    nbands: int  # blocks along the band dimension
    rows: tuple[int, ...]  # block edges along y
    cols: tuple[int, ...]  # block edges along x

    def task_args(self, lead: tuple[int, ...], tiles: list[Tile]) -> tuple:
        """``(blocks, covered, inside)``: per tile, the keys ``[band][row][col]`` of the blocks
        its read window overlaps and the pixel window they cover; ``lead``'s offset in its block."""
        blk = tuple(int(np.searchsorted(off, v, side="right") - 1) for off, v in zip(self.lead_offsets, lead))
        inside = tuple(int(v - off[b]) for off, v, b in zip(self.lead_offsets, lead, blk))
        blocks, covered = [], []
        for tile in tiles:
            rd = tile.read
            ri, ci = _blocks_over(self.rows, rd.row, rd.row_end), _blocks_over(self.cols, rd.col, rd.col_end)
            blocks.append([[[(self.name, *blk, k, i, j) for j in ci] for i in ri] for k in range(self.nbands)])
            r0, c0 = self.rows[ri[0]], self.cols[ci[0]]
            covered.append(PixelWindow(r0, c0, self.rows[ri[-1] + 1] - r0, self.cols[ci[-1] + 1] - c0))
        return blocks, covered, inside

    def raws(self, tiles: list[Tile], blocks: list, covered: list[PixelWindow], inside: tuple[int, ...]):
        for tile, parts, cover in zip(tiles, blocks, covered):
            yield _assemble(parts, inside, tile.read.relative_to(cover))


def windows_for(src) -> SourceWindows | BlockWindows:
    """How the tasks of ``segment`` get their windows from the dask array ``src``
    ``(*lead, band, y, x)``: straight from its source when it is a plain ``from_array``."""
    return _source_windows(src) or BlockWindows(
        src.name, tuple(_offsets(c) for c in src.chunks[:-3]), len(src.chunks[-3]),
        _offsets(src.chunks[-2]), _offsets(src.chunks[-1]),
    )


def _source_windows(src) -> SourceWindows | None:
    """The source of ``src`` if ``src`` is ``from_array(source)`` and nothing else: its only
    layer above the source calls dask's getter on the source with each block's own slices.
    Anything else (or a dask version that builds it otherwise) gives None: blocks are used."""
    from dask.array.core import getter, getter_inline, getter_nofancy

    graph = src.dask
    deps = graph.dependencies.get(src.name, set())
    if len(deps) != 1 or set(graph.layers) != {src.name, *deps}:
        return None
    (key,) = deps
    try:
        if set(graph.layers[key].keys()) != {key}:
            return None
        source = _unwrap(graph.layers[key][key])
        first = graph.layers[src.name][(src.name,) + (0,) * src.ndim]
    except (KeyError, TypeError):
        return None
    if tuple(getattr(source, "shape", ())) != tuple(src.shape):
        return None
    func, args, kwargs = getattr(first, "func", None), tuple(getattr(first, "args", ())), dict(getattr(first, "kwargs", {}))
    if func not in (getter, getter_nofancy, getter_inline) or not 2 <= len(args) <= 4:
        return None
    if getattr(args[0], "key", None) != key:
        return None
    index = _unwrap(args[1])
    if index != tuple(slice(0, c[0]) for c in src.chunks) and index != tuple(slice(0, c[0], None) for c in src.chunks):
        return None  # not the identity: the blocks are not the source's own pixels
    rest = [_unwrap(a) for a in args[2:]]
    asarray = rest[0] if len(rest) > 0 else _unwrap(kwargs.get("asarray", True))
    lock = rest[1] if len(rest) > 1 else _unwrap(kwargs.get("lock", None))
    return SourceWindows(key, func, bool(asarray), lock)


def _unwrap(value):
    """The value of a dask graph data node (dask >= 2024.12 wraps literals in tasks so)."""
    return value.value if type(value).__name__ == "DataNode" else value


def _assemble(blocks, inside: tuple[int, ...], crop: tuple[slice, slice]) -> np.ndarray:
    """One read window ``(bands, h, w)`` from nested lists ``[band][row][col]`` of input
    blocks ``(*lead, b, h, w)``."""
    parts = [[[blk[inside] for blk in row] for row in rows] for rows in blocks]
    arr = np.block(parts) if (len(parts) > 1 or len(parts[0]) > 1 or len(parts[0][0]) > 1) else parts[0][0][0]
    return arr[(slice(None), *crop)]


def _offsets(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Block edges: 0 and the cumulative block sizes."""
    return (0, *(int(v) for v in np.cumsum(chunks)))


def _blocks_over(offsets, start: int, end: int) -> range:
    """Indexes of the blocks (edges ``offsets``) that overlap pixels ``start..end``."""
    return range(int(np.searchsorted(offsets, start, side="right")) - 1, int(np.searchsorted(offsets, end, side="left")))
