"""Class maps and masks to GIS-ready polygon layers.

:func:`vectorize` is what ``geoseg vectorize`` runs; :func:`vectorize_products` is what
``geoseg run`` calls on its finished class map, confidence and masks. Both build layers
with :func:`class_layer` / :func:`mask_layer`:

1. :func:`geoseg.vector.polygonize.polygonize` turns the raster into exact regions, block by
   block in parallel (identical to a whole-map ``gdal_polygonize.py``);
2. ``--min-area`` *drops* regions smaller than the threshold (they are not merged into a
   neighbour: their pixels are simply not covered by any polygon);
3. ``--simplify`` generalises the remaining regions as one coverage, each shared
   boundary once (:mod:`geoseg.coverage`), so no gaps or overlaps open;
4. pixel coordinates become CRS coordinates; ``area_m2`` and ``perimeter_m`` are
   computed on the written polygons (geodesic on the ellipsoid for geographic CRSs);
5. :mod:`geoseg.vector_io` writes the layer with its QGIS style.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoseg._constants import DEFAULT_BLOCK_SIZE
from geoseg._naming import sibling_confidence
from geoseg.classes import rgb_to_hex
from geoseg.errors import InputError
from geoseg.io.raster import check_path, open_raster
from geoseg.vector.formats import FORMATS, LayerData, check_format, layer_path, write_layer
from geoseg.vector.polygonize import block_grid, polygonize
from geoseg.vector.styles import categorized_qml, categorized_sld, single_qml

#: Colour of mask layers.
MASK_COLOR = "#ff7f00"

#: Colours for classes whose raster names none (a qualitative palette).
PALETTE = ["#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3", "#b2df8a",
           "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99"]


@dataclass
class LayerStats:
    """What was written to one layer."""

    name: str
    features: int = 0
    area_m2: dict[str, float] = field(default_factory=dict)
    dropped: int = 0  # regions below --min-area


@dataclass(frozen=True)
class VectorizeOptions:
    """How rasters become polygons (the ``geoseg vectorize`` options)."""

    connectivity: int = 4
    min_area: float = 0.0  # m^2; smaller regions are dropped
    simplify: float = 0.0  # metres; 0 keeps the exact pixel boundaries
    workers: int | None = None  # parallel block tasks on local threads (default: all cores)
    scheduler: str | None = None  # address of an existing Dask scheduler
    block_size: int = DEFAULT_BLOCK_SIZE
    format: str = "GPKG"

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise InputError(f"--connectivity must be 4 or 8, got {self.connectivity}")
        if not self.min_area >= 0:
            raise InputError(f"--min-area must be >= 0 square metres, got {self.min_area}")
        if not self.simplify >= 0:
            raise InputError(f"--simplify must be >= 0 metres, got {self.simplify}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.block_size < 16:
            raise InputError(f"--block-size must be at least 16 pixels, got {self.block_size}")
        object.__setattr__(self, "format", check_format(self.format))


class AreaCalculator:
    """Areas (m^2) and perimeters (m) of polygons in a CRS, geodesic when geographic."""

    def __init__(self, crs_wkt: str) -> None:
        from pyproj import CRS

        crs = CRS.from_wkt(crs_wkt)
        self.geographic = crs.is_geographic
        self.geod = crs.get_geod() if self.geographic else None
        self.factor = 1.0
        if not self.geographic and crs.axis_info:
            self.factor = float(crs.axis_info[0].unit_conversion_factor)

    def area_perimeter(self, geoms) -> tuple[np.ndarray, np.ndarray]:
        import shapely

        geoms = np.asarray(geoms, dtype=object)
        if not self.geographic:
            return shapely.area(geoms) * self.factor**2, shapely.length(geoms) * self.factor
        area = np.empty(len(geoms))
        perim = np.empty(len(geoms))
        for i, g in enumerate(geoms):
            a, p = self.geod.geometry_area_perimeter(g)
            area[i], perim[i] = abs(a), p
        return area, perim

    def pixel_size_m(self, transform, height: int, width: int) -> float:
        """Edge of a pixel in metres (for geographic CRSs: at the raster's centre)."""
        if not self.geographic:
            return float(np.sqrt(abs(transform.determinant))) * self.factor
        cx, cy = transform * (width / 2, height / 2)
        ex, ey = transform * (width / 2 + 1, height / 2)
        sx, sy = transform * (width / 2, height / 2 + 1)
        _, _, dx = self.geod.inv(cx, cy, ex, ey)
        _, _, dy = self.geod.inv(cx, cy, sx, sy)
        return float(np.sqrt(dx * dy))


def to_crs(geoms: np.ndarray, transform) -> np.ndarray:
    """Pixel-coordinate geometries (x = column, y = row) to the raster's CRS."""
    import shapely

    a, b, c, d, e, f = transform[:6]

    def affine(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    return shapely.transform(geoms, affine) if len(geoms) else geoms


@dataclass
class _Raster:
    path: str
    crs: str  # WKT
    transform: object
    height: int
    width: int
    count: int


def _open(path) -> _Raster:
    import rasterio

    check_path(path)
    try:
        with open_raster(path, env=False, quiet=True) as ds:  # no georeferencing: our error below
            if ds.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "int8", "uint32"):
                raise InputError(
                    f"{path} has {ds.dtypes[0]} pixels: vectorize needs an integer class map or mask, "
                    "e.g. the <stem>.classes.tif of `geoseg run`"
                )
            if not ds.crs:
                raise InputError(
                    f"{path} has no CRS: polygons need one for their coordinates and areas; assign it first, "
                    "e.g. gdal_edit.py -a_srs EPSG:32633 FILE"
                )
            return _Raster(str(path), ds.crs.to_wkt(), ds.transform, ds.height, ds.width, ds.count)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read {path} as a raster ({exc}): give a GeoTIFF class map") from exc


def _regions_to_layer(
    raster: _Raster,
    regions,
    options: VectorizeOptions,
    name: str,
    make_fields: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]],
    qml: str,
    sld: str,
) -> tuple[LayerData, np.ndarray, int]:
    """Filter, simplify and georeference regions; return the layer, its kept rows and dropped count.

    ``--min-area`` compares the exact regions' areas (pixel counts, or geodesic areas for
    geographic CRSs); area and perimeter attributes describe the written polygons.
    """
    from geoseg.vector.coverage import simplify_coverage

    calc = AreaCalculator(raster.crs)
    keep = np.arange(len(regions))
    measured = None  # (area, perimeter) of the exact polygons in the CRS, when computed
    if options.min_area > 0:
        if calc.geographic:
            measured = calc.area_perimeter(to_crs(regions.geometry, raster.transform))
            exact_area = measured[0]
        else:
            exact_area = regions.pixels * abs(raster.transform.determinant) * calc.factor**2
        keep = np.flatnonzero(exact_area >= options.min_area)
    if options.simplify > 0:
        tolerance_px = options.simplify / calc.pixel_size_m(raster.transform, raster.height, raster.width)
        geoms = to_crs(simplify_coverage(regions.geometry[keep], tolerance_px), raster.transform)
        measured = None
    else:
        geoms = to_crs(regions.geometry[keep], raster.transform)
    if measured is not None:  # geodesic measures are slow: reuse them when the polygons did not change
        area, perimeter = measured[0][keep], measured[1][keep]
    else:
        area, perimeter = calc.area_perimeter(geoms)
    fields = make_fields(keep, area, perimeter)
    layer = LayerData(name, raster.crs, geoms, fields, qml, sld)
    return layer, keep, len(regions) - len(keep)


