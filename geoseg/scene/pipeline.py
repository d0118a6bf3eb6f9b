"""The scene pipeline: per-tile tasks, stitched into COGs and polygons, committed to a store.

``run_scene`` is plan -> infer -> finish -> commit over one
:class:`~geoseg.io.store.OutputStore`. It validates the scene against the model's
contract, cuts the raster into a :class:`~geoseg.grid.TileGrid` with the halo the model
needs, and runs one task per batch of tiles (read window with halo -> predict the core)
on a pool of local threads (:func:`geoseg._dask.run_tasks`) or on a ``dask.distributed``
cluster; either way the results come back to the calling thread, which writes them
window by window into the stripes (:class:`TileSink`), so at most a few tiles are in
memory at once. The stripes become COGs, the class map becomes polygons, and the store
commits every output with the manifest last.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._constants import DEFAULT_TILE_SIZE, GDAL_ENV
from geoseg._dask import check_resources, cluster_size, connect_cluster, run_tasks, workers_missing
from geoseg.errors import ContractError, GeosegError, InputError, OutputError
from geoseg.grid import PixelWindow, Tile, TileGrid, batches, strips
from geoseg.io.cog import RasterProduct, class_tags, stage_legend
from geoseg.io.legend import BandLegend, Category, mask_legends
from geoseg.io.quicklook import stage_quicklooks
from geoseg.io.raster import SceneSource
from geoseg.io.store import OutputStore
from geoseg.progress import Progress
from geoseg.scene.journal import TileJournal, input_identity, journal_key
from geoseg.scene.manifest import build_manifest
from geoseg.scene.predict import PROBABILITY_TAGS, check_precision, get_predictor, predict_tiles, resolve_device
from geoseg.scene.tiling import blend_batch, plan_tiles
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
    resume: bool = False  # continue from the tiles a killed run journaled (geoseg.scene.journal)
    tta: bool = False  # average the probabilities of the 8 flips/rotations of every window
    probabilities: bool = False  # also write <stem>.probabilities.tif (uint8 p x 254 per class)
    precision: str = "fp32"  # fp32, or fp16/bf16 autocast on CUDA
    # scene sources (geoseg.io.sources): STAC Items' band -> asset overrides, the asset whose
    # grid the bands are read on, and whether the input's scale/offset is applied
    assets: tuple[tuple[str, str], ...] | None = None
    grid_asset: str | None = None
    scale_offset: str = "apply"
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
        out["assets"] = dict(self.assets) if self.assets else None
        out["aoi"] = None if self.aoi is None else str(self.aoi)
        out["bbox"] = self.bbox if self.bbox is None or isinstance(self.bbox, str) else list(self.bbox)
        for name, default in SOURCE_DEFAULTS.items():  # recorded only when set: older manifests stay valid
            if out.get(name) == default:
                out.pop(name, None)
        return out


#: Scene-source options and their defaults (left out of ``output_options`` when default).
SOURCE_DEFAULTS = {"assets": None, "grid_asset": None, "scale_offset": "apply"}

#: The :class:`RunOptions` fields that shape a run's outputs.
OUTPUT_OPTIONS = ("tile_size", "batch_size", "device", "bands", "vectorize", "min_area", "simplify", "connectivity", "stac",
                  "tta", "probabilities", "precision", "assets", "grid_asset", "scale_offset",
                  "output_grid", "aoi", "bbox", "aoi_crop")


@dataclass
class TileResult:
    """The cropped products of one tile."""

    core: PixelWindow
    classes: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    skipped: bool
    probabilities: np.ndarray | None = None  # (C, h, w) uint8, with --probabilities
    #: ``(row, col)`` of the tile's core on the tile grid (the journal's key), when ``core``
    #: is where a view mapped it on the output grid (SceneView.finish); None: ``core`` is it
    tile: tuple[int, int] | None = None


def _tile_key(r) -> tuple[int, int]:
    """The tile a result (a :class:`TileResult`, or a blended core) is of."""
    key = getattr(r, "tile", None)
    return key if key is not None else (r.core.row, r.core.col)


def check_contract(source: SceneSource, bundle) -> None:
    """Refuse a scene whose values the model cannot have been trained on."""
    vr = getattr(bundle, "value_range", None)
    if vr is None:
        return
    lo, hi = float(vr[0]), float(vr[1])
    dlo, dhi = source.scaled_range()
    if source.apply_scale and (dhi < hi or dlo > lo):
        pairs = ", ".join(f"{sc:g}/{off:g}" for sc, off in (source.scale_offset[b - 1] for b in source.band_indexes))
        raise ContractError(
            f"{source.path}: with its scale/offset applied ({pairs}, from {source.scale_source}) values span "
            f"{dlo:g}..{dhi:g} but model '{bundle.name}' expects {lo:g}..{hi:g}: pass --scale-offset ignore "
            "to feed the raw values, or use a model trained on scaled values"
        )
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
    tta: bool = False,
    probabilities: bool = False,
    precision: str = "fp32",
    view: SceneView | None = None,
) -> list[TileResult]:
    """Dask task: read the tiles (with halo), run the model, keep the cores.

    ``model`` is a resolved reference (:func:`geoseg.models.refs.resolve_model_ref`) and
    ``checksum`` the content checksum of the bundle it must load (the predictor cache key).
    """
    predictor = get_predictor(model, checksum, resolve_device(device), torch_threads, precision)
    if view is None:
        reads = source.read_windows([t.read for t in tiles])
    else:  # a resampled scene or an area of interest: the view reads (and later maps back) each tile
        reads = source.with_dataset(lambda ds: [view.read(source, t.read, ds) for t in tiles])
    data = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    # a tile whose core has no valid pixel writes only nodata: the model is skipped for it
    pred, has_valid = predict_tiles(predictor, tiles, data, valid, tta=tta, probabilities=probabilities)
    results = [
        TileResult(tile.core, pred.classes[k], pred.confidence[k], pred.masks[k], skipped=not bool(has_valid[k]),
                   probabilities=None if pred.probabilities is None else pred.probabilities[k],
                   tile=(tile.core.row, tile.core.col))
        for k, tile in enumerate(tiles)
    ]
    # with a view: tiles of the model grid -> the output grid, masked to the area of interest
    return results if view is None else view.finish(tiles, results, reads)


class TileSink:
    """Receives tile results and writes them into the output rasters."""

    def __init__(
        self,
        classes: RasterProduct,
        confidence: RasterProduct,
        masks: RasterProduct | None,
        progress: Progress,
        journal: TileJournal | None = None,
        probabilities: RasterProduct | None = None,
    ) -> None:
        self.classes, self.confidence, self.masks = classes, confidence, masks
        self.probabilities = probabilities
        self.counts = np.zeros(256, dtype=np.int64)
        self.mask_counts = np.zeros((masks.count if masks is not None else 0, 2), dtype=np.int64)  # 0s, 1s per head
        self.skipped = 0
        self.progress = progress
        self.journal = journal
        self.done: set[tuple[int, int]] = set()  # tile cores (row, col) resumed from the journal
        self._lock = threading.Lock()

    def _add(self, classes: np.ndarray, masks: np.ndarray | None, skipped: bool) -> None:
        with self._lock:
            self.counts += np.bincount(classes.ravel(), minlength=256)
            if masks is not None and len(self.mask_counts):
                m = masks.reshape(len(self.mask_counts), -1)
                self.mask_counts[:, 0] += (m == 0).sum(axis=1)
                self.mask_counts[:, 1] += (m == 1).sum(axis=1)
            self.skipped += skipped

    def resume(self, journal: TileJournal, state, tiles: list[Tile], view: SceneView | None = None) -> set[tuple[int, int]]:
        """Start the journal; with a journal ``state`` from a killed run, keep the tiles
        whose pixels check out (counted as done) and return their cores' ``(row, col)``
        on the tile grid. With a ``view``, each tile is checked at the window it writes
        on the output grid (:meth:`SceneView.written_window`), where :meth:`write` wrote it."""
        window_of = (lambda t: t.core) if view is None else view.written_window
        journal.plan([w for w in map(window_of, tiles) if w is not None],
                     [p.block_shape for p in (self.classes, self.confidence, self.masks, self.probabilities) if p is not None])
        if state is None:
            journal.start_fresh()
            return self.done

        def good(tile: Tile, arrays: list, skipped: bool) -> None:
            self._add(arrays[0], arrays[2], skipped)
            self.done.add((tile.core.row, tile.core.col))

        journal.verify(state, [self.classes, self.confidence, self.masks], tiles, good,
                       None if view is None else view.written_window)
        self.progress.update(len(self.done))
        return self.done

    def write(self, results: list[TileResult]) -> None:
        for r in results:
            key = _tile_key(r)
            if key in self.done:
                continue  # resumed: already written and checked
            self.classes.write(r.core, r.classes)
            self.confidence.write(r.core, r.confidence)
            if self.masks is not None:
                self.masks.write(r.core, r.masks)
            if self.probabilities is not None:
                self.probabilities.write(r.core, r.probabilities)
            self._add(r.classes, r.masks if self.masks is not None else None, r.skipped)
            if self.journal is not None:
                self.journal.record(key, r.core, [r.classes, r.confidence, r.masks if self.masks is not None else None], r.skipped)
            self.progress.update(1)


def _run_threaded(sink: TileSink, tasks: list[tuple], threads: int, task=predict_batch) -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(CPU_TORCH_THREADS)  # for this run only (see CPU_TORCH_THREADS)
    try:
        run_tasks(task, tasks, lambda _, result: sink.write(result), threads=threads)
    finally:
        torch.set_num_threads(before)


def _run_distributed(
    sink: TileSink,
    tasks: list[tuple],
    scheduler: str | None,
    workers: int | None,
    client=None,
    resources: dict[str, float] | None = None,
    task=predict_batch,
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
        run_tasks(task, tasks, lambda _, result: sink.write(result), client=client, resources=resources,
                  window=2 * n_threads)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return info


def run_scene(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    model: str = "default",
    *,
    client=None,
    resources: dict[str, float] | None = None,
    stac_item: dict | None = None,
    execution: dict | None = None,
    **options,
) -> dict:
    """Segment one scene; write its COGs, GeoPackage and run manifest.

    Four steps over one :class:`~geoseg.io.store.OutputStore`: plan (check the options,
    the scene against the model's contract, the tiling and the output names), infer (the
    tiles, resumable through the journal), finish (COGs, legends, polygons, staged under
    temporary names) and commit (every output, the manifest last).

    Args:
        path: input raster (any size; read window by window): a local path, an
            ``http(s)://`` or ``s3://`` URL (range requests only), or a STAC Item (path,
            URL, dict or ``pystac.Item``) whose per-band assets are stacked
            (:func:`geoseg.io.sources.open_source`).
        out_dir: where the outputs go: a local directory (default ``./<stem>_geoseg/``) or
            an object-store prefix ``s3://bucket/prefix`` (:mod:`geoseg.io.store`).
        model: a built-in model name, a bundle path, or an ONNX / TorchScript / ``.pt2``
            file or STAC MLM Item (path or URL; see :mod:`geoseg.models.external`).
        client: a ``distributed.Client`` to run the tile tasks on (left open; e.g. one
            shared by the scenes of a batch) instead of one made for this scene from
            ``workers``/``scheduler``, which then only describe it in the manifest.
        resources: Dask worker resources every tile task needs (e.g. ``{"GPU": 1}``);
            only on a cluster. The device (``auto`` too) is then resolved on the workers.
        stac_item: fields merged into the STAC Item (with ``stac=True``): ``id``,
            ``properties``, ``links``.
        execution: fields merged into the manifest's ``execution`` record: where the run
            was placed (:mod:`geoseg.batch.placement` runs a whole scene on one worker).
        **options: fields of :class:`RunOptions`: tiling and execution (``tile_size``,
            ``batch_size``, ``device``, ``precision``, ``workers``, ``scheduler``,
            ``threads``), inputs (``bands``, ``assets``, ``grid_asset``,
            ``scale_offset``), area and grid (``aoi``, ``bbox``, ``aoi_crop``,
            ``output_grid``), outputs (``vectorize``, ``min_area``, ``simplify``,
            ``connectivity``, ``stac``, ``probabilities``, ``tta``), and ``overwrite``,
            ``resume``, ``quiet``.

    Returns:
        The run manifest (also written as ``<stem>.run.json``).
    """
    from geoseg.allocator import configure_process

    configure_process()  # the process defaults an entry point sets (no-op when already set)
    opts = _run_options(options)
    t0 = time.perf_counter()
    run = _plan(path, out_dir, model, opts, client, resources, stac_item)
    run.execution = dict(execution or {})
    run.timings["validate"] = time.perf_counter() - t0
    from geoseg.io.sources import source_fingerprint

    hasher = ThreadPoolExecutor(max_workers=1)
    input_sha = hasher.submit(source_fingerprint, run.source)
    try:
        _open_products(run)
        _infer(run)
        _finish(run)
        run.timings["total"] = time.perf_counter() - t0
        return _commit(run, input_sha.result())
    except BaseException as exc:
        _fail(run, exc)
        raise
    finally:
        hasher.shutdown(wait=False)


@dataclass
class _SceneRun:
    """The state of one :func:`run_scene` call, passed from step to step."""

    opts: RunOptions
    model: str
    source: SceneSource
    bundle: object
    view: SceneView
    tiling: object
    device: str
    batch_size: int
    precision: str
    distributed: bool
    client: object
    resources: dict | None
    stac_item: dict | None
    store: OutputStore
    finals: dict[str, Path]
    journal: TileJournal
    timings: dict[str, float]
    products: list = dataclasses.field(default_factory=list)
    state: object = None
    tiles: list = dataclasses.field(default_factory=list)
    plan: list = dataclasses.field(default_factory=list)
    done: set = dataclasses.field(default_factory=set)
    sink: TileSink | None = None
    scheduler: dict = dataclasses.field(default_factory=dict)
    vector_stats: list | None = None
    execution: dict = dataclasses.field(default_factory=dict)  # where the run was placed (batch.placement)

    @property
    def stem(self) -> str:
        return self.source.output_stem


def _run_options(options: dict) -> RunOptions:
    """:class:`RunOptions` from ``run_scene``'s keyword options (checked)."""
    unknown = set(options) - set(RunOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"run_scene() got unknown option(s) {sorted(unknown)}")
    if options.get("bands") is not None:
        options["bands"] = tuple(int(b) for b in options["bands"])
    if options.get("assets"):
        a = options["assets"]
        options["assets"] = tuple(sorted(a.items() if isinstance(a, dict) else a))
    opts = RunOptions(**options)
    if opts.workers is not None and opts.workers < 1:
        raise InputError(f"--workers must be >= 1, got {opts.workers}")
    if opts.workers and opts.scheduler:
        raise InputError("give either --workers (start a local cluster) or --scheduler (use an existing one), not both")
    return opts


