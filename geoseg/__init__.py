"""geoseg: seamless, Dask-tiled segmentation of any-size rasters into GIS-ready outputs.

Public API::

    import geoseg
    manifest = geoseg.run_scene("scene.tif", "out/", model="default")
    bundle = geoseg.load_model("default")      # bundle.module is a torch.nn.Module
    geoseg.synthesize("synth.tif", 2048, seed=0, labels_path="labels.tif")
    summary = geoseg.vectorize("out/scene.classes.tif", "scene.gpkg", min_area=500, simplify=5)
    ev = geoseg.evaluate_model("default", "scene.tif", "labels.tif")   # ev.report(): miou, ...
    report = geoseg.run_batch("catalog.yaml", workers=2)   # every scene of a catalog
"""

from __future__ import annotations

from .errors import (
    CatalogError,
    ContractError,
    GeosegError,
    InputError,
    LockedError,
    ModelError,
    OutputError,
    RasterReadError,
)
from .grid import GeoBox, PixelWindow, Tile, TileGrid
from .pipeline import RunOptions, run_scene
from .vectorize import VectorizeOptions, vectorize

__version__ = "0.1.0"

__all__ = [
    "CatalogError",
    "ContractError",
    "GeoBox",
    "GeosegError",
    "InputError",
    "LockedError",
    "ModelError",
    "OutputError",
    "PixelWindow",
    "RasterReadError",
    "RunOptions",
    "Tile",
    "TileGrid",
    "VectorizeOptions",
    "evaluate_model",
    "list_models",
    "load_model",
    "run_batch",
    "run_scene",
    "synthesize",
    "vectorize",
]


def load_model(name_or_path: str):
    """Load a built-in model by name or a bundle file by path (see :mod:`geoseg.models`)."""
    from .models import load_model as _load

    return _load(name_or_path)


def list_models() -> list[tuple[str, str]]:
    """``(name, description)`` of the built-in models."""
    from .models import list_models as _list

    return _list()


def synthesize(*args, **kwargs):
    """Write a synthetic scene (see :func:`geoseg.synthetic.synthesize`)."""
    from .synthetic import synthesize as _synth

    return _synth(*args, **kwargs)


def run_batch(*args, **kwargs):
    """Run every scene of a catalog that is not up to date (see :func:`geoseg.batch.run_batch`)."""
    from .batch import run_batch as _run

    return _run(*args, **kwargs)


def evaluate_model(*args, **kwargs):
    """Score a model on a labelled scene through the full pipeline (see :func:`geoseg.evaluate.evaluate_model`)."""
    from .evaluate import evaluate_model as _evaluate

    return _evaluate(*args, **kwargs)
