"""Reading a scene at the model's ground sample distance, and mapping products back.

A model trained at 10 m sees a 5 m scene through a *model grid*: the scene's own CRS and
origin, pixels scaled by the ratio of the model's GSD to the scene's (measured on the
ground, in metres, see :func:`ground_gsd`). Each model-grid pixel is a fixed linear
function of the scene pixels under it (area average when the model grid is coarser,
bilinear when it is finer), computed separably from *global* pixel indices with a fixed
summation order, so a tile of the model grid has the same values whatever window it is
read in: tiled inference on the model grid stays independent of the tile size.

Products go back to the scene's grid by nearest neighbour: every scene pixel takes the
model pixel that contains its centre (classes, masks *and* confidence, so a pixel's
confidence is that of its class). Each scene pixel maps into exactly one model pixel, so
each model-grid tile core owns a rectangular window of scene pixels and the write-back is
tile-local and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

from geoseg.errors import InputError
from geoseg.grid import GeoBox, PixelWindow

__all__ = [
    "GSD_TOLERANCE",
    "WarpPlan",
    "axis_taps",
    "ground_gsd",
    "output_window",
    "plan_warp",
    "resample",
    "source_window",
    "to_output",
]

#: Relative difference between the scene's GSD and the model's below which the scene is
#: read as it is (a CNN does not notice 5%; Sentinel-2 in UTM differs from 10 m by <0.1%).
#: The same tolerance snaps a resampling ratio to the nearest integer or 1/integer.
GSD_TOLERANCE = 0.05


def ground_gsd(geobox: GeoBox) -> tuple[float, float]:
    """The ground size of the scene's pixels in metres ``(x, y)``, at the scene centre.

    Geographic CRSs: geodesic lengths of one pixel along the parallel and the meridian.
    Projected CRSs: the nominal size in metres divided by the projection's scale factors
    (``pyproj`` ``Proj.get_factors``: parallel scale for x, meridional scale for y); Web
    Mercator at 60N has scale 2, so a nominal 0.2 m pixel covers 0.1 m of ground.
    """
    from pyproj import CRS, Proj, Transformer

    if geobox.crs is None:
        raise InputError("the scene has no CRS: its ground sample distance is unknown")
    crs = CRS.from_user_input(geobox.crs)
    t = geobox.transform
    cx, cy = t.c + t.a * geobox.width / 2, t.f + t.e * geobox.height / 2
    if crs.is_geographic:
        geod = crs.get_geod()
        dx, dy = abs(t.a), abs(t.e)
        lon, lat = (cx, cy)
        _, _, gx = geod.inv(lon - dx / 2, lat, lon + dx / 2, lat)
        _, _, gy = geod.inv(lon, lat - dy / 2, lon, lat + dy / 2)
        return float(gx), float(gy)
    unit = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
    nx, ny = abs(t.a) * unit, abs(t.e) * unit
    try:
        lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(cx, cy)
        f = Proj(crs).get_factors(lon, lat)
        kx, ky = float(f.parallel_scale), float(f.meridional_scale)
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot evaluate: assume true scale
        kx = ky = 1.0
    if not (math.isfinite(kx) and math.isfinite(ky) and kx > 0 and ky > 0):
        kx = ky = 1.0
    return nx / kx, ny / ky


def _snap(ratio: float, tolerance: float) -> float:
    """``ratio`` snapped to the nearest integer or 1/integer when within ``tolerance``."""
    if ratio >= 1:
        n = round(ratio)
        return float(n) if abs(ratio / n - 1) <= tolerance else ratio
    n = round(1 / ratio)
    return 1.0 / n if abs(ratio * n - 1) <= tolerance else ratio


@dataclass(frozen=True)
class WarpPlan:
    """How a scene grid maps onto the model grid.

    Attributes:
        scene: the scene's grid.
        model: the model grid (same CRS and origin; pixel ``ratio`` times larger).
        ratio: model pixel size / scene pixel size, ``(x, y)`` (2.0: a 5 m scene, 10 m model).
        scene_gsd: the scene's ground pixel size in metres ``(x, y)``.
        model_gsd: the model's GSD in metres.
    """

    scene: GeoBox
    model: GeoBox
    ratio: tuple[float, float]
    scene_gsd: tuple[float, float]
    model_gsd: float

    @property
    def input_resampling(self) -> str:
        return "average" if min(self.ratio) >= 1 else ("bilinear" if max(self.ratio) <= 1 else "average/bilinear")

    def describe(self) -> dict:
        """What the manifest records."""
        t = self.model.transform
        return {
            "model_gsd_m": self.model_gsd,
            "scene_gsd_m": [round(self.scene_gsd[0], 4), round(self.scene_gsd[1], 4)],
            "ratio": [self.ratio[0], self.ratio[1]],
            "input_resampling": self.input_resampling,
            "model_grid": {"width": self.model.width, "height": self.model.height, "transform": list(t)[:6]},
        }


def plan_warp(scene: GeoBox, model_gsd: float | None, tolerance: float = GSD_TOLERANCE) -> WarpPlan | None:
    """The model grid of ``scene`` for a model trained at ``model_gsd`` metres.

    Returns None (read the scene as it is) when the model is scale-free (``None``) or the
    scene's GSD is within ``tolerance`` of the model's on both axes.
    """
    if model_gsd is None:
        return None
    gx, gy = ground_gsd(scene)
    rx, ry = model_gsd / gx, model_gsd / gy
    if abs(rx - 1) <= tolerance and abs(ry - 1) <= tolerance:
        return None
    rx, ry = _snap(rx, tolerance), _snap(ry, tolerance)
    t = scene.transform
    model = GeoBox(
        height=max(1, math.ceil(scene.height / ry - 1e-9)),
        width=max(1, math.ceil(scene.width / rx - 1e-9)),
        transform=Affine(t.a * rx, 0.0, t.c, 0.0, t.e * ry, t.f),
        crs=scene.crs,
    )
    return WarpPlan(scene, model, (rx, ry), (gx, gy), float(model_gsd))


def axis_taps(start: int, stop: int, ratio: float, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Which scene pixels feed model pixels ``start..stop-1`` along one axis, and how much.

    Returns ``(idx, w)``, both ``(stop - start, K)``: scene indices (clamped into the
    scene) and weights (0 where a tap falls outside the scene). Weights depend only on the
    model pixel's global index, never on the window.

    ``ratio >= 1`` (coarser model grid): area average, weight = overlap length of the scene
    pixel with the model pixel. ``ratio < 1``: bilinear between the two nearest scene
    pixel centres.
    """
    k = np.arange(start, stop, dtype=np.float64)
    if ratio >= 1:
        lo, hi = k * ratio, (k + 1) * ratio
        taps = int(math.ceil(ratio)) + 1
        idx = np.floor(lo).astype(np.int64)[:, None] + np.arange(taps)
        w = np.minimum(hi[:, None], idx + 1) - np.maximum(lo[:, None], idx)
        w = np.clip(w, 0.0, None)
    else:
        x = (k + 0.5) * ratio - 0.5
        i0 = np.floor(x)
        t = x - i0
        idx = i0.astype(np.int64)[:, None] + np.arange(2)
        w = np.stack([1.0 - t, t], axis=1)
    outside = (idx < 0) | (idx >= n_in)
    w[outside] = 0.0
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


