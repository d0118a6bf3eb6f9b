"""Stitch the pieces of pixel regions cut by block lines back into whole polygons.

A region that crosses block edges comes out of the block polygonizer as several pieces,
one per block, whose boundaries run along the block lines where they face each other.
Their union is the region's polygon. A general overlay (GEOS ``union_all``) nodes every
vertex of every piece against every other, which makes the joins the most expensive step
of a map of few large regions. Here the pieces are known to be pixel-aligned (integer
coordinates, axis-parallel edges), not to overlap, and to meet only along block lines, so
the union is edge cancellation:

1. every ring is oriented with the region on its left (exteriors counter-clockwise in
   the ``(x, y)`` plane, holes clockwise);
2. boundary segments lying on a block line are cut into unit steps; a step whose reverse
   belongs to another piece of the same region lies inside the region and is dropped;
3. what is left of each ring is a set of chains, which are linked end to start (where
   two chains start at the same vertex, the region's pixels touch only diagonally there,
   and the left turn keeps 4-connected pixels apart, as a whole-map polygonize does);
4. rings that still pass a vertex twice are split there (a hole touching the exterior at
   a point is two rings in a valid polygon), collinear vertices are dropped, and each
   region becomes its counter-clockwise ring with the clockwise ones as holes.

The work is linear in the pieces' vertices plus the block-line steps. A region whose
rings do not come out as exactly one exterior (which a 4-connected region cannot do) is
unioned by GEOS instead, so the result is always the union.
"""

from __future__ import annotations

import numpy as np


