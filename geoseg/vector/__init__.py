"""Class maps to polygon layers: exact block-parallel polygonizing, coverage simplification,
GeoPackage / FlatGeobuf / GeoParquet writers with QGIS styles.

- :mod:`~geoseg.vector.api`: :func:`vectorize` (a class map file to a vector file) and
  :func:`vectorize_products` (what ``run_scene`` calls).
- :mod:`~geoseg.vector.polygonize`: the exact block-parallel, streaming polygonizer (GDAL
  through :mod:`~geoseg.vector._gdal`).
- :mod:`~geoseg.vector.areas`: ground areas and lengths on the ellipsoid in any CRS.
- :mod:`~geoseg.vector.coverage`: topology-preserving simplification.
- :mod:`~geoseg.vector.formats` and :mod:`~geoseg.vector.styles`: writers and QGIS styles.
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    "VectorizeOptions": "geoseg.vector.api",
    "vectorize": "geoseg.vector.api",
    "vectorize_products": "geoseg.vector.api",
    "node_coverage": "geoseg.vector.coverage",
    "simplify_coverage": "geoseg.vector.coverage",
    "LayerData": "geoseg.vector.formats",
    "write_layer": "geoseg.vector.formats",
    "LayerWriter": "geoseg.vector.formats",
    "AreaCalculator": "geoseg.vector.areas",
    "polygonize_stream": "geoseg.vector.polygonize",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
