"""Areas of interest: an OGR vector layer or a bounding box, in the scene's CRS.

``--aoi FILE[:LAYER]`` reads every geometry of a layer of any OGR vector (GeoPackage,
Shapefile, GeoJSON, FlatGeobuf, ...) in any CRS; ``--bbox MINX,MINY,MAXX,MAXY[,CRS]`` is
a rectangle in longitude/latitude (EPSG:4326) unless a CRS follows. Either becomes an
:class:`Area`: one (multi)polygon in the scene's CRS, densified before reprojection so
that its edges stay where they were on the ground. :func:`area_window` gives the pixel
window it covers on a grid, :func:`area_mask` the pixels inside it (pixel centres inside,
GDAL's rasterization rule).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoseg.errors import InputError
from geoseg.grid import GeoBox, PixelWindow

__all__ = ["Area", "area_mask", "area_window", "parse_bbox", "read_area", "split_layer"]

#: Edges are split into this many pieces before a reprojection (a long straight edge of a
#: bbox in degrees is a curve in UTM).
_DENSIFY = 64


@dataclass(frozen=True)
class Area:
    """An area of interest in a scene's CRS.

    Attributes:
        geometry: shapely (Multi)Polygon in ``crs``.
        crs: the scene's CRS (WKT) the geometry was reprojected to.
        source: what it was read from (manifest): ``{"aoi": path, "layer": ...}`` or
            ``{"bbox": [...], "bbox_crs": ...}``, plus ``features``.
    """

    geometry: object
    crs: str
    source: dict = field(default_factory=dict)

    def describe(self) -> dict:
        minx, miny, maxx, maxy = self.geometry.bounds
        return {**self.source, "bounds": [minx, miny, maxx, maxy], "area_crs_units2": float(self.geometry.area)}

    def touches(self, geobox: GeoBox, window: PixelWindow) -> bool:
        """Whether the area overlaps ``window`` of ``geobox`` (its bounds as a rectangle)."""
        from shapely.geometry import box

        return bool(self.geometry.intersects(box(*geobox.bounds(window))))


def split_layer(spec: str) -> tuple[str, str | None]:
    """``FILE[:LAYER]`` -> ``(file, layer)``; a path that exists as given is never split."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    head, _, layer = spec.rpartition(":")
    if head and os.path.exists(head) and layer:
        return head, layer
    return spec, None


def parse_bbox(bbox) -> tuple[tuple[float, float, float, float], str]:
    """``"MINX,MINY,MAXX,MAXY[,CRS]"`` (or a sequence) -> ``(bounds, crs)``; default CRS EPSG:4326."""
    if isinstance(bbox, str):
        parts = [p.strip() for p in bbox.split(",")]
    else:
        parts = list(bbox)
    if len(parts) not in (4, 5):
        raise InputError(
            f"--bbox {bbox!r}: give MINX,MINY,MAXX,MAXY with an optional CRS, e.g. "
            "--bbox 12.1,45.2,12.3,45.4 (longitude/latitude) or --bbox 500000,5490000,510000,5500000,EPSG:32633"
        )
    try:
        nums = tuple(float(p) for p in parts[:4])
    except (TypeError, ValueError):
        raise InputError(f"--bbox {bbox!r}: MINX,MINY,MAXX,MAXY must be numbers") from None
    crs = str(parts[4]) if len(parts) == 5 else "EPSG:4326"
    minx, miny, maxx, maxy = nums
    if not all(math.isfinite(v) for v in nums) or not (minx < maxx and miny < maxy):
        raise InputError(f"--bbox {bbox!r}: needs MINX < MAXX and MINY < MAXY")
    return (minx, miny, maxx, maxy), crs


def _crs(value, what: str):
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise InputError(f"{what}: unknown CRS {value!r} ({str(exc).splitlines()[0]}): give e.g. EPSG:4326") from None


def _to_scene(geom, src_crs, scene_crs):
    """``geom`` from ``src_crs`` into ``scene_crs``, edges densified first."""
    import shapely
    from pyproj import Transformer

    if src_crs == scene_crs or src_crs.equals(scene_crs):
        return geom
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / _DENSIFY
    if step > 0:
        geom = shapely.segmentize(geom, step)
    tr = Transformer.from_crs(src_crs, scene_crs, always_xy=True)

    def fwd(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geom, fwd)
    if not np.isfinite(np.asarray(out.bounds, dtype=float)).all():
        raise InputError("the area of interest cannot be expressed in the scene's CRS (it lies outside its domain)")
    return shapely.make_valid(out) if not out.is_valid else out


