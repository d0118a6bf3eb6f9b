"""Ground truth on an image's grid: class rasters on any grid and CRS, and polygons.

Two kinds of label files are accepted, both put onto the pixel grid of an image
(a :class:`~geoseg.grid.GeoBox`):

- **Class rasters** (any GDAL raster, band 1): class ids 0..254, reprojected and
  resampled with nearest neighbour. The declared nodata value becomes unlabelled (255)
  unless :attr:`LabelOptions.nodata` is ``"none"`` (for files whose nodata is a real
  class, e.g. ``nodata=0`` where 0 means background) or another value.
- **Polygons** (any OGR format, any CRS): reprojected to the image CRS and burnt with
  :func:`rasterio.features.rasterize`. With :attr:`LabelOptions.field` each polygon takes
  the class of that attribute (numeric ids, or class names mapped to ids); pixels outside
  every polygon are unlabelled unless :attr:`LabelOptions.background` names their class.
  Without a field every polygon is class 1 on a background of class 0 (a building
  footprint file trains a building / background model as it is).

Pixels outside the label file's extent are unlabelled (255): losses and metrics ignore
them. Labels are read window by window (:meth:`LabelSource.read`), so evaluation of a
large scene needs no full-size copy.

Example::

    geobox = geobox_of("scene.tif")
    labels = read_labels("buildings.gpkg", geobox, LabelOptions(background="background"))
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from geoseg._constants import IGNORE
from geoseg.errors import InputError, RasterReadError
from geoseg.grid import GeoBox, PixelWindow
from geoseg.io.raster import open_raster

__all__ = [
    "IGNORE",
    "LabelInfo",
    "LabelOptions",
    "LabelSource",
    "default_class_names",
    "geobox_of",
    "inspect_labels",
    "label_class_colors",
    "label_class_names",
    "label_kind",
    "open_labels",
    "read_labels",
]

_VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".kml", ".gml", ".sqlite", ".parquet", ".gdb"}
_KEYWORDS = ("auto", "none")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LabelOptions:
    """How label files become class ids.

    Attributes:
        field: Attribute of polygon labels that holds the class: integer ids 0..254, or
            class names (mapped to ids through the class names, else in sorted order).
            None: every polygon is class 1 (0 when the background is class 1).
        layer: Vector layer (default: the first).
        background: Class of pixels outside every polygon: an id, a class name,
            ``"none"`` (unlabelled), or ``"auto"``: class 0 without ``field``, unlabelled
            with it.
        nodata: For class rasters: ``"auto"`` (the declared nodata is unlabelled),
            ``"none"`` (the declared nodata is a real class value), or a number that
            marks unlabelled pixels.
        all_touched: Burn every pixel a polygon touches, not only those whose centre
            it contains.
    """

    field: str | None = None
    layer: str | None = None
    background: int | str = "auto"
    nodata: float | Literal["auto", "none"] = "auto"
    all_touched: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.nodata, str):
            value = self.nodata.strip().lower()
            if value not in _KEYWORDS:
                try:
                    value = float(value)  # type: ignore[assignment]
                except ValueError:
                    raise InputError(
                        f"label nodata {self.nodata!r} must be 'auto', 'none' or a number"
                    ) from None
            object.__setattr__(self, "nodata", value)
        bg = self.background
        if isinstance(bg, str):
            bg = bg.strip()
            if bg.lower() in _KEYWORDS:
                bg = bg.lower()
            elif bg.isdigit():
                bg = int(bg)
            elif not bg:
                raise InputError("background class must be a class id, a class name, 'none' or 'auto'")
            object.__setattr__(self, "background", bg)
        if isinstance(bg, int) and not 0 <= bg < IGNORE:
            raise InputError(f"background class id {bg} must be in 0..254")

    def background_id(self, class_names: Sequence[str] | None) -> int:
        """The id burnt outside polygons (255: unlabelled)."""
        bg = self.background
        if bg == "auto":
            return IGNORE if self.field else 0
        if bg == "none":
            return IGNORE
        if isinstance(bg, int):
            return bg
        if class_names is not None and bg in class_names:
            return list(class_names).index(bg)
        if class_names is None and not self.field:
            return 0
        known = f" (classes: {', '.join(class_names)})" if class_names else ""
        raise InputError(f"background class {bg!r} is not a class{known}: give a class id or one of the class names")


# --------------------------------------------------------------------------- files


def geobox_of(path: str | os.PathLike[str]) -> GeoBox:
    """The pixel grid of a raster file."""

    with open_raster(_existing(path), env=False, quiet=True) as src:
        return GeoBox(src.height, src.width, src.transform, src.crs.to_wkt() if src.crs else None)


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise RasterReadError(f"{p} does not exist: check the path")
    return p


def label_kind(path: str | os.PathLike[str]) -> Literal["raster", "vector"]:
    """Whether a label file is a raster or a vector dataset.

    Raises:
        RasterReadError: If it is missing or neither.
    """
    import pyogrio
    import rasterio

    p = _existing(path)

    def is_vector() -> bool:
        try:
            return len(pyogrio.list_layers(p)) > 0
        except Exception:  # noqa: BLE001 - any failure means "not a vector dataset"
            return False

    if p.suffix.lower() in _VECTOR_SUFFIXES and is_vector():
        return "vector"
    try:
        with open_raster(p, env=False, quiet=True) as src:
            if src.count >= 1:
                return "raster"
    except rasterio.errors.RasterioIOError:
        pass
    if is_vector():
        return "vector"
    raise RasterReadError(
        f"{p} is neither a raster nor a vector file GDAL can read: give a class raster (e.g. GeoTIFF) "
        "or polygons (e.g. GeoPackage, GeoJSON, Shapefile)"
    )


@dataclass(frozen=True)
class LabelInfo:
    """What a label file says about its classes (see :func:`inspect_labels`).

    Attributes:
        path: The file.
        kind: ``"raster"`` or ``"vector"``.
        classes: ``(id, name, colour or None)`` named in a raster's tags (as geoseg and
            its synthetic scenes write them), else empty.
        values: Vectors with a field: the distinct class values (names or ids).
        layer: Vector layer name.
        nodata: A raster's declared nodata.
    """

    path: str
    kind: Literal["raster", "vector"]
    classes: tuple[tuple[int, str, str | None], ...] = ()
    values: tuple[Any, ...] = ()
    layer: str | None = None
    nodata: float | None = None

    @property
    def named(self) -> bool:
        """Vector classes given by name (a text field)."""
        return bool(self.values) and isinstance(self.values[0], str)


def inspect_labels(path: str | os.PathLike[str], options: LabelOptions | None = None) -> LabelInfo:
    """Read a label file's class information (not its pixels).

    Raises:
        InputError: A missing field or layer, or class values that are not usable.
    """
    options = options or LabelOptions()
    kind = label_kind(path)
    if kind == "raster":

        with open_raster(path, env=False, quiet=True) as src:
            return LabelInfo(os.fspath(path), "raster", _tag_classes(src.tags()), nodata=src.nodata)
    layer, _ = _layer_info(path, options)
    values: tuple[Any, ...] = ()
    if options.field:
        raw = _read_field(path, options)
        values = tuple(sorted(set(_clean_values(path, options.field, raw)[1])))
    return LabelInfo(os.fspath(path), "vector", values=values, layer=layer)


def _tag_classes(tags: Mapping[str, str]) -> tuple[tuple[int, str, str | None], ...]:
    try:
        if "GEOSEG_CLASSES" in tags:
            items = json.loads(tags["GEOSEG_CLASSES"])
            return tuple((int(c["id"]), str(c["name"]), c.get("color")) for c in items)
        if "CLASS_NAMES" in tags:
            return tuple((i, str(n), None) for i, n in enumerate(json.loads(tags["CLASS_NAMES"])))
    except (ValueError, KeyError, TypeError):
        pass
    return ()


def label_class_names(
    infos: Sequence[LabelInfo], options: LabelOptions, classes: Sequence[str] | None = None
) -> list[str] | None:
    """Class names for a set of label files, or None when they only follow from the
    pixel values (plain id rasters: see :func:`default_class_names`).

    Given ``classes`` win. Text-field polygons give their names in sorted order (plus a
    background class given by name); raster tags name ids; polygons without a field
    are ``[background, <layer name>]``.

    Raises:
        InputError: If files name the same id differently.
    """
    if classes:
        return list(classes)
    tagged = _tagged_names(infos)
    if any(i.named for i in infos):
        names = set().union(*(set(i.values) for i in infos if i.named))
        bg = options.background
        if isinstance(bg, str) and bg not in _KEYWORDS:
            names.add(bg)
        result = sorted(names)
        for k, name in tagged.items():
            if k >= len(result) or result[k] != name:
                raise InputError(
                    f"label rasters name class {k} {name!r}, but the polygons' names in sorted order "
                    f"are {result}: list the classes explicitly (--classes or config classes)"
                )
        return result
    if any(i.kind == "vector" and not options.field for i in infos):
        bg = options.background
        bg_name = bg if isinstance(bg, str) and bg not in _KEYWORDS else "background"
        layer = next(i.layer for i in infos if i.kind == "vector") or "object"
        base = {0: bg_name, 1: layer} if options.background_id(None) != 1 else {0: layer, 1: bg_name}
        for k, name in tagged.items():
            base.setdefault(k, name)
        return [base.get(k, f"class{k}") for k in range(max(base) + 1)]
    if any(i.kind == "raster" and not i.classes for i in infos):
        return None
    ids = set(tagged) | {int(v) for i in infos if i.kind == "vector" for v in i.values}
    if isinstance(options.background, int):
        ids.add(options.background)
    if not ids:
        return None
    return [tagged.get(k, f"class{k}") for k in range(max(ids) + 1)]


def _tagged_names(infos: Sequence[LabelInfo]) -> dict[int, str]:
    tagged: dict[int, str] = {}
    for info in infos:
        for k, name, _ in info.classes:
            if tagged.setdefault(k, name) != name:
                raise InputError(
                    f"{info.path} names class {k} {name!r} but another label file names it {tagged[k]!r}: "
                    "list the classes explicitly (--classes or config classes)"
                )
    return tagged


def default_class_names(infos: Sequence[LabelInfo], num_classes: int) -> list[str]:
    """Names for ``num_classes`` ids: from raster tags where known, else ``class<i>``."""
    tagged = _tagged_names(infos)
    return [tagged.get(k, f"class{k}") for k in range(num_classes)]


def label_class_colors(infos: Sequence[LabelInfo]) -> dict[str, str]:
    """Class colours named in raster tags, by class name."""
    return {name: color for i in infos for _, name, color in i.classes if color}


# --------------------------------------------------------------------------- reading


class LabelSource(Protocol):
    """Labels of one file on one image grid, readable window by window."""

    geobox: GeoBox

    def read(self, window: PixelWindow | None = None) -> np.ndarray:
        """uint8 class ids of ``window`` (default: the whole grid); 255 = unlabelled."""
        ...


def open_labels(
    path: str | os.PathLike[str],
    geobox: GeoBox,
    options: LabelOptions | None = None,
    class_names: Sequence[str] | None = None,
    *,
    binary: bool = False,
) -> LabelSource:
    """Prepare a label file for reading onto ``geobox``.

    Args:
        path: Class raster or vector file.
        geobox: The image grid.
        options: How values become class ids.
        class_names: Class names, for text-field polygons and a background given by name.
        binary: Mask targets: any labelled non-zero value is 1.

    Raises:
        InputError: The labels do not overlap the image, lack a CRS, or hold values that
            are not class ids.
    """
    options = options or LabelOptions()
    if label_kind(path) == "raster":
        return _RasterLabels(Path(path), geobox, options, binary)
    return _VectorLabels(Path(path), geobox, options, class_names, binary)


def read_labels(
    path: str | os.PathLike[str],
    geobox: GeoBox,
    options: LabelOptions | None = None,
    class_names: Sequence[str] | None = None,
    *,
    window: PixelWindow | None = None,
    binary: bool = False,
) -> np.ndarray:
    """uint8 ``(H, W)`` class ids of a label file on ``geobox`` (255 = unlabelled).

    See :func:`open_labels` for the arguments.
    """
    return open_labels(path, geobox, options, class_names, binary=binary).read(window)


def _bounds(transform: Any, height: int, width: int) -> tuple[float, float, float, float]:
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _same_crs(a: Any, b: Any) -> bool:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(a) == CRS.from_user_input(b)
    except Exception:  # noqa: BLE001
        return False


class _RasterLabels:
    def __init__(self, path: Path, geobox: GeoBox, options: LabelOptions, binary: bool) -> None:
        from rasterio.warp import transform_bounds

        self.path, self.geobox, self.binary = path, geobox, binary
        with open_raster(path, env=False, quiet=True) as src:
            self.crs, self.transform = src.crs, src.transform
            self.height, self.width, declared = src.height, src.width, src.nodata
            if src.transform.b or src.transform.d:
                raise InputError(f"{path} has a rotated geotransform: warp it to a north-up grid first (gdalwarp)")
        if options.nodata == "auto":
            self.nodata = declared
        elif options.nodata == "none":
            self.nodata = None
        else:
            self.nodata = float(options.nodata)
        same_shape = (self.height, self.width) == geobox.shape
        if geobox.crs is None or self.crs is None:
            if not same_shape:
                which = "the image" if geobox.crs is None else str(path)
                raise InputError(
                    f"{which} has no CRS, so {path} cannot be put onto the image grid: give both a CRS "
                    "(e.g. gdal_edit.py -a_srs EPSG:...)"
                )
            self.same_grid = True
            return
        self.same_grid = same_shape and self.transform.almost_equals(geobox.transform) and _same_crs(self.crs, geobox.crs)
        if not self.same_grid:
            img = transform_bounds(geobox.crs, self.crs, *_bounds(geobox.transform, *geobox.shape), densify_pts=21)
            lab = _bounds(self.transform, self.height, self.width)
            if img[0] >= lab[2] or img[2] <= lab[0] or img[1] >= lab[3] or img[3] <= lab[1]:
                raise InputError(
                    f"{path} does not overlap the image (image bounds in the labels' CRS {img}, labels "
                    f"{lab}): check that they cover the same area"
                )

    def read(self, window: PixelWindow | None = None) -> np.ndarray:
        from rasterio.warp import Resampling, reproject, transform_bounds
        from rasterio.windows import Window

        window = window or self.geobox.window
        with open_raster(self.path, env=False, quiet=True) as src:
            if self.same_grid:
                return self._ids(src.read(1, window=window.to_rasterio()))
            dst_transform = self.geobox.window_transform(window)
            out = np.full((window.height, window.width), IGNORE, np.uint8)
            b = transform_bounds(self.geobox.crs, self.crs, *_bounds(dst_transform, window.height, window.width),
                                 densify_pts=21)
            inv = ~self.transform
            cols, rows = zip(*(inv * (x, y) for x in (b[0], b[2]) for y in (b[1], b[3])))
            c0, c1 = max(0, math.floor(min(cols)) - 2), min(self.width, math.ceil(max(cols)) + 2)
            r0, r1 = max(0, math.floor(min(rows)) - 2), min(self.height, math.ceil(max(rows)) + 2)
            if c0 >= c1 or r0 >= r1:
                return out
            win = Window(c0, r0, c1 - c0, r1 - r0)
            ids = self._ids(src.read(1, window=win))
            reproject(
                ids, out, src_transform=src.window_transform(win), src_crs=self.crs, src_nodata=IGNORE,
                dst_transform=dst_transform, dst_crs=self.geobox.crs, dst_nodata=IGNORE,
                resampling=Resampling.nearest,
            )
        return out

    def _ids(self, raw: np.ndarray) -> np.ndarray:
        invalid = np.zeros(raw.shape, bool)
        if self.nodata is not None:
            invalid |= np.isnan(raw) if math.isnan(self.nodata) else raw == self.nodata
        if raw.dtype.kind == "f":
            invalid |= ~np.isfinite(raw)
        values = raw[~invalid]
        if values.size and raw.dtype != np.uint8:
            lo, hi = values.min(), values.max()
            if lo < 0 or hi > IGNORE or (raw.dtype.kind == "f" and not np.all(values == np.round(values))):
                bad = np.unique(values[(values < 0) | (values > IGNORE) | (values != np.round(values))])[:5]
                raise InputError(
                    f"{self.path}: label values {bad.tolist()} are not class ids (integers 0..254): give a "
                    "class raster, or name its nodata value with --label-nodata VALUE"
                )
        ids = raw.astype(np.uint8)
        if self.binary:
            ids = np.where(ids != 0, np.where(ids == IGNORE, IGNORE, 1), 0).astype(np.uint8)
        ids[invalid] = IGNORE
        return ids


def _layer_info(path: str | os.PathLike[str], options: LabelOptions) -> tuple[str, dict[str, Any]]:
    import pyogrio

    layers = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    if options.layer is not None and options.layer not in layers:
        raise InputError(f"{path} has no layer {options.layer!r}: its layers are {layers}")
    layer = options.layer if options.layer is not None else layers[0]
    info = pyogrio.read_info(path, layer=layer)
    if options.field and options.field not in list(info["fields"]):
        raise InputError(
            f"{path} has no field {options.field!r}: its fields are {list(info['fields'])}; "
            "give one of them as the label field"
        )
    return layer, info


def _read_field(path: str | os.PathLike[str], options: LabelOptions, bbox: tuple | None = None) -> np.ndarray:
    import pyogrio

    _, _, _, fields = pyogrio.raw.read(path, layer=options.layer, columns=[options.field], read_geometry=False,
                                       bbox=bbox)
    return fields[0]


def _clean_values(path: Any, name: str, raw: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Indexes of features with a class value, and those values (str or int)."""
    if raw.dtype.kind in "OUS":
        values = [None if v is None else str(v).strip() for v in raw]
        keep = np.array([bool(v) for v in values], bool)
        kept = [v for v in values if v]
        if kept and all(_is_int(v) for v in kept):
            kept = [int(v) for v in kept]  # type: ignore[misc]
        else:
            return np.flatnonzero(keep), kept
    else:
        arr = raw.astype(np.float64)
        keep = np.isfinite(arr)
        kept = arr[keep]
        if kept.size and (np.any(kept != np.round(kept))):
            raise InputError(f"{path}: field {name!r} holds non-integer numbers: give a field of class ids or names")
        kept = [int(v) for v in kept]
    bad = sorted({v for v in kept if not 0 <= v < IGNORE})
    if bad:
        raise InputError(f"{path}: field {name!r} holds values {bad[:5]} that are not class ids 0..254")
    return np.flatnonzero(keep), kept


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


