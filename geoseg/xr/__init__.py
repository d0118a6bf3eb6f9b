"""xarray in, xarray and GeoDataFrames out: geoseg as one lazy step of a Pangeo workflow.

- :func:`segment`: a DataArray or Dataset of imagery -> a lazy :class:`xarray.Dataset` of
  class map, confidence and masks, equal to ``geoseg run``'s outputs (the same tiles, halo
  and per-tile kernel, whatever the input's chunking).
- :func:`polygons`: a class map (path, DataArray or array) -> :class:`geopandas.GeoDataFrame`
  with the columns of ``geoseg vectorize``'s GeoPackage layer.
- :func:`to_cog`: a ``segment`` result or a class map DataArray -> geoseg's COGs (colour
  table, class names, mode overviews), written chunk by chunk from Dask.

Needs the ``xarray`` extra: ``pip install 'geoseg[xarray]'``.
"""

from __future__ import annotations

from geoseg._lazy import attach

__all__ = ["polygons", "segment", "to_cog"]

__getattr__, __dir__ = attach(
    __name__,
    {"segment": "geoseg.xr.inference", "polygons": "geoseg.xr.vectors", "to_cog": "geoseg.xr.cog"},
)