def class_layer(
    path,
    *,
    names: list[str],
    colors: list[str],
    layer: str = "classes",
    band: int = 1,
    confidence: tuple[str | os.PathLike, int] | None = None,
    options: VectorizeOptions = VectorizeOptions(),
    on_block: Callable[[], None] | None = None,
) -> tuple[LayerData, LayerStats]:
    """A polygon layer of a class map: ``class_id``, ``class_name``, ``area_m2``,
    ``perimeter_m`` and (with a confidence raster) ``confidence``, the mean under each polygon."""
    raster = _open(path)
    regions = polygonize(
        raster.path, band, connectivity=options.connectivity, weights=confidence, block_size=options.block_size,
        workers=options.workers, scheduler=options.scheduler, on_block=on_block,
    )
    ids = regions.values.astype(np.int64)
    n_known = max(len(names), int(ids.max()) + 1 if len(ids) else 0)
    all_names = np.array(list(names) + [f"class_{i}" for i in range(len(names), n_known)], dtype=object)

    def fields(keep, area, perimeter):
        out = {
            "class_id": ids[keep].astype(np.int32),
            "class_name": all_names[ids[keep]] if len(keep) else np.array([], dtype=object),
            "area_m2": area.astype(np.float64),
            "perimeter_m": perimeter.astype(np.float64),
        }
        if regions.weight_mean is not None:
            out["confidence"] = np.round(regions.weight_mean[keep], 2)
        return out

    present = sorted(set(range(len(names))) | set(ids.tolist()))
    cats = [(i, str(all_names[i]), colors[i] if i < len(colors) else PALETTE[i % len(PALETTE)]) for i in present]
    qml, sld = categorized_qml("class_id", cats), categorized_sld(layer, "class_id", cats)
    data, keep, dropped = _regions_to_layer(raster, regions, options, layer, fields, qml, sld)
    by_class = np.bincount(ids[keep], weights=data.fields["area_m2"], minlength=len(all_names))
    stats = LayerStats(layer, len(keep), {str(all_names[i]): float(by_class[i]) for i in range(len(all_names))}, dropped)
    return data, stats