def _plan(path, out_dir, model: str, opts: RunOptions, client, resources, stac_item) -> _SceneRun:
    """Step 1: open the scene and the model, check them, plan the tiling and the outputs
    (nothing is written but the store's write probe)."""
    from geoseg.allocator import tune_cpu_allocator
    from geoseg.io.sources import open_source
    from geoseg.models.registry import load_model

    # an unknown destination scheme is refused before anything is read
    store = OutputStore(out_dir, overwrite=opts.overwrite) if out_dir is not None else None
    # a bad scene is reported before a model is loaded (an Item: before its assets are matched)
    scene = open_source(path, assets=dict(opts.assets) if opts.assets else None,
                        grid_asset=opts.grid_asset, scale_offset=opts.scale_offset)
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
    precision = opts.precision if resources else check_precision(opts.precision, device)
    tile_box = view.tile_geobox  # the model grid when the scene is resampled
    tiling = plan_tiles(bundle, tile_box.height, tile_box.width, opts.tile_size)  # exact, fixed-size or blended seams
    if tiling.layout is not None and (opts.tta or opts.probabilities):
        raise InputError(
            f"model '{bundle.name}' runs with blended seams (its receptive field exceeds the exact-halo limit): "
            "tta and probabilities are available for exact-seam models only; run without them"
        )
    if not view.trivial and (tiling.layout is not None or tiling.input_size is not None or opts.probabilities):
        raise InputError(
            "an area of interest or a scene resampled to the model's GSD needs an exact-seam model with free input "
            "sizes and no probabilities output: drop aoi/bbox (or resample the scene to the model's GSD first), "
            "or run without probabilities"
        )
    stem = source.output_stem
    if store is None:
        store = OutputStore(Path.cwd() / f"{stem}_geoseg", overwrite=opts.overwrite)
    store.prepare()
    finals = store.scene_outputs(stem, len(bundle.mask_heads) > 0, opts.vectorize, opts.stac, opts.probabilities)
    store.check_free(list(finals.values()))
    store.clean_partials(stem)  # what a killed run left in the scratch directory (its resume state stays)
    # the resume journal: finished tiles of the hidden stripes files, on the store's local scratch disk
    journal = TileJournal(store.scratch, stem, _journal_key(source, bundle, opts, tiling.grid),
                          [f for k, f in finals.items() if k in PRODUCTS])
    return _SceneRun(opts=opts, model=model, source=source, bundle=bundle, view=view, tiling=tiling, device=device,
                     batch_size=opts.batch_size or (1 if device == "cpu" else 4), precision=precision,
                     distributed=distributed, client=client, resources=resources, stac_item=stac_item, store=store,
                     finals=finals, journal=journal, timings={})


