"""Exact, block-parallel, streaming polygonization of a raster band.

A whole-map ``gdal_polygonize.py`` is correct but single-threaded; cutting the map into
blocks is what makes it parallel, and what cuts polygons at block edges in other tools.
Here each block is a task (:func:`polygonize_window`) that returns its regions (GDAL
polygons), their pixel counts, weighted sums (confidence) and ground areas, and the
region labels along its four edges. Regions touching no other block are final at once.
The others are joined in raster order by :class:`_Joiner`: the labels of equal-valued
pixels facing each other across an edge (and, with 8-connectivity, across the diagonals
and block corners) join them into connected components of the whole map, whose pieces
are unioned once no block still to come can touch them. Coordinates stay whole-raster
pixel coordinates (exact integers) until the writer, so shared edges match bit for bit.

:func:`polygonize_stream` hands each batch of finished regions on as it is complete, so
memory holds the blocks in flight and the pieces waiting on the open boundary (the bottom
edges of the latest block row and the right edge of the latest block), not the map's
polygons. The result equals a whole-map polygonize: one feature per connected region of
equal value, with the same area, whatever the block size (``tests/test_vectorize.py``,
``tests/test_vector_streaming.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._constants import BLOCK_BOUNDARY_PAIRS, BLOCK_SIZES
from geoseg._dask import check_workers, connect_cluster, run_tasks, workers_missing
from geoseg.errors import InputError
from geoseg.grid import PixelWindow, TileGrid
from geoseg.io.raster import open_raster, read_band
from geoseg.vector import _gdal
from geoseg.vector.areas import vertex_chunks
from geoseg.vector.stitch import stitch_pieces


@dataclass
class BlockRegions:
    """The regions of one block: what a polygonize task returns."""

    values: np.ndarray  # (n,) int32: the raster value of each region
    geoms: np.ndarray  # n shapely polygons in whole-raster pixel coordinates
    pixels: np.ndarray  # (n,) int64: pixel count of each region
    sums: np.ndarray | None  # (n,) float64: sum of the weight raster under each region
    area: np.ndarray | None  # (n,) float64: ground area (m^2), with an area calculator
    perimeter: np.ndarray | None  # (n,) float64: ground perimeter (m) of the finished regions
    edge: np.ndarray  # (n,) bool: touches an edge shared with another block (joined later)
    top: np.ndarray  # region label (index + 1, 0 = none) of each pixel of the first row
    bottom: np.ndarray  # ... of the last row
    left: np.ndarray  # ... of the first column
    right: np.ndarray  # ... of the last column


@dataclass
class Regions:
    """Connected regions of a whole raster band, one per feature."""

    geometry: np.ndarray  # shapely polygons (multipolygons with 8-connectivity) in pixel coordinates
    values: np.ndarray  # int32
    pixels: np.ndarray  # int64
    weight_mean: np.ndarray | None  # mean of the weight raster under each region
    pieces: int  # block pieces before joining (for reports)
    area: np.ndarray | None = None  # ground area (m^2), with an area calculator
    perimeter: np.ndarray | None = None  # ground perimeter (m), with an area calculator

    def __len__(self) -> int:
        return len(self.values)


def polygonize_window(
    path: str,
    band: int,
    window: PixelWindow,
    connectivity: int = 4,
    include: Sequence[int] | None = None,
    weights: tuple[str, int] | None = None,
    areas=None,
    grid_shape: tuple[int, int] | None = None,
) -> BlockRegions:
    """Polygonize one block of a raster band (a Dask task: arguments are plain values).

    Args:
        path, band: the raster and its 1-based band.
        window: the block.
        include: raster values that become regions (default: all valid values).
        weights: ``(path, band)`` of a raster on the same grid whose mean per region is
            wanted (e.g. the confidence map).
        areas: an :class:`~geoseg.vector.areas.AreaCalculator` of the raster's grid: ground
            areas of all regions, perimeters of those not touching another block.
        grid_shape: the raster's ``(height, width)`` (which block edges are inner ones).
    """
    import shapely

    values, valid = read_band(path, band, window, masks=True)
    if include is not None:
        valid &= np.isin(values, np.asarray(include))
    vals, wkb = _gdal.polygonize_block(values, valid, (window.row, window.col), connectivity)
    geoms = shapely.from_wkb(np.asarray(wkb, dtype=object)) if wkb else np.zeros(0, dtype=object)
    del wkb  # the block's WKB, as large as its geometries
    top, bottom, left, right = edge_labels(geoms, window)
    sums = None
    if weights is not None:
        sums = ring_sums(geoms, window, array_prefix(read_band(weights[0], weights[1], window)[0]))
    area = perimeter = None
    if areas is not None:  # before make_valid: ring_sums wants GDAL's one-part polygons
        area = ring_sums(geoms, window, areas.area_prefix(window.row, window.col, window.height, window.width))
    if connectivity == 8:  # GDAL's 8-connected rings touch themselves at corners: make them valid
        bad = ~shapely.is_valid(geoms)
        geoms[bad] = shapely.make_valid(geoms[bad])
    pixels = np.rint(shapely.area(geoms)).astype(np.int64)  # pixel-aligned, pixel units: exact
    edge = touches_inner_edge(geoms, window, grid_shape)
    if areas is not None:  # finished regions get their perimeter here, in parallel
        perimeter = np.full(len(geoms), np.nan)
        perimeter[~edge] = areas.lengths(geoms[~edge])
    return BlockRegions(vals, geoms, pixels, sums, area, perimeter, edge, top, bottom, left, right)


def touches_inner_edge(geoms: np.ndarray, window: PixelWindow, shape: tuple[int, int] | None) -> np.ndarray:
    """Which polygons touch a block edge that another block lies behind (``shape``: the
    raster's height and width; None: every edge counts)."""
    import shapely

    if not len(geoms):
        return np.zeros(0, dtype=bool)
    minx, miny, maxx, maxy = shapely.bounds(geoms).T
    h, w = shape if shape is not None else (np.inf, np.inf)
    r0, c0, r1, c1 = window.row, window.col, window.row + window.height, window.col + window.width
    return ((miny == r0) & (r0 > 0)) | ((maxy == r1) & (r1 < h)) | ((minx == c0) & (c0 > 0)) | ((maxx == c1) & (c1 < w))


def run_offsets(lengths: np.ndarray) -> np.ndarray:
    """``0 .. n - 1`` for every run length ``n``, concatenated: the position of each element
    within its run when runs of ``lengths`` are laid end to end."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def array_prefix(weights: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Row prefix sums of a block's array, as :func:`ring_sums` takes them: integer weights
    (e.g. a uint8 confidence map) are summed exactly in int32 where they fit (a quarter of
    a float64 table), others in float64."""
    h, w = weights.shape
    big = int(np.abs(weights).max(initial=0)) * w >= 2**31 if weights.dtype.kind in "iub" else True
    prefix = np.zeros((h, w + 1), dtype=np.float64 if big else np.int32)
    np.cumsum(weights, axis=1, out=prefix[:, 1:])
    return lambda rows, cols: prefix[rows, cols]


def ring_sums(geoms: np.ndarray, window: PixelWindow, prefix: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Sum of a weight over the pixels of each polygon, from the weight's row prefix sums.

    Green's theorem on the pixel grid: with row prefix sums ``P`` (``P[y, x]`` = sum of
    ``weights[y, :x]``; ``prefix(rows, cols)`` returns them, block-relative: see
    :func:`array_prefix`, or :meth:`~geoseg.vector.areas.AreaCalculator.area_prefix` for
    ground areas), a vertical boundary edge at column ``x`` from row ``a`` to ``b``
    contributes ``P[a:b, x].sum()``; around a ring these add up to the sum inside it,
    signed by the ring's orientation (unit weights give its signed area). Exterior rings
    add, holes subtract. The work is the rings' vertical length: no per-pixel labelling, so
    polygons with thousands of holes cost no more than their edges.
    """
    n = len(geoms)
    if not n:
        return np.zeros(0)
    # piece by piece (the same sums): the per-vertex temporaries of a whole block are large
    return np.concatenate([_ring_sums(geoms[part], window, prefix) for part in vertex_chunks(geoms)])


def _ring_sums(geoms: np.ndarray, window: PixelWindow, prefix: Callable) -> np.ndarray:
    import shapely

    n = len(geoms)
    rings, owner = shapely.get_rings(geoms, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    x = np.rint(xy[:, 0]).astype(np.int64) - window.col
    y = np.rint(xy[:, 1]).astype(np.int64) - window.row
    seg = np.flatnonzero((ring[:-1] == ring[1:]) & (x[:-1] == x[1:]))  # vertical edges
    xs, ya, yb = x[seg], y[seg], y[seg + 1]
    length = np.abs(yb - ya)
    rows = np.repeat(np.minimum(ya, yb), length) + run_offsets(length)
    per_edge = np.bincount(np.repeat(np.arange(len(seg)), length), weights=prefix(rows, np.repeat(xs, length)),
                           minlength=len(seg))
    direction = np.sign(yb - ya)
    n_rings = len(rings)
    signed = np.bincount(ring[seg], weights=direction * per_edge, minlength=n_rings)
    area = np.bincount(ring[seg], weights=(yb - ya) * xs, minlength=n_rings)
    inside = signed * np.sign(area)
    exterior = np.r_[True, owner[1:] != owner[:-1]]  # each polygon's first ring
    return np.bincount(owner, weights=np.where(exterior, inside, -inside), minlength=n)


def edge_labels(geoms: np.ndarray, window: PixelWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which region (index + 1, 0 = none) each pixel along the block's four edges belongs to.

    A pixel on a block edge belongs to the region whose boundary runs along its outer
    side, so the boundary segments lying on the edge line label the edge exactly; no
    rasterization needed. ``geoms`` are the block's polygons in whole-raster pixel
    coordinates, as GDAL returns them.
    """
    import shapely

    r0, c0, h, w = window.row, window.col, window.height, window.width
    out = []
    if len(geoms):
        bounds = shapely.bounds(geoms)  # minx, miny, maxx, maxy
    # (axis across the edge line, the line's coordinate on it, first pixel along the edge, edge length)
    for axis, value, start, length in ((1, r0, c0, w), (1, r0 + h, c0, w), (0, c0, r0, h), (0, c0 + w, r0, h)):
        lab = np.zeros(length, dtype=np.int32)
        if len(geoms):
            lo_b, hi_b = bounds[:, axis], bounds[:, axis + 2]
            touching = np.flatnonzero((lo_b == value) | (hi_b == value))
            if len(touching):
                rings, owner = shapely.get_rings(geoms[touching], return_index=True)
                xy, ring = shapely.get_coordinates(rings, return_index=True)
                on = (ring[:-1] == ring[1:]) & (xy[:-1, axis] == value) & (xy[1:, axis] == value)
                seg = np.flatnonzero(on)
                along = 1 - axis
                a = xy[seg, along] - start
                b = xy[seg + 1, along] - start
                lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
                region = touching[owner[ring[seg]]] + 1
                n = hi - lo
                lab[np.repeat(lo, n) + run_offsets(n)] = np.repeat(region, n)
        out.append(lab)
    return tuple(out)


def block_grid(height: int, width: int, block_size: int) -> TileGrid:
    """The blocks of a ``height`` x ``width`` raster (no halo: regions are joined instead)."""
    return TileGrid(height, width, block_size, halo=0, factor=1)


def choose_block_size(path: str | os.PathLike, band: int = 1, samples: int = 4, side: int = 256) -> int:
    """The block edge for polygonizing a raster band, from its boundary density.

    Reads ``samples`` x ``samples`` windows of ``side`` px spread over the band (at full
    resolution: an overview would smooth speckle away) and measures the share of
    neighbouring pixel pairs that differ (value or validity). Returns the largest of
    :data:`~geoseg._constants.BLOCK_SIZES` whose blocks hold at most
    :data:`~geoseg._constants.BLOCK_BOUNDARY_PAIRS` such pairs: small blocks bound the
    memory of speckled maps, large ones save the joins of maps of few large regions. The
    polygons do not depend on the choice.
    """
    with open_raster(str(path), env=False) as ds:
        height, width = ds.height, ds.width
    h, w = min(side, height), min(side, width)
    rows = np.unique(np.linspace(0, height - h, samples).astype(int))
    cols = np.unique(np.linspace(0, width - w, samples).astype(int))
    differ = pairs = 0
    for r in rows:
        for c in cols:
            values, valid = read_band(str(path), band, PixelWindow(int(r), int(c), h, w), masks=True)
            v = np.where(valid, values.astype(np.int64), -1)
            differ += int((v[:, 1:] != v[:, :-1]).sum() + (v[1:] != v[:-1]).sum())
            pairs += v[:, 1:].size + v[1:].size
    density = differ / max(pairs, 1)
    fits = [b for b in BLOCK_SIZES if 2 * density * b * b <= BLOCK_BOUNDARY_PAIRS]
    return max(fits) if fits else min(BLOCK_SIZES)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (the smallest member) of each of ``n`` nodes joined by edges ``a[i] - b[i]``.

    Min-label propagation with pointer jumping: a handful of vectorised passes for the
    short chains block edges make (cheaper than importing scipy.sparse.csgraph).
    """
    label = np.arange(n)
    if not len(a):
        return label
    while True:
        m = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        np.minimum.at(label, before, label)  # a root takes the smallest label of its members
        while True:  # pointer jumping: follow labels to their roots
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
        if np.array_equal(label, before):
            return label




class _Joiner:
    """Joins the pieces of regions cut by block edges, block by block in raster order.

    Pieces that touch an inner block edge wait here, with the labels of the open boundary:
    the bottom edge of the latest block of each column and the right edge of the latest
    block of the current row. A block's top and left edges join its pieces to the waiting
    ones they face (with 8-connectivity also diagonally, block corners included). A
    region is finished, and handed to ``emit``, as soon as none of its pieces lies on the
    open boundary: no block still to come can touch it. What waits is bounded by the
    boundary's length (plus regions that reach across it), not by the map's region count.
    """

    def __init__(self, grid: TileGrid, width: int, connectivity: int, emit: Callable[[Regions], None],
                 threads: int = 1) -> None:
        self.grid, self.emit, self.threads, self.connectivity = grid, emit, threads, connectivity
        # the block lines: columns and rows where blocks meet
        self.lines = (np.array([grid.tile(0, j).core.col for j in range(1, grid.cols)], dtype=np.int64),
                      np.array([grid.tile(i, 0).core.row for i in range(1, grid.rows)], dtype=np.int64))
        self.shifts = (0, 1, -1) if connectivity == 8 else (0,)
        self.below = np.full(width, -1, dtype=np.int64)  # open bottom boundary (piece ids)
        self.above = self.below.copy()  # the previous block row's bottoms, for this row's top edges
        self.right = np.zeros(0, dtype=np.int64)
        self.next_id = 0
        self.ids = np.zeros(0, dtype=np.int64)  # waiting pieces (sorted ids) ...
        self.root = np.zeros(0, dtype=np.int64)  # ... their component (smallest id) ...
        self.values = np.zeros(0, dtype=np.int32)
        self.pixels = np.zeros(0, dtype=np.int64)
        self.sums: np.ndarray | None = None
        self.area: np.ndarray | None = None
        self.geoms = np.zeros(0, dtype=object)
        self.max_waiting = 0

    def _link(self, mine: np.ndarray, theirs: np.ndarray, start: int) -> list[np.ndarray]:
        """Pairs of ids facing each other: ``mine[k]`` against ``theirs[start + k + shift]``."""
        out = []
        for s in self.shifts:
            k = np.arange(len(mine))
            t = start + k + s
            ok = (t >= 0) & (t < len(theirs))
            a, b = mine[k[ok]], theirs[t[ok]]
            hit = (a >= 0) & (b >= 0)
            out.append(np.stack([a[hit], b[hit]]))
        return out

    def add(self, i: int, j: int, block: BlockRegions, areas) -> None:
        win = self.grid.tile(i, j).core
        if j == 0:
            self.above = self.below.copy()
        e = np.flatnonzero(block.edge)
        new = self.next_id + np.arange(len(e), dtype=np.int64)
        self.next_id += len(e)
        gid = np.full(len(block.values) + 1, -1, dtype=np.int64)
        gid[e + 1] = new
        pairs = [np.zeros((2, 0), dtype=np.int64)]
        if i > 0:
            pairs += self._link(gid[block.top], self.above, win.col)
        if j > 0:
            pairs += self._link(gid[block.left], self.right, 0)
        # the new pieces wait (for now)
        self.ids = np.r_[self.ids, new]
        self.root = np.r_[self.root, new]
        self.values = np.r_[self.values, block.values[e]]
        self.pixels = np.r_[self.pixels, block.pixels[e]]
        if block.sums is not None:
            self.sums = np.r_[self.sums if self.sums is not None else np.zeros(0), block.sums[e]]
        if block.area is not None:
            self.area = np.r_[self.area if self.area is not None else np.zeros(0), block.area[e]]
        self.geoms = np.concatenate([self.geoms, block.geoms[e]])
        edges = np.concatenate(pairs, axis=1)
        if edges.shape[1]:
            a = np.searchsorted(self.ids, edges[0])
            b = np.searchsorted(self.ids, edges[1])
            same = self.values[a] == self.values[b]
            ra, rb = self.root[a[same]], self.root[b[same]]
            if len(ra):
                uniq, inv = np.unique(np.r_[ra, rb], return_inverse=True)
                cc = connected_components(len(uniq), inv[: len(ra)], inv[len(ra):])
                hit = np.isin(self.root, uniq)
                self.root[hit] = uniq[cc[np.searchsorted(uniq, self.root[hit])]]
        self.below[win.col: win.col + win.width] = gid[block.bottom]
        self.right = gid[block.right]
        last_row, last_col = i == self.grid.rows - 1, j == self.grid.cols - 1
        # the previous row's bottoms still face this row's blocks to come (diagonally, the corner pixel too)
        open_ids = [self.above[max(0, win.col + win.width - (len(self.shifts) > 1)):]]
        if not last_row:
            open_ids.append(self.below[: win.col + win.width])
        if not last_col:
            open_ids.append(self.right)
        ids = np.concatenate(open_ids)
        ids = ids[ids >= 0]
        open_roots = np.unique(self.root[np.searchsorted(self.ids, ids)]) if len(ids) else ids
        self.max_waiting = max(self.max_waiting, len(self.ids))
        done = ~np.isin(self.root, open_roots)
        if done.any():
            self._finish(done, areas)

    def _finish(self, done: np.ndarray, areas) -> None:
        import shapely

        idx = np.flatnonzero(done)
        roots, comp = np.unique(self.root[idx], return_inverse=True)
        n = len(roots)
        values = np.empty(n, dtype=np.int32)
        values[comp] = self.values[idx]
        pixels = np.bincount(comp, weights=self.pixels[idx], minlength=n).astype(np.int64)
        mean = None if self.sums is None else np.bincount(comp, weights=self.sums[idx], minlength=n) / np.maximum(pixels, 1)
        area = None if self.area is None else np.bincount(comp, weights=self.area[idx], minlength=n)
        geometry = np.empty(n, dtype=object)
        sizes = np.bincount(comp, minlength=n)
        single = sizes[comp] == 1
        geometry[comp[single]] = self.geoms[idx[single]]
        multi = np.flatnonzero(~single)
        if len(multi):
            order = multi[np.argsort(comp[multi], kind="stable")]
            groups = np.split(order, np.flatnonzero(np.diff(comp[order])) + 1)
            if self.connectivity == 4:  # pixel-aligned polygons: edge cancellation along the block lines
                group_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
                merged = stitch_pieces(self.geoms[idx[order]], group_of, len(groups), *self.lines)
            elif len(groups) > 8 and self.threads > 1:  # GEOS releases the GIL: unions in parallel
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(self.threads) as pool:
                    merged = list(pool.map(lambda g: shapely.union_all(self.geoms[idx[g]]), groups))
            else:
                merged = [shapely.union_all(self.geoms[idx[g]]) for g in groups]
            for g, m in zip(groups, merged):
                geometry[comp[g[0]]] = m
        perimeter = areas.lengths(geometry) if areas is not None else None
        keep = ~done
        self.ids, self.root, self.values, self.pixels = self.ids[keep], self.root[keep], self.values[keep], self.pixels[keep]
        self.geoms = self.geoms[keep]
        if self.sums is not None:
            self.sums = self.sums[keep]
        if self.area is not None:
            self.area = self.area[keep]
        self.emit(Regions(geometry, values, pixels, mean, pieces=int(len(idx)), area=area, perimeter=perimeter))


def _finished(block: BlockRegions) -> Regions:
    """A block's regions that touch no other block: final as they are."""
    keep = ~block.edge
    pixels = block.pixels[keep]
    mean = None if block.sums is None else block.sums[keep] / np.maximum(pixels, 1)
    return Regions(
        block.geoms[keep], block.values[keep], pixels, mean, pieces=int(keep.sum()),
        area=None if block.area is None else block.area[keep],
        perimeter=None if block.perimeter is None else block.perimeter[keep],
    )


def polygonize_stream(
    path: str | os.PathLike,
    emit: Callable[[Regions], None],
    band: int = 1,
    *,
    connectivity: int = 4,
    include: Sequence[int] | None = None,
    weights: tuple[str | os.PathLike, int] | None = None,
    areas=None,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    on_block: Callable[[], None] | None = None,
    client=None,
) -> dict:
    """Polygonize a raster band exactly as a whole-map polygonize would, handing each
    batch of finished regions to ``emit`` as soon as no block still to come can touch it.

    Blocks run in parallel (local threads, or the workers of the Dask ``scheduler``), at
    most a few ahead of the oldest unfinished one. A block's regions that touch no other
    block are emitted as soon as it and the blocks before it are done; the others are joined across block edges in
    raster order (:class:`_Joiner`) and emitted once complete; batches come in raster
    order of their blocks, so the output is the same on every run and scheduler. Memory holds the blocks in
    flight plus the pieces waiting on the open boundary, whatever the map's region count.

    Args:
        path, band: the raster (any size: read block by block) and its 1-based band.
        emit: called in this thread with each batch of finished :class:`Regions`.
        connectivity: 4 (pixels sharing an edge join) or 8 (corners too).
        include: values that become regions (default: every valid value).
        weights: ``(path, band)`` of a raster on the same grid; its mean per region is returned.
        areas: an :class:`~geoseg.vector.areas.AreaCalculator` of the raster's grid: each
            region then carries its ground area and perimeter.
        block_size: block edge in pixels (default: :func:`choose_block_size`).
        workers: parallel block tasks on local threads (default: all cores).
        scheduler: address of an existing Dask scheduler to run the blocks on instead
            (its workers must run this geoseg and see ``path`` as this process does, else
            :class:`~geoseg.errors.InputError`).
        on_block: called after each block (progress).
        client: a connected ``distributed.Client`` to run the blocks on (left open).

    Returns:
        Counts: ``pieces`` (block pieces), ``regions``, ``max_waiting`` (most pieces waiting at once).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    path = str(Path(path))
    with open_raster(path, env=False) as ds:
        height, width = ds.height, ds.width
    grid = block_grid(height, width, block_size or choose_block_size(path, band))
    wspec = (str(weights[0]), int(weights[1])) if weights is not None else None
    inc = None if include is None else [int(v) for v in include]
    keys = [(i, j) for i in range(grid.rows) for j in range(grid.cols)]
    calls = [(path, band, grid.tile(i, j).core, connectivity, inc, wspec, areas, (height, width)) for i, j in keys]
    counts = {"pieces": 0, "regions": 0}

    def send(regions: Regions) -> None:
        counts["regions"] += len(regions)
        if len(regions):
            emit(regions)

    threads = workers or os.cpu_count() or 1
    joiner = _Joiner(grid, width, connectivity, send, threads)
    waiting: dict[int, BlockRegions] = {}
    nxt = [0]

    def on_result(k: int, block: BlockRegions) -> None:
        counts["pieces"] += len(block.values)
        waiting[k] = block
        while nxt[0] in waiting:  # raster order: the same output order on every run and scheduler
            block = waiting.pop(nxt[0])
            send(_finished(block))
            joiner.add(*keys[nxt[0]], block, areas)
            nxt[0] += 1
        if on_block:
            on_block()

    own = None
    if client is None and scheduler:
        client = own = connect_cluster(scheduler, None)[0]
    if client is not None:
        try:
            if own is not None:
                check_workers(own)
            _check_visible(client, [path] + ([wspec[0]] if wspec else []), scheduler)
            run_tasks(polygonize_window, calls, on_result, client=client)
        finally:
            if own is not None:
                own.close()
    else:
        run_tasks(polygonize_window, calls, on_result, threads=threads, window=threads + 1)
    counts["max_waiting"] = joiner.max_waiting
    return counts


def _check_visible(client, paths: list[str], scheduler: str | None) -> None:
    """Refuse, in one line, rasters the cluster's workers cannot read (they open them by path)."""
    missing = workers_missing(client, paths)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        where = f" of {scheduler}" if scheduler else ""
        raise InputError(
            f"the Dask worker {missing[0]}{more}{where} cannot read {paths[0]} (a file of this machine; workers open "
            "it by path): put it on a disk every worker mounts at the same path, or run without --scheduler"
        )


def polygonize(
    path: str | os.PathLike,
    band: int = 1,
    *,
    connectivity: int = 4,
    include: Sequence[int] | None = None,
    weights: tuple[str | os.PathLike, int] | None = None,
    areas=None,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    on_block: Callable[[], None] | None = None,
    client=None,
) -> Regions:
    """All regions of :func:`polygonize_stream` in one :class:`Regions` (in memory), in
    whole-raster pixel coordinates."""
    batches: list[Regions] = []
    counts = polygonize_stream(
        path, batches.append, band, connectivity=connectivity, include=include, weights=weights, areas=areas,
        block_size=block_size, workers=workers, scheduler=scheduler, on_block=on_block, client=client,
    )
    return concat_regions(batches, pieces=counts["pieces"])


def concat_regions(batches: list[Regions], pieces: int | None = None) -> Regions:
    """One :class:`Regions` of several batches."""

    def cat(name, dtype):
        parts = [getattr(b, name) for b in batches]
        if not parts or any(p is None for p in parts):
            return None if parts and all(p is None for p in parts) else np.zeros(0, dtype=dtype)
        return np.concatenate(parts)

    if not batches:
        return Regions(np.zeros(0, dtype=object), np.zeros(0, np.int32), np.zeros(0, np.int64), None, pieces or 0,
                       area=np.zeros(0), perimeter=np.zeros(0))
    return Regions(
        cat("geometry", object), cat("values", np.int32), cat("pixels", np.int64), cat("weight_mean", np.float64),
        pieces if pieces is not None else sum(b.pieces for b in batches),
        area=cat("area", np.float64), perimeter=cat("perimeter", np.float64),
    )
