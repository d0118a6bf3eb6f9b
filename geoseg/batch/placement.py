"""Where a run's scenes go on a Dask cluster: a whole scene as one task on one worker, or its
tiles across the cluster.

Two placements (``--placement``; recorded in each manifest's ``execution`` and in the batch
report):

- ``scene``: each scene is one task. The worker that takes it reads the scene, runs its tiles
  on its own threads (as many as the worker has; no cluster inside the task), writes its
  COGs, GeoPackage, STAC Item and manifest straight to the destination, and returns a small
  report. The client resolves the catalog, submits, shows progress and writes the batch
  report and STAC Catalog. A worker process runs one scene at a time: ``torch``'s thread
  count, GDAL's block cache and the allocator are settings of the process.
- ``tile``: a scene's tile batches are tasks spread over the cluster (their products come
  back to the client, which writes the COGs), and so are its polygonize blocks when the
  workers see the class map (:func:`geoseg._dask.workers_missing`). For a scene too large for
  one worker: ``geoseg run --scheduler``, or a catalog with fewer scenes to run than workers.
- ``auto`` (the default): ``scene`` when at least as many scenes run as the cluster has
  workers, else ``tile``.

Lost workers: a worker that dies mid-scene (killed, out of memory, its node gone) loses its
task, and the scheduler runs it again on another worker (up to
``distributed.scheduler.allowed-failures`` times), which resumes from the scene's journal of
finished tiles (:mod:`geoseg.scene.journal`): the same bytes as an uninterrupted run. A scene
that fails by itself (bad input) returns its error as strings (they always pickle) and is
not retried.

Before any work is submitted every worker is asked which geoseg and which model checksums it
has (:func:`check_cluster`, through ``client.run``: the worker's own code answers); a worker
that differs is refused with one line. Each scene task checks again where it runs (a worker
that joined the cluster later).
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geoseg._dask import check_resources, check_workers, cluster_size, connect_cluster, identity, run_tasks
from geoseg.errors import GeosegError, InputError

__all__ = ["PLACEMENTS", "check_cluster", "check_placement", "choose", "run_on_cluster", "run_scene_tasks", "worker_check"]

#: The values of ``--placement``.
PLACEMENTS = ("auto", "scene", "tile")

#: One scene at a time in a worker process (see the module docstring).
_ONE_SCENE = threading.Lock()


def check_placement(placement: str, distributed: bool) -> str:
    """Validate ``--placement``; ``scene`` and ``tile`` need a cluster."""
    if placement not in PLACEMENTS:
        raise InputError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement != "auto" and not distributed:
        raise InputError(f"--placement {placement} places work on a Dask cluster: add --scheduler, --scheduler-file or "
                         "--workers, or drop --placement")
    return placement


def choose(placement: str, scenes: int, workers: int) -> str:
    """The placement of ``scenes`` scenes on a cluster of ``workers`` workers (see the module docstring)."""
    if placement != "auto":
        return placement
    return "scene" if scenes >= max(1, workers) else "tile"


def worker_check(models: Sequence[str] = ()) -> dict:
    """What decides the bytes a worker writes: geoseg's version and the checksum of each model
    reference as that worker resolves it (run on every worker by :func:`check_cluster`)."""
    from geoseg.models.checksum import model_checksum

    out = identity()
    for ref in models:
        try:
            out[f"model {ref}"] = model_checksum(ref)[:12]
        except (GeosegError, OSError) as exc:
            out[f"model {ref}"] = f"unreadable ({type(exc).__name__})"
    return out


def check_cluster(client, models: Sequence[str]) -> dict:
    """Refuse, in one line, a cluster with a worker whose geoseg or model checksums differ from
    this process's; return what this process has (each scene task compares it again)."""
    models = tuple(sorted(set(models)))
    check_workers(client, worker_check, models)
    return worker_check(models)