def _axis_range(start: int, stop: int, ratio: float, n_in: int) -> tuple[int, int]:
    idx, w = axis_taps(start, stop, ratio, n_in)
    used = idx[w > 0]
    if used.size == 0:
        return 0, 0
    return int(used.min()), int(used.max()) + 1


def source_window(plan: WarpPlan, window: PixelWindow) -> PixelWindow:
    """The scene window that holds every scene pixel feeding model-grid ``window``."""
    r0, r1 = _axis_range(window.row, window.row_end, plan.ratio[1], plan.scene.height)
    c0, c1 = _axis_range(window.col, window.col_end, plan.ratio[0], plan.scene.width)
    return PixelWindow(r0, c0, max(r1 - r0, 1), max(c1 - c0, 1))


def _apply(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int, offset: int) -> np.ndarray:
    """Sum over taps of ``w * x[idx]`` along ``axis``, taps in a fixed order (so a pixel's
    value does not depend on the window). Evenly spaced taps (integer ratios) are strided
    views, weights of 1 skip the multiply: the same floats, less work."""
    n, taps = idx.shape
    size = x.shape[axis]
    out: np.ndarray | None = None
    wshape = [1] * x.ndim
    wshape[axis] = n
    for j in range(taps):
        wj = w[:, j]
        if not wj.any():
            continue
        # a tap of weight 0 may point outside the window: any in-window pixel does
        pos = np.clip(idx[:, j] - offset, 0, size - 1)
        step = int(pos[1] - pos[0]) if n > 1 else 1
        if step > 0 and np.array_equal(pos, pos[0] + step * np.arange(n)):
            sl = [slice(None)] * x.ndim
            sl[axis] = slice(int(pos[0]), int(pos[0]) + step * (n - 1) + 1, step)
            part = x[tuple(sl)]
        else:
            part = np.take(x, pos, axis=axis)
        weighted = not np.all(wj == 1)
        if weighted:
            part = part * wj.reshape(wshape)
        if out is None:  # (0 + part would differ from part only in the sign of zeros)
            out = part if weighted else np.array(part, dtype=np.float32, copy=True)
        else:
            out += part
    if out is None:
        shape = list(x.shape)
        shape[axis] = n
        out = np.zeros(shape, dtype=np.float32)
    return out