def _open_products(run: _SceneRun) -> None:
    """The product rasters, in the journal's stripes: continued from a killed run's
    (``resume``, when its journal matches) or created."""
    # a resampled scene or an area of interest writes each tile at the window the view maps
    # it to on the output grid: the journal records and checks the tile there
    run.state = run.journal.open(run.opts.resume)
    try:
        run.products = _create_products(run.finals, run.view.output, run.store, run.bundle, run.journal.stripes,
                                        reopen=run.state is not None)
    except OutputError:
        if run.state is None:
            raise
        run.state = run.journal.open(False)  # stripes a crash left unreadable: start over
        run.products = _create_products(run.finals, run.view.output, run.store, run.bundle, run.journal.stripes)
    run.journal.products = run.products


def _infer(run: _SceneRun) -> None:
    """Step 2: run the tiles not journaled yet (local threads or a cluster) into the stripes;
    journaled tiles are checked and kept."""
    from geoseg.allocator import release_free_memory
    from geoseg.models.refs import resolve_model_ref

    opts, tiling, view, source = run.opts, run.tiling, run.view, run.source
    products = dict(zip([k for k in PRODUCTS if k in run.finals], run.products))
    run.tiles = tiling.tiles if view.trivial else view.select(tiling.grid)  # with an area of interest: the tiles that touch it
    if source.remote:  # what the tiles will read: the shared remote handle fetches it row of blocks by row
        source = dataclasses.replace(source, read_plan=strips(view.source_window(t.read) for t in run.tiles))
    torch_threads = CPU_TORCH_THREADS if run.distributed else None  # threaded: set by _run_threaded
    model_ref = resolve_model_ref(run.model)
    tile_view = None if view.trivial else view
    t1 = time.perf_counter()
    with Progress(total=len(run.tiles), desc=f"{run.stem}: tiles", disable=opts.quiet) as progress:
        run.sink = TileSink(products["classes"], products["confidence"], products.get("mask"), progress, run.journal,
                            products.get("probabilities"))
        run.done = run.sink.resume(run.journal, run.state, run.tiles, tile_view)
        # the same batches as an uninterrupted run (the same bytes), less those all done;
        # blended seams need every window's probabilities, so they rerun all windows and
        # the sink skips the tiles already written
        run.plan = batches(run.tiles, run.batch_size)
        if tiling.layout is None:
            run.plan = [b for b in run.plan if any((t.core.row, t.core.col) not in run.done for t in b)]
            task = predict_batch
            tasks = [(source, b, model_ref, run.device, torch_threads, run.bundle.checksum, opts.tta, opts.probabilities,
                      run.precision, tile_view) for b in run.plan]
        else:  # blended seams: probabilities of overlapping windows
            task = blend_batch
            tasks = [(source, b, model_ref, run.device, torch_threads, run.bundle.checksum, tiling.layout, run.precision)
                     for b in run.plan]
        writer = tiling.writer(run.sink)
        if run.distributed:
            run.scheduler = _run_distributed(writer, tasks, opts.scheduler, opts.workers, run.client, run.resources, task)
            run.scheduler["placement"] = "tile"  # tile batches across the cluster (geoseg.batch.placement)
        else:
            threads = opts.threads or max(2, os.cpu_count() or 1)
            run.scheduler = {"scheduler": "threads", "threads": threads}
            try:
                _run_threaded(writer, tasks, threads, task)
            finally:
                source.release()  # the shared remote handle, and the blocks GDAL cached for it
        run.scheduler.update(run.execution)
        run.journal.checkpoint(final=True)  # every tile on disk: a failure below resumes without inference
    run.timings["inference"] = time.perf_counter() - t1
    if run.device == "cpu":
        release_free_memory()  # the activations' memory: the stages below need none of it


