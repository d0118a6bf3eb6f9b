"""Georeferencing as a value, and the tile grid with an explicit halo.

All window arithmetic of geoseg lives here: a :class:`GeoBox` is a raster's shape,
affine transform and CRS; a :class:`TileGrid` cuts it into :class:`Tile` objects, each
knowing its *core* window (the pixels it writes) and its *read* window (core plus halo,
clamped to the raster), aligned to the model's downsampling factor so that tiled
inference equals whole-image inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

from affine import Affine

from geoseg.errors import InputError


@dataclass(frozen=True)
class PixelWindow:
    """An integer pixel window: ``row``/``col`` offsets and ``height``/``width``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of this window within the full raster."""
        return slice(self.row, self.row_end), slice(self.col, self.col_end)

    def relative_to(self, outer: PixelWindow) -> tuple[slice, slice]:
        """Slices that cut this window out of an array covering ``outer``."""
        r0, c0 = self.row - outer.row, self.col - outer.col
        if r0 < 0 or c0 < 0 or r0 + self.height > outer.height or c0 + self.width > outer.width:
            raise ValueError(f"{self} does not lie inside {outer}")
        return slice(r0, r0 + self.height), slice(c0, c0 + self.width)

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """The pixels both windows cover, or None."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def union(self, other: PixelWindow) -> PixelWindow:
        """The smallest window holding both (an empty window adds nothing)."""
        if other.height <= 0 or other.width <= 0:
            return self
        if self.height <= 0 or self.width <= 0:
            return other
        r0, c0 = min(self.row, other.row), min(self.col, other.col)
        r1, c1 = max(self.row_end, other.row_end), max(self.col_end, other.col_end)
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def shift(self, rows: int, cols: int) -> PixelWindow:
        """The same window, moved by ``rows``/``cols`` (e.g. into a cropped grid)."""
        return PixelWindow(self.row + rows, self.col + cols, self.height, self.width)

    def to_rasterio(self):  # -> rasterio.windows.Window, imported lazily
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)


def strips(windows: Iterable[PixelWindow]) -> tuple[PixelWindow, ...]:
    """``windows`` merged into horizontal strips: windows on the same rows with overlapping
    or touching columns become one (the windows a run reads, tile by tile, compactly)."""
    by_rows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for w in windows:
        if w.height > 0 and w.width > 0:
            by_rows.setdefault((w.row, w.height), []).append((w.col, w.col_end))
    out = []
    for (row, height), cols in sorted(by_rows.items()):
        cols.sort()
        start, end = cols[0]
        for c0, c1 in cols[1:]:
            if c0 > end:
                out.append(PixelWindow(row, start, height, end - start))
                start = c0
            end = max(end, c1)
        out.append(PixelWindow(row, start, height, end - start))
    return tuple(out)


