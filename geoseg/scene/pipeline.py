"""The scene pipeline: a Dask graph of per-tile tasks, stitched into COGs and polygons.

``run_scene`` validates the scene against the model's contract, cuts the raster into a
:class:`~geoseg.grid.TileGrid` with the halo the model needs, and builds one task per
batch of tiles (read window with halo -> predict the core). With the default
local threads, write tasks in the same graph store each batch's result window by window;
on a ``dask.distributed`` cluster the results stream back to the client, which writes
them as they complete. Either way, at most a few tiles are in memory at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._constants import DEFAULT_TILE_SIZE, GDAL_ENV
from geoseg._dask import check_resources, cluster_size, connect_cluster, run_tasks
from geoseg._files import OutputSet, prepare_out_dir, remove_files
from geoseg._naming import output_paths
from geoseg.errors import ContractError, InputError
from geoseg.grid import PixelWindow, Tile, TileGrid, batches
from geoseg.io.cog import RasterProduct, class_tags
from geoseg.io.raster import SceneSource, dtype_range, file_sha256, open_raster, open_scene
from geoseg.progress import Progress
from geoseg.scene.manifest import build_manifest, write_manifest
from geoseg.scene.predict import get_predictor, resolve_device
from geoseg.scene.view import SceneView, plan_view
from geoseg.vector.api import VectorizeOptions

#: Torch threads per forward on CPU. Every forward runs on one core and tiles run in
#: parallel instead, one per thread or worker process: the same float summation order
#: whatever the scheduler, so outputs are byte-identical on local threads, a local
#: cluster or remote workers (with 2 torch threads per forward, ~1 confidence pixel per
#: million differed by 1 point), and 7% faster on the 8192^2 benchmark scene (inference
#: 24.5 s vs 26.3 s) for ~25% more peak memory (two forwards in flight instead of one).
CPU_TORCH_THREADS = 1


@dataclass(frozen=True)
class RunOptions:
    """Parameters of one scene run (all have CLI flags of the same name)."""

    tile_size: int = DEFAULT_TILE_SIZE
    batch_size: int | None = None
    device: str = "auto"
    bands: tuple[int, ...] | None = None
    workers: int | None = None
    scheduler: str | None = None
    threads: int | None = None
    overwrite: bool = False
    quiet: bool = False
    vectorize: bool = True
    min_area: float = 0.0  # m^2: smaller polygons are dropped from the GeoPackage
    simplify: float = 0.0  # metres: topology-preserving simplification of the polygons
    connectivity: int = 4  # 4 or 8: how pixels of a class join into polygons
    stac: bool = False  # also write <stem>.stac.json, a STAC Item describing the outputs
    # resolution and area of interest (geoseg.scene.view)
    output_grid: str = "input"  # "model": products on the model's grid when the scene is resampled to it
    aoi: str | None = None  # FILE[:LAYER] of an OGR vector layer: segment only this area
    bbox: str | None = None  # "MINX,MINY,MAXX,MAXY[,CRS]" (default CRS EPSG:4326): segment only this box
    aoi_crop: bool = True  # outputs cover the area's bounding window (False: the whole scene)

    def output_options(self) -> dict:
        """The options that shape the outputs, as requested (recorded in the manifest as
        ``options``; ``geoseg batch`` reruns a scene when one of them changes). Where the
        work runs (workers, scheduler, threads) and how it is reported are left out."""
        out = {name: getattr(self, name) for name in OUTPUT_OPTIONS}
        out["bands"] = list(self.bands) if self.bands is not None else None
        out["aoi"] = None if self.aoi is None else str(self.aoi)
        out["bbox"] = self.bbox if self.bbox is None or isinstance(self.bbox, str) else list(self.bbox)
        return out


#: The :class:`RunOptions` fields that shape a run's outputs.
OUTPUT_OPTIONS = ("tile_size", "batch_size", "device", "bands", "vectorize", "min_area", "simplify", "connectivity", "stac",
                  "output_grid", "aoi", "bbox", "aoi_crop")


@dataclass
class TileResult:
    """The cropped products of one tile."""

    core: PixelWindow
    classes: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    skipped: bool


def check_contract(source: SceneSource, bundle) -> None:
    """Refuse a scene whose values the model cannot have been trained on."""
    vr = getattr(bundle, "value_range", None)
    if vr is None:
        return
    lo, hi = float(vr[0]), float(vr[1])
    dlo, dhi = dtype_range(source.dtype)
    if dhi < hi or dlo > lo:
        raise ContractError(
            f"{source.path} is {source.dtype} (values {dlo:g}..{dhi:g}) but model '{bundle.name}' expects "
            f"values in {lo:g}..{hi:g}: use a model trained for {source.dtype} data, or rescale the scene"
        )


def predict_batch(
    source: SceneSource,
    tiles: list[Tile],
    model: str,
    device: str,
    torch_threads: int | None = None,
    checksum: str | None = None,
    view: SceneView | None = None,
) -> list[TileResult]:
    """Dask task: read the tiles (with halo), run the model, keep the cores.

    ``model`` is a resolved reference (:func:`geoseg.models.refs.resolve_model_ref`) and
    ``checksum`` the content checksum of the bundle it must load (the predictor cache key).
    """
    predictor = get_predictor(model, checksum, resolve_device(device), torch_threads)
    with open_raster(source.path) as ds:
        reads = [source.read(t.read, ds) if view is None else view.read(source, t.read, ds) for t in tiles]
    data = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    # A tile whose core has no valid pixel writes only nodata: skip the model for it.
    has_valid = np.array([valid[k][t.crop].any() for k, t in enumerate(tiles)])
    context, inner = tiles[0].context, tiles[0].inner  # the same for a batch (grid.batches)
    core = tiles[0].core
    if has_valid.all():
        pred = predictor.predict(data, valid, context, inner)
    else:
        pred = predictor.empty(len(tiles), core.height, core.width)
        if has_valid.any():
            sub = predictor.predict(data[has_valid], valid[has_valid], context, inner)
            pred.classes[has_valid], pred.confidence[has_valid], pred.masks[has_valid] = (
                sub.classes,
                sub.confidence,
                sub.masks,
            )
    results = [
        TileResult(tile.core, pred.classes[k], pred.confidence[k], pred.masks[k], skipped=not bool(has_valid[k]))
        for k, tile in enumerate(tiles)
    ]
    # with a view: tiles of the model grid -> the output grid, masked to the area of interest
    return results if view is None else view.finish(tiles, results, reads)


class TileSink:
    """Receives tile results and writes them into the output rasters."""

    def __init__(
        self, classes: RasterProduct, confidence: RasterProduct, masks: RasterProduct | None, progress: Progress
    ) -> None:
        self.classes, self.confidence, self.masks = classes, confidence, masks
        self.counts = np.zeros(256, dtype=np.int64)
        self.skipped = 0
        self.progress = progress
        self._lock = threading.Lock()

    def write(self, results: list[TileResult]) -> None:
        for r in results:
            self.classes.write(r.core, r.classes)
            self.confidence.write(r.core, r.confidence)
            if self.masks is not None:
                self.masks.write(r.core, r.masks)
            with self._lock:
                self.counts += np.bincount(r.classes.ravel(), minlength=256)
                self.skipped += r.skipped
            self.progress.update(1)


def _run_threaded(sink: TileSink, tasks: list[tuple], threads: int) -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(CPU_TORCH_THREADS)  # for this run only (see CPU_TORCH_THREADS)
    try:
        run_tasks(predict_batch, tasks, lambda _, result: sink.write(result), threads=threads)
    finally:
        torch.set_num_threads(before)


def _run_distributed(
    sink: TileSink,
    tasks: list[tuple],
    scheduler: str | None,
    workers: int | None,
    client=None,
    resources: dict[str, float] | None = None,
) -> dict:
    """Run the tile tasks on a cluster: ``client`` when given (left open), else one
    connected to ``scheduler`` or a new local cluster of ``workers`` (closed after)."""
    cluster = None
    own = client is None
    if own:
        client, cluster, info = connect_cluster(scheduler, workers)
    else:
        info = {"scheduler": scheduler or "LocalCluster"}
    try:
        check_resources(client, resources)
        n_workers, n_threads = cluster_size(client)
        info["workers"] = n_workers
        if resources:
            info["resources"] = dict(resources)
        run_tasks(predict_batch, tasks, lambda _, result: sink.write(result), client=client, resources=resources,
                  window=2 * n_threads)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return info


def _default_out_dir(path: str | os.PathLike) -> Path:
    return Path.cwd() / f"{Path(path).stem}_geoseg"


def run_scene(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    model: str = "default",
    *,
    client=None,
    resources: dict[str, float] | None = None,
    stac_item: dict | None = None,
    **options,
) -> dict:
    """Segment one scene; write its COGs, GeoPackage and run manifest.

    Args:
        path: input raster (any size; read window by window).
        out_dir: output directory (default ``./<stem>_geoseg/``).
        model: a built-in model name or a bundle path.
        client: a ``distributed.Client`` to run the tile tasks on (left open; e.g. one
            shared by the scenes of a batch) instead of one made for this scene from
            ``workers``/``scheduler``, which then only describe it in the manifest.
        resources: Dask worker resources every tile task needs (e.g. ``{"GPU": 1}``);
            only on a cluster. The device (``auto`` too) is then resolved on the workers.
        stac_item: fields merged into the STAC Item (with ``stac=True``): ``id``,
            ``properties``, ``links``.
        **options: fields of :class:`RunOptions` (``tile_size``, ``batch_size``,
            ``device``, ``bands``, ``workers``, ``scheduler``, ``threads``,
            ``overwrite``, ``quiet``, ``vectorize``, ``min_area``, ``simplify``,
            ``connectivity``, ``stac``).

    Returns:
        The run manifest (also written as ``<stem>.run.json``).
    """
    from geoseg.allocator import configure_process, release_free_memory, tune_cpu_allocator
    from geoseg.models.refs import resolve_model_ref
    from geoseg.models.registry import load_model

    configure_process()  # the process defaults an entry point sets (no-op when already set)

    unknown = set(options) - set(RunOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"run_scene() got unknown option(s) {sorted(unknown)}")
    if options.get("bands") is not None:
        options["bands"] = tuple(int(b) for b in options["bands"])
    opts = RunOptions(**options)
    if opts.workers is not None and opts.workers < 1:
        raise InputError(f"--workers must be >= 1, got {opts.workers}")
    if opts.workers and opts.scheduler:
        raise InputError("give either --workers (start a local cluster) or --scheduler (use an existing one), not both")
    vector_options = VectorizeOptions(connectivity=opts.connectivity, min_area=opts.min_area, simplify=opts.simplify)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    scene = open_scene(path)  # a bad scene is reported before a model is loaded
    bundle = load_model(model)
    source = scene.select(opts.bands, tuple(bundle.bands))
    check_contract(source, bundle)
    view = plan_view(source.geobox, bundle.gsd, output_grid=opts.output_grid, aoi=opts.aoi, bbox=opts.bbox,
                     aoi_crop=opts.aoi_crop, name=source.path)  # model grid, area of interest
    distributed = bool(opts.workers or opts.scheduler or client is not None)
    resources = dict(resources) if resources and distributed else None
    # tasks that target worker resources (GPUs) resolve the device where they run
    device = opts.device if resources else resolve_device(opts.device)
    if device == "cpu":
        # best effort for API users; most effective before torch starts (geoseg.allocator)
        tune_cpu_allocator()
    batch_size = opts.batch_size or (1 if device == "cpu" else 4)
    tile_box = view.tile_geobox  # the model grid when the scene is resampled
    grid = TileGrid(tile_box.height, tile_box.width, opts.tile_size, halo=int(bundle.halo), factor=int(bundle.downsampling))

    out = prepare_out_dir(out_dir if out_dir is not None else _default_out_dir(path))
    stem = Path(path).stem
    has_masks = len(bundle.mask_heads) > 0
    finals = output_paths(out, stem, has_masks, opts.vectorize, opts.stac)
    outputs = OutputSet(out, overwrite=opts.overwrite)
    outputs.check_free(list(finals.values()))
    timings["validate"] = time.perf_counter() - t0

    hasher = ThreadPoolExecutor(max_workers=1)
    input_sha = hasher.submit(file_sha256, source.path)
    products: list[RasterProduct] = []
    try:
        products = _create_products(finals, view.output, outputs, bundle)
        classes, confidence = products[0], products[1]
        masks = products[2] if has_masks else None

        tiles = view.select(grid)  # with an area of interest: the tiles that touch it
        plan = batches(tiles, batch_size)
        torch_threads = CPU_TORCH_THREADS if distributed else None  # threaded: set by _run_threaded
        model_ref = resolve_model_ref(model)
        tile_view = None if view.trivial else view
        tasks = [(source, b, model_ref, device, torch_threads, bundle.checksum, tile_view) for b in plan]
        t1 = time.perf_counter()
        with Progress(total=len(tiles), desc=f"{stem}: tiles", disable=opts.quiet) as progress:
            sink = TileSink(classes, confidence, masks, progress)
            if distributed:
                sched_info = _run_distributed(sink, tasks, opts.scheduler, opts.workers, client, resources)
            else:
                threads = opts.threads or max(2, os.cpu_count() or 1)
                sched_info = {"scheduler": "threads", "threads": threads}
                _run_threaded(sink, tasks, threads)
        timings["inference"] = time.perf_counter() - t1
        if device == "cpu":
            release_free_memory()  # the activations' memory: the stages below need none of it

        # One after the other: run in two threads of this process, the vectorizer's Python
        # work and GDAL's COG writer (which calls back into Python) convoy on the GIL,
        # and both took 4-6x longer than in sequence (measured on the demo scene).
        t2 = time.perf_counter()
        stripes = dict(zip(("classes", "confidence", "mask"), (p.close() for p in products)))
        for p in products:
            p.finish()
        timings["write_cogs"] = time.perf_counter() - t2
        vector_stats = None
        if opts.vectorize:
            t3 = time.perf_counter()
            vector_stats = _vectorize_outputs(outputs, finals["vectors"], stripes, bundle, vector_options)
            timings["vectorize"] = time.perf_counter() - t3
        for p in products:
            p.discard_stripes()
        timings["total"] = time.perf_counter() - t0
        manifest = build_manifest(
            source=source,
            input_sha256=input_sha.result(),
            bundle=bundle,
            model_ref=model,
            grid=grid,
            options=opts,
            device=device,
            batch_size=batch_size,
            scheduler=sched_info,
            timings=timings,
            counts=sink.counts,
            skipped=sink.skipped,
            n_tiles=len(tiles),
            vector_stats=vector_stats,
            staged=outputs.staged,
            pixel_geobox=view.output,
        )
        if not view.trivial:
            manifest.update(view.describe())  # output_grid, gsd, aoi
        if opts.stac:
            _stage_stac_item(outputs, finals["stac"], manifest, stac_item)
        outputs.commit()
        write_manifest(manifest, finals["manifest"], outputs)
        return manifest
    except BaseException:
        for p in products:
            try:
                p.discard_stripes()
            except Exception:
                pass
        outputs.discard()
        raise
    finally:
        hasher.shutdown(wait=False)


def _stage_stac_item(outputs: OutputSet, final: Path, manifest: dict, fields: dict | None) -> None:
    """Write the STAC Item of the outputs under a temporary name, stage it, list it in the manifest."""
    from geoseg.io.stac import scene_item
    from geoseg.scene.manifest import output_entry

    tmp = outputs.temp_for(final, "json-")
    try:
        tmp.write_text(json.dumps(scene_item(manifest, **(fields or {})), indent=2) + "\n")
    except BaseException:
        remove_files([tmp])
        raise
    outputs.stage(final, tmp)
    manifest["outputs"]["stac.json"] = output_entry(final, tmp)


def _create_products(finals: dict[str, Path], geobox, outputs: OutputSet, bundle) -> list[RasterProduct]:
    """The class map, confidence and (when the model has mask heads) mask rasters."""
    names, colors = list(bundle.class_names), list(bundle.class_colors)
    products = [
        RasterProduct(finals["classes"], geobox, outputs, descriptions=["class"], colors=colors, tags=class_tags(names, colors)),
        RasterProduct(
            finals["confidence"],
            geobox,
            outputs,
            descriptions=["confidence_percent"],
            tags={"UNITS": "percent", "DESCRIPTION": "max class probability x 100"},
            overview_resampling="AVERAGE",  # a quantity, not a category (and 20% faster than MODE)
        ),
    ]
    if "mask" in finals:
        heads = list(bundle.mask_heads)
        products.append(
            RasterProduct(finals["mask"], geobox, outputs, count=len(heads), descriptions=heads, tags={"MASK_HEADS": ",".join(heads)})
        )
    return products


def _vectorize_outputs(outputs: OutputSet, final: Path, rasters: dict[str, Path], bundle, options: VectorizeOptions) -> list:
    """Polygonize the finished class map (and masks) into a temporary GeoPackage."""
    import rasterio

    from geoseg.vector.api import vectorize_products

    tmp = outputs.temp_for(final, "gpkg-")
    try:
        with rasterio.Env(**GDAL_ENV):
            stats = vectorize_products(
                tmp,
                classes_path=rasters["classes"],
                class_names=list(bundle.class_names),
                class_colors=list(bundle.class_colors),
                confidence_path=rasters["confidence"],
                mask_path=rasters.get("mask"),
                mask_names=list(bundle.mask_heads),
                options=options,
            )
    except BaseException:
        remove_files([tmp])
        raise
    outputs.stage(final, tmp)
    return stats