def _finish(run: _SceneRun) -> None:
    """Step 3: the COGs, their legends and the polygons, staged under temporary names.

    One after the other: run in two threads of this process, the vectorizer's Python
    work and GDAL's COG writer (which calls back into Python) convoy on the GIL, and
    both took 4-6x longer than in sequence (measured on the demo scene)."""
    t2 = time.perf_counter()
    stripes = dict(zip([k for k in PRODUCTS if k in run.finals], (p.close() for p in run.products)))
    for p in run.products:
        p.finish()
    _stage_legends(run.finals, run.bundle, run.sink, run.store)
    run.timings["write_cogs"] = time.perf_counter() - t2
    t_q = time.perf_counter()  # PNGs of the class map and masks from the COGs' overviews, and a legend strip
    stage_quicklooks(run.finals, list(run.bundle.class_names), list(run.bundle.class_colors), list(run.bundle.mask_heads),
                     run.store)
    run.timings["quicklooks"] = time.perf_counter() - t_q
    if run.opts.vectorize:
        t3 = time.perf_counter()
        vector_options = VectorizeOptions(connectivity=run.opts.connectivity, min_area=run.opts.min_area,
                                          simplify=run.opts.simplify)
        if run.client is not None and not workers_missing(run.client, list(stripes.values())):
            # the workers see the class map: its polygonize blocks run on the cluster too
            vector_options = dataclasses.replace(vector_options, client=run.client)
        if run.distributed:
            run.scheduler["vectorize"] = "cluster" if vector_options.client is not None else "client"
        run.vector_stats = _vectorize_outputs(run.store, run.finals["vectors"], stripes, run.bundle, vector_options)
        run.timings["vectorize"] = time.perf_counter() - t3


