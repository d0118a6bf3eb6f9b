"""Raster and label I/O: the only place geoseg opens raster files.

- :mod:`~geoseg.io.raster`: :func:`open_raster` (the one ``rasterio.open``), scenes
  (:class:`SceneSource`, :func:`open_scene`) and windowed reads.
- :mod:`~geoseg.io.cog`: uint8 products written window by window and finished as COGs.
- :mod:`~geoseg.io.labels`: label rasters on any grid and polygons, onto an image grid.
- :mod:`~geoseg.io.stac`: STAC Items of a run's outputs; reading STAC sources of catalogs.

- :mod:`~geoseg.io.sources`: :func:`open_source`, the entry point from what a user gives
  (local raster, http(s)/s3 URL, STAC Item) to a scene source; :mod:`~geoseg.io.remote`
  (URLs, GDAL network settings, retries, HTTP metadata) and :mod:`~geoseg.io.stac_source`
  (an Item's per-band assets stacked in a VRT).

New kinds of scene source (warped views, areas of interest) are new modules here.
"""

from __future__ import annotations

from geoseg._lazy import attach

_WHERE = {
    "SceneSource": "geoseg.io.raster",
    "check_path": "geoseg.io.raster",
    "dtype_range": "geoseg.io.raster",
    "file_sha256": "geoseg.io.raster",
    "open_raster": "geoseg.io.raster",
    "open_scene": "geoseg.io.raster",
    "open_source": "geoseg.io.sources",
    "read_band": "geoseg.io.raster",
    "COG_OPTIONS": "geoseg.io.cog",
    "RasterProduct": "geoseg.io.cog",
    "class_tags": "geoseg.io.cog",
    "LabelOptions": "geoseg.io.labels",
    "geobox_of": "geoseg.io.labels",
    "inspect_labels": "geoseg.io.labels",
    "open_labels": "geoseg.io.labels",
    "read_labels": "geoseg.io.labels",
    "read_items": "geoseg.io.stac",
    "scene_item": "geoseg.io.stac",
    "write_catalog": "geoseg.io.stac",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
