"""Class maps and masks to polygons in a GIS-ready GeoPackage.

:func:`vectorize_products` is the one entry point the scene pipeline calls. This first
version polygonizes the whole map at once (4-connectivity, as ``gdal_polygonize.py``);
each polygon gets its class, its area in square metres (geodesic for geographic CRSs)
and the mean confidence of its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .predict import NODATA
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


def _components(classes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 4-connected regions of equal class; returns (labels int32, class of each label)."""
    from scipy import ndimage

    labels = np.zeros(classes.shape, dtype=np.int32)
    owner = [NODATA]
    structure = ndimage.generate_binary_structure(2, 1)
    offset = 0
    for c in range(n_classes):
        sel = classes == c
        if not sel.any():
            continue
        lab, n = ndimage.label(sel, structure=structure)
        labels[sel] = lab[sel] + offset
        owner.extend([c] * n)
        offset += n
    return labels, np.asarray(owner, dtype=np.int32)


def _polygons(labels: np.ndarray, transform) -> tuple[list, np.ndarray]:
    """Polygonize the non-zero labels (GDAL, 4-connectivity)."""
    import shapely.geometry
    from rasterio import features

    geoms, ids = [], []
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        geoms.append(shapely.geometry.shape(geom))
        ids.append(int(value))
    return geoms, np.asarray(ids, dtype=np.int64)


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
    classes: np.ndarray,
    transform,
    crs: str,
    class_names: list[str],
    class_colors: list[str],
    confidence: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    mask_names: list[str] | tuple[str, ...] = (),
) -> list[LayerStats]:
    """Write layer ``classes`` and one layer per mask head to ``out_gpkg``.

    Args:
        classes: ``(H, W)`` uint8 class ids, 255 = nodata.
        confidence: ``(H, W)`` uint8 confidence 0-100 (255 = nodata), optional.
        masks: ``(M, H, W)`` uint8 0/1 masks (255 = nodata), optional.
    """
    areas = AreaCalculator(crs)
    stats: list[LayerStats] = []

    labels, owner = _components(classes, len(class_names))
    geoms, ids = _polygons(labels, transform)
    cls = owner[ids] if len(ids) else np.zeros(0, dtype=np.int32)
    area, _ = areas.area_perimeter(geoms) if geoms else (np.zeros(0), np.zeros(0))
    if confidence is not None and len(ids):
        flat = labels.ravel()
        sums = np.bincount(flat, weights=confidence.ravel().astype(np.float64), minlength=len(owner))
        counts = np.bincount(flat, minlength=len(owner))
        conf = sums[ids] / np.maximum(counts[ids], 1)
    else:
        conf = np.full(len(ids), np.nan)
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
        mask = masks[m]
        mlabels, mowner = _components(mask, 2)
        keep = mowner == 1
        sel = keep[mlabels]
        mlabels = np.where(sel, mlabels, 0)
        mgeoms, _ = _polygons(mlabels, transform)
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
