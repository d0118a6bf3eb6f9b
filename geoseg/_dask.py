"""The one task executor: a list of calls run on local threads or a Dask cluster.

Every fan-out in geoseg (a scene's tile batches, a class map's polygonize blocks) is a
list of calls to one picklable function with small arguments (paths, windows, model
references: no arrays travel to workers). :func:`run_tasks` runs them with a bound on the
calls in flight and hands each result, as it completes, to a callback in the calling
thread, so results are consumed (written) as they stream in and memory holds only a
window of them. :func:`connect_cluster` owns the ``distributed`` client lifecycle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from geoseg.allocator import MALLOC_ENV
from geoseg.errors import InputError

__all__ = ["WORKER_ENV", "check_resources", "cluster_size", "connect_cluster", "run_tasks"]

#: Environment of local worker processes: the allocator settings of
#: :func:`geoseg.allocator.tune_cpu_allocator` from the start, and OpenMP threads that
#: sleep instead of spinning when another process holds a core.
WORKER_ENV = {**MALLOC_ENV, "OMP_WAIT_POLICY": "PASSIVE"}


def connect_cluster(scheduler: str | None, workers: int | None):
    """A ``distributed.Client`` of an existing scheduler or of a new local cluster.

    Returns ``(client, cluster, info)``: ``cluster`` is the :class:`LocalCluster` this
    call started (``None`` for ``scheduler``); the caller closes both.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(f"cannot connect to Dask scheduler {scheduler} ({exc}): check the address") from exc
        return client, None, {"scheduler": scheduler}
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=max(1, (os.cpu_count() or 1) // (workers or 1)),  # tiles in parallel
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env=WORKER_ENV,
        )
    except (RuntimeError, OSError) as exc:
        raise InputError(
            f"cannot start a local Dask cluster of {workers} worker processes ({exc}): check that processes "
            "can start here (a script that starts geoseg needs an `if __name__ == '__main__':` guard)"
        ) from exc
    return Client(cluster), cluster, {"scheduler": "LocalCluster"}


def check_resources(client, resources: dict[str, float] | None) -> None:
    """Refuse worker resources no worker of the cluster offers (their tasks would wait forever)."""
    if not resources:
        return
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    for w in workers.values():
        have = w.get("resources") or {}
        if all(have.get(k, 0) >= v for k, v in resources.items()):
            return
    want = " ".join(f"{k}={v:g}" for k, v in resources.items())
    raise InputError(
        f"no worker of the Dask cluster offers the resources {want}: start workers with "
        f"`dask worker ADDRESS --resources \"{want}\"`, or drop `resources` from the catalog"
    )


def cluster_size(client) -> tuple[int, int]:
    """``(workers, threads)`` of the cluster behind ``client`` (at least 1 each)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
    return max(1, len(workers)), max(1, threads, len(workers))


def run_tasks(
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    on_result: Callable[[int, Any], None],
    *,
    threads: int | None = None,
    client=None,
    resources: dict[str, float] | None = None,
    window: int | None = None,
) -> None:
    """Run ``fn(*args)`` for every ``args`` of ``calls``; ``on_result(i, result)`` as each completes.

    On ``threads`` local threads (default: the number of cores), or on the cluster of
    ``client`` (tasks need worker ``resources`` when given). At most ``window`` calls are in
    flight (default: twice the threads), so results are consumed as they come and never
    pile up. ``on_result`` runs in the calling thread. The first failure is raised once the
    calls in flight have finished; the calls not yet started never run.
    """
    pending = list(enumerate(calls))
    pending.reverse()
    if client is not None:
        from distributed import as_completed

        n = window or 2 * cluster_size(client)[1]
        ac = as_completed()
        index: dict[Any, int] = {}

        def submit() -> None:
            i, args = pending.pop()
            fut = client.submit(fn, *args, pure=False, resources=resources)
            index[fut.key] = i
            ac.add(fut)

        for _ in range(min(n, len(pending))):
            submit()
        for fut in ac:
            on_result(index.pop(fut.key), fut.result())
            fut.release()
            if pending:
                submit()
        return
    threads = threads or os.cpu_count() or 1
    n = window or 2 * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < n:
                    i, args = pending.pop()
                    running[pool.submit(fn, *args)] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_result(running.pop(fut), fut.result())
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
