"""Class maps and masks to GIS-ready polygon layers.

:func:`vectorize` is what ``geoseg vectorize`` runs; :func:`vectorize_products` is what
``geoseg run`` calls on its finished class map, confidence and masks. Both build layers
with :func:`class_layer` / :func:`mask_layer`:

1. :func:`geoseg.vector.polygonize.polygonize_stream` turns the raster into exact regions,
   block by block in parallel (identical to a whole-map ``gdal_polygonize.py``), handing
   on each batch of finished regions while the next blocks run;
2. ``--min-area`` *drops* regions whose ground area is smaller than the threshold (they are
   not merged into a neighbour: their pixels are simply not covered by any polygon);
3. ``--simplify`` generalises the remaining regions as one coverage, each shared
   boundary once (:mod:`geoseg.vector.coverage`), so no gaps or overlaps open (this one
   step needs every region at once);
4. pixel coordinates become CRS coordinates; ``area_m2`` and ``perimeter_m`` are ground
   measures on the ellipsoid in any CRS (:mod:`geoseg.vector.areas`);
5. :class:`geoseg.vector.formats.LayerWriter` writes the layer batch by batch with its QGIS style.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from geoseg.io.store import sibling_confidence
from geoseg.classes import rgb_to_hex
from geoseg.errors import InputError
from geoseg.io.raster import check_path, open_raster
from geoseg.vector.areas import AreaCalculator
from geoseg.vector.formats import FORMATS, LayerData, LayerWriter, check_format, layer_path
from geoseg.vector.polygonize import (
    Regions,
    block_grid,
    choose_block_size,
    concat_regions,
    polygonize,
    polygonize_stream,
)
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
    block_size: int | None = None  # None: chosen from the map (polygonize.choose_block_size)
    format: str = "GPKG"
    #: a connected ``distributed.Client`` to run the block tasks on (left open), instead of
    #: ``scheduler``; its workers must see the raster (``geoseg.scene.pipeline`` checks)
    client: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise InputError(f"--connectivity must be 4 or 8, got {self.connectivity}")
        if not self.min_area >= 0:
            raise InputError(f"--min-area must be >= 0 square metres, got {self.min_area}")
        if not self.simplify >= 0:
            raise InputError(f"--simplify must be >= 0 metres, got {self.simplify}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.block_size is not None and self.block_size < 16:
            raise InputError(f"--block-size must be at least 16 pixels, got {self.block_size}")
        object.__setattr__(self, "format", check_format(self.format))


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


def _subset(regions: Regions, keep: np.ndarray) -> Regions:
    def pick(a):
        return None if a is None else a[keep]

    return Regions(regions.geometry[keep], regions.values[keep], regions.pixels[keep], pick(regions.weight_mean),
                   regions.pieces, area=pick(regions.area), perimeter=pick(regions.perimeter))


def _polygonize_layer(
    raster: _Raster,
    band: int,
    options: VectorizeOptions,
    make_fields: Callable[[Regions], dict[str, np.ndarray]],
    sink: LayerWriter,
    *,
    include=None,
    confidence=None,
    on_block: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Polygonize a band into ``sink``; return the features written and dropped.

    Without ``--simplify`` the regions stream: each batch of finished regions is filtered
    by ``--min-area``, georeferenced and written while the next blocks are polygonized.
    ``--simplify`` needs the whole coverage (every shared boundary is simplified once), so
    it collects the regions first. ``area_m2`` and ``perimeter_m`` are ground measures on
    the ellipsoid (:mod:`geoseg.vector.areas`): exact pixel sums for exact regions; for
    simplified polygons the planar area times the areal factor at the centroid.
    """
    from geoseg.vector.coverage import simplify_coverage

    calc = AreaCalculator(raster.crs, raster.transform, raster.height, raster.width)
    kw = dict(connectivity=options.connectivity, include=include, weights=confidence, areas=calc,
              block_size=options.block_size, workers=options.workers, scheduler=options.scheduler, client=options.client,
              on_block=on_block)
    counts = [0, 0]

    def kept(regions: Regions) -> Regions:
        if options.min_area > 0:
            keep = regions.area >= options.min_area
            counts[1] += int((~keep).sum())
            regions = _subset(regions, keep)
        return regions

    def write(regions: Regions) -> None:
        counts[0] += len(regions)
        regions.area = regions.area.astype(np.float64)
        sink.write(to_crs(regions.geometry, raster.transform), make_fields(regions))

    if options.simplify > 0:
        regions = kept(polygonize(raster.path, band, **kw))
        tolerance_px = options.simplify / np.sqrt(calc.mean_pixel_area())
        regions.geometry = simplify_coverage(regions.geometry, tolerance_px)
        regions.area, regions.perimeter = calc.areas(regions.geometry), calc.lengths(regions.geometry)
        write(regions)
    else:
        def emit(batch: Regions) -> None:
            batch = kept(batch)
            if len(batch):
                write(batch)

        polygonize_stream(raster.path, emit, band, **kw)
        if counts[0] == 0:  # an empty layer still gets its fields
            write(_subset(concat_regions([], 0), np.zeros(0, dtype=np.int64)))
    return counts[0], counts[1]


