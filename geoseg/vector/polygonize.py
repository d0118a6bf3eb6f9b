"""Exact, block-parallel polygonization of a raster band.

A whole-map ``gdal_polygonize.py`` is correct but single-threaded and reads the map in
one pass; cutting the map into blocks is what makes it parallel, and what cuts polygons
at block edges in other tools. Here each block is a Dask task (:func:`polygonize_window`)
that returns its regions (GDAL polygons) plus the region labels along its four edges; the
labels of equal-valued pixels facing each other across an edge (and, with
8-connectivity, across the diagonals and block corners) join the regions into
connected components of the whole map (:func:`_join_across_edges`), and the pieces of
each component are unioned into one geometry. Coordinates stay whole-raster pixel
coordinates (exact integers) until the very end, so shared edges match bit for bit.

The result equals a whole-map polygonize: one feature per connected region of equal
value, with the same area, whatever the block size (``tests/test_vectorize.py``).
Memory holds one block per worker plus the polygons themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._constants import DEFAULT_BLOCK_SIZE
from geoseg._dask import connect_cluster, run_tasks
from geoseg.grid import PixelWindow, TileGrid
from geoseg.io.raster import open_raster, read_band
from geoseg.vector import _gdal


@dataclass
class BlockRegions:
    """The regions of one block: what a polygonize task returns."""

    values: np.ndarray  # (n,) int32: the raster value of each region
    geoms: np.ndarray  # n shapely polygons in whole-raster pixel coordinates
    pixels: np.ndarray  # (n,) int64: pixel count of each region
    sums: np.ndarray | None  # (n,) float64: sum of the weight raster under each region
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

    def __len__(self) -> int:
        return len(self.values)


def polygonize_window(
    path: str,
    band: int,
    window: PixelWindow,
    connectivity: int = 4,
    include: Sequence[int] | None = None,
    weights: tuple[str, int] | None = None,
) -> BlockRegions:
    """Polygonize one block of a raster band (a Dask task: arguments are plain values).

    Args:
        path, band: the raster and its 1-based band.
        window: the block.
        include: raster values that become regions (default: all valid values).
        weights: ``(path, band)`` of a raster on the same grid whose mean per region is
            wanted (e.g. the confidence map).
    """
    import shapely

    values, valid = read_band(path, band, window, masks=True)
    if include is not None:
        valid &= np.isin(values, np.asarray(include))
    vals, wkb = _gdal.polygonize_block(values, valid, (window.row, window.col), connectivity)
    geoms = shapely.from_wkb(np.asarray(wkb, dtype=object)) if wkb else np.zeros(0, dtype=object)
    top, bottom, left, right = edge_labels(geoms, window)
    sums = None
    if weights is not None:
        w = read_band(weights[0], weights[1], window)[0].astype(np.float64)
        sums = ring_sums(geoms, window, w)
    if connectivity == 8:  # GDAL's 8-connected rings touch themselves at corners: make them valid
        bad = ~shapely.is_valid(geoms)
        geoms[bad] = shapely.make_valid(geoms[bad])
    pixels = np.rint(shapely.area(geoms)).astype(np.int64)  # pixel-aligned, pixel units: exact
    return BlockRegions(vals, geoms, pixels, sums, top, bottom, left, right)


def run_offsets(lengths: np.ndarray) -> np.ndarray:
    """``0 .. n - 1`` for every run length ``n``, concatenated: the position of each element
    within its run when runs of ``lengths`` are laid end to end."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def ring_sums(geoms: np.ndarray, window: PixelWindow, weights: np.ndarray) -> np.ndarray:
    """Sum of ``weights`` (the block's array) over the pixels of each polygon.

    Green's theorem on the pixel grid: with row prefix sums ``P`` (``P[y, x]`` = sum of
    ``weights[y, :x]``), a vertical boundary edge at column ``x`` from row ``a`` to ``b``
    contributes ``P[a:b, x].sum()``; around a ring these add up to the sum inside it,
    signed by the ring's orientation (unit weights give its signed area). Exterior rings
    add, holes subtract. The work is one prefix sum plus the rings' vertical length: no
    per-pixel labelling, so polygons with thousands of holes cost no more than their edges.
    """
    import shapely

    n = len(geoms)
    if not n:
        return np.zeros(0)
    prefix = np.zeros((weights.shape[0], weights.shape[1] + 1))
    np.cumsum(weights, axis=1, out=prefix[:, 1:])
    rings, owner = shapely.get_rings(geoms, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    x = np.rint(xy[:, 0]).astype(np.int64) - window.col
    y = np.rint(xy[:, 1]).astype(np.int64) - window.row
    seg = np.flatnonzero((ring[:-1] == ring[1:]) & (x[:-1] == x[1:]))  # vertical edges
    xs, ya, yb = x[seg], y[seg], y[seg + 1]
    length = np.abs(yb - ya)
    rows = np.repeat(np.minimum(ya, yb), length) + run_offsets(length)
    per_edge = np.bincount(np.repeat(np.arange(len(seg)), length), weights=prefix[rows, np.repeat(xs, length)],
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


def block_grid(height: int, width: int, block_size: int = DEFAULT_BLOCK_SIZE) -> TileGrid:
    """The blocks of a ``height`` x ``width`` raster (no halo: regions are joined instead)."""
    return TileGrid(height, width, block_size, halo=0, factor=1)


def _pairs(a_labels, a_offset, a_values, b_labels, b_offset, b_values) -> np.ndarray:
    """Global ids of the regions facing each other pixel by pixel with equal values."""
    hit = (a_labels > 0) & (b_labels > 0)
    a, b = a_labels[hit] - 1, b_labels[hit] - 1
    same = a_values[a] == b_values[b]
    return np.stack([a[same] + a_offset, b[same] + b_offset])


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


def _join_across_edges(blocks: dict[tuple[int, int], BlockRegions], offsets: dict, connectivity: int) -> np.ndarray:
    """Component id of every region of every block (block ``k``'s regions are numbered from ``offsets[k]``)."""
    pairs = [np.zeros((2, 0), dtype=np.int64)]

    def link(ka, a_lab, kb, b_lab, shift=0):
        """Join the regions of blocks ``ka`` and ``kb`` whose edge pixels face each other
        (``shift``: offset along the edge, for the diagonals of 8-connectivity)."""
        if shift > 0:
            a_lab, b_lab = a_lab[:-shift], b_lab[shift:]
        elif shift < 0:
            a_lab, b_lab = a_lab[-shift:], b_lab[:shift]
        pairs.append(_pairs(a_lab, offsets[ka], blocks[ka].values, b_lab, offsets[kb], blocks[kb].values))

    shifts = (0, 1, -1) if connectivity == 8 else (0,)
    for (i, j), a in blocks.items():
        for kb, a_edge, b_edge in (((i, j + 1), "right", "left"), ((i + 1, j), "bottom", "top")):
            if kb in blocks:
                for s in shifts:
                    link((i, j), getattr(a, a_edge), kb, getattr(blocks[kb], b_edge), s)
        if connectivity == 8:  # corners: only diagonal neighbours meet there
            if (i + 1, j + 1) in blocks:
                link((i, j), a.bottom[-1:], (i + 1, j + 1), blocks[(i + 1, j + 1)].top[:1])
            if (i + 1, j - 1) in blocks:
                link((i, j), a.bottom[:1], (i + 1, j - 1), blocks[(i + 1, j - 1)].top[-1:])
    edges = np.concatenate(pairs, axis=1)
    total = sum(len(b.values) for b in blocks.values())
    return connected_components(total, edges[0], edges[1])


def run_blocks(
    tasks: dict, *, workers: int | None = None, scheduler: str | None = None, on_done: Callable[[], None] | None = None
) -> dict:
    """Run a dict of ``key -> (function, *args)`` block tasks; return ``key -> result``.

    Local threads by default (the GDAL calls release the GIL); ``scheduler`` is the
    address of an existing ``dask.distributed`` scheduler whose workers can read the paths.
    """
    keys = list(tasks)
    out: dict = {}
    if not keys:
        return out
    fn = tasks[keys[0]][0]

    def collect(i: int, result) -> None:
        out[keys[i]] = result
        if on_done:
            on_done()

    calls = [tuple(task[1:]) for task in tasks.values()]
    if scheduler:
        client, _, _ = connect_cluster(scheduler, None)
        try:
            run_tasks(fn, calls, collect, client=client, window=len(calls))
        finally:
            client.close()
    else:
        run_tasks(fn, calls, collect, threads=workers or os.cpu_count() or 1, window=len(calls))
    return out


def polygonize(
    path: str | os.PathLike,
    band: int = 1,
    *,
    connectivity: int = 4,
    include: Sequence[int] | None = None,
    weights: tuple[str | os.PathLike, int] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int | None = None,
    scheduler: str | None = None,
    on_block: Callable[[], None] | None = None,
) -> Regions:
    """Polygonize a raster band exactly as a whole-map polygonize would, block-parallel.

    Args:
        path, band: the raster (any size: read block by block) and its 1-based band.
        connectivity: 4 (pixels sharing an edge join) or 8 (corners too).
        include: values that become regions (default: every valid value).
        weights: ``(path, band)`` of a raster on the same grid; its mean per region is returned.
        block_size: block edge in pixels.
        workers: parallel block tasks on local threads (default: all cores).
        scheduler: address of an existing Dask scheduler to run the blocks on instead.
        on_block: called after each block (progress).

    Returns:
        :class:`Regions` in whole-raster pixel coordinates.
    """
    import shapely

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    path = str(Path(path))
    with open_raster(path, env=False) as ds:
        height, width = ds.height, ds.width
    grid = block_grid(height, width, block_size)
    wspec = (str(weights[0]), int(weights[1])) if weights is not None else None
    inc = None if include is None else [int(v) for v in include]
    tasks = {
        (i, j): (polygonize_window, path, band, grid.tile(i, j).core, connectivity, inc, wspec)
        for i in range(grid.rows)
        for j in range(grid.cols)
    }
    blocks: dict[tuple[int, int], BlockRegions] = run_blocks(tasks, workers=workers, scheduler=scheduler, on_done=on_block)
    blocks = {k: blocks[k] for k in tasks}  # row-major order
    counts = [len(b.values) for b in blocks.values()]
    offsets = dict(zip(blocks, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)))
    component = _join_across_edges(blocks, offsets, connectivity)

    values = np.concatenate([b.values for b in blocks.values()])
    pixels = np.concatenate([b.pixels for b in blocks.values()])
    pieces = np.concatenate([b.geoms for b in blocks.values()])

    # components in the order of their first piece (row-major blocks, GDAL order within)
    uniq, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    comp = rank[inverse]
    n = len(uniq)
    out_values = np.empty(n, dtype=np.int32)
    out_values[comp] = values
    out_pixels = np.bincount(comp, weights=pixels, minlength=n).astype(np.int64)
    weight_mean = None
    if wspec is not None:
        sums = np.concatenate([b.sums for b in blocks.values()])
        weight_mean = np.bincount(comp, weights=sums, minlength=n) / np.maximum(out_pixels, 1)

    geometry = np.empty(n, dtype=object)
    sizes = np.bincount(comp, minlength=n)
    single = sizes[comp] == 1
    geometry[comp[single]] = pieces[single]
    multi = np.flatnonzero(~single)
    if len(multi):  # GEOS releases the GIL: union the components in parallel threads
        from concurrent.futures import ThreadPoolExecutor

        by = np.argsort(comp[multi], kind="stable")
        idx = multi[by]
        groups = np.split(idx, np.flatnonzero(np.diff(comp[idx])) + 1)
        groups.sort(key=len, reverse=True)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for group, merged in zip(groups, pool.map(lambda g: shapely.union_all(pieces[g]), groups)):
                geometry[comp[group[0]]] = merged
    return Regions(geometry, out_values, out_pixels, weight_mean, pieces=len(pieces))