def mask_layer(
    path,
    *,
    name: str,
    band: int = 1,
    color: str = MASK_COLOR,
    options: VectorizeOptions = VectorizeOptions(),
    on_block: Callable[[], None] | None = None,
) -> tuple[LayerData, LayerStats]:
    """A polygon layer of the pixels equal to 1 in a 0/1 mask band: ``mask_name``, ``area_m2``, ``perimeter_m``."""
    raster = _open(path)
    regions = polygonize(
        raster.path, band, connectivity=options.connectivity, include=[1], block_size=options.block_size,
        workers=options.workers, scheduler=options.scheduler, on_block=on_block,
    )

    def fields(keep, area, perimeter):
        return {
            "mask_name": np.array([name] * len(keep), dtype=object),
            "area_m2": area.astype(np.float64),
            "perimeter_m": perimeter.astype(np.float64),
        }

    sld = categorized_sld(name, "mask_name", [(f"'{name}'", name, color)])
    data, keep, dropped = _regions_to_layer(raster, regions, options, name, fields, single_qml(color), sld)
    return data, LayerStats(name, len(keep), {name: float(data.fields["area_m2"].sum())}, dropped)


def vectorize_products(
    out_gpkg: Path,
    *,
    classes_path: Path,
    class_names: list[str],
    class_colors: list[str],
    confidence_path: Path | None = None,
    mask_path: Path | None = None,
    mask_names: list[str] | tuple[str, ...] = (),
    options: VectorizeOptions | None = None,
) -> list[LayerStats]:
    """Write layer ``classes`` and one layer per mask head to the GeoPackage ``out_gpkg``
    (what ``geoseg run`` calls on its class map, confidence and mask rasters)."""
    options = options or VectorizeOptions()
    conf = (confidence_path, 1) if confidence_path is not None else None
    data, stats = class_layer(classes_path, names=class_names, colors=class_colors, confidence=conf, options=options)
    write_layer(out_gpkg, "GPKG", data)
    out = [stats]
    for m, name in enumerate(mask_names):
        data, stats = mask_layer(mask_path, name=name, band=m + 1, options=options)
        write_layer(out_gpkg, "GPKG", data)
        out.append(stats)
    return out


def load_classes(ref: str) -> tuple[list[str], list[str]]:
    """Class names and colours from a JSON file or a model (built-in name or bundle path).

    The JSON may be ``[{"name": ..., "color": "#rrggbb"}, ...]`` (by class id), or
    ``{"classes": [...]}`` in that form, or ``{"names": [...], "colors": [...]}``.
    """
    path = Path(ref)
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"--classes-from {ref}: no such file") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"--classes-from {ref}: not valid JSON ({exc})") from None
        if isinstance(doc, dict) and "classes" in doc:
            doc = doc["classes"]
        if isinstance(doc, dict) and "names" in doc:
            names = [str(n) for n in doc["names"]]
            colors = [str(c) for c in doc.get("colors", [])]
        elif isinstance(doc, list) and all(isinstance(c, dict) and "name" in c for c in doc):
            names = [str(c["name"]) for c in doc]
            colors = [str(c.get("color", PALETTE[i % len(PALETTE)])) for i, c in enumerate(doc)]
        else:
            raise InputError(
                f"--classes-from {ref}: expected a list of {{\"name\", \"color\"}} objects or "
                '{"names": [...], "colors": [...]}'
            )
        return names, colors + [PALETTE[i % len(PALETTE)] for i in range(len(colors), len(names))]
    from geoseg.models import load_model

    bundle = load_model(ref)
    return list(bundle.class_names), list(bundle.class_colors)


def classes_of_raster(path) -> tuple[list[str], list[str]] | None:
    """Class names and colours recorded in a class map's metadata (as ``geoseg run`` writes
    them), or only the colours of its colour table; None when it has neither."""
    with open_raster(path, env=False) as ds:
        tags = ds.tags()
        if "GEOSEG_CLASSES" in tags:
            classes = sorted(json.loads(tags["GEOSEG_CLASSES"]), key=lambda c: c["id"])
            return [c["name"] for c in classes], [c["color"] for c in classes]
        if "CLASS_NAMES" in tags:
            names = list(json.loads(tags["CLASS_NAMES"]))
            try:
                cmap = ds.colormap(1)
                colors = [rgb_to_hex(cmap[i][:3]) for i in range(len(names))]
            except ValueError:
                colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
            return names, colors
        try:  # no names, but a colour table: keep its colours for class_<id>
            cmap = ds.colormap(1)
        except ValueError:
            return None
        return [], [rgb_to_hex(cmap[i][:3]) for i in range(256)]


