"""Ground areas and lengths on the ellipsoid for rasters in any CRS.

A map projection stretches the ground: Web Mercator at 60N shows every square metre as
four, UTM away from its central meridian by up to ~0.1%, a geostationary view by
anything. :class:`AreaCalculator` measures on the ellipsoid through the projection's
*local linear map*: at the nodes of a coarse grid over the raster it takes the pixel
steps along the columns and rows to longitude/latitude (the CRS's own inverse, central
differences of half a pixel) and turns them into east/north metres on the ellipsoid
(meridional and prime-vertical radii of curvature). Between nodes the four components are
interpolated bilinearly; the node spacing is halved until the interpolated areal factor
matches the exact one at the cell midpoints to 1e-6 (relative), so on pixel-grid polygons
the result is the geodesic footprint of the pixels to ~1e-6 (tested against
``pyproj.Geod`` footprints in EPSG:3857, polar stereographic and geostationary scenes).

- area: the sum over a region's pixels of the areal factor at each pixel centre (computed
  per block with :func:`geoseg.vector.polygonize.ring_sums`, no per-polygon geodesics);
- length: each boundary segment's ground length through the linear map at its midpoint
  (long segments in pieces no longer than the node spacing).

Geographic CRSs take the same path (a degree of longitude shrinks with latitude). The
scene-wide mean pixel area is what the manifest uses for class areas when no polygons
were made.
"""

from __future__ import annotations

import numpy as np

#: Relative accuracy asked of the interpolated areal factor.
TOLERANCE = 1e-6

#: Vertices measured at once: the vectorized measures make ~20 temporaries of this many
#: elements; in one piece a 512x512 block of speckle (34,000 polygons) made 50 MiB of them.
CHUNK_VERTICES = 1 << 14


def vertex_chunks(geoms: np.ndarray, limit: int | None = None) -> list[slice]:
    """Consecutive slices of ``geoms`` with about ``limit`` (default :data:`CHUNK_VERTICES`)
    vertices each (a geometry is never split), so that per-vertex work on each slice stays
    small whatever the count."""
    import shapely

    limit = limit or CHUNK_VERTICES
    n = len(geoms)
    if n == 0:
        return []
    total = np.cumsum(shapely.get_num_coordinates(geoms))
    if total[-1] <= limit:
        return [slice(0, n)]
    ends = np.unique(np.r_[np.searchsorted(total, np.arange(limit, total[-1], limit), "right"), n])
    starts = np.r_[0, ends[:-1]]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends) if b > a]


