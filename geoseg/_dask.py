"""The one task executor: a list of calls run on local threads or a Dask cluster.

Every fan-out in geoseg (a scene's tile batches, a class map's polygonize blocks) is a
list of calls to one picklable function with small arguments (paths, windows, model
references: no arrays travel to workers). :func:`run_tasks` runs them with a bound on the
calls in flight and hands each result, as it completes, to a callback in the calling
thread, so results are consumed (written) as they stream in and memory holds only a
window of them. :func:`connect_cluster` owns the ``distributed`` client lifecycle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from geoseg._constants import VERSION
from geoseg.allocator import MALLOC_ENV
from geoseg.errors import InputError

__all__ = ["WORKER_ENV", "check_resources", "check_workers", "cluster_size", "connect_cluster", "identity",
           "resolve_scheduler", "run_tasks", "workers_missing"]

#: Environment of local worker processes: the allocator settings of
#: :func:`geoseg.allocator.tune_cpu_allocator` from the start, and OpenMP threads that
#: sleep instead of spinning when another process holds a core.
WORKER_ENV = {**MALLOC_ENV, "OMP_WAIT_POLICY": "PASSIVE"}


def resolve_scheduler(scheduler: str | None, scheduler_file: str | os.PathLike | None, wait: float = 20.0) -> str | None:
    """The scheduler address of ``--scheduler`` or of ``--scheduler-file`` (the JSON file that
    ``dask scheduler --scheduler-file``, dask-jobqueue and dask-mpi write; a file not there yet
    is waited for up to ``wait`` seconds, as a SLURM job starts its scheduler beside the client)."""
    if scheduler and scheduler_file:
        raise InputError("give either --scheduler or --scheduler-file, not both")
    if not scheduler_file:
        return scheduler
    path, deadline = os.fspath(scheduler_file), time.monotonic() + wait
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                address = json.load(f)["address"]
            if isinstance(address, str) and address:
                return address
            problem, deadline = f"its address is {address!r}", 0.0
        except FileNotFoundError:
            problem = f"it does not exist (waited {wait:g} s)"
        except ValueError as exc:  # half-written while the scheduler starts: wait
            problem = f"it is not JSON ({exc})"
        except (KeyError, TypeError, IsADirectoryError) as exc:  # another file: no use waiting
            problem, deadline = f"it holds no scheduler address ({type(exc).__name__}: {exc})", 0.0
        except OSError as exc:
            raise InputError(f"cannot read the scheduler file {path} ({exc.strerror or exc}): check its permissions") from exc
        if time.monotonic() >= deadline:
            raise InputError(f"{path} is not a Dask scheduler file: {problem}; start the scheduler with "
                             f"`dask scheduler --scheduler-file {path}`, or give its address with --scheduler")
        time.sleep(0.2)


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


def identity() -> dict:
    """What a worker runs that decides the bytes it writes: geoseg's version (of the code it imported)."""
    return {"geoseg": VERSION}


def check_workers(client, probe: Callable[..., dict] = identity, *args) -> dict[str, dict]:
    """Ask every worker of ``client``'s cluster ``probe(*args)`` (its own geoseg answers) and
    refuse the cluster, in one line, when a worker answers otherwise than this process.

    Returns the workers' answers (by address). Raises :class:`InputError` naming the first
    worker that differs (and how many more do), before any work is submitted.
    """
    want = probe(*args)
    answers = client.run(probe, *args, on_error="return")
    bad: list[str] = []
    for address, got in sorted(answers.items()):
        if isinstance(got, BaseException):
            bad.append(f"worker {address} cannot run geoseg's worker check ({type(got).__name__}: {got})")
            continue
        diff = [f"{k} {got.get(k)} (this client: {v})" for k, v in want.items() if got.get(k) != v]
        if diff:
            bad.append(f"worker {address} runs {', '.join(diff)}")
    if bad:
        more = f" (and {len(bad) - 1} more worker(s))" if len(bad) > 1 else ""
        raise InputError(f"{bad[0]}{more}: start the Dask workers from the same geoseg install and models as "
                         "this client, or stop that worker")
    return answers


def _stat(paths: Sequence[str]) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return out


def workers_missing(client, paths: Sequence[str | os.PathLike]) -> list[str]:
    """Addresses of the workers that do not see ``paths`` as this process does (the same
    size and modification time): the workers share no disk with it. Empty when all do."""
    names = [os.path.abspath(os.fspath(p)) for p in paths]
    here = _stat(names)
    answers = client.run(_stat, names, on_error="return")
    return sorted(a for a, got in answers.items() if isinstance(got, BaseException) or [tuple(x) if x else None for x in got] != here)


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
    resources: dict[str, float] | Sequence[dict[str, float] | None] | None = None,
    window: int | None = None,
    keys: Sequence[str] | None = None,
    on_error: Callable[[int, BaseException], None] | None = None,
) -> None:
    """Run ``fn(*args)`` for every ``args`` of ``calls``; ``on_result(i, result)`` as each completes.

    On ``threads`` local threads (default: the number of cores), or on the cluster of
    ``client`` (tasks need worker ``resources`` when given, one dict for all or one per call;
    ``keys``: their task keys, unique,
    as the dashboard shows them). At most ``window`` calls are in flight (default: twice the
    threads), so results are consumed as they come and never pile up. ``on_result`` runs in
    the calling thread. The first failure is raised once the calls in flight have finished;
    the calls not yet started never run. With ``on_error``, a failed call is handed to it
    instead (``on_error(i, exception)``) and the others go on.
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
            key = {} if keys is None else {"key": keys[i]}
            res = resources[i] if isinstance(resources, (list, tuple)) else resources
            fut = client.submit(fn, *args, pure=False, resources=res, **key)
            index[fut.key] = i
            ac.add(fut)

        for _ in range(min(n, len(pending))):
            submit()
        for fut in ac:
            i = index.pop(fut.key)
            if on_error is not None and fut.status != "finished":  # an error, or cancelled (e.g. a lost scheduler)
                try:
                    exc = fut.exception()
                except BaseException as cancelled:  # noqa: BLE001 - CancelledError
                    exc = cancelled
                on_error(i, exc)
            else:
                on_result(i, fut.result())
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
                    i = running.pop(fut)
                    if on_error is not None and fut.exception() is not None:
                        on_error(i, fut.exception())
                    else:
                        on_result(i, fut.result())
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
