"""Class maps and masks to polygons in a GIS-ready GeoPackage.

:func:`vectorize_products` is the one entry point the scene pipeline calls. This first
version labels the class map's 4-connected regions in memory and polygonizes the labels
(the same polygons as ``gdal_polygonize.py``); each polygon gets its class, its area in
square metres (geodesic for geographic CRSs) and the mean confidence of its pixels.
Mask layers are polygonized straight from disk. A later version makes this streaming
and parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .styles import categorized_qml, categorized_sld, single_qml, write_layer_style


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


def _polygons(band, transform, keep: set[int]) -> list:
    """Polygonize a raster band straight from disk (GDAL, 4-connectivity).

    GDAL reads the band line by line, so memory holds the polygons, not the raster.
    Returns the polygons whose value is in ``keep``.
    """
    import shapely.geometry
    from rasterio import features

    return [
        shapely.geometry.shape(geom)
        for geom, value in features.shapes(band, connectivity=4, transform=transform)
        if int(value) in keep
    ]


def _components(classes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 4-connected regions of equal class: ``(labels int32, class of each label)``.

    Label 0 is nodata (or any value >= ``n_classes``); polygonizing ``labels`` gives the
    same polygons as polygonizing ``classes`` (4-connectivity), each carrying its label.
    """
    from scipy import ndimage

    labels = np.zeros(classes.shape, dtype=np.int32)
    lab = np.empty(classes.shape, dtype=np.int32)  # reused for every class
    owner = [-1]
    structure = ndimage.generate_binary_structure(2, 1)
    for c in range(n_classes):
        sel = classes == c
        if not sel.any():
            continue
        n = ndimage.label(sel, structure=structure, output=lab)
        np.add(lab, len(owner) - 1, out=labels, where=sel)
        owner.extend([c] * n)
    return labels, np.asarray(owner, dtype=np.int64)


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
    from rasterio import features

    stats: list[LayerStats] = []
    with rasterio.open(classes_path) as ds:
        crs, transform = ds.crs.to_wkt(), ds.transform
        classes = ds.read(1)
    # This simple vectorizer holds the class map and its component labels in memory
    # (5 bytes a pixel); polygons and per-polygon confidence come from the labels.
    labels, owner = _components(classes, len(class_names))
    del classes
    geoms, ids = [], []
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        geoms.append(shapely.geometry.shape(geom))
        ids.append(int(value))
    ids = np.asarray(ids, dtype=np.int64)
    cls = owner[ids] if len(ids) else np.zeros(0, dtype=np.int64)
    areas = AreaCalculator(crs)
    area, _ = areas.area_perimeter(geoms) if geoms else (np.zeros(0), np.zeros(0))
    if confidence_path is not None and len(ids):
        with rasterio.open(confidence_path) as cds:
            confidence = cds.read(1).ravel()
        flat = labels.ravel()
        sums = np.zeros(len(owner))
        counts = np.zeros(len(owner))
        step = 1 << 22  # float64 weights chunk by chunk, not for the whole map at once
        for i in range(0, flat.size, step):
            sums += np.bincount(flat[i : i + step], weights=confidence[i : i + step], minlength=len(owner))
            counts += np.bincount(flat[i : i + step], minlength=len(owner))
        conf = sums[ids] / np.maximum(counts[ids], 1)
        del confidence, flat
    else:
        conf = np.full(len(geoms), np.nan)
    del labels
    names = np.array(class_names, dtype=object)
    _write_layer(
        out_gpkg,
        "classes",
        crs,
        geoms,
        {
            "class_id": cls.astype(np.int32),
            "class_name": names[cls] if len(cls) else np.array([], dtype=object),
            "area_m2": area.astype(np.float64),
            "confidence": np.round(conf, 2).astype(np.float64),
        },
    )
    cats = [(i, n, c) for i, (n, c) in enumerate(zip(class_names, class_colors))]
    write_layer_style(out_gpkg, "classes", categorized_qml("class_id", cats), categorized_sld("classes", "class_id", cats))
    s = LayerStats("classes", len(geoms))
    for i, n in enumerate(class_names):
        s.area_m2[n] = float(area[cls == i].sum()) if len(cls) else 0.0
    stats.append(s)

    for m, name in enumerate(mask_names):
        with rasterio.open(mask_path) as mds:
            mgeoms = _polygons(rasterio.band(mds, m + 1), transform, {1})
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