def _picklable(exc: Exception) -> Exception:
    """``exc``, or a plain error with its type and message when it would not pickle."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything a foreign exception's pickling raises
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def scene_task(fn: Callable[..., Any], want: dict, *args) -> Any:
    """Dask task: ``fn(*args, threads=n, worker=address)`` as the only scene of this worker
    process, on as many threads as the worker has, once this worker's geoseg and models
    match ``want`` (:func:`worker_check`)."""
    from distributed import get_worker

    models = tuple(k.removeprefix("model ") for k in want if k.startswith("model "))
    here = worker_check(models)
    diff = [f"{k} {here.get(k)} (the client: {v})" for k, v in want.items() if here.get(k) != v]
    worker = get_worker()
    if diff:
        raise InputError(f"worker {worker.address} runs {', '.join(diff)}: start the Dask workers from the same "
                         "geoseg install and models as the client, or stop that worker")
    try:
        with _ONE_SCENE:
            return fn(*args, threads=max(1, int(worker.state.nthreads)), worker=worker.address)
    except Exception as exc:
        raise _picklable(exc) from None


def run_scene_tasks(
    client,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    on_result: Callable[[int, Any], None],
    on_error: Callable[[int, BaseException], None],
    *,
    want: dict,
    keys: Sequence[str],
    resources: Sequence[dict | None],
) -> None:
    """Run ``fn(*args, threads=, worker=)`` for every ``args`` of ``calls`` as one task each
    (:func:`scene_task`), as many in flight as the cluster has workers (the scheduler gives
    them to idle workers first); ``on_result``/``on_error`` as each ends (in this thread)."""
    n_workers = cluster_size(client)[0]
    run_tasks(scene_task, [(fn, want, *args) for args in calls], on_result, client=client, resources=list(resources),
              window=n_workers, keys=keys, on_error=on_error)


def task_key(scene_id: str) -> str:
    """A scene task's key, unique, as the dashboard and ``client.processing()`` show it."""
    import uuid

    return f"geoseg-scene-{scene_id}-{uuid.uuid4().hex[:8]}"


def absolute(where):
    """A local path made absolute (a worker's working directory is not this process's);
    URLs (``s3://...``) and anything that is not a path are handed on as they are."""
    if isinstance(where, (str, os.PathLike)) and "://" not in os.fspath(where):
        return os.path.abspath(os.fspath(where))
    return where


def _run_one_scene(path, out_dir, model, options: dict, execution: dict, *, threads: int, worker: str) -> dict:
    """The scene task of ``geoseg run --placement scene``: the whole scene on this worker's threads."""
    from geoseg.scene.pipeline import run_scene

    return run_scene(path, out_dir, model, **{**options, "threads": threads, "quiet": True},
                     execution={**execution, "placement": "scene", "worker": worker})


def run_on_cluster(
    path,
    out_dir,
    model: str = "default",
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    placement: str = "auto",
    resources: dict[str, float] | None = None,
    **options,
) -> dict:
    """``geoseg run`` on a Dask cluster (``scheduler``, or a local one of ``workers`` processes).

    ``placement`` ``auto`` and ``tile`` spread the scene's tiles (and polygonize blocks) over
    the cluster (:func:`geoseg.run_scene` with the cluster's client); ``scene`` runs it as one
    task on one worker, which writes the outputs to ``out_dir`` itself (a directory every
    worker can write, given explicitly). Returns the run manifest.
    """
    from geoseg.scene.pipeline import run_scene

    check_placement(placement, True)
    if placement == "scene" and out_dir is None:
        raise InputError("--placement scene writes the outputs on a worker: give -o/--out, a directory the workers can write")
    client, cluster, info = connect_cluster(scheduler, workers)
    try:
        want = check_cluster(client, [model])
        chosen = choose(placement, 1, cluster_size(client)[0])
        if chosen == "tile":
            return run_scene(path, out_dir, model, client=client, resources=resources, scheduler=scheduler,
                             workers=workers, **options)
        check_resources(client, resources)
        options.pop("threads", None)  # the worker's own
        execution = {**info, "workers": cluster_size(client)[0], **({"resources": dict(resources)} if resources else {})}
        fut = client.submit(scene_task, _run_one_scene, want, absolute(path), absolute(out_dir), model, options, execution,
                            pure=False, resources=resources, key=task_key(Path(str(path)).stem))
        return fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
