"""Batch runs over a catalog: resumable, isolated per scene, on local threads or one Dask cluster.

:func:`run_batch` resolves a catalog (:mod:`geoseg.batch.catalog`) into scenes and runs each
through :func:`geoseg.run_scene`, the same pipeline as ``geoseg run``:

- **Skip if done.** A scene is up to date when its run manifest (written last, the
  commit marker of :class:`geoseg.io.store.OutputStore`, so its presence means the whole
  set was committed) records the current input sha256, model checksum and
  output-shaping options, and every output it lists still has the recorded size and
  mtime (or, when the mtime changed, the recorded sha256) in a local directory, or the
  recorded size and ETag in an object store (one listing, no download). Anything else
  reruns that scene only.
- **Resumable.** Outputs are staged under hidden ``.partial`` names and committed when
  complete; a scene about to (re)run first loses its old manifest and any partial files
  a killed run left behind, so an interrupted batch never leaves a scene looking done;
  a scene killed half-way continues from the tiles its journal holds
  (:mod:`geoseg.scene.journal`, on the store's local scratch disk), the same bytes as an
  uninterrupted run.
- **Destinations.** A scene's ``out:`` is a local directory or ``s3://bucket/prefix``.
- **Isolated.** A scene's failure is recorded (type and message) and the others go on;
  :attr:`BatchReport.exit_code` is 1 when any failed.
- **One cluster.** With ``workers`` or ``scheduler`` one ``distributed.Client`` serves
  every scene, placed by :mod:`geoseg.batch.placement`: each scene as one task on one
  worker, which writes its outputs itself (``scene``), or, with fewer scenes than workers,
  each scene's tiles across the cluster, two scenes in flight so that one's COGs and
  polygons are written while the other's tiles run (``tile``). Worker ``resources`` (e.g.
  ``{GPU: 1}``) come from the catalog: what each scene task (or tile task) needs.
- **One batch at a time.** A lock next to the catalog (``.<name>.lock``, ``flock``)
  makes a second batch on the same catalog refuse to start.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from geoseg._dask import check_resources, connect_cluster, resolve_scheduler
from geoseg._files import write_json
from geoseg.batch.catalog import Catalog, SceneJob, load_catalog, missing_inputs_error, resolve
from geoseg.batch.lock import BatchLock
from geoseg.batch.placement import check_cluster, check_placement, choose, run_scene_tasks, task_key
from geoseg.batch.report_html import write_report_html
from geoseg.errors import CatalogError, GeosegError, InputError, OutputError
from geoseg.io.raster import file_sha256
from geoseg.io.stac import GEOSEG_CATALOG_KEY, ITEM_TYPE, write_catalog
from geoseg.models.checksum import model_checksum
from geoseg.io.store import SCENE_OUTPUTS, OutputStore, kind_glob
from geoseg.progress import Progress
from geoseg.scene.pipeline import RunOptions, run_scene

#: Exit codes of a batch (``geoseg batch``, ``pipelines/nightly_catalog.py``).
EXIT_OK, EXIT_FAILED, EXIT_CATALOG, EXIT_LOCKED = 0, 1, 2, 3


@dataclass
class SceneResult:
    """What happened to one scene."""

    id: str
    input: str
    out_dir: str
    status: str  # done | skipped | failed; with dry_run: would-run | would-skip
    reason: str = ""  # why it ran or was skipped
    seconds: float = 0.0
    megapixels: float | None = None
    mpx_s: float | None = None  # megapixels per second of this scene's run
    class_areas_m2: dict[str, float] = field(default_factory=dict)
    manifest: str | None = None
    stac_item: str | None = None
    error: dict | None = None  # {"type": ..., "message": ...}
    placement: str | None = None  # on a cluster: scene (one task on one worker) or tile
    worker: str | None = None  # with placement scene: the worker that wrote the outputs


@dataclass
class BatchReport:
    """The outcome of :func:`run_batch` (written as ``report.json``)."""

    catalog: str
    started: str
    seconds: float
    scheduler: dict
    dry_run: bool
    scenes: list[SceneResult]
    stac_catalog: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.scenes:
            out[s.status] = out.get(s.status, 0) + 1
        return out

    @property
    def exit_code(self) -> int:
        """0 when no scene failed, else 1."""
        return EXIT_FAILED if any(s.status == "failed" for s in self.scenes) else EXIT_OK

    def to_dict(self) -> dict:
        return {
            "geoseg_batch_report": 1,
            "catalog": self.catalog,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "scheduler": self.scheduler,
            "counts": self.counts,
            "exit_code": self.exit_code,
            "stac_catalog": self.stac_catalog,
            "warnings": self.warnings,
            "scenes": [asdict(s) for s in self.scenes],
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (temporary name, then rename), and its page beside it
        (``report.json`` -> ``report.html``)."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_json(p, self.to_dict())
        except OSError as exc:
            raise OutputError(f"cannot write the report {p} ({exc.strerror or exc}): choose a writable --report path") from exc
        write_report_html(self.to_dict(), p.with_suffix(".html"))  # the page beside it (geoseg.batch.report_html)
        return p


# --------------------------------------------------------------------------- is a scene done?


@dataclass
class Plan:
    """Whether a scene runs, and why."""

    job: SceneJob
    run: bool
    reason: str
    manifest: dict | None = None


def store_of(job: SceneJob) -> OutputStore:
    """The output store of a scene (nothing is created until it is prepared)."""
    return OutputStore(job.out_dir, overwrite=True)


def manifest_name(job: SceneJob) -> str:
    return f"{job.stem}.run.json"


def expected_options(job: SceneJob) -> dict:
    """The manifest ``options`` a batch run of ``job`` records."""
    return RunOptions(**job.options, stac=True).output_options()


def check_scene(job: SceneJob, model_sha: str | None, force: bool = False) -> Plan:
    """Decide whether ``job`` must run (see the module docstring for the rule)."""
    if force:
        return Plan(job, True, "forced (--force)")
    store = store_of(job)
    try:
        if not store.exists(manifest_name(job)):
            return Plan(job, True, "no complete run yet")
    except OutputError as exc:  # e.g. 403 on the bucket: the run reports it, once
        return Plan(job, True, f"destination not checked ({exc})")
    if job.local and not job.path.exists():
        return Plan(job, True, "input missing")
    try:
        manifest = json.loads(store.read_text(manifest_name(job)))
        recorded_options = manifest.get("options")
        recorded_model = manifest["model"]["sha256"]
        recorded_input = manifest["input"]["sha256"]
        recorded_fp = manifest["input"].get("fingerprint")
        outputs = manifest["outputs"]
    except (OSError, ValueError, KeyError, TypeError, OutputError):
        return Plan(job, True, "manifest unreadable")
    want = expected_options(job)
    if recorded_options != want:
        changed = sorted(k for k in want if (recorded_options or {}).get(k, object()) != want[k])
        return Plan(job, True, f"parameters changed: {', '.join(changed)}")
    if model_sha is None or recorded_model != model_sha:
        return Plan(job, True, "model changed")
    try:
        changed = store.unchanged(outputs.values(), job.stem)
    except OutputError:
        changed = "?"
    if changed is not None:
        kind = next((k for k, e in outputs.items() if e.get("path") == changed), changed)
        return Plan(job, True, f"output {kind} missing or changed")
    if job.local:
        if file_sha256(job.path) != recorded_input:
            return Plan(job, True, "input changed")
    else:  # remote or STAC Item: ETag/size/Last-Modified and the Item's JSON, no pixel read
        from geoseg.io.sources import current_fingerprint

        try:
            now = current_fingerprint(job.input, recorded_fp)
        except (OSError, ValueError) as exc:
            return Plan(job, True, f"input not checked ({exc})")
        if now != recorded_fp:
            return Plan(job, True, "input changed")
    return Plan(job, False, "up to date", manifest)


def plan_scenes(jobs: list[SceneJob], force: bool = False) -> list[Plan]:
    """:func:`check_scene` for every job (each model hashed once)."""
    models: dict[str, str | None] = {}
    plans = []
    for job in jobs:
        if job.model not in models:
            try:
                models[job.model] = model_checksum(job.model)
            except (GeosegError, OSError):
                models[job.model] = None  # the scene runs, and run_scene reports the model error
        plans.append(check_scene(job, models[job.model], force))
    return plans


# --------------------------------------------------------------------------- running


def _areas(manifest: dict | None) -> dict[str, float]:
    if not manifest:
        return {}
    return {c["name"]: round(float(c["area_m2"]), 3) for c in manifest.get("classes", [])}


def _result(plan: Plan, status: str, **kw) -> SceneResult:
    job = plan.job
    inp = job.source if isinstance(job.source, str) else str(job.path)
    if isinstance(job.source, dict):
        inp = next((ln["href"] for ln in job.source.get("links") or [] if ln.get("rel") == "self"), str(job.path))
    return SceneResult(id=job.id, input=inp, out_dir=str(job.out_dir), status=status, reason=plan.reason, **kw)


def _item_fields(job: SceneJob) -> dict:
    """What a batch adds to a scene's STAC Item: its id, and for STAC sources the source's
    time and a link to the source Item."""
    fields: dict = {"id": job.id}
    src = job.source_item
    if src:
        if src.get("properties"):
            fields["properties"] = dict(src["properties"])
        if src.get("item"):
            local = isinstance(job.out_dir, Path)  # else an object store: the Item's own path
            href = Path(os.path.relpath(src["path"], job.out_dir)).as_posix() if local else str(src["path"])
            fields["links"] = [{"rel": "derived_from", "href": href, "type": ITEM_TYPE}]
    return fields


def _run_one(plan: Plan, client, where: dict, quiet: bool, execution: dict | None = None) -> SceneResult:
    """Run one scene here (this process, or the worker of a scene task); never raises."""
    job = plan.job
    t = time.perf_counter()
    store = store_of(job)
    placed = {} if execution is None else {"placement": execution.get("placement"), "worker": execution.get("worker")}
    try:
        store.delete(manifest_name(job))  # not done until a new manifest says so
        manifest = run_scene(
            job.input,
            job.out_dir,
            job.model,
            client=client,
            resources=job.resources,
            stac_item=_item_fields(job),
            execution=execution,
            overwrite=True,
            quiet=quiet,
            stac=True,
            resume=True,  # continue a killed run's scene from its journaled tiles
            **job.options,
            **where,
        )
    except Exception as exc:  # noqa: BLE001 - one scene's failure never stops the others
        return _result(plan, "failed", seconds=round(time.perf_counter() - t, 3),
                       error={"type": type(exc).__name__, "message": str(exc)}, **placed)
    secs = time.perf_counter() - t
    try:
        for kind in SCENE_OUTPUTS:  # e.g. the GeoPackage of an earlier run with vectorize on, a dropped head's PNG
            for name in (store.names(kind_glob(job.stem, kind)) if "*" in kind else [f"{job.stem}.{kind}"]):
                if name[len(job.stem) + 1:] not in manifest["outputs"] and kind != "run.json":
                    store.delete(name)
    except OutputError as exc:
        return _result(plan, "failed", seconds=round(time.perf_counter() - t, 3),
                       error={"type": type(exc).__name__, "message": str(exc)}, **placed)
    mpx = manifest["input"]["width"] * manifest["input"]["height"] / 1e6
    return _result(
        plan,
        "done",
        seconds=round(secs, 3),
        megapixels=round(mpx, 3),
        mpx_s=round(mpx / secs, 3) if secs > 0 else None,
        class_areas_m2=_areas(manifest),
        manifest=store.where(manifest_name(job)),
        stac_item=store.where(f"{job.stem}.stac.json"),
        **placed,
    )


def _scene_on_worker(plan: Plan, cluster: dict, *, threads: int, worker: str) -> SceneResult:
    """The scene task of placement ``scene`` (:func:`geoseg.batch.placement.scene_task`): the
    whole scene on this worker's threads, outputs written from here, a small report back."""
    execution = {**cluster, "placement": "scene", "worker": worker}
    if plan.job.resources:
        execution["resources"] = dict(plan.job.resources)
    return _run_one(plan, None, {"threads": threads}, True, execution)


