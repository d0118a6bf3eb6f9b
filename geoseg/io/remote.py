"""Remote rasters and files: URL forms, GDAL network settings, retries, HTTP metadata.

geoseg reads remote inputs through GDAL's virtual file systems, never by downloading
them: ``http(s)://`` URLs become ``/vsicurl/...`` and ``s3://bucket/key`` becomes
``/vsis3/bucket/key``, so every read is a range request for the blocks it needs.
Credentials come from the standard AWS/GDAL environment (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``~/.aws``, ``GDAL_HTTP_AUTH``, ...), are read by GDAL itself and are
never printed or written: messages and manifests use :func:`display_url`, which drops
user info and the values of signature/token query parameters.

Faults: GDAL retries single HTTP requests that fail transiently (5xx, 429, timeouts,
resets) ``GDAL_HTTP_MAX_RETRY`` times ``GDAL_HTTP_RETRY_DELAY`` seconds apart (doubling);
:func:`retrying` adds a bounded retry (count and total time) around whole opens/reads,
clearing GDAL's per-URL cache in between (GDAL remembers a failed URL as missing).
Permanent failures (404, 403, an unknown host) raise at once, as one line naming the
URL and the status.

A few GDAL C functions that rasterio does not expose (file metadata, cache clearing,
reading a small file) are called through ``ctypes`` on the GDAL library rasterio has
already loaded.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from geoseg.errors import RasterReadError

T = TypeVar("T")

REMOTE_SCHEMES = ("http://", "https://", "s3://")
_VSI_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/")

#: GDAL network settings for remote reads, each overridable by the same environment
#: variable. How a tile's window is fetched (GDAL 3.10, measured with the counting server of
#: tests/remote_servers.py; BENCHMARKS.md "Areas of interest: bytes read"):
#:
#: - GTiff collects the blocks of the window that are not in GDAL's block cache, merges the
#:   contiguous ones (a row of blocks is one range) and fetches the ranges in parallel, one
#:   exact range request each (GDAL_HTTP_MULTIRANGE's default, PARALLEL; "YES" would send
#:   multipart ranges, which S3 and many servers refuse). GDAL_HTTP_MERGE_CONSECUTIVE_RANGES
#:   (GDAL's default too) keeps contiguous ranges merged there.
#: - It does so for at most GDAL_MAX_RAW_BLOCK_CACHE_SIZE bytes of compressed blocks per
#:   window (default 10 MB: a 2048-px tile of a 4-band uint16 file is ~30 MB); the rest went
#:   block by block through /vsicurl/'s sequential read-ahead, which doubles each request up
#:   to 2 MB and overshot at the end of every row (a 5% area of interest cost 11.3% of the
#:   file instead of 8.0% with --tile-size 2048). The option bounds a buffer that lives for
#:   one window read, not a cache: 64 MiB keeps every tile window on the exact path.
#: - A single range goes through /vsicurl/'s sequential reader instead: 16 KB chunks
#:   (CPL_VSIL_CURL_CHUNK_SIZE, left at GDAL's default), and a range starting where the
#:   previous download of the file ended is fetched at least as large as that one.
#: - Every thread reads through one handle per source (geoseg.io.raster.SharedDataset), so
#:   the blocks that neighbouring tiles' halos share are fetched once, and that handle reads
#:   ahead along the run's plan one row of blocks per request, the last row first (rows in
#:   reverse order never look sequential to /vsicurl/).
#: - VSI_CACHE stays off: each block is kept once, decoded, in GDAL's block cache.
#: - CPL_VSIL_CURL_ALLOWED_EXTENSIONS is not set: GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR
#:   already stops the sidecar probes (.aux.xml, .ovr, .msk; no such request is seen), and an
#:   extension list would refuse URLs without one (signed URLs, STAC API item links).
REMOTE_DEFAULTS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no sidecar probes
    "GDAL_HTTP_MAX_RETRY": "4",  # per request: 5xx, 429, timeouts, connection resets
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # seconds, doubled after each failure
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_MAX_RAW_BLOCK_CACHE_SIZE": str(64 << 20),  # a whole tile window in one set of exact range requests
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # the COG header in the first request
    "GDAL_HTTP_VERSION": "1.1",
    "CPL_VSIL_CURL_USE_HEAD": "YES",
    "VSI_CACHE": "FALSE",  # blocks are cached once, in GDAL's block cache
}

#: Bounded retry of whole operations (on top of GDAL's per-request retries).
OPEN_ATTEMPTS = 3
RETRY_DELAY_S = 0.5
RETRY_BUDGET_S = 60.0

_SECRET_PARAM = re.compile(r"sig|signature|token|credential|secret|key|password|auth", re.IGNORECASE)


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``http(s)://`` and ``s3://`` URLs and GDAL network paths (``/vsicurl/`` ...)."""
    s = str(uri)
    return s.startswith(REMOTE_SCHEMES) or s.startswith(_VSI_PREFIXES)


