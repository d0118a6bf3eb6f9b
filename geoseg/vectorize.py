"""Class maps and masks to polygons in a GIS-ready GeoPackage.

:func:`vectorize_products` is the one entry point the scene pipeline calls. The class
map's 4-connected regions are labelled strip by strip (exactly, across strip edges) into
a temporary int32 raster that GDAL polygonizes line by line, so memory is bounded by a
strip plus the polygons; the result equals a whole-map ``gdal_polygonize.py``. Each
polygon gets its class, its area in square metres (geodesic for geographic CRSs) and the
mean confidence of its pixels. Mask layers are polygonized straight from disk.
"""

from __future__ import annotations

from contextlib import ExitStack
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .styles import categorized_qml, categorized_sld, single_qml, write_layer_style


#: Polygons written to the GeoPackage per batch.
WRITE_BATCH = 20_000


@dataclass
class LayerStats:
    """What was written to one layer."""

    name: str
    features: int = 0
    area_m2: dict[str, float] = field(default_factory=dict)


class AreaCalculator:
    """Areas (m^2) and perimeters (m) of polygons in a CRS, geodesic when geographic."""

    def __init__(self, crs_wkt: str) -> None:
        from pyproj import CRS

        crs = CRS.from_wkt(crs_wkt)
        self.geographic = crs.is_geographic
        if self.geographic:
            self.geod = crs.get_geod()
            self.factor = 1.0
        else:
            self.geod = None
            self.factor = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0

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


def _shapes(band, transform, keep):
    """``(GeoJSON geometry, value)`` of the polygons of a raster band whose value passes ``keep``.

    GDAL polygonizes the band straight from disk (4-connectivity), reading it line by line,
    so memory holds the polygons, not the raster.
    """
    from rasterio import features

    for geom, value in features.shapes(band, connectivity=4, transform=transform):
        if keep(int(value)):
            yield geom, int(value)


@dataclass
class Components:
    """4-connected regions of equal class over a whole map, labelled strip by strip."""

    owner: np.ndarray  # class id of each final label (index 0: nodata)
    sums: np.ndarray  # sum of the confidence raster under each label
    counts: np.ndarray  # pixels of each label


def _strip_labels(classes: np.ndarray, n_classes: int, offset: int, structure) -> tuple[np.ndarray, list[int]]:
    """Provisional labels of one strip (``offset + 1`` upwards; 0 = nodata) and their classes."""
    from scipy import ndimage

    prov = np.zeros(classes.shape, dtype=np.int64)
    lab = np.empty(classes.shape, dtype=np.int32)
    owner: list[int] = []
    for c in range(n_classes):
        sel = classes == c
        if not sel.any():
            continue
        n = ndimage.label(sel, structure=structure, output=lab)
        np.add(lab, offset + len(owner), out=prov, where=sel)
        owner.extend([c] * n)
    return prov, owner