def _commit(run: _SceneRun, input_sha) -> dict:
    """Step 4: the manifest (and STAC Item); then every output at once, the manifest last."""
    tiling, store = run.tiling, run.store
    manifest = build_manifest(
        source=run.source,
        input_sha256=input_sha,
        bundle=run.bundle,
        model_ref=run.model,
        grid=tiling.grid,
        options=run.opts,
        device=run.device,
        batch_size=run.batch_size,
        scheduler=run.scheduler,
        timings=run.timings,
        counts=run.sink.counts,
        skipped=run.sink.skipped,
        n_tiles=len(run.tiles),
        vector_stats=run.vector_stats,
        outputs=store.entries(run.stem),
        pixel_geobox=run.view.output,
    )
    manifest["parameters"].update(tiling.manifest_fields())  # seams: exact | blended
    manifest["execution"]["tiles_resumed"] = len(run.done)
    manifest["execution"]["tiles_computed"] = (sum(len(b) for b in run.plan)
                                               - (len(run.done) if tiling.layout is not None else 0))
    if not run.view.trivial:
        manifest.update(run.view.describe())  # output_grid, gsd, aoi
    if run.opts.stac:
        _stage_stac_item(store, run.finals["stac"], manifest, run.stac_item)
    # everything is staged: the stripes and the journal go first, so that a kill after
    # the commit leaves no resume state behind a finished scene
    for p in run.products:
        p.discard_stripes()
    run.journal.discard()
    store.commit(manifest=(run.finals["manifest"], manifest))  # every output at once, the manifest last
    return manifest