@dataclass(frozen=True)
class GeoBox:
    """A raster's pixel grid: shape, affine transform and CRS (WKT or None)."""

    height: int
    width: int
    transform: Affine
    crs: str | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def window(self) -> PixelWindow:
        return PixelWindow(0, 0, self.height, self.width)

    def window_transform(self, window: PixelWindow) -> Affine:
        """The affine transform of ``window``'s top-left pixel."""
        return self.transform * Affine.translation(window.col, window.row)

    def crop(self, window: PixelWindow) -> GeoBox:
        """The grid of ``window`` (same CRS and pixel size)."""
        return GeoBox(window.height, window.width, self.window_transform(window), self.crs)

    def bounds(self, window: PixelWindow | None = None) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the grid (or of ``window``) in its CRS."""
        w = window or self.window
        t = self.transform
        xs = (t.c + t.a * w.col, t.c + t.a * w.col_end)
        ys = (t.f + t.e * w.row, t.f + t.e * w.row_end)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`."""

    index: int
    core: PixelWindow
    read: PixelWindow
    #: Whether each side (top, bottom, left, right) of the read window lies inside the
    #: raster (False: on the raster's edge, where the model sees zero padding).
    inner: tuple[bool, bool, bool, bool] = (False, False, False, False)

    @property
    def crop(self) -> tuple[slice, slice]:
        """Slices that cut the core out of an array covering the read window."""
        return self.core.relative_to(self.read)

    @property
    def context(self) -> tuple[int, int, int, int]:
        """Pixels of the read window around the core: (top, bottom, left, right)."""
        c, r = self.core, self.read
        return c.row - r.row, r.row_end - c.row_end, c.col - r.col, r.col_end - c.col_end


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@dataclass(frozen=True)
class TileGrid:
    """A grid of square cores of ``tile_size`` px with a ``halo`` on each side.

    ``tile_size`` and ``halo`` are rounded up to multiples of ``factor`` (the model's
    downsampling factor), so every read window starts on the factor grid; read windows
    are clamped to the raster, never padded beyond it. Edge cores are clipped.
    """

    height: int
    width: int
    tile_size: int
    halo: int = 0
    factor: int = 1

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"raster size must be at least 1x1, got {self.height}x{self.width}")
        if self.factor < 1:
            raise InputError(f"downsampling factor must be >= 1, got {self.factor}")
        if self.tile_size < 1:
            raise InputError(f"tile size must be a positive number of pixels, got {self.tile_size}")
        if self.halo < 0:
            raise InputError(f"halo must be >= 0, got {self.halo}")
        object.__setattr__(self, "tile_size", _round_up(self.tile_size, self.factor))
        object.__setattr__(self, "halo", _round_up(self.halo, self.factor))

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, i: int, j: int) -> Tile:
        """The tile in grid row ``i``, column ``j``."""
        if not (0 <= i < self.rows and 0 <= j < self.cols):
            raise IndexError(f"tile ({i}, {j}) outside a {self.rows}x{self.cols} grid")
        t, h = self.tile_size, self.halo
        r0, c0 = i * t, j * t
        core = PixelWindow(r0, c0, min(t, self.height - r0), min(t, self.width - c0))
        rr0, cc0 = max(0, r0 - h), max(0, c0 - h)
        rr1, cc1 = min(self.height, core.row_end + h), min(self.width, core.col_end + h)
        inner = (rr0 > 0, rr1 < self.height, cc0 > 0, cc1 < self.width)
        return Tile(i * self.cols + j, core, PixelWindow(rr0, cc0, rr1 - rr0, cc1 - cc0), inner)

    def __iter__(self) -> Iterator[Tile]:
        for i in range(self.rows):
            for j in range(self.cols):
                yield self.tile(i, j)

    def _tile(self, index: int, r0: int, c0: int, r1: int, c1: int) -> Tile:
        """The tile with core rows ``r0:r1``, cols ``c0:c1`` and its halo, clamped to the raster."""
        h = self.halo
        core = PixelWindow(r0, c0, r1 - r0, c1 - c0)
        rr0, cc0 = max(0, r0 - h), max(0, c0 - h)
        rr1, cc1 = min(self.height, r1 + h), min(self.width, c1 + h)
        inner = (rr0 > 0, rr1 < self.height, cc0 > 0, cc1 < self.width)
        return Tile(index, core, PixelWindow(rr0, cc0, rr1 - rr0, cc1 - cc0), inner)

    def tiles_within(self, window: PixelWindow) -> list[Tile]:
        """Tiles whose cores cover ``window`` (clipped to the raster) and little more.

        The cores start at the window's origin rounded down to the factor grid and end at
        its end rounded up to it (or the raster's end); their read windows take the halo
        from the raster around them, clamped to the raster only. Every core therefore
        equals whole-image inference, like the cores of the full grid, while only the
        window and its halo are read: a small area of a huge raster costs a few tiles.
        """
        f, t = self.factor, self.tile_size
        r0, c0 = max(0, window.row) // f * f, max(0, window.col) // f * f
        r1 = min(self.height, _round_up(min(self.height, window.row_end), f))
        c1 = min(self.width, _round_up(min(self.width, window.col_end), f))
        out: list[Tile] = []
        for r in range(r0, r1, t):
            for c in range(c0, c1, t):
                out.append(self._tile(len(out), r, c, min(r + t, r1), min(c + t, c1)))
        return out

    def padded_shape(self, window: PixelWindow) -> tuple[int, int]:
        """The shape a read window is padded to (bottom/right) for the model."""
        return _round_up(window.height, self.factor), _round_up(window.width, self.factor)


def batches(tiles: list[Tile], batch_size: int) -> list[list[Tile]]:
    """Group tiles, in order, into batches of at most ``batch_size`` tiles that share their
    read shape, context and inner sides (one forward computes the same cut for all)."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    out: list[list[Tile]] = []
    open_by_key: dict[tuple, list[Tile]] = {}
    for tile in tiles:
        key = (tile.read.height, tile.read.width, tile.context, tile.inner)
        current = open_by_key.get(key)
        if current is None or len(current) >= batch_size:
            current = []
            open_by_key[key] = current
            out.append(current)
        current.append(tile)
    return out