def label_components(classes_ds, n_classes: int, out_path: Path, confidence_ds=None, strip: int = 512) -> Components:
    """Label the class map's 4-connected regions into an int32 raster at ``out_path``.

    Exact across strip edges and in memory bounded by the strip size: pass 1 labels each
    strip on its own and records which provisional labels touch across each strip edge;
    a connected-components pass over that (small) graph gives the final labels; pass 2
    relabels the strips identically and writes the final labels. Polygonizing the result
    gives exactly the polygons of the class map, each carrying its label.
    """
    import rasterio
    from rasterio.windows import Window
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    structure = ndimage.generate_binary_structure(2, 1)
    h, w = classes_ds.height, classes_ds.width
    strips = [(r0, min(strip, h - r0)) for r0 in range(0, h, strip)]
    owner, edges = [-1], []
    total_counts, total_sums = np.zeros(1), np.zeros(1)
    prev = prev_cls = None
    for r0, sh in strips:
        win = Window(0, r0, w, sh)
        cls = classes_ds.read(1, window=win)
        prov, own = _strip_labels(cls, n_classes, len(owner) - 1, structure)
        owner.extend(own)
        n = len(owner)
        flat = prov.ravel()
        total_counts = np.pad(total_counts, (0, n - len(total_counts)))
        total_sums = np.pad(total_sums, (0, n - len(total_sums)))
        total_counts += np.bincount(flat, minlength=n)
        if confidence_ds is not None:
            weights = confidence_ds.read(1, window=win).ravel().astype(np.float64)
            total_sums += np.bincount(flat, weights=weights, minlength=n)
        if prev is not None:  # equal classes touching across the strip edge
            touch = (prev > 0) & (prov[0] > 0) & (prev_cls == cls[0])
            edges.append(np.stack([prev[touch], prov[0][touch]]))
        prev, prev_cls = prov[-1].copy(), cls[-1].copy()
    n = len(owner)
    pairs = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # final labels 1..K in order of first provisional label; 0 stays nodata
    _, first, final = np.unique(comp[1:], return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    final_of = np.concatenate([[0], rank[final] + 1]).astype(np.int64)
    k = len(order) + 1
    out_owner = np.full(k, -1, dtype=np.int64)
    out_owner[final_of[1:]] = np.asarray(owner[1:], dtype=np.int64)
    profile = dict(
        driver="GTiff", width=w, height=h, count=1, dtype="int32", crs=classes_ds.crs,
        transform=classes_ds.transform, tiled=True, blockxsize=512, blockysize=512,
        compress="ZSTD", ZSTD_LEVEL=1, BIGTIFF="IF_SAFER",
    )
    with rasterio.open(out_path, "w", **profile) as dst:
        offset = 0
        for r0, sh in strips:
            cls = classes_ds.read(1, window=Window(0, r0, w, sh))
            prov, own = _strip_labels(cls, n_classes, offset, structure)
            offset += len(own)
            dst.write(final_of[prov].astype(np.int32)[None], window=Window(0, r0, w, sh))
    return Components(
        owner=out_owner,
        sums=np.bincount(final_of, weights=total_sums, minlength=k),
        counts=np.bincount(final_of, weights=total_counts, minlength=k),
    )


def _write_layer(path: Path, layer: str, crs: str, geoms, fields: dict[str, np.ndarray]) -> None:
    import shapely
    from pyogrio.raw import write

    wkb = np.asarray(shapely.to_wkb(np.asarray(geoms, dtype=object)), dtype=object) if len(geoms) else np.array([], dtype=object)
    write(
        str(path),
        geometry=wkb,
        field_data=list(fields.values()),
        fields=list(fields.keys()),
        layer=layer,
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs,
        append=path.exists(),
    )


def vectorize_products(
    out_gpkg: Path,
    *,
    classes_path: Path,
    class_names: list[str],
    class_colors: list[str],
    confidence_path: Path | None = None,
    mask_path: Path | None = None,
    mask_names: list[str] | tuple[str, ...] = (),
) -> list[LayerStats]:
    """Write layer ``classes`` and one layer per mask head to ``out_gpkg``.

    Args:
        classes_path: uint8 class-id raster (255 = nodata).
        class_names, class_colors: names and ``#rrggbb`` colours by class id.
        confidence_path: uint8 confidence raster 0-100 on the same grid, optional.
        mask_path: uint8 raster with one 0/1 band per mask head (255 = nodata).
        mask_names: the mask heads' names, one per band of ``mask_path``.
    """
    import rasterio
    import shapely.geometry

    stats: list[LayerStats] = []
    labels_path = out_gpkg.with_name(f".{out_gpkg.name}.labels.partial.tif")
    try:
        with ExitStack() as stack:
            ds = stack.enter_context(rasterio.open(classes_path))
            cds = stack.enter_context(rasterio.open(confidence_path)) if confidence_path is not None else None
            crs, transform = ds.crs.to_wkt(), ds.transform
            comps = label_components(ds, len(class_names), labels_path, cds)
        areas = AreaCalculator(crs)
        names = np.array(class_names, dtype=object)
        s = LayerStats("classes")
        area_by_class = np.zeros(len(class_names))
        with rasterio.open(labels_path) as lds:
            shapes = _shapes(rasterio.band(lds, 1), transform, keep=lambda v: v > 0)
            first = True
            while True:  # polygons go to the GeoPackage in batches, not all at once
                chunk = list(islice(shapes, WRITE_BATCH))
                if not chunk and not first:
                    break
                first = False
                geoms = [shapely.geometry.shape(g) for g, _ in chunk]
                ids = np.asarray([v for _, v in chunk], dtype=np.int64)
                cls = comps.owner[ids]
                area, _ = areas.area_perimeter(geoms) if geoms else (np.zeros(0), np.zeros(0))
                if confidence_path is not None:
                    conf = comps.sums[ids] / np.maximum(comps.counts[ids], 1)
                else:
                    conf = np.full(len(geoms), np.nan)
                fields = {
                    "class_id": cls.astype(np.int32),
                    "class_name": names[cls] if len(cls) else np.array([], dtype=object),
                    "area_m2": area.astype(np.float64),
                    "confidence": np.round(conf, 2).astype(np.float64),
                }
                _write_layer(out_gpkg, "classes", crs, geoms, fields)
                area_by_class += np.bincount(cls, weights=area, minlength=len(class_names))
                s.features += len(geoms)
    finally:
        labels_path.unlink(missing_ok=True)
    cats = [(i, n, c) for i, (n, c) in enumerate(zip(class_names, class_colors))]
    write_layer_style(out_gpkg, "classes", categorized_qml("class_id", cats), categorized_sld("classes", "class_id", cats))
    s.area_m2 = {n: float(a) for n, a in zip(class_names, area_by_class)}
    stats.append(s)

    for m, name in enumerate(mask_names):
        with rasterio.open(mask_path) as mds:
            shapes = _shapes(rasterio.band(mds, m + 1), transform, keep=lambda v: v == 1)
            mgeoms = [shapely.geometry.shape(g) for g, _ in shapes]
        marea, _ = areas.area_perimeter(mgeoms) if mgeoms else (np.zeros(0), np.zeros(0))
        _write_layer(
            out_gpkg,
            name,
            crs,
            mgeoms,
            {"mask_name": np.array([name] * len(mgeoms), dtype=object), "area_m2": marea.astype(np.float64)},
        )
        color = "#ff7f00"
        write_layer_style(
            out_gpkg, name, single_qml(color), categorized_sld(name, "mask_name", [(f"'{name}'", name, color)])
        )
        stats.append(LayerStats(name, len(mgeoms), {name: float(marea.sum())}))
    return stats