class AreaCalculator:
    """Ground measures of pixel-coordinate geometries of one raster grid.

    Args:
        crs_wkt: the raster's CRS (WKT or anything ``pyproj.CRS`` takes).
        transform: its affine transform (pixel ``(col, row)`` -> CRS ``(x, y)``).
        height, width: its size in pixels.
    """

    def __init__(self, crs_wkt, transform, height: int, width: int) -> None:
        from pyproj import CRS, Transformer

        crs = CRS.from_user_input(crs_wkt)
        self.crs = crs
        self.transform = transform
        self.height, self.width = int(height), int(width)
        geod = crs.get_geod()
        self._a, self._e2 = geod.a, geod.es
        self._to_lonlat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        step = 256
        while True:
            nodes = self._grid(step)
            mid_x = (nodes[1][:-1] + nodes[1][1:]) / 2
            mid_y = (nodes[0][:-1] + nodes[0][1:]) / 2
            if step <= 16 or not (len(mid_x) and len(mid_y)):
                break
            yy, xx = np.meshgrid(mid_y, mid_x, indexing="ij")
            exact = self._factors(xx, yy)
            self._set(nodes, step)
            approx = self.jacobian(xx, yy)
            det_e, det_a = _det(exact), _det(approx)
            ok = np.isfinite(det_e)
            if not ok.any() or np.max(np.abs(det_a[ok] - det_e[ok]) / np.abs(det_e[ok])) <= TOLERANCE:
                break
            step //= 2
        self._set(nodes, step)

    # -- the linear map -------------------------------------------------------------
    def _grid(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        ys = np.unique(np.r_[np.arange(0, self.height, step), self.height]).astype(np.float64)
        xs = np.unique(np.r_[np.arange(0, self.width, step), self.width]).astype(np.float64)
        return ys, xs

    def _set(self, nodes, step: int) -> None:
        ys, xs = nodes
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        f = self._factors(xx, yy)
        bad = ~np.isfinite(f).all(axis=0)
        if bad.all():
            raise ValueError("the raster's CRS cannot be inverted to longitude/latitude anywhere on its grid")
        if bad.any():  # off a geostationary disk, say: take the nearest valid node's map
            from scipy import ndimage

            idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
            f = f[:, idx[0], idx[1]]
        self.step, self._ys, self._xs, self._nodes = step, ys, xs, f

    def _factors(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """``(4, ...)`` east and north metres per pixel step along columns and rows: ``ex, nx, ey, ny``."""
        a, b, c, d, e, f = self.transform[:6]
        h = 0.5
        pts_c = np.stack([col - h, col + h, col, col])
        pts_r = np.stack([row, row, row - h, row + h])
        x = a * pts_c + b * pts_r + c
        y = d * pts_c + e * pts_r + f
        lon, lat = self._to_lonlat.transform(x, y, errcheck=False)
        lon, lat = np.radians(np.asarray(lon)), np.radians(np.asarray(lat))
        dlon_x = np.angle(np.exp(1j * (lon[1] - lon[0])))  # across the antimeridian too
        dlon_y = np.angle(np.exp(1j * (lon[3] - lon[2])))
        phi = (lat[0] + lat[1] + lat[2] + lat[3]) / 4
        s2 = np.sin(phi) ** 2
        m = self._a * (1 - self._e2) / (1 - self._e2 * s2) ** 1.5  # meridional radius
        n = self._a / np.sqrt(1 - self._e2 * s2)  # prime vertical radius
        return np.stack([n * np.cos(phi) * dlon_x, m * (lat[1] - lat[0]), n * np.cos(phi) * dlon_y, m * (lat[3] - lat[2])])

    def jacobian(self, col, row) -> np.ndarray:
        """``(4, ...)`` interpolated ``ex, nx, ey, ny`` at pixel coordinates ``(col, row)``."""
        col = np.clip(np.asarray(col, dtype=np.float64), 0, self.width)
        row = np.clip(np.asarray(row, dtype=np.float64), 0, self.height)
        i = np.clip(np.searchsorted(self._ys, row, "right") - 1, 0, max(len(self._ys) - 2, 0))
        j = np.clip(np.searchsorted(self._xs, col, "right") - 1, 0, max(len(self._xs) - 2, 0))
        if len(self._ys) < 2 or len(self._xs) < 2:
            return self._nodes[:, i, j]
        ty = (row - self._ys[i]) / (self._ys[i + 1] - self._ys[i])
        tx = (col - self._xs[j]) / (self._xs[j + 1] - self._xs[j])
        n = self._nodes
        return (n[:, i, j] * (1 - ty) * (1 - tx) + n[:, i + 1, j] * ty * (1 - tx)
                + n[:, i, j + 1] * (1 - ty) * tx + n[:, i + 1, j + 1] * ty * tx)

    # -- measures ---------------------------------------------------------------------
    def pixel_areas(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """Ground area (m^2) of every pixel of a block, at the pixel centres (the nodes'
        areal factors interpolated bilinearly: two small matrix products)."""
        det = np.abs(_det(self._nodes))
        wy = _weights(self._ys, np.arange(row0, row0 + height) + 0.5)
        wx = _weights(self._xs, np.arange(col0, col0 + width) + 0.5)
        return wy @ det @ wx.T

    def area_prefix(self, row0: int, col0: int, height: int, width: int):
        """Row prefix sums of :meth:`pixel_areas` of a block, without the block's array:
        ``at(rows, cols)`` is the ground area of the pixels of block row ``rows`` left of
        block column ``cols`` (``0 .. width``). Each pixel's area is bilinear in the nodes,
        so a row's prefix is a blend of two rows of a small ``(nodes, width + 1)`` table."""
        det = np.abs(_det(self._nodes))
        i, t = _bracket(self._ys, np.arange(row0, row0 + height) + 0.5)
        lo = int(i.min()) if len(i) else 0
        rows_used = det[lo: int(i.max()) + 2] if len(i) else det[:1]
        cw = np.zeros((width + 1, det.shape[1]))
        np.cumsum(_weights(self._xs, np.arange(col0, col0 + width) + 0.5), axis=0, out=cw[1:])
        table = rows_used @ cw.T  # (node rows, width + 1)
        nxt = np.minimum(i - lo + 1, len(table) - 1)

        def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return (1 - t[rows]) * table[i[rows] - lo, cols] + t[rows] * table[nxt[rows], cols]

        return at

    def __getstate__(self) -> dict:  # block tasks on a cluster need the nodes, not the transformer
        state = dict(self.__dict__)
        state["_to_lonlat"] = None
        return state

    def mean_pixel_area(self) -> float:
        """Mean ground area of the raster's pixels (m^2)."""
        ys = (self._ys[:-1] + self._ys[1:]) / 2 if len(self._ys) > 1 else self._ys
        xs = (self._xs[:-1] + self._xs[1:]) / 2 if len(self._xs) > 1 else self._xs
        wy = np.diff(self._ys) if len(self._ys) > 1 else np.ones(1)
        wx = np.diff(self._xs) if len(self._xs) > 1 else np.ones(1)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        area = np.abs(_det(self.jacobian(xx, yy)))
        return float((area * wy[:, None] * wx[None, :]).sum() / (wy.sum() * wx.sum()))

    def lengths(self, geoms) -> np.ndarray:
        """Ground length (m) of the boundaries of pixel-coordinate (multi)polygons."""
        import shapely

        geoms = np.asarray(geoms, dtype=object)
        if not len(geoms):
            return np.zeros(0)
        parts = vertex_chunks(geoms)
        if len(parts) > 1:  # the same sums, piece by piece
            return np.concatenate([self.lengths(geoms[p]) for p in parts])
        rings, owner = shapely.get_rings(geoms, return_index=True)
        xy, ring = shapely.get_coordinates(rings, return_index=True)
        seg = np.flatnonzero(ring[:-1] == ring[1:])
        d = xy[seg + 1] - xy[seg]
        # long segments in pieces of at most a node spacing, each measured at its midpoint
        pieces = np.maximum(1, np.ceil(np.abs(d).max(axis=1) / self.step)).astype(np.int64)
        which = np.repeat(np.arange(len(seg)), pieces)
        t = (np.arange(len(which)) - np.repeat(np.cumsum(pieces) - pieces, pieces) + 0.5) / pieces[which]
        dd = d[which] / pieces[which, None]
        mid = xy[seg[which]] + d[which] * t[:, None]
        ex, nx, ey, ny = self.jacobian(mid[:, 0], mid[:, 1])
        length = np.hypot(ex * dd[:, 0] + ey * dd[:, 1], nx * dd[:, 0] + ny * dd[:, 1])
        per_ring = np.bincount(ring[seg[which]], weights=length, minlength=len(rings))
        return np.bincount(owner, weights=per_ring, minlength=len(geoms))

    def areas(self, geoms) -> np.ndarray:
        """Ground area (m^2) of pixel-coordinate (multi)polygons of any shape (e.g. simplified
        ones): planar area times the areal factor at the centroid (exact where the factor is
        constant over the polygon; pixel-grid regions get exact sums from :meth:`pixel_areas`)."""
        import shapely

        geoms = np.asarray(geoms, dtype=object)
        if not len(geoms):
            return np.zeros(0)
        c = shapely.get_coordinates(shapely.centroid(geoms))
        return shapely.area(geoms) * np.abs(_det(self.jacobian(c[:, 0], c[:, 1])))


def _bracket(nodes: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position ``at``: the node ``i`` before it and its weight ``t`` towards node
    ``i + 1`` (linear interpolation; a single node: ``i = 0``, ``t = 0``)."""
    if len(nodes) < 2:
        return np.zeros(len(at), dtype=np.int64), np.zeros(len(at))
    at = np.clip(at, nodes[0], nodes[-1])
    i = np.clip(np.searchsorted(nodes, at, "right") - 1, 0, len(nodes) - 2)
    return i, (at - nodes[i]) / (nodes[i + 1] - nodes[i])


def _weights(nodes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``(len(at), len(nodes))`` bilinear interpolation weights of positions ``at`` between ``nodes``."""
    out = np.zeros((len(at), len(nodes)))
    i, t = _bracket(nodes, at)
    rows = np.arange(len(at))
    out[rows, i] = 1 - t
    if len(nodes) > 1:
        out[rows, i + 1] += t
    return out


def _det(j: np.ndarray) -> np.ndarray:
    ex, nx, ey, ny = j
    return ex * ny - ey * nx


def mean_pixel_area_m2(crs_wkt, transform, height: int, width: int) -> float:
    """Mean ground area (m^2) of the pixels of a raster grid (for class areas from pixel counts)."""
    return AreaCalculator(crs_wkt, transform, height, width).mean_pixel_area()