def resample(
    data: np.ndarray, valid: np.ndarray, src: PixelWindow, plan: WarpPlan, window: PixelWindow
) -> tuple[np.ndarray, np.ndarray]:
    """Model-grid ``window`` from the scene pixels ``data`` (``(bands, h, w)`` float32)
    and ``valid`` (``(h, w)`` bool) read at scene window ``src`` (:func:`source_window`).

    Invalid scene pixels carry no weight; a model pixel is valid where any valid scene
    pixel feeds it, and its value is the weighted mean of those.
    """
    iy, wy = axis_taps(window.row, window.row_end, plan.ratio[1], plan.scene.height)
    ix, wx = axis_taps(window.col, window.col_end, plan.ratio[0], plan.scene.width)
    if valid.all():
        # the common case: the weights' sums need no pass over a validity band (the same
        # floats as that pass: the same sums, in the same order, of weights times 1)
        num = _apply(_apply(data, iy, wy, axis=1, offset=src.row), ix, wx, axis=2, offset=src.col)
        den_rows = _apply(np.ones((1, src.height, 1), np.float32), iy, wy, axis=1, offset=src.row)
        den_rows = np.broadcast_to(den_rows, (1, den_rows.shape[1], src.width))
        den = _apply(den_rows, ix, wx, axis=2, offset=src.col)[0]
    else:
        v = valid.astype(np.float32)
        stack = np.concatenate([data * v, v[None]], axis=0)
        both = _apply(_apply(stack, iy, wy, axis=1, offset=src.row), ix, wx, axis=2, offset=src.col)
        num, den = both[:-1], both[-1]
    ok = den > 0
    if ok.all():
        num /= den
        return num, ok
    return np.divide(num, den, out=np.zeros_like(num), where=ok[None]), ok


def _back_axis(start: int, stop: int, ratio: float, n_out: int) -> tuple[int, int, np.ndarray]:
    """Scene pixels ``[a, b)`` whose centres fall in model pixels ``[start, stop)`` and, for
    each, its model pixel's index relative to ``start``."""
    a = max(0, int(math.floor(start * ratio)) - 2)
    b = min(n_out, int(math.ceil(stop * ratio)) + 2)
    r = np.arange(a, b, dtype=np.float64)
    m = np.floor((r + 0.5) / ratio).astype(np.int64)
    keep = np.nonzero((m >= start) & (m < stop))[0]
    if keep.size == 0:
        return a, a, np.zeros(0, dtype=np.int64)
    return a + int(keep[0]), a + int(keep[-1]) + 1, m[keep] - start


def output_window(plan: WarpPlan, core: PixelWindow) -> PixelWindow:
    """The scene window whose pixels take their products from model-grid ``core``."""
    r0, r1, _ = _back_axis(core.row, core.row_end, plan.ratio[1], plan.scene.height)
    c0, c1, _ = _back_axis(core.col, core.col_end, plan.ratio[0], plan.scene.width)
    return PixelWindow(r0, c0, r1 - r0, c1 - c0)


def to_output(plan: WarpPlan, core: PixelWindow, arrays: list[np.ndarray]) -> tuple[PixelWindow, list[np.ndarray]]:
    """Nearest-neighbour map of model-grid products of ``core`` onto the scene grid.

    ``arrays`` are ``(..., core.height, core.width)``; returns the scene window
    (:func:`output_window`) and the arrays on it.
    """
    r0, r1, mr = _back_axis(core.row, core.row_end, plan.ratio[1], plan.scene.height)
    c0, c1, mc = _back_axis(core.col, core.col_end, plan.ratio[0], plan.scene.width)
    out = [np.ascontiguousarray(a[..., mr[:, None], mc[None, :]]) for a in arrays]
    return PixelWindow(r0, c0, r1 - r0, c1 - c0), out


def raster_gsd(path) -> float | None:
    """The ground sample distance of a raster file in metres (the geometric mean of its
    x and y ground pixel sizes at the centre), or None when it has no CRS."""
    from geoseg.io.raster import open_raster

    with open_raster(path, quiet=True) as ds:
        if ds.crs is None or ds.transform.is_identity:
            return None
        gb = GeoBox(ds.height, ds.width, ds.transform, ds.crs.to_wkt())
    gx, gy = ground_gsd(gb)
    return math.sqrt(gx * gy)


def training_gsd(paths) -> float | None:
    """The GSD a model trained on the rasters ``paths`` is for: their median, rounded to
    0.1% (None when any has no CRS)."""
    values = [raster_gsd(p) for p in paths]
    if not values or any(v is None for v in values):
        return None
    v = float(np.median(values))
    return float(f"{v:.3g}")