def _geometry_type(options: VectorizeOptions) -> str:
    """4-connected regions are polygons; 8-connected ones may touch at corners only."""
    return "MultiPolygon" if options.connectivity == 8 else "Polygon"


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
    out: Path | None = None,
    qml_path: Path | None = None,
) -> tuple[LayerData | None, LayerStats]:
    """A polygon layer of a class map: ``class_id``, ``class_name``, ``area_m2``,
    ``perimeter_m`` and (with a confidence raster) ``confidence``, the mean under each polygon.

    Written to ``out`` (in ``options.format``, streamed for GeoPackages) when given, then
    returned as ``None``; else returned in memory.
    """
    raster = _open(path)
    names = list(names)
    area_by_id: dict[int, float] = {}

    def name_of(ids: np.ndarray) -> np.ndarray:
        top = int(ids.max()) + 1 if len(ids) else 0
        while len(names) < top:
            names.append(f"class_{len(names)}")
        return np.array(names, dtype=object)[ids] if len(ids) else np.array([], dtype=object)

    def fields(regions: Regions) -> dict[str, np.ndarray]:
        ids = regions.values.astype(np.int64)
        sums = np.bincount(ids, weights=regions.area, minlength=1) if len(ids) else np.zeros(0)
        for c in np.flatnonzero(np.bincount(ids)) if len(ids) else ():
            area_by_id[int(c)] = area_by_id.get(int(c), 0.0) + float(sums[c])
        out_fields = {
            "class_id": ids.astype(np.int32),
            "class_name": name_of(ids),
            "area_m2": regions.area.astype(np.float64),
            "perimeter_m": regions.perimeter.astype(np.float64),
        }
        if confidence is not None:
            mean = regions.weight_mean if regions.weight_mean is not None else np.zeros(0)
            out_fields["confidence"] = np.round(mean, 2)
        return out_fields

    fmt = options.format if out is not None else "GPKG"
    sink = LayerWriter(out, fmt, layer, raster.crs, _geometry_type(options), qml_path)
    try:
        n, dropped = _polygonize_layer(raster, band, options, fields, sink, confidence=confidence, on_block=on_block)
        present = sorted(set(range(len(names))) | set(area_by_id))
        name_of(np.asarray(present, dtype=np.int64))
        cats = [(i, str(names[i]), colors[i] if i < len(colors) else PALETTE[i % len(PALETTE)]) for i in present]
        data = sink.close(categorized_qml("class_id", cats), categorized_sld(layer, "class_id", cats))
    except BaseException:
        sink.abort()
        raise
    stats = LayerStats(layer, n, {str(names[i]): float(area_by_id.get(i, 0.0)) for i in range(len(names))}, dropped)
    return data, stats