def _fail(run: _SceneRun, exc: BaseException) -> None:
    """After a failure: keep the journal and the stripes (hidden) for ``resume`` once
    inference has begun, unless the input or the model is at fault (a rerun would fail
    the same way); remove every temporary the store handed out."""
    keep = run.journal.started and not (isinstance(exc, GeosegError) and not isinstance(exc, OutputError))
    if keep:
        try:
            run.journal.checkpoint(final=True)  # no tile writes any more: journal all that are written
        except BaseException:  # noqa: BLE001 - e.g. the disk is full: the CRCs catch the rest
            pass
    for p in run.products:
        try:
            p.keep_stripes() if keep else p.discard_stripes()
        except Exception:
            pass
    run.journal.close()
    if not keep:
        run.journal.discard()
    run.store.discard()


#: The raster products whose tiles the journal tracks (keys of ``OutputStore.scene_outputs``).
PRODUCTS = ("classes", "confidence", "mask", "probabilities")


def _remote_identity(source: SceneSource) -> dict:
    """A remote input's identity for the journal: its fingerprint (HEAD requests, no pixels)."""
    from geoseg.io.sources import source_fingerprint

    return {"path": source.path, "fingerprint": source_fingerprint(source)}


def _journal_key(source: SceneSource, bundle, opts: RunOptions, grid: TileGrid) -> str:
    """What makes a killed run's tiles reusable: same input file, bands, model, options, grid, geoseg."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        geoseg_version = version("geoseg")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        geoseg_version = "unknown"
    return journal_key(
        {
            "input": input_identity(source.path) if source.kind == "file" else _remote_identity(source),
            "bands": list(source.band_indexes),
            "model": bundle.checksum,
            "options": opts.output_options(),
            "grid": [source.height, source.width, grid.tile_size, grid.halo, int(bundle.downsampling)],
            "geoseg": geoseg_version,
        }
    )


def _stage_stac_item(store: OutputStore, final: Path, manifest: dict, fields: dict | None) -> None:
    """Stage the STAC Item of the outputs and list it in the manifest."""
    from geoseg.io.stac import scene_item

    tmp = store.write_text(final, json.dumps(scene_item(manifest, **(fields or {})), indent=2) + "\n",
                           what=f"the STAC Item {final.name}")
    manifest["outputs"]["stac.json"] = store.entry(final, tmp)


def _stage_legends(finals: dict[str, Path], bundle, sink: TileSink, outputs: OutputStore) -> None:
    """The class map's and the masks' legends: GDAL category names + RAT (.aux.xml), QGIS style (.qml)."""
    cats = tuple(
        Category(i, n, c, int(sink.counts[i])) for i, (n, c) in enumerate(zip(bundle.class_names, bundle.class_colors))
    )
    stage_legend(finals["classes"], [BandLegend(1, cats)], outputs)
    if "mask" in finals:
        stage_legend(finals["mask"], mask_legends(list(bundle.mask_heads), sink.mask_counts.tolist()), outputs)


def _create_products(
    finals: dict[str, Path], geobox, outputs: OutputStore, bundle, stripes: dict[Path, Path], reopen: bool = False
) -> list[RasterProduct]:
    """The class map, confidence and (when the model has mask heads) mask rasters, written
    into the journal's ``stripes`` files (``reopen``: continue those of a killed run)."""
    names, colors = list(bundle.class_names), list(bundle.class_colors)
    at = {"reopen": reopen}
    products = [
        RasterProduct(finals["classes"], geobox, outputs, descriptions=["class"], colors=colors, tags=class_tags(names, colors),
                      stripes=stripes[finals["classes"]], **at),
        RasterProduct(
            finals["confidence"],
            geobox,
            outputs,
            descriptions=["confidence_percent"],
            tags={"UNITS": "percent", "DESCRIPTION": "max class probability x 100"},
            overview_resampling="AVERAGE",  # a quantity, not a category (and 20% faster than MODE)
            stripes=stripes[finals["confidence"]],
            **at,
        ),
    ]
    if "mask" in finals:
        heads = list(bundle.mask_heads)
        products.append(
            RasterProduct(finals["mask"], geobox, outputs, count=len(heads), descriptions=heads, tags={"MASK_HEADS": ",".join(heads)},
                          stripes=stripes[finals["mask"]], **at)
        )
    if "probabilities" in finals:
        products.append(
            RasterProduct(
                finals["probabilities"], geobox, outputs, count=len(names), descriptions=names,
                tags=dict(PROBABILITY_TAGS),
                overview_resampling="AVERAGE",
                stripes=stripes[finals["probabilities"]],
                **at,
            )
        )
    return products


def _vectorize_outputs(outputs: OutputStore, final: Path, rasters: dict[str, Path], bundle, options: VectorizeOptions) -> list:
    """Polygonize the finished class map (and masks) into a temporary GeoPackage."""
    import rasterio

    from geoseg.vector.api import vectorize_products

    with outputs.staging(final, "gpkg-", f"the polygons {final.name}") as tmp, rasterio.Env(**GDAL_ENV):
        return vectorize_products(
            tmp,
            classes_path=rasters["classes"],
            class_names=list(bundle.class_names),
            class_colors=list(bundle.class_colors),
            confidence_path=rasters["confidence"],
            mask_path=rasters.get("mask"),
            mask_names=list(bundle.mask_heads),
            options=options,
        )