def _skipped(plan: Plan) -> SceneResult:
    m = plan.manifest or {}
    inp = m.get("input", {})
    mpx = inp.get("width", 0) * inp.get("height", 0) / 1e6 or None
    store = store_of(plan.job)
    stac = f"{plan.job.stem}.stac.json"
    return _result(plan, "skipped", megapixels=round(mpx, 3) if mpx else None, class_areas_m2=_areas(m),
                   manifest=store.where(manifest_name(plan.job)),
                   stac_item=store.where(stac) if "stac.json" in m.get("outputs", {}) else None)


def _failed(plan: Plan, exc: BaseException, **kw) -> SceneResult:
    return _result(plan, "failed", error={"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}, **kw)


def _on_cluster(plans: list[Plan], todo: list[int], results: list, client, info: dict, bar) -> None:
    """Placement ``scene``: every scene of ``todo`` as one task (see :mod:`geoseg.batch.placement`)."""
    want = check_cluster(client, [plans[i].job.model for i in todo])
    runnable = []
    for i in todo:
        try:
            check_resources(client, plans[i].job.resources)
            runnable.append(i)
        except GeosegError as exc:
            results[i] = _failed(plans[i], exc, placement="scene")
            bar.update(1)
    cluster = {k: info[k] for k in ("scheduler", "workers") if k in info}

    def done(k: int, result: SceneResult) -> None:
        results[runnable[k]] = result
        bar.update(1)

    def lost(k: int, exc: BaseException) -> None:  # e.g. KilledWorker: it took down every worker it ran on
        results[runnable[k]] = _failed(plans[runnable[k]], exc, placement="scene")
        bar.update(1)

    run_scene_tasks(client, _scene_on_worker, [(plans[i], cluster) for i in runnable], done, lost, want=want,
                    keys=[task_key(plans[i].job.id) for i in runnable], resources=[plans[i].job.resources for i in runnable])


def _execute(plans: list[Plan], scheduler: str | None, workers: int | None, quiet: bool,
             placement: str = "auto") -> tuple[list[SceneResult], dict]:
    results: list[SceneResult | None] = [None if p.run else _skipped(p) for p in plans]
    todo = [i for i, p in enumerate(plans) if p.run]
    info: dict = {"scheduler": "threads"}
    client = cluster = None
    try:
        if todo and (scheduler or workers):
            try:
                client, cluster, info = connect_cluster(scheduler, workers)
                info["workers"] = len(client.scheduler_info(n_workers=-1).get("workers", {}))
                info["placement"] = choose(placement, len(todo), info["workers"])
                if info["placement"] == "tile":
                    check_cluster(client, [plans[i].job.model for i in todo])
            except GeosegError as exc:  # e.g. an unreachable scheduler: every scene fails with it
                for i in todo:
                    results[i] = _failed(plans[i], exc)
                todo = []
        where = {"scheduler": scheduler} if scheduler else {"workers": workers} if workers else {}
        with Progress(total=len(plans), desc="scenes", disable=quiet, unit="scene") as bar:
            bar.update(len(plans) - len(todo))

            def work(i: int) -> None:
                results[i] = _run_one(plans[i], client, where, quiet, {"placement": "tile"} if client else None)
                bar.update(1)

            if client is None:
                for i in todo:
                    work(i)
            elif info["placement"] == "scene":
                try:
                    _on_cluster(plans, todo, results, client, info, bar)
                except GeosegError as exc:  # a worker refused (other geoseg or models): no scene ran
                    for i in todo:
                        results[i] = results[i] or _failed(plans[i], exc, placement="scene")
            else:
                # two scenes in flight: one's tiles keep the workers busy while the
                # other's COGs and polygons are written here
                with ThreadPoolExecutor(max_workers=2, thread_name_prefix="geoseg-scene") as pool:
                    list(pool.map(work, todo))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return [r for r in results if r is not None], info


def _outputs_catalog(catalog: Catalog, jobs: list[SceneJob]) -> tuple[str | None, list[str]]:
    """Link every scene's STAC Item into one STAC Catalog; returns its path and warnings.
    Scenes written to an object store are left out (their Items are in the store)."""
    jobs = [j for j in jobs if isinstance(j.out_dir, Path)]
    if not jobs:
        return None, []
    items = [(j.id, store_of(j).path(f"{j.stem}.stac.json")) for j in jobs]
    items = [(i, p) for i, p in items if p.exists()]
    if not items:
        return None, []
    if catalog.spec.stac_catalog:
        target = (catalog.root / catalog.spec.stac_catalog).expanduser().resolve()
    else:
        target = Path(os.path.commonpath([str(j.out_dir) for j in jobs])) / "catalog.json"
    if target.exists():
        try:
            ours = GEOSEG_CATALOG_KEY in json.loads(target.read_text())
        except (OSError, ValueError):
            ours = False
        if not ours:
            return None, [f"left {target} alone (not a catalog geoseg wrote): set stac_catalog: in {catalog.path} to write the outputs' STAC Catalog elsewhere"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_catalog(target, items, id=f"{catalog.path.stem}-outputs",
                      description=f"geoseg outputs of the scenes of {catalog.path.name}", source=str(catalog.path.resolve()))
    except OSError as exc:
        return None, [f"cannot write the outputs' STAC Catalog {target} ({exc.strerror or exc})"]
    return str(target), []


def select(catalog: Catalog, jobs: list[SceneJob], only: list[str] | tuple[str, ...] | None) -> list[SceneJob]:
    """The jobs named by ``only`` (ids; comma-separated lists allowed), in catalog order."""
    if not only:
        return jobs
    wanted = [s.strip() for item in only for s in str(item).split(",") if s.strip()]
    known = {j.id for j in jobs}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        some = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
        raise CatalogError(f"{catalog.path}: no scene with id {', '.join(map(repr, unknown))} (ids: {some}): check --only")
    keep = set(wanted)
    return [j for j in jobs if j.id in keep]


def run_batch(
    catalog_path: str | os.PathLike,
    *,
    only: list[str] | tuple[str, ...] | None = None,
    dry_run: bool = False,
    force: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    report: str | os.PathLike | None = None,
    quiet: bool = False,
    scheduler_file: str | os.PathLike | None = None,
    placement: str = "auto",
) -> BatchReport:
    """Run every scene of a catalog that is not up to date.

    Args:
        catalog_path: the catalog YAML file (see :mod:`geoseg.batch.catalog`).
        only: scene ids to consider (the others are left alone).
        dry_run: decide and report what would run; write nothing (no lock is taken).
        force: rerun scenes that are up to date.
        scheduler: address of an existing ``dask.distributed`` scheduler.
        workers: start a local Dask cluster with this many worker processes.
            Neither: local threads, one scene after the other.
        report: write the :class:`BatchReport` as JSON here.
        quiet: no progress bars.
        scheduler_file: the JSON file with the scheduler's address (``dask scheduler
            --scheduler-file``, dask-jobqueue, dask-mpi), instead of ``scheduler``.
        placement: on a cluster, ``scene`` (each scene one task on one worker), ``tile``
            (each scene's tiles across the cluster) or ``auto``
            (:mod:`geoseg.batch.placement`).

    Returns:
        The report; ``report.exit_code`` is 1 when a scene failed.

    Raises:
        CatalogError: the catalog is invalid, an ``only`` id is unknown, or none of its
            scenes exists.
        LockedError: another batch is running on this catalog.
    """
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if workers and (scheduler or scheduler_file):
        raise InputError("give either --workers (start a local cluster) or --scheduler (use an existing one), not both")
    check_placement(placement, bool(scheduler or scheduler_file or workers))
    catalog = load_catalog(catalog_path)
    jobs = resolve(catalog)
    chosen = select(catalog, jobs, only)
    missing = missing_inputs_error(catalog, chosen)
    if missing is not None:
        raise missing
    stac_catalog, warnings = None, []
    with nullcontext() if dry_run else BatchLock(catalog.path):
        plans = plan_scenes(chosen, force)
        if dry_run:
            results = [_result(p, "would-run" if p.run else "would-skip") for p in plans]
            info = {"scheduler": scheduler or (str(scheduler_file) if scheduler_file else None)
                    or (f"LocalCluster({workers})" if workers else "threads")}
        else:
            scheduler = resolve_scheduler(scheduler, scheduler_file)
            results, info = _execute(plans, scheduler, workers, quiet, placement)
            stac_catalog, warnings = _outputs_catalog(catalog, jobs)
    out = BatchReport(
        catalog=str(catalog.path.resolve()),
        started=started,
        seconds=time.perf_counter() - t0,
        scheduler=info,
        dry_run=dry_run,
        scenes=results,
        stac_catalog=stac_catalog,
        warnings=warnings,
    )
    if report is not None:
        out.write(report)
    return out


# --------------------------------------------------------------------------- summary


def format_summary(report: BatchReport) -> str:
    """The summary table: scene, status, time, Mpx/s and class areas (km^2); for a dry
    run, scene, planned status and why."""
    if report.dry_run:
        head = ["scene", "status", "reason"]
        rows = [[s.id, s.status, s.reason] for s in report.scenes]
        right: set[int] = set()
    else:
        classes: list[str] = []
        for s in report.scenes:
            classes += [c for c in s.class_areas_m2 if c not in classes]
        head = ["scene", "status", "time s", "Mpx/s", *(f"{c} km2" for c in classes)]
        rows = [
            [s.id, s.status, f"{s.seconds:.1f}" if s.status != "skipped" else "-", f"{s.mpx_s:.2f}" if s.mpx_s else "-",
             *(f"{s.class_areas_m2[c] / 1e6:.3f}" if c in s.class_areas_m2 else "-" for c in classes)]
            for s in report.scenes
        ]
        right = set(range(2, len(head)))
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))).rstrip()

    lines = [fmt(head), *(fmt(r) for r in rows)]
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
    lines.append(f"{len(report.scenes)} scene(s): {counts or 'none'} in {report.seconds:.1f} s ({report.scheduler.get('scheduler')}"
                 + (f", placement {report.scheduler['placement']}" if report.scheduler.get("placement") else "") + ")")
    for s in report.scenes:
        if s.error:
            lines.append(f"  {s.id} failed: {s.error['type']}: {s.error['message']}")
    if report.stac_catalog:
        lines.append(f"STAC catalog of the outputs: {report.stac_catalog}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
