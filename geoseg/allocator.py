"""Process configuration: glibc allocator tuning for CPU inference, OpenMP waiting, GDAL's cache.

:func:`configure_process` is what an entry point calls first thing (``geoseg``'s CLI does,
and :func:`geoseg.run_scene` does at its start); no geoseg module changes the process
environment when it is imported.

glibc's malloc hands the large activation buffers of a forward pass back to the OS and
page-faults them in again on the next one: a U-Net ran 1.5-2.3x slower (measured on a 2-vCPU machine; see BENCHMARKS.md).
The settings must be in force before other threads (OpenMP's, Dask's) pick their malloc
arenas: applied after torch had run, inference in a Dask worker thread stayed ~1.7x
slower than with the settings applied at start-up (measured: 2.3 s vs 1.4 s per 2104^2 tile).
The ``geoseg`` command applies them first thing; Python users call
:func:`configure_process` (or :func:`tune_cpu_allocator`) before importing torch. No
torch import here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from geoseg._constants import GDAL_CACHE_BYTES

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: The settings, as (mallopt parameter, value, environment variable glibc reads at start-up).
SETTINGS = (
    (_M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_"),
    (_M_TRIM_THRESHOLD, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),
    # One arena: threads other than the main one (Dask workers) otherwise get their own
    # arenas, whose heaps cannot hold activation buffers and give them back to the OS
    # after every forward: 1.8x slower inference in a worker thread (measured).
    (_M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
)

#: The same settings for a process started with them (e.g. Dask worker processes).
MALLOC_ENV = {name: str(value) for _, value, name in SETTINGS}

_allocator_tuned: bool | None = None

#: Environment defaults of a geoseg process (a value the user set is kept):
#: - ``OMP_WAIT_POLICY``: spinning OpenMP waiters make torch 10-100x slower whenever
#:   another process holds a core (measured on a 2-vCPU machine); sleeping waiters cost
#:   nothing measurable for our model sizes. libgomp reads it once, when torch is first
#:   imported, so it only takes effect before that.
#: - ``GDAL_CACHEMAX`` (MB): GDAL sizes its block cache at the first raster I/O of the
#:   process from this variable (default: 5% of RAM); most resident memory of a run was
#:   that cache, so it is bounded (:data:`geoseg._constants.GDAL_CACHE_BYTES`; raised for
#:   remote sources by :func:`geoseg.io.raster.size_block_cache`) unless the user chose a size.
PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GDAL_CACHEMAX": str(GDAL_CACHE_BYTES // 2**20)}

#: the names of :data:`PROCESS_ENV` the environment held before :func:`configure_process` ran
_user_set: frozenset[str] | None = None


def configure_process() -> None:
    """Apply geoseg's process settings: :data:`PROCESS_ENV` defaults and the allocator
    tuning (:func:`tune_cpu_allocator`). Idempotent; best called before torch is imported
    and before any thread starts."""
    global _user_set
    if _user_set is None:
        _user_set = frozenset(name for name in PROCESS_ENV if name in os.environ)
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    tune_cpu_allocator()  # (GDAL's block cache, if GDAL already sized it: the next geoseg open resizes it)


def chosen_by_user(name: str) -> bool:
    """Whether the user set the environment variable ``name`` (not :func:`configure_process`).

    In a process where :func:`configure_process` has not run (a Dask worker started by
    geoseg inherits its environment), a value equal to geoseg's own default counts as geoseg's.
    """
    if _user_set is not None:
        return name in _user_set
    return name in os.environ and os.environ[name] != PROCESS_ENV.get(name)


def tune_cpu_allocator() -> bool:
    """Stop glibc malloc from trimming and mmapping large buffers (idempotent).

    Equivalent to ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<2 GiB> MALLOC_ARENA_MAX=1`` but settable from
    a running process; costs ~1-2 GB more resident memory during inference. A no-op
    (returning False) on other C libraries.

    Returns:
        True if glibc's allocator is (now) tuned.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    libc = _glibc()
    if libc is None:
        return False
    try:
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = all([mallopt(param, value) == 1 for param, value, _ in SETTINGS])
    except AttributeError:
        return False
    _allocator_tuned = ok
    return ok


def release_free_memory() -> bool:
    """Hand the allocator's free memory back to the OS (glibc ``malloc_trim(0)``).

    With :func:`tune_cpu_allocator` in force glibc keeps every freed activation buffer;
    once a run's inference is over that memory (~1 GB) is garbage, and the stages after
    it (COGs, polygons) would only stack on top of it. A no-op (False) elsewhere.
    """
    libc = _glibc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (whose malloc these settings are for), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