def _run_offsets(lengths: np.ndarray) -> np.ndarray:
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _ring_links(ring: np.ndarray, n_rings: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For vertices grouped by ring (each ring's vertices contiguous, no closing vertex):
    each ring's first index and length, and each vertex's successor in its ring."""
    count = np.bincount(ring, minlength=n_rings)
    start = np.cumsum(count) - count
    idx = np.arange(len(ring))
    nxt = idx + 1
    last = nxt == start[ring] + count[ring]
    nxt[last] = start[ring[last]]
    return start, count, nxt


def stitch_pieces(pieces: np.ndarray, group: np.ndarray, n: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The union of each group of 4-connected, pixel-aligned pieces.

    Args:
        pieces: shapely polygons in whole-raster pixel coordinates (integers).
        group: the group (``0 .. n - 1``) of each piece.
        n: number of groups.
        xs, ys: the block lines: columns and rows where blocks meet (sorted).

    Returns:
        ``n`` polygons, one per group.
    """
    import shapely

    rings, owner = shapely.get_rings(pieces, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    n_rings = len(rings)
    closing = np.r_[ring[1:] != ring[:-1], True]
    xy, ring = np.rint(xy[~closing]).astype(np.int64), ring[~closing]
    start, count, nxt = _ring_links(ring, n_rings)
    x, y = xy[:, 0], xy[:, 1]
    area2 = np.bincount(ring, weights=(x * y[nxt] - x[nxt] * y).astype(np.float64), minlength=n_rings)
    exterior = np.r_[True, owner[1:] != owner[:-1]]
    flip = (area2 > 0) != exterior
    pos = np.arange(len(ring)) - start[ring]
    order = np.where(flip[ring], start[ring] + count[ring] - 1 - pos, np.arange(len(ring)))
    x, y = x[order], y[order]
    ring_group = group[owner]

    # cut the segments on block lines into unit steps
    x1, y1 = x[nxt], y[nxt]
    on = ((x == x1) & np.isin(x, xs)) | ((y == y1) & np.isin(y, ys))
    steps = np.where(on, np.abs(x1 - x) + np.abs(y1 - y), 1)
    src = np.repeat(np.arange(len(x)), steps)
    off = _run_offsets(steps) * on[src]
    ex = x[src] + np.sign(x1 - x)[src] * off
    ey = y[src] + np.sign(y1 - y)[src] * off
    ering = ring[src]
    estart, ecount, enxt = _ring_links(ering, n_rings)

    # cancel the steps whose reverse another piece of the region has
    cancelled = np.zeros(len(ex), dtype=bool)
    k = np.flatnonzero(on[src])
    if len(k):
        g = ring_group[ering[k]]
        bx, by = ex[enxt[k]], ey[enxt[k]]
        lx, ly, vertical = np.minimum(ex[k], bx), np.minimum(ey[k], by), ex[k] == bx
        srt = np.lexsort((ly, lx, vertical, g))
        key = np.stack([g[srt], vertical[srt], lx[srt], ly[srt]])
        pair = np.flatnonzero((key[:, 1:] == key[:, :-1]).all(axis=0))
        cancelled[k[srt[pair]]] = True
        cancelled[k[srt[pair + 1]]] = True

    # chains: the runs of kept steps between cancelled ones
    kept = ~cancelled
    eprev = np.empty(len(ex), dtype=np.int64)
    eprev[enxt] = np.arange(len(ex))
    is_first = kept & cancelled[eprev]
    cut = np.bincount(ering, weights=is_first, minlength=n_rings) > 0  # (a ring all cancelled is gone)
    whole = np.flatnonzero((np.bincount(ering, weights=cancelled, minlength=n_rings) == 0) & (ecount > 0))
    ranges = [(estart[whole], ecount[whole])]  # (first, count) of each output ring in `order_v`
    order_v = [np.arange(len(ex))]
    chain_first = np.flatnonzero(is_first)
    if len(chain_first):
        # each cut ring rotated to begin at its first chain: then chains are contiguous runs
        first_of_ring = np.full(n_rings, -1, dtype=np.int64)
        first_of_ring[ering[chain_first][::-1]] = chain_first[::-1]  # the smallest chain start of each ring
        cut_rings = np.flatnonzero(cut)
        rot_ring = np.repeat(cut_rings, ecount[cut_rings])
        rel = (first_of_ring[rot_ring] - estart[rot_ring] + _run_offsets(ecount[cut_rings])) % ecount[rot_ring]
        vert = estart[rot_ring] + rel  # expanded vertex indices, each cut ring from its first chain
        chain = np.cumsum(is_first[vert]) - 1
        keep_v = kept[vert]
        vk, ck = vert[keep_v], chain[keep_v]  # each chain's vertices, in order (its end is the next one's start)
        n_chain = int(chain[-1]) + 1
        c_count = np.bincount(ck, minlength=n_chain)
        c_start = np.cumsum(c_count) - c_count
        c_last = vk[c_start + c_count - 1]
        head, tail = vk[c_start], enxt[c_last]
        cg = ring_group[ering[head]]
        # link each chain's end to a chain starting there (where two do, the region's
        # pixels touch diagonally: either link will do, the rings are split there below)
        srt = np.lexsort((ey[head], ex[head], cg))
        skey = np.stack([cg[srt], ex[head][srt], ey[head][srt]])
        lo = _search(skey, np.stack([cg, ex[tail], ey[tail]]))
        by_lo = np.argsort(lo, kind="stable")
        second = by_lo[1:][np.diff(lo[by_lo]) == 0]  # the second end at a start: the other start there
        lo[second] += 1
        link = srt[lo]
        # follow the links: each cycle of chains is a ring
        seen = np.zeros(n_chain, dtype=bool)
        seq: list[int] = []
        ring_len: list[int] = []
        link_l, count_l = link.tolist(), c_count.tolist()
        for c0 in range(n_chain):
            if seen[c0]:
                continue
            c, total = c0, 0
            while not seen[c]:
                seen[c] = True
                seq.append(c)
                total += count_l[c]
                c = link_l[c]
            ring_len.append(total)
        seq_a = np.asarray(seq, dtype=np.int64)
        pos = np.repeat(c_start[seq_a], c_count[seq_a]) + _run_offsets(c_count[seq_a])
        order_v.append(vk[pos])
        lens = np.asarray(ring_len, dtype=np.int64)
        ranges.append((len(ex) + np.cumsum(lens) - lens, lens))
    verts = np.concatenate(order_v)
    first = np.concatenate([r[0] for r in ranges])
    count = np.concatenate([r[1] for r in ranges])
    idx = verts[np.repeat(first, count) + _run_offsets(count)]
    rid = np.repeat(np.arange(len(count)), count)
    return _assemble(pieces, group, n, ex[idx], ey[idx], rid, ring_group[ering[idx[np.r_[0, np.cumsum(count)[:-1]]]]]
                     if len(count) else np.zeros(0, dtype=np.int64))


def _split_touching(x, y, rid, ring_group) -> tuple[np.ndarray, np.ndarray]:
    """New ring ids for rings that pass a vertex twice, split there into simple rings
    (the part between the two passes is a ring of its own; innermost parts first)."""
    srt = np.lexsort((y, x, rid))
    same = (np.diff(rid[srt]) == 0) & (np.diff(x[srt]) == 0) & (np.diff(y[srt]) == 0)
    if not same.any():
        return rid, ring_group
    first, second = srt[:-1][same], srt[1:][same]  # positions of the two passes (first < second)
    rid = rid.copy()
    groups = list(ring_group)
    for k in np.argsort(second - first, kind="stable"):  # innermost first
        part = np.arange(first[k], second[k])
        part = part[rid[part] == rid[first[k]]]  # what inner parts have not taken yet
        groups.append(groups[rid[first[k]]])
        rid[part] = len(groups) - 1
    return rid, np.asarray(groups, dtype=np.int64)


def _assemble(pieces, group, n, x, y, rid, ring_group) -> np.ndarray:
    """Polygons of the stitched rings (vertices ``x``, ``y`` of ring ``rid``, contiguous):
    collinear vertices dropped, each group's counter-clockwise ring its shell."""
    import shapely

    n_rings = len(ring_group)
    _, _, nxt = _ring_links(rid, n_rings)
    prv = np.empty_like(nxt)
    prv[nxt] = np.arange(len(nxt))
    corner = (x - x[prv]) * (y[nxt] - y) - (y - y[prv]) * (x[nxt] - x) != 0
    x, y, rid = x[corner], y[corner], rid[corner]
    rid, ring_group = _split_touching(x, y, rid, ring_group)
    n_rings = len(ring_group)
    count = np.bincount(rid, minlength=n_rings)
    order = np.argsort(rid, kind="stable")
    x, y, rid = x[order], y[order], rid[order]
    _, _, nxt = _ring_links(rid, n_rings)
    area2 = np.bincount(rid, weights=(x * y[nxt] - x[nxt] * y).astype(np.float64), minlength=n_rings)
    real = count >= 4
    shell = (area2 > 0) & real
    ok = np.bincount(ring_group[shell], minlength=n) == 1
    use = real & ok[ring_group]
    order = np.lexsort((~shell, ring_group))  # each group's shell first, then its holes
    order = order[use[order]]
    out = np.empty(n, dtype=object)
    if len(order):
        start = np.cumsum(count) - count
        cnt = count[order] + 1  # closed rings
        pos = np.repeat(start[order], cnt) + _run_offsets(cnt)
        pos[np.cumsum(cnt) - 1] = start[order]  # the closing vertex
        pts = np.column_stack([x[pos], y[pos]]).astype(np.float64)
        rings = shapely.linearrings(pts, indices=np.repeat(np.arange(len(order)), cnt))
        shapely.polygons(rings, indices=ring_group[order], out=out)
    for g in np.flatnonzero(~ok):  # not one 4-connected region: let GEOS union the pieces
        out[g] = _union(pieces[group == g])
    return out


def _union(pieces: np.ndarray):
    """GEOS's union, for a group whose rings did not come out as one region."""
    import shapely

    return shapely.union_all(pieces)


def _search(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each column of ``keys`` (group, x, y) among the lexicographically sorted
    columns of ``sorted_keys`` (the first match; every key is present)."""
    hi = np.maximum(sorted_keys.max(axis=1), keys.max(axis=1)).astype(object) + 1
    if int(hi[0] * hi[1] * hi[2]) < 2**62:  # one int64 per key
        def pack(k):
            return (k[0] * int(hi[1]) + k[1]) * int(hi[2]) + k[2]

        return np.searchsorted(pack(sorted_keys), pack(keys))
    table = {tuple(k): i for i, k in reversed(list(enumerate(sorted_keys.T.tolist())))}
    return np.array([table[tuple(k)] for k in keys.T.tolist()], dtype=np.int64)
