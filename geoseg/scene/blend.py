"""Blended seams: overlapping tiles whose probabilities are averaged with cosine weights.

A model whose receptive field exceeds :data:`geoseg.models.inspect.BLEND_RADIUS` (global
pooling, attention) cannot be tiled exactly. Its tiles then overlap: each window reaches
``h`` px beyond its core on inner sides, and where two windows overlap (a band ``2h`` wide
around each core boundary) their class and mask probabilities are averaged with weights
``cos^2`` and ``sin^2`` of a ramp across the band. The weights of the windows covering a
pixel sum to 1 (``sin^2 + cos^2``, separably in rows and columns), so a pixel covered by one
window keeps that window's probabilities, and no seam shows where windows meet.

Streaming, in bounded memory: each axis is cut into *segments* (the bands, covered by two
windows, and the interiors between them, covered by one); a rectangle of segments is a
*cell*, covered by 1, 2 or 4 windows. :class:`BlendSink` sums a cell's weighted
probabilities only until its last window arrived, then turns them into uint8 products
(four windows' in tile order, so that the bytes do not depend on the order the windows
arrive in: float sums of four terms depend on it, of two they do not);
a core's products are written when all its cells are. Only the bands of the tiles in
flight and of their unfinished neighbours are held (float32), never the scene.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from geoseg._constants import NODATA
from geoseg.grid import PixelWindow, Tile, TileGrid

__all__ = ["BlendLayout", "BlendPiece", "BlendSink", "cosine_ramp", "blend_pieces"]


def cosine_ramp(length: int, rising: bool) -> np.ndarray:
    """Weights across a band of ``length`` px: ``sin^2`` rising 0 -> 1 (or ``cos^2`` falling)."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    w = np.sin(0.5 * math.pi * t) ** 2
    return (w if rising else 1.0 - w).astype(np.float32)