def mask_names_of_raster(path) -> list[str]:
    """Names of a mask raster's bands: its ``MASK_HEADS`` tag, band descriptions, or ``mask_<i>``."""
    with open_raster(path, env=False) as ds:
        heads = ds.tags().get("MASK_HEADS")
        if heads and len(heads.split(",")) == ds.count:
            return heads.split(",")
        return [d or f"mask_{i + 1}" for i, d in enumerate(ds.descriptions)]


def vectorize(
    raster: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layer: str | None = None,
    mask: bool = False,
    classes_from: str | None = None,
    confidence: str | os.PathLike | None = None,
    band: int = 1,
    overwrite: bool = False,
    quiet: bool = True,
    **options,
) -> dict:
    """Polygonize a class map (or, with ``mask=True``, each band of a 0/1 mask raster).

    Args:
        raster: an integer class map, e.g. ``<stem>.classes.tif`` from ``geoseg run``.
        out: the output file; its suffix should match ``format`` (.gpkg, .fgb, .parquet).
        layer: layer name (default ``classes``, or the mask names).
        mask: treat the raster as 0/1 masks, one layer per band.
        classes_from: class names and colours from a model or JSON file (default: the
            raster's metadata, else ``class_<id>``).
        confidence: a confidence raster on the same grid (default: the sibling
            ``<stem>.confidence.tif`` of a ``geoseg run`` class map, if present).
        band: the class map's band.
        overwrite: replace existing outputs.
        quiet: no progress bar.
        **options: fields of :class:`VectorizeOptions`.

    Returns:
        A summary: output files, layers with feature counts and areas per class, timings.
    """
    import time

    from geoseg._files import OutputSet, prepare_out_dir, remove_files
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    opts = VectorizeOptions(**options)
    out = Path(out)
    src = _open(raster)
    if not 1 <= band <= src.count:
        raise InputError(f"--band {band}: {raster} has {src.count} band(s)")
    suffix = FORMATS[opts.format]
    if out.suffix.lower() != suffix:
        raise InputError(f"{out} does not end in {suffix}: name the output *{suffix} for --format {opts.format}")
    if mask:
        names = mask_names_of_raster(raster)
        layers = [(layer or n) if len(names) == 1 else n for n in names]
    else:
        layers = [layer or "classes"]
    outputs = OutputSet(prepare_out_dir(out.parent), overwrite=overwrite)
    finals = [layer_path(out, opts.format, name, i == 0) for i, name in enumerate(layers)]
    if opts.format != "GPKG":
        finals += [f.with_suffix(".qml") for f in finals]
    outputs.check_free(finals)

    if not mask:
        if classes_from:
            class_names, class_colors = load_classes(classes_from)
        else:
            class_names, class_colors = classes_of_raster(raster) or ([], [])
        if confidence is None:
            confidence = sibling_confidence(raster)
        if confidence is not None:
            csrc = _open(confidence)
            if (csrc.height, csrc.width) != (src.height, src.width) or csrc.transform != src.transform:
                raise InputError(f"confidence raster {confidence} is not on the grid of {raster}: give one from the same run")

    temps: dict[Path, Path] = {}
    stats: list[LayerStats] = []
    try:
        blocks = len(block_grid(src.height, src.width, opts.block_size))
        with Progress(total=blocks * len(layers), desc=f"{Path(raster).name}: blocks",
                      disable=quiet, unit="block") as progress:
            for i, name in enumerate(layers):
                if mask:
                    data, st = mask_layer(raster, name=name, band=i + 1, options=opts, on_block=progress.update)
                else:
                    conf = (str(confidence), 1) if confidence is not None else None
                    data, st = class_layer(raster, names=class_names, colors=class_colors, layer=name, band=band,
                                           confidence=conf, options=opts, on_block=progress.update)
                final = finals[i]
                tmp = temps.setdefault(final, outputs.temp_for(final))
                qml_tmp = None
                if opts.format != "GPKG":
                    qml_final = final.with_suffix(".qml")
                    qml_tmp = temps.setdefault(qml_final, outputs.temp_for(qml_final))
                write_layer(tmp, opts.format, data, qml_tmp)
                stats.append(st)
        for final, tmp in temps.items():
            outputs.stage(final, tmp)
        outputs.commit()
    except BaseException:
        remove_files(list(temps.values()))
        raise
    return {
        "input": str(raster),
        "outputs": [str(f) for f in temps],
        "format": opts.format,
        "options": {"connectivity": opts.connectivity, "min_area_m2": opts.min_area, "simplify_m": opts.simplify,
                    "block_size": opts.block_size},
        "layers": [
            {"name": s.name, "features": s.features, "dropped_below_min_area": s.dropped, "area_m2": s.area_m2}
            for s in stats
        ],
        "seconds": round(time.perf_counter() - t0, 3),
    }