class _VectorLabels:
    def __init__(self, path: Path, geobox: GeoBox, options: LabelOptions, class_names: Sequence[str] | None,
                 binary: bool) -> None:
        import pyogrio
        import shapely
        from pyproj import CRS, Transformer
        from rasterio.warp import transform_bounds

        self.geobox, self.options = geobox, options
        layer, info = _layer_info(path, options)
        if info["crs"] is None:
            raise InputError(f"{path} has no CRS: assign one (e.g. ogr2ogr -a_srs EPSG:... out.gpkg {path.name})")
        if geobox.crs is None:
            raise InputError(f"the image has no CRS, so the polygons of {path} cannot be put onto its grid")
        bbox = transform_bounds(geobox.crs, info["crs"], *_bounds(geobox.transform, *geobox.shape), densify_pts=21)
        columns = [options.field] if options.field else []
        _, _, wkb, fields = pyogrio.raw.read(path, layer=layer, columns=columns, bbox=bbox)
        geoms = shapely.from_wkb(wkb) if len(wkb) else np.empty(0, object)
        names = list(class_names) if class_names is not None else None
        if options.field:
            idx, kept = _clean_values(path, options.field, fields[0])
            geoms = geoms[idx]
            if kept and isinstance(kept[0], str):
                if names is None:
                    names = sorted(set(kept))
                unknown = sorted(set(kept) - set(names))
                if unknown:
                    raise InputError(
                        f"{path}: field {options.field!r} has values {unknown[:5]} that are not classes "
                        f"({', '.join(names)}): list them among the classes"
                    )
                values = np.array([names.index(v) for v in kept], np.uint8)
            else:
                values = np.array(kept, np.uint8)
            self.background = options.background_id(names)
        else:
            self.background = options.background_id(names)
            values = np.full(len(geoms), 0 if self.background == 1 else 1, np.uint8)
        if binary:
            values = (values != 0).astype(np.uint8)
            if self.background != IGNORE:
                self.background = int(self.background != 0)
        src_crs, dst_crs = CRS.from_user_input(info["crs"]), CRS.from_user_input(geobox.crs)
        if len(geoms) and src_crs != dst_crs:
            t = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        ok = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms) if len(geoms) else np.zeros(0, bool)
        self.geoms, self.values = geoms[ok], values[ok]
        self.tree = shapely.STRtree(self.geoms)

    def read(self, window: PixelWindow | None = None) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize

        window = window or self.geobox.window
        transform = self.geobox.window_transform(window)
        shape = (window.height, window.width)
        hits = np.sort(self.tree.query(shapely.box(*_bounds(transform, *shape))))
        if not hits.size:
            return np.full(shape, self.background, np.uint8)
        return rasterize(
            zip(self.geoms[hits], (int(v) for v in self.values[hits])), out_shape=shape, transform=transform,
            fill=self.background, dtype="uint8", all_touched=self.options.all_touched,
        )