def mask_layer(
    path,
    *,
    name: str,
    band: int = 1,
    color: str = MASK_COLOR,
    options: VectorizeOptions = VectorizeOptions(),
    on_block: Callable[[], None] | None = None,
    out: Path | None = None,
    qml_path: Path | None = None,
) -> tuple[LayerData | None, LayerStats]:
    """A polygon layer of the pixels equal to 1 in a 0/1 mask band: ``mask_name``, ``area_m2``,
    ``perimeter_m`` (written to ``out`` when given, as :func:`class_layer`)."""
    raster = _open(path)
    total = [0.0]

    def fields(regions: Regions) -> dict[str, np.ndarray]:
        total[0] += float(regions.area.sum())
        return {
            "mask_name": np.array([name] * len(regions), dtype=object),
            "area_m2": regions.area.astype(np.float64),
            "perimeter_m": regions.perimeter.astype(np.float64),
        }

    fmt = options.format if out is not None else "GPKG"
    sink = LayerWriter(out, fmt, name, raster.crs, _geometry_type(options), qml_path)
    try:
        n, dropped = _polygonize_layer(raster, band, options, fields, sink, include=[1], on_block=on_block)
        sld = categorized_sld(name, "mask_name", [(f"'{name}'", name, color)])
        data = sink.close(single_qml(color), sld)
    except BaseException:
        sink.abort()
        raise
    return data, LayerStats(name, n, {name: total[0]}, dropped)


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
    options = replace(options, format="GPKG")
    _, stats = class_layer(classes_path, names=class_names, colors=class_colors, confidence=conf, options=options,
                           out=out_gpkg)
    out = [stats]
    for m, name in enumerate(mask_names):
        _, stats = mask_layer(mask_path, name=name, band=m + 1, options=options, out=out_gpkg)
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
        out: the output file, a local path or ``s3://bucket/prefix/name`` (written in a
            local scratch directory, then uploaded); its suffix should match ``format``
            (.gpkg, .fgb, .parquet).
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

    from geoseg.io.store import OutputStore, split_target
    from geoseg.progress import Progress

    t0 = time.perf_counter()
    opts = VectorizeOptions(**options)
    dest, name = split_target(out)  # an unknown scheme is refused before anything is read
    outputs = OutputStore(dest, overwrite=overwrite)
    out = outputs.path(name)
    src = _open(raster)
    if not 1 <= band <= src.count:
        raise InputError(f"--band {band}: {raster} has {src.count} band(s)")
    suffix = FORMATS[opts.format]
    if out.suffix.lower() != suffix:
        raise InputError(f"{outputs.where(name)} does not end in {suffix}: name the output *{suffix} for --format {opts.format}")
    if mask:
        names = mask_names_of_raster(raster)
        layers = [(layer or n) if len(names) == 1 else n for n in names]
    else:
        layers = [layer or "classes"]
    outputs.prepare()
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
    try:  # GDAL and SQLite write local files: the store's scratch (the destination, when local)
        if opts.block_size is None:  # chosen once, for the progress bar and the summary
            opts = replace(opts, block_size=choose_block_size(raster, band))
        blocks = len(block_grid(src.height, src.width, opts.block_size))
        with Progress(total=blocks * len(layers), desc=f"{Path(raster).name}: blocks",
                      disable=quiet, unit="block") as progress:
            for i, name in enumerate(layers):
                final = finals[i]
                tmp = temps.setdefault(final, outputs.temp(final))
                qml_tmp = None
                if opts.format != "GPKG":
                    qml_final = final.with_suffix(".qml")
                    qml_tmp = temps.setdefault(qml_final, outputs.temp(qml_final))
                if mask:
                    _, st = mask_layer(raster, name=name, band=i + 1, options=opts, on_block=progress.update,
                                       out=tmp, qml_path=qml_tmp)
                else:
                    conf = (str(confidence), 1) if confidence is not None else None
                    _, st = class_layer(raster, names=class_names, colors=class_colors, layer=name, band=band,
                                        confidence=conf, options=opts, on_block=progress.update, out=tmp,
                                        qml_path=qml_tmp)
                stats.append(st)
        for final, tmp in temps.items():
            outputs.stage(final, tmp)
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    return {
        "input": str(raster),
        "outputs": [outputs.where(f.name) for f in temps],
        "format": opts.format,
        "options": {"connectivity": opts.connectivity, "min_area_m2": opts.min_area, "simplify_m": opts.simplify,
                    "block_size": opts.block_size},
        "layers": [
            {"name": s.name, "features": s.features, "dropped_below_min_area": s.dropped, "area_m2": s.area_m2}
            for s in stats
        ],
        "seconds": round(time.perf_counter() - t0, 3),
    }
