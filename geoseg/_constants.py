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

#: Polygonize block edges in pixels, chosen per map (``geoseg.vector.polygonize.choose_block_size``).
#: Polygons stream out block by block, so memory is the blocks in flight: a speckled 512^2
#: block holds ~65k polygons (~70 MB). Regions that cross block edges are joined, so maps of
#: few large regions (fields, water, building masks) want large blocks: an 8192^2 map of
#: 11.6k blobs took 11.4 s at 512 px and 6.5 s at 2048 px (BENCHMARKS.md).
BLOCK_SIZES: Final = (512, 1024, 2048)
#: ... the largest size whose blocks hold at most this many boundary pixel pairs (neighbours
#: of different values), from the map's sampled boundary density: speckle (0.37 of the pairs
#: differ: 195k in a 512^2 block) gets 512, the default model's map (0.023) and a blob map
#: (0.020) 2048 (190k and 168k pairs per block).
BLOCK_BOUNDARY_PAIRS: Final = 250_000

#: GDAL's block cache (one per process, sized by :func:`geoseg.io.raster.size_block_cache`)
#: while only local rasters are read: the blocks a row of tiles' halo shares with the next
#: row, and the blocks products write between flushes (``geoseg.io.cog.FLUSH_BYTES`` each).
#: At 256 MiB the cache kept input blocks nobody read again: to_cog's 8192^2 peak was 1.38x
#: the 2048^2 one; at 96 MiB 1.21x, for the same speed (BENCHMARKS.md).
GDAL_CACHE_BYTES: Final = 96 * 2**20
#: ... once a remote source is read: the shared handle's read-ahead and prefetch keep up to
#: three rows of blocks of every file of the source (an 8192^2 Item of four COGs: 96 MiB)
#: until the tiles read them; with 96 MiB they were evicted and fetched again (1.87x the bytes).
REMOTE_GDAL_CACHE_BYTES: Final = 256 * 2**20
#: GDAL settings for every read: no sidecar scanning. (Not GDAL_CACHEMAX: GDAL's block cache
#: is one per process, and a ``rasterio.Env`` that sets it resizes it for every thread on
#: entry and again on exit, evicting what other threads' reads had cached.)
GDAL_ENV: Final = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}

#: geoseg's version (``geoseg.__version__``): Dask workers whose geoseg differs from the
#: client's are refused (:func:`geoseg._dask.check_workers`), since they would write other bytes.
VERSION: Final = "0.1.0"