def read_area(scene_crs: str, aoi: str | os.PathLike | None = None, bbox=None) -> Area:
    """Read ``aoi`` (``FILE[:LAYER]``) or ``bbox`` into an :class:`Area` in ``scene_crs``.

    Raises:
        InputError: both or neither given; unreadable file; no polygons; bad bbox; no CRS.
    """
    import shapely
    from shapely.geometry import box

    if (aoi is None) == (bbox is None):
        raise InputError("give either --aoi FILE[:LAYER] or --bbox MINX,MINY,MAXX,MAXY[,CRS], not both")
    target = _crs(scene_crs, "the scene")
    if bbox is not None:
        bounds, crs_text = parse_bbox(bbox)
        src = _crs(crs_text, f"--bbox {bbox!r}")
        if src.is_geographic and (bounds[1] < -90 or bounds[3] > 90):
            raise InputError(f"--bbox {bbox!r}: latitudes must lie in -90..90 (the order is MINX,MINY,MAXX,MAXY, i.e. lon,lat)")
        geom = _to_scene(box(*bounds), src, target)
        return Area(geom, target.to_wkt(), {"bbox": list(bounds), "bbox_crs": crs_text})

    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    path, layer = split_layer(os.fspath(aoi))
    if not Path(path).exists() and not path.startswith("/vsi"):
        raise InputError(f"--aoi {aoi}: no such file (give FILE or FILE:LAYER of a vector dataset)")
    try:
        meta, _, wkb, _ = pyogrio.raw.read(path, layer=layer, columns=[], read_geometry=True)
    except (DataSourceError, DataLayerError, OSError) as exc:
        layers = ""
        try:
            layers = ", ".join(str(n) for n, _ in pyogrio.list_layers(path))
        except Exception:  # noqa: BLE001 - only for the hint
            pass
        hint = f" (layers: {layers})" if layers else ""
        raise InputError(f"--aoi {aoi}: cannot read it as a vector layer ({str(exc).splitlines()[0]}){hint}") from None
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb is not None else []
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon", "GeometryCollection")]
    geom = shapely.union_all([shapely.make_valid(g) for g in polys]) if polys else None
    if geom is not None:
        geom = shapely.union_all([g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")])
    if geom is None or geom.is_empty:
        kinds = sorted({g.geom_type for g in geoms}) or ["none"]
        raise InputError(f"--aoi {aoi}: the layer has no polygons (geometries: {', '.join(kinds)}): give polygon features")
    if not meta.get("crs"):
        raise InputError(f"--aoi {aoi}: the layer has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:4326 ...)")
    geom = _to_scene(geom, _crs(meta["crs"], f"--aoi {aoi}"), target)
    return Area(geom, target.to_wkt(), {"aoi": str(Path(path).resolve()), "layer": layer or meta.get("layer_name"), "features": len(polys)})


def area_window(area: Area, geobox: GeoBox, what: str = "the scene") -> PixelWindow:
    """The pixel window of ``geobox`` that the area's bounds cover (rounded outwards,
    clipped to the grid).

    Raises:
        InputError: the area does not overlap the grid.
    """
    from shapely.geometry import box

    t = geobox.transform
    full = box(*geobox.bounds())
    if not area.geometry.intersects(full):
        minx, miny, maxx, maxy = area.geometry.bounds
        sx0, sy0, sx1, sy1 = full.bounds
        raise InputError(
            f"the area of interest ({minx:.6g},{miny:.6g},{maxx:.6g},{maxy:.6g}) does not overlap {what} "
            f"({sx0:.6g},{sy0:.6g},{sx1:.6g},{sy1:.6g}, both in the scene's CRS): check the AOI and its CRS"
        )
    minx, miny, maxx, maxy = area.geometry.intersection(full).bounds
    eps = 1e-6
    cols = sorted(((minx - t.c) / t.a, (maxx - t.c) / t.a))
    rows = sorted(((maxy - t.f) / t.e, (miny - t.f) / t.e))
    c0, c1 = max(0, math.floor(cols[0] + eps)), min(geobox.width, math.ceil(cols[1] - eps))
    r0, r1 = max(0, math.floor(rows[0] + eps)), min(geobox.height, math.ceil(rows[1] - eps))
    if c1 <= c0:
        c0, c1 = min(c0, geobox.width - 1), min(c0, geobox.width - 1) + 1
    if r1 <= r0:
        r0, r1 = min(r0, geobox.height - 1), min(r0, geobox.height - 1) + 1
    return PixelWindow(r0, c0, r1 - r0, c1 - c0)


def area_mask(area: Area, geobox: GeoBox, window: PixelWindow) -> np.ndarray:
    """``(h, w)`` bool: the pixels of ``window`` whose centres lie inside the area."""
    from rasterio.features import geometry_mask
    from shapely.geometry import box

    clip = area.geometry.intersection(box(*geobox.bounds(window)).buffer(max(abs(geobox.transform.a), abs(geobox.transform.e))))
    if clip.is_empty:
        return np.zeros((window.height, window.width), dtype=bool)
    return geometry_mask([clip], out_shape=(window.height, window.width), transform=geobox.window_transform(window), invert=True)