def gdal_path(uri: str | os.PathLike) -> str:
    """The path GDAL opens for ``uri``: ``/vsicurl/URL``, ``/vsis3/bucket/key`` or a local path."""
    s = str(uri)
    if s.startswith(("http://", "https://")):
        return "/vsicurl/" + s
    if s.startswith("s3://"):
        return "/vsis3/" + s[len("s3://") :]
    if s.startswith("file://"):
        return urlsplit(s).path
    return s


def url_of(path: str) -> str:
    """The URL behind a GDAL network path (inverse of :func:`gdal_path`); others as given."""
    if path.startswith("/vsicurl/"):
        return path[len("/vsicurl/") :]
    if path.startswith("/vsis3/"):
        return "s3://" + path[len("/vsis3/") :]
    return path


def display_url(uri: str | os.PathLike) -> str:
    """``uri`` safe to print or record: no user:password, no signature/token values."""
    s = url_of(str(uri))
    if "://" not in s:
        return s
    parts = urlsplit(s)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def remote_env() -> dict[str, str]:
    """GDAL config options for remote reads: :data:`REMOTE_DEFAULTS`, environment first."""
    return {k: os.environ.get(k, v) for k, v in REMOTE_DEFAULTS.items()}


# --------------------------------------------------------------------------- failures

