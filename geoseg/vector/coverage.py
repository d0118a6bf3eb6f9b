"""Topology-preserving generalisation of polygonized rasters.

Polygons made from a raster tile the plane: each boundary between two regions is
shared by both. GEOS's coverage simplifier (``shapely.coverage_simplify``) simplifies
each shared edge once, so neighbours stay gap- and overlap-free, but only if the
coverage is *valid*: shared edges must have the same vertices on both sides. GDAL's
polygonizer leaves a straight boundary without a vertex where a third region (or
nodata) meets it from the other side (a T-junction), so :func:`node_coverage` first
inserts every polygon vertex that lies inside another polygon's edge. Pixel-grid
polygons make that exact: all coordinates are integers and every edge is axis-parallel.
"""

from __future__ import annotations

import numpy as np

from geoseg.vector.polygonize import run_offsets


def _ring_segments(xy: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Indices ``i`` of the points that start a segment ``xy[i] -> xy[i + 1]`` of one ring."""
    return np.flatnonzero(ring[:-1] == ring[1:])


def node_coverage(geoms: np.ndarray) -> np.ndarray:
    """Insert the T-junction vertices of a pixel-grid polygon coverage.

    Args:
        geoms: polygons or multipolygons in pixel coordinates (integer vertices,
            axis-parallel edges) that do not overlap.

    Returns:
        The same polygons, each edge split at every vertex of any polygon lying inside it.
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    if not len(geoms):
        return geoms
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    ixy = np.rint(xy).astype(np.int64)
    x, y = ixy[:, 0], ixy[:, 1]
    span = int(max(x.max(), y.max())) + 2
    by_row = np.unique(y * span + x)  # vertices sorted along rows (for horizontal edges)
    by_col = np.unique(x * span + y)  # ... along columns (for vertical edges)

    seg = _ring_segments(xy, ring)
    x0, y0, x1, y1 = x[seg], y[seg], x[seg + 1], y[seg + 1]
    horizontal = y0 == y1
    lo = np.where(horizontal, y0 * span + np.minimum(x0, x1), x0 * span + np.minimum(y0, y1))
    hi = np.where(horizontal, y0 * span + np.maximum(x0, x1), x0 * span + np.maximum(y0, y1))
    start = np.where(horizontal, np.searchsorted(by_row, lo, "right"), np.searchsorted(by_col, lo, "right"))
    end = np.where(horizontal, np.searchsorted(by_row, hi, "left"), np.searchsorted(by_col, hi, "left"))
    inner = end - start  # vertices strictly inside each segment
    if not inner.any():
        return geoms

    # the inserted points, in the direction of their segment
    which = np.repeat(np.arange(len(seg)), inner)
    k = run_offsets(inner)
    forward = np.where(horizontal, x1 > x0, y1 > y0)[which]
    key_index = np.where(forward, start[which] + k, end[which] - 1 - k)
    keys = np.where(horizontal[which], by_row[np.minimum(key_index, len(by_row) - 1)], by_col[np.minimum(key_index, len(by_col) - 1)])
    ins = np.where(
        horizontal[which, None],
        np.column_stack([keys % span, keys // span]),
        np.column_stack([keys // span, keys % span]),
    )

    # new coordinate sequence: every original point, with the inserted points after their segment's start
    order_key = np.concatenate([np.arange(len(xy)), seg[which]])
    sub = np.concatenate([np.zeros(len(xy), dtype=np.int64), k + 1])
    order = np.lexsort((sub, order_key))
    new_xy = np.concatenate([ixy, ins])[order].astype(np.float64)
    new_ring = np.concatenate([ring, ring[seg[which]]])[order]

    new_rings = shapely.linearrings(new_xy, indices=new_ring)
    polys = shapely.polygons(new_rings, indices=ring_part)
    out = np.empty(len(geoms), dtype=object)
    single = np.bincount(part_of, minlength=len(geoms)) == 1
    is_multi = shapely.get_type_id(geoms) == 6
    direct = single & ~is_multi
    out[direct] = polys[np.searchsorted(part_of, np.flatnonzero(direct))]
    rest = np.flatnonzero(~direct)
    if len(rest):
        sel = np.isin(part_of, rest)
        multis = shapely.multipolygons(polys[sel], indices=np.searchsorted(rest, part_of[sel]))
        out[rest] = multis
    return out


def simplify_coverage(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify a pixel-grid polygon coverage without gaps or overlaps between neighbours.

    Each shared boundary is simplified once (Visvalingam-Whyatt, GEOS
    ``CoverageSimplifier``) with ``tolerance`` in the geometries' units; outer
    boundaries (next to nodata) are simplified too. No polygon disappears.
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    if not len(geoms) or tolerance <= 0:
        return geoms
    out = shapely.coverage_simplify(node_coverage(geoms), tolerance, simplify_boundary=True)
    bad = ~shapely.is_valid(out)
    if bad.any():  # does not happen on valid coverages; keep the unsimplified polygon then
        out[bad] = geoms[bad]
    return out
