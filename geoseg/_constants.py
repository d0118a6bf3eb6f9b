"""Constants shared across geoseg's packages, each defined once.

Imported by every module that needs one; nothing here imports anything heavy.
"""

from __future__ import annotations

from typing import Final

#: The uint8 value that means "no data" in every product geoseg writes (class map, masks,
#: confidence) and "no label" in every label raster it reads. The two are the same value on
#: purpose: a class map written by ``geoseg run`` can be scored, or used as labels, without
#: translating its nodata (``geoseg.train.validation.predict_scene`` relies on it).
NODATA: Final = 255
IGNORE: Final = NODATA

#: Default core tile size. Measured on an 8192^2 scene with the default model (56-px
#: halo): 1024-px tiles ran as fast as 2048-px ones (inference 26.3 s vs 27.0 s) at
#: 2.7 GB instead of 4.5 GB peak RSS (whole-run peaks, with the earlier in-memory vectorizer).
DEFAULT_TILE_SIZE: Final = 1024

#: Default polygonize block edge in pixels. Polygons stream out block by block, so memory is
#: the blocks in flight: a speckled 512^2 block holds ~65k polygons (~70 MB); few cross-block merges.
DEFAULT_BLOCK_SIZE: Final = 512

#: GDAL settings for every read: bounded block cache, no sidecar scanning. Mind that
#: rasterio.Env takes GDAL_CACHEMAX in *bytes* (a bare 256 meant 256 bytes: every
#: scanline read decompressed its block again, 3-6x slower polygonizing, measured).
GDAL_CACHE_BYTES: Final = 256 * 1024 * 1024
GDAL_ENV: Final = {"GDAL_CACHEMAX": GDAL_CACHE_BYTES, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