class _Axis:
    """Segments of one axis: core boundaries ``k * tile`` with bands ``[b - h, b + h)``."""

    def __init__(self, length: int, tile: int, halo: int) -> None:
        self.length, self.tile, self.halo = length, tile, halo
        self.n = -(-length // tile)
        cuts = {0, length}
        for k in range(1, self.n):
            b = k * tile
            cuts.update({b, max(0, b - halo), min(length, b + halo)})
        self.cuts = sorted(cuts)

    def used(self, i: int) -> tuple[int, int]:
        """Extent whose outputs tile ``i`` contributes: its core plus ``h`` on inner sides."""
        return max(0, i * self.tile - self.halo), min(self.length, (i + 1) * self.tile + self.halo)

    def coverage(self, a: int) -> int:
        """How many tiles' used extents cover the segment starting at ``a``."""
        return sum(1 for i in range(max(0, a // self.tile - 1), min(self.n, a // self.tile + 2)) if self.used(i)[0] <= a < self.used(i)[1])

    def segments(self, lo: int, hi: int) -> list[tuple[int, int]]:
        return [(a, b) for a, b in zip(self.cuts, self.cuts[1:]) if lo <= a and b <= hi]

    def weights(self, i: int) -> np.ndarray:
        lo, hi = self.used(i)
        w = np.ones(hi - lo, dtype=np.float32)
        if i > 0:  # rising across the band around the core's start
            b = i * self.tile
            w[: min(hi, b + self.halo) - lo] = cosine_ramp(2 * self.halo, True)[: min(hi, b + self.halo) - lo]
        if i < self.n - 1:  # falling across the band around the core's end
            b = (i + 1) * self.tile
            start = b - self.halo - lo
            ramp = cosine_ramp(2 * self.halo, False)[: hi - (b - self.halo)]
            w[start : start + len(ramp)] *= ramp
        return w


class BlendLayout:
    """The cells, weights and used windows of a :class:`~geoseg.grid.TileGrid` blended with its halo."""

    def __init__(self, grid: TileGrid, num_classes: int = 1, num_masks: int = 0) -> None:
        self.num_classes, self.num_masks = num_classes, num_masks
        if 2 * grid.halo > grid.tile_size:
            raise ValueError(f"blending needs an overlap of at most half the tile ({grid.halo} > {grid.tile_size} / 2)")
        self.grid = grid
        self.rows = _Axis(grid.height, grid.tile_size, grid.halo)
        self.cols = _Axis(grid.width, grid.tile_size, grid.halo)

    def _ij(self, tile: Tile) -> tuple[int, int]:
        return tile.core.row // self.grid.tile_size, tile.core.col // self.grid.tile_size

    def used(self, tile: Tile) -> PixelWindow:
        i, j = self._ij(tile)
        (r0, r1), (c0, c1) = self.rows.used(i), self.cols.used(j)
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def weights(self, tile: Tile) -> np.ndarray:
        i, j = self._ij(tile)
        return np.outer(self.rows.weights(i), self.cols.weights(j))

    def cells(self, window: PixelWindow) -> list[tuple[PixelWindow, int]]:
        """Cells inside ``window``, each with the number of tiles that cover it."""
        out = []
        for a, b in self.rows.segments(window.row, window.row_end):
            for c, d in self.cols.segments(window.col, window.col_end):
                out.append((PixelWindow(a, c, b - a, d - c), self.rows.coverage(a) * self.cols.coverage(c)))
        return out

    def core_of(self, cell: PixelWindow) -> tuple[int, int]:
        return cell.row // self.grid.tile_size, cell.col // self.grid.tile_size


@dataclass
class BlendPiece:
    """One tile's weighted probabilities over its used window."""

    window: PixelWindow
    probs: np.ndarray  # (C, h, w) float32, weighted
    masks: np.ndarray  # (M, h, w) float32, weighted
    weight: np.ndarray  # (h, w) float32
    valid: np.ndarray  # (h, w) bool
    skipped: bool


@dataclass
class _Cell:
    probs: np.ndarray | None
    masks: np.ndarray | None
    weight: np.ndarray | None
    valid: np.ndarray | None
    left: int
    #: a cell four windows cover: their contributions until the last arrives, then summed in
    #: tile order (float sums of four terms depend on the order; of two they do not)
    parts: list | None = None

    def values(self) -> int:
        if self.parts is not None:
            return sum(p.size + m.size + w.size for _, p, m, w, _ in self.parts)
        return self.probs.size + self.masks.size + self.weight.size


@dataclass
class _Core:
    window: PixelWindow
    classes: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    left: int
    skipped: bool = True


@dataclass
class CoreResult:
    """Finished products of one core (what :class:`geoseg.scene.pipeline.TileSink` writes)."""

    core: PixelWindow
    classes: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    skipped: bool


class BlendSink:
    """Sums pieces per cell, finishes cells, and hands finished cores to ``write``.

    Args:
        layout: The blend layout.
        num_masks: Mask heads.
        write: Called with a list of finished cores (e.g. ``TileSink.write``).
    """

    def __init__(self, layout: BlendLayout, write) -> None:
        self.layout, self.num_masks, self._write = layout, layout.num_masks, write
        self._cells: dict[tuple[int, int], _Cell] = {}
        self._cores: dict[tuple[int, int], _Core] = {}
        self._lock = threading.Lock()
        #: Largest number of float32 values held at once (for the memory bound's test).
        self.peak_values = 0

    def _core(self, ij: tuple[int, int]) -> _Core:
        core = self._cores.get(ij)
        if core is None:
            win = self.layout.grid.tile(*ij).core
            cells = self.layout.cells(win)
            h, w = win.height, win.width
            core = _Core(
                win,
                np.full((h, w), NODATA, np.uint8),
                np.full((h, w), NODATA, np.uint8),
                np.full((self.num_masks, h, w), NODATA, np.uint8),
                len(cells),
            )
            self._cores[ij] = core
        return core

    def _finish(self, cell_win: PixelWindow, cell: _Cell, done: list[CoreResult]) -> None:
        core = self._core(self.layout.core_of(cell_win))
        sl = cell_win.relative_to(core.window)
        w = np.maximum(cell.weight, 1e-12)
        prob = cell.probs / w
        conf = prob.max(axis=0)
        classes = prob.argmax(axis=0).astype(np.uint8)
        confidence = np.round(conf * 100).astype(np.uint8)
        invalid = ~cell.valid
        classes[invalid] = NODATA
        confidence[invalid] = NODATA
        core.classes[sl] = classes
        core.confidence[sl] = confidence
        if self.num_masks:
            m = (cell.masks / w > 0.5).astype(np.uint8)
            m[:, invalid] = NODATA
            core.masks[(slice(None), *sl)] = m
        core.skipped = core.skipped and not cell.valid.any()
        core.left -= 1
        if core.left == 0:
            del self._cores[self.layout.core_of(cell_win)]
            done.append(CoreResult(core.window, core.classes, core.confidence, core.masks, core.skipped))

    def add(self, pieces: list[BlendPiece]) -> None:
        done: list[CoreResult] = []
        with self._lock:
            for piece in pieces:
                for cell_win, expected in self.layout.cells(piece.window):
                    sl = cell_win.relative_to(piece.window)
                    key = (cell_win.row, cell_win.col)
                    cell = self._cells.pop(key, None)
                    p, m = piece.probs[(slice(None), *sl)], piece.masks[(slice(None), *sl)]
                    if expected > 2:  # the same bytes whatever order the windows arrive in
                        cell = cell or _Cell(None, None, None, None, expected, [])
                        cell.parts.append(((piece.window.row, piece.window.col), p.copy(), m.copy(),
                                           piece.weight[sl].copy(), piece.valid[sl].copy()))
                        if len(cell.parts) == expected:
                            parts = sorted(cell.parts, key=lambda part: part[0])
                            cell.probs, cell.masks, cell.weight, cell.valid = parts[0][1:]
                            for _, pp, mm, ww, vv in parts[1:]:
                                cell.probs += pp
                                cell.masks += mm
                                cell.weight += ww
                                cell.valid |= vv
                            cell.parts, cell.left = None, 0
                            self._finish(cell_win, cell, done)
                        else:
                            self._cells[key] = cell
                        continue
                    if cell is None:
                        cell = _Cell(p.copy(), m.copy(), piece.weight[sl].copy(), piece.valid[sl].copy(), expected)
                    else:
                        cell.probs += p
                        cell.masks += m
                        cell.weight += piece.weight[sl]
                        cell.valid |= piece.valid[sl]
                    cell.left -= 1
                    if cell.left == 0:
                        self._finish(cell_win, cell, done)
                    else:
                        self._cells[key] = cell
                held = sum(c.values() for c in self._cells.values())
                self.peak_values = max(self.peak_values, held)
        if done:
            self._write(done)


def blend_pieces(
    layout: BlendLayout, tiles: list[Tile], probs: np.ndarray, masks: np.ndarray | None, valid: np.ndarray, ran: np.ndarray
) -> list[BlendPiece]:
    """Cut each tile's window probabilities to its used window and weight them.

    Args:
        probs: ``(N, C, H, W)`` class probabilities over the read windows (rows of tiles
            the model did not run on are ignored).
        masks: ``(N, M, H, W)`` mask probabilities, or None.
        valid: ``(N, H, W)`` validity over the read windows.
        ran: ``(N,)`` whether the model ran on the tile (else it had no valid pixel).
    """
    out = []
    for k, tile in enumerate(tiles):
        used = layout.used(tile)
        sl = used.relative_to(tile.read)
        weight = layout.weights(tile)
        v = valid[k][sl]
        w = weight * v  # invalid pixels carry no weight
        if ran[k]:
            p = probs[k][(slice(None), *sl)] * w
            m = masks[k][(slice(None), *sl)] * w if masks is not None else np.zeros((layout.num_masks, *w.shape), np.float32)
        else:
            p = np.zeros((layout.num_classes, *w.shape), np.float32)
            m = np.zeros((layout.num_masks, *w.shape), np.float32)
        out.append(BlendPiece(used, p.astype(np.float32, copy=False), m.astype(np.float32, copy=False), w, v, not ran[k]))
    return out