#: "HTTP response code: 404" (/vsicurl/), "HTTP response code on URL: 403" (/vsis3/),
#: "HTTP error code: 503 - URL" (GDAL's retry warnings), "status code 404".
_STATUS = re.compile(r"(?:HTTP (?:response|error) code(?: on \S+)?:?\s*|status(?: code)?[ =:]+)(\d{3})\b", re.IGNORECASE)
#: Messages GDAL passes on from servers, with the status they stand for. /vsis3/ reports
#: S3's error <Message> (not its status): these are S3's texts for its error codes.
_KNOWN_TEXT = (
    ("could not resolve host", None, "unknown host"),
    ("could not resolve", None, "unknown host"),
    ("the specified key does not exist", 404, "not found"),
    ("the specified bucket does not exist", 404, "no such bucket"),
    ("access denied", 403, "access denied"),
    ("invalidaccesskeyid", 403, "invalid AWS access key"),
    ("the aws access key id you provided does not exist", 403, "invalid AWS access key"),
    ("signaturedoesnotmatch", 403, "invalid AWS credentials"),
    ("the request signature we calculated does not match", 403, "invalid AWS credentials"),
    ("the security token included in the request is invalid", 403, "invalid AWS credentials"),
    ("the provided token has expired", 400, "expired AWS token"),
    ("request has expired", 403, "expired request"),
    ("please reduce your request rate", 503, "slow down"),
    ("we encountered an internal error", 500, "internal error"),
    ("no such file or directory", 404, "not found"),
    ("does not exist in the file system", 404, "not found"),
)
_TRANSIENT_TEXT = (
    "timed out",
    "timeout",
    "connection reset",
    "connection was reset",
    "connection refused",
    "could not connect",
    "failed to connect",
    "empty reply",
    "recv failure",
    "send failure",
    "transfer closed",
    "read failed",
    "slowdown",
    "internalerror",
    "service unavailable",
)
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Failure:
    """What went wrong with a remote operation, from GDAL's message."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        low = self.message.lower()
        m = _STATUS.search(self.message)
        self.status: int | None = int(m.group(1)) if m else None
        self.reason = ""
        for text, status, reason in _KNOWN_TEXT:
            if text in low:
                self.status = self.status or status
                self.reason = reason
                break
        if self.status is not None:
            self.transient = self.status in _TRANSIENT_STATUS
        else:
            self.transient = not self.reason and any(t in low for t in _TRANSIENT_TEXT)

    def describe(self) -> str:
        if self.status is not None:
            return f"HTTP {self.status}" + (f", {self.reason}" if self.reason else "")
        return self.reason or self.message


def _hint(failure: Failure) -> str:
    if failure.status == 404:
        return "check the URL (and the bucket and key)"
    if failure.status in (401, 403):
        return "check the credentials in the environment (AWS_*/GDAL_HTTP_* variables or profile) and the permissions"
    if failure.reason == "unknown host":
        return "check the host name and the network"
    if failure.transient:
        return "the server kept failing; retry later or raise GDAL_HTTP_MAX_RETRY"
    return "check the URL and that it is a raster GDAL can read"


def remote_error(uri: str, message: str, what: str = "cannot read") -> RasterReadError:
    """A one-line :class:`RasterReadError` naming the (redacted) URL and the status."""
    f = Failure(message)
    return RasterReadError(f"{what} {display_url(uri)} ({f.describe()}): {_hint(f)}")


def retrying(
    fn: Callable[[], T],
    uri: str,
    *,
    attempts: int | None = None,
    delay: float | None = None,
    budget: float | None = None,
    what: str = "cannot read",
    clear: tuple[str, ...] | list[str] | None = None,
) -> T:
    """Call ``fn`` and retry it on transient remote failures, bounded in count and time.

    Between attempts GDAL's cache for ``uri`` is cleared (it remembers failed URLs) and
    the wait doubles from ``delay`` seconds (``clear``: the files to forget instead, e.g.
    the assets behind a VRT); ``attempts``, ``delay`` and ``budget`` default to
    :data:`OPEN_ATTEMPTS`, :data:`RETRY_DELAY_S` and :data:`RETRY_BUDGET_S`, read at
    call time. A permanent failure (404, 403, unknown host)
    or the last transient one raises :func:`remote_error`. Errors that are not remote
    failures (anything but rasterio's I/O errors) pass through unchanged.
    """
    import rasterio.errors

    attempts = OPEN_ATTEMPTS if attempts is None else attempts
    budget = RETRY_BUDGET_S if budget is None else budget
    wait = RETRY_DELAY_S if delay is None else delay
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (rasterio.errors.RasterioIOError, _VsiError) as exc:
            message = _message(exc)
            failure = Failure(message)
            for path in clear if clear is not None else (uri,):
                clear_cache(path)
            if not failure.transient or attempt == attempts or time.monotonic() - t0 + wait > budget:
                culprit, message = _which_failed(clear, uri, message) if clear else (uri, message)
                if is_remote(culprit):
                    message = _head_error(gdal_path(culprit), message)
                raise remote_error(culprit, message, what) from exc
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _which_failed(paths, uri: str, message: str) -> tuple[str, str]:
    """Of the files behind a source (a VRT's assets), the first that fails a HEAD request,
    with its error; else ``(uri, message)``."""
    lib = _lib()
    if lib is None or len(paths) < 2:
        return (paths[0] if paths else uri), message
    for path in paths:
        lib.CPLErrorReset()
        p = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
        if not p:
            return path, _last_error(message)
        lib.CSLDestroy(p)
    return uri, message


def _message(exc: BaseException) -> str:
    parts = [str(exc)]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) not in parts[0]:
        parts.append(str(cause))
    return " ".join(" ".join(parts).split())


# --------------------------------------------------------------------------- GDAL VSI calls


class _VsiError(OSError):
    """A failed GDAL VSI call made through ctypes (message: GDAL's last error)."""


@lru_cache(maxsize=1)
def _lib():
    from ._libgdal import gdal_library_path

    path = gdal_library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    vp, cs, pp = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)
    lib.VSIGetFileMetadata.restype, lib.VSIGetFileMetadata.argtypes = pp, [cs, cs, vp]
    lib.CSLDestroy.restype, lib.CSLDestroy.argtypes = None, [pp]
    lib.VSICurlPartialClearCache.restype, lib.VSICurlPartialClearCache.argtypes = None, [cs]
    lib.VSIIngestFile.restype = ctypes.c_int
    lib.VSIIngestFile.argtypes = [vp, cs, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64]
    lib.VSIFree.restype, lib.VSIFree.argtypes = None, [vp]
    lib.CPLErrorReset.restype, lib.CPLErrorReset.argtypes = None, []
    lib.CPLGetLastErrorMsg.restype, lib.CPLGetLastErrorMsg.argtypes = cs, []
    return lib


def clear_cache(uri: str) -> None:
    """Forget what GDAL cached about a remote file (its size, its blocks, that it failed)."""
    lib = _lib()
    path = gdal_path(uri)
    if lib is not None and path.startswith(_VSI_PREFIXES):
        lib.VSICurlPartialClearCache(path.encode())


def _last_error(default: str) -> str:
    lib = _lib()
    msg = lib.CPLGetLastErrorMsg() if lib is not None else b""
    return (msg or b"").decode(errors="replace") or default


def _head_error(path: str, message: str) -> str:
    """``message`` when it names the HTTP status; else the error of a HEAD request for
    ``path`` (GDAL's last error after a failed read of an S3 object is "Cannot open
    file": the status went by as a warning), or ``message`` if that HEAD succeeds."""
    lib = _lib()
    if lib is None or Failure(message).status is not None:
        return message
    clear_cache(path)
    lib.CPLErrorReset()
    p = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    if p:
        lib.CSLDestroy(p)
        return message
    return _last_error(message)


def read_bytes(uri: str, limit: int = 64 << 20) -> bytes:
    """The whole content of a small file (a STAC Item): local, HTTP(S) or S3 (GDAL VSI)."""
    path = gdal_path(uri)
    if not path.startswith(_VSI_PREFIXES):
        return Path(path).read_bytes()
    lib = _lib()
    if lib is None:  # pragma: no cover - rasterio without a findable libgdal
        raise RasterReadError(f"cannot read {display_url(uri)}: GDAL's library was not found")

    def ingest() -> bytes:
        from rasterio.env import Env

        buf, size = ctypes.c_void_p(), ctypes.c_uint64()
        clear_cache(path)  # a fresh copy: an Item may have changed since the last read
        with Env(**remote_env()):
            lib.CPLErrorReset()
            ok = lib.VSIIngestFile(None, path.encode(), ctypes.byref(buf), ctypes.byref(size), limit)
            if not ok:
                raise _VsiError(_head_error(path, _last_error("HTTP response code: 404")))
        try:
            return ctypes.string_at(buf, size.value)
        finally:
            lib.VSIFree(buf)

    return retrying(ingest, uri)


def http_metadata(uri: str) -> dict[str, str]:
    """ETag, size and Last-Modified of a remote file from one HEAD (or header) request.

    Keys present only when the server sent them: ``etag``, ``size``, ``last_modified``,
    ``content_type``.
    """
    lib = _lib()
    path = gdal_path(uri)
    if lib is None:  # pragma: no cover
        return {}

    def head() -> dict[str, str]:
        from rasterio.env import Env

        clear_cache(path)  # fresh headers: change detection must see a replaced file
        with Env(**remote_env()):
            lib.CPLErrorReset()
            p = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
            if not p:
                raise _VsiError(_last_error("HTTP response code: 404"))
        headers: dict[str, str] = {}
        try:
            i = 0
            while p[i]:
                k, _, v = p[i].decode(errors="replace").partition("=")
                headers[k.lower()] = v.strip()
                i += 1
        finally:
            lib.CSLDestroy(p)
        return headers

    h = retrying(head, uri)
    out: dict[str, str] = {}
    if h.get("etag"):
        out["etag"] = h["etag"]
    total = h.get("content-range", "").rpartition("/")[2]
    size = total if total.isdigit() else h.get("content-length", "")
    if size.isdigit():
        out["size"] = size
    if h.get("last-modified"):
        out["last_modified"] = h["last-modified"]
    if h.get("content-type"):
        out["content_type"] = h["content-type"]
    return out


def fingerprint(uri: str) -> dict:
    """What identifies a remote file's content without reading it: ``{"kind": "http",
    "etag", "size", "last_modified"}`` (those the server sent) from one HEAD request."""
    return {"kind": "http", **http_metadata(uri)}
