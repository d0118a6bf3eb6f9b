"""Write failures as one line: what was being written, where, why, and what GDAL said.

A full disk surfaces in many shapes: ``OSError(ENOSPC)`` from Python, a rasterio
``RasterioIOError('Write failed. See previous exception')`` whose cause holds GDAL's
``TIFFAppendToStrip`` message, libtiff's own ``_tiffWriteProc: No space left on device``
printed straight to stderr, pyogrio's ``FeatureError(... database or disk is full)``, a
:class:`GdalWriteError` of geoseg's own GeoPackage writer. A disk that turns read-only
(or a directory that stops being writable) gives ``EROFS``/``EACCES``, or only SQLite's
``unable to open database file``. :func:`writing` wraps one writing stage and turns any of
them into an :class:`~geoseg.errors.OutputError` naming the stage, the directory and the
reason (no space left, read-only file system, permission denied: from the errno, GDAL's
words, or a write probe in the directory), with GDAL's and libtiff's messages captured
(libtiff's error handler is routed here instead of stderr by :func:`capture_libtiff_errors`).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import glob
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geoseg.errors import GeosegError, OutputError

__all__ = ["GdalWriteError", "capture_libtiff_errors", "writing"]


class GdalWriteError(OSError):
    """A GDAL call that writes a file failed; the text holds GDAL's messages. Raised by
    geoseg's own C-API writers (e.g. :mod:`geoseg.vector._ogr`), made one line by :func:`writing`."""

_lock = threading.Lock()
#: The most recent libtiff messages of this process (bounded).
_recent: collections.deque[str] = collections.deque(maxlen=32)
_installed: list = []  # keeps the ctypes callback alive


def capture_libtiff_errors() -> None:
    """Route libtiff's error messages (e.g. ``_tiffWriteProc: No space left on device``,
    which libtiff would print on stderr) into this module's message buffer. Once per
    process; a no-op where rasterio's libtiff or C's ``vsnprintf`` is not found."""
    with _lock:
        if _installed:
            return
        _installed.append(None)
    try:
        import rasterio._base

        libdir = Path(rasterio._base.__file__).resolve().parent.parent / "rasterio.libs"
        found = glob.glob(str(libdir / "libtiff*"))
        tiff = ctypes.CDLL(found[0]) if found else None
        libc = ctypes.CDLL(None)
    except OSError:
        return
    if tiff is None or not hasattr(libc, "vsnprintf"):
        return
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

    def handler(module, fmt, ap) -> None:  # called by libtiff, from any thread
        buf = ctypes.create_string_buffer(512)
        libc.vsnprintf(buf, len(buf), fmt, ap)
        text = buf.value.decode("utf-8", "replace")
        with _lock:
            _recent.append(f"{(module or b'').decode('utf-8', 'replace')}: {text}".strip(": "))

    cb = proto(handler)
    tiff.TIFFSetErrorHandler.restype = ctypes.c_void_p
    tiff.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
    tiff.TIFFSetErrorHandler(ctypes.cast(cb, ctypes.c_void_p))
    _installed.append(cb)


def _mark() -> int:
    with _lock:
        _recent.append("\0mark")
        return len(_recent)


def _messages_since_mark() -> list[str]:
    with _lock:
        items = list(_recent)
    # the messages after the last mark
    for i in range(len(items) - 1, -1, -1):
        if items[i] == "\0mark":
            items = items[i + 1 :]
            break
    return [m for m in items if m != "\0mark"]


def _chain(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and its causes, one line each, duplicates dropped."""
    out: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = " ".join(str(e).split())
        if text and "See previous exception" not in text:
            out.append(text)
        e = e.__cause__ or e.__context__
    return out


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, GeosegError):
        return False
    if isinstance(exc, (OSError, sqlite3.Error)):
        return True
    mod = type(exc).__module__ or ""
    return mod.startswith(("rasterio", "pyogrio", "fiona"))


#: errno -> the reason given; any other errno is given as ``os.strerror`` says it.
_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def _errno_of(exc: BaseException) -> int | None:
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        e = e.__cause__ or e.__context__
    return None


def _probe(directory: Path) -> int | None:
    """The errno of creating (and removing) an empty file in ``directory`` (None: it works)."""
    probe = directory / f".geoseg-write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        return exc.errno
    return None


def _reason(exc: BaseException, msgs: list[str], directory: Path) -> str:
    """Why the write failed, in a few words: the errno in the chain, what GDAL/SQLite said,
    or else what a write probe in the directory runs into now ("write failed" if it works)."""
    code = _errno_of(exc)
    text = " ".join(msgs).lower()
    if code is None and ("read-only file system" in text or "readonly database" in text):
        code = errno.EROFS
    if code is None and ("permission denied" in text):
        code = errno.EACCES
    if code is None:
        code = _probe(directory)
    if code is None:
        return "write failed"
    return _REASONS.get(code) or os.strerror(code).lower()


def _no_space(exc: BaseException, msgs: list[str], directory: Path) -> bool:
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    text = " ".join(msgs).lower()
    if "no space left" in text or "disk is full" in text or "disk quota" in text:
        return True
    try:
        return shutil.disk_usage(directory).free < 64 * 1024
    except OSError:
        return False


@contextmanager
def writing(
    what: str, directory: str | os.PathLike, retry: str = "rerun with --resume", *, disk_only: bool = False,
    label: str | None = None,
) -> Iterator[None]:
    """Turn a failure to write ``what`` into ``directory`` into one :class:`OutputError` line.

    ``what`` says what was being written (e.g. "the class map COG"), ``retry`` how to go
    on once the disk is fixed. geoseg's own errors and anything that is not an I/O
    failure pass through unchanged; with ``disk_only`` (around code that also reads
    inputs with rasterio) so does every failure but a full disk and the vector writer's.
    ``label`` names the place in the message instead of ``directory`` (e.g. the local
    scratch of an object-store destination, :meth:`geoseg.io.store.OutputStore.writing`).
    """
    capture_libtiff_errors()
    _mark()
    try:
        yield
    except BaseException as exc:
        if not _is_write_error(exc):
            raise
        directory = Path(directory)
        gdal = _messages_since_mark()
        msgs = list(dict.fromkeys(gdal + _chain(exc)))
        full = _no_space(exc, msgs, directory)
        vector_writer = isinstance(exc, GdalWriteError) or (type(exc).__module__ or "").startswith(("pyogrio", "sqlite3"))
        if disk_only and not full and not vector_writer:
            raise
        if full:
            reason = "no space left on device"
            hint = f"free space there (or choose another output directory) and {retry}"
        else:
            reason = _reason(exc, msgs, directory)
            hint = f"check that the directory is writable and has free space, then {retry}"
        detail = "; ".join(m for m in msgs if m)[:600]
        raise OutputError(
            f"cannot write {what} in {label or directory}: {reason}" + (f" ({detail})" if detail else "") + f": {hint}"
        ) from exc
