"""geoseg: seamless, Dask-tiled segmentation of any-size rasters into GIS-ready outputs.

Public API::

    import geoseg
    manifest = geoseg.run_scene("scene.tif", "out/", model="default")
    bundle = geoseg.load_model("default")      # bundle.module is a torch.nn.Module
    geoseg.synthesize("synth.tif", 2048, seed=0, labels_path="labels.tif")
    summary = geoseg.vectorize("out/scene.classes.tif", "scene.gpkg", min_area=500, simplify=5)
    ev = geoseg.evaluate_model("default", "scene.tif", "labels.tif")   # ev.report(): miou, ...
    report = geoseg.run_batch("catalog.yaml", workers=2)   # every scene of a catalog

The names load lazily (``import geoseg`` imports neither torch, dask nor rasterio); each
is the real object of its subpackage, with its real signature. The subpackages follow the
data: :mod:`geoseg.io` (sources) -> :mod:`geoseg.models` -> :mod:`geoseg.scene` (tiles,
predictor, products, manifest) -> :mod:`geoseg.vector` (polygons); :mod:`geoseg.train`
and :mod:`geoseg.batch` build on them, :mod:`geoseg.cli` is the command line.
"""

from __future__ import annotations

from geoseg._constants import VERSION as __version__
from geoseg._lazy import attach

_WHERE = {
    **dict.fromkeys(
        ("CatalogError", "ContractError", "GeosegError", "InputError", "LockedError", "ModelError", "OutputError",
         "RasterReadError"),
        "geoseg.errors",
    ),
    **dict.fromkeys(("GeoBox", "PixelWindow", "Tile", "TileGrid"), "geoseg.grid"),
    **dict.fromkeys(("RunOptions", "run_scene"), "geoseg.scene.pipeline"),
    **dict.fromkeys(("VectorizeOptions", "vectorize"), "geoseg.vector.api"),
    **dict.fromkeys(("list_models", "load_model"), "geoseg.models.registry"),
    "ModelBundle": "geoseg.models.bundle",
    "synthesize": "geoseg.synthetic",
    **dict.fromkeys(("Evaluation", "evaluate_model"), "geoseg.train.scoring"),
    "train_model": "geoseg.train.job",
    **dict.fromkeys(("TrainSettings", "load_train_config"), "geoseg.train.settings"),
    **dict.fromkeys(("BatchReport", "run_batch"), "geoseg.batch.runner"),
    "configure_process": "geoseg.allocator",
    "segment": "geoseg.xr.inference",
    "polygons": "geoseg.xr.vectors",
    "to_cog": "geoseg.xr.cog",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = attach(__name__, _WHERE)
