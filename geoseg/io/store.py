"""The output store: where a run's products go, and how they become visible as a whole.

One :class:`OutputStore` per destination owns everything about writing outputs:

- **Destinations.** A local directory, or an object-store prefix ``s3://bucket/prefix``
  (:func:`parse_destination`; any other ``scheme:`` is refused with one line, never
  taken for a local folder named after it). A new kind of store is one more
  :class:`_Backend` (head, put, get, delete, list).
- **Naming.** ``<stem>.<kind>`` for a scene's outputs (:data:`SCENE_OUTPUTS`,
  :meth:`OutputStore.scene_outputs`), ``.<name>.<tag><8 hex>.partial<suffix>`` for
  temporaries (:func:`geoseg._files.temp_path`), and the hidden names of the resume
  journal and the stripes (:func:`journal_path`, :func:`stripes_path`).
- **Scratch.** Everything GDAL or SQLite writes by path (stripes, COGs, GeoPackages,
  JSON) is written in a local scratch directory: the output directory itself for a
  local destination (so the commit is a rename), else ``$GEOSEG_SCRATCH`` (default
  ``<tempdir>/geoseg-scratch``)/``<digest of the destination>``, one directory per
  destination so a killed run's journal and stripes are found again there by ``--resume``.
- **Temporaries it hands out are tracked** (:meth:`OutputStore.temp`): a failure removes
  them all with :meth:`OutputStore.discard`.
- **Stage and commit, the manifest last.** :meth:`OutputStore.stage` registers a finished
  temporary as an output; :meth:`OutputStore.commit` renames them into place (local) or
  uploads them to their final keys (object store) and then writes the manifest, the
  commit marker: a killed or failed run leaves no manifest, so nothing that looks done.
  An object store has no rename: products go straight to their final keys, each in one
  PUT (up to 5 GiB: an interrupted PUT leaves nothing behind), and the manifest records
  the ETag each PUT returned.
- **Fingerprints.** The manifest lists each output's size and sha256, with the local
  file's mtime or the object's ETag; :meth:`OutputStore.unchanged` checks them with one
  ``stat``/listing, never reading pixel data (a local file whose mtime changed is hashed).
- **Errors of a destination.** :meth:`OutputStore.writing` (local writes, through
  :func:`geoseg.io.faults.writing`) and the object-store calls turn a full scratch disk,
  a read-only directory, a 403/404 on the bucket or rejected credentials into one
  :class:`~geoseg.errors.OutputError` line naming the destination and the cause (never
  the credentials).

Object storage goes through ``obstore`` (Rust ``object_store``): credentials and region
from the standard AWS environment, an endpoint from ``AWS_ENDPOINT_URL`` or GDAL's
``AWS_S3_ENDPOINT``/``AWS_HTTPS`` (the variables geoseg's ``/vsis3/`` inputs already use),
bounded retries with backoff, conditional (create-only) puts.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from geoseg._files import remove_files, temp_path
from geoseg.errors import OutputError
from geoseg.io.faults import writing
from geoseg.io.raster import file_sha256

__all__ = [
    "SCENE_OUTPUTS",
    "OutputStore",
    "is_remote_destination",
    "journal_path",
    "kind_glob",
    "open_store",
    "parse_destination",
    "scene_file",
    "sibling_confidence",
    "split_target",
    "stripes_path",
]

#: The file kinds a scene run writes, ``<stem>.<kind>`` (the manifest last); ``*`` stands for
#: a mask head's name (one quicklook per head).
SCENE_OUTPUTS = (
    "classes.tif",
    "classes.tif.aux.xml",
    "classes.qml",
    "confidence.tif",
    "mask.tif",
    "mask.tif.aux.xml",
    "mask.qml",
    "probabilities.tif",
    "gpkg",
    "classes.png",
    "thumb.png",
    "legend.png",
    "mask-*.png",
    "stac.json",
    "run.json",
)


def kind_glob(stem: str, kind: str) -> str:
    """A glob pattern for ``<stem>.<kind>`` (a ``*`` in ``kind`` matches a mask head's name)."""
    return f"{globlib.escape(stem)}.{globlib.escape(kind).replace('[*]', '*')}"

#: Destination schemes geoseg writes to (besides a local directory).
SCHEMES = ("s3",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:" is a drive
#: One PUT holds up to 5 GiB on S3; larger files go up in parts.
_SINGLE_PUT_BYTES = 5 * 1024**3


# --------------------------------------------------------------------------- names


def scene_file(out_dir, stem: str, kind: str) -> Path:
    """The path of a scene run's file of ``kind`` (one of :data:`SCENE_OUTPUTS`) in a local directory."""
    return Path(out_dir) / f"{stem}.{kind}"


def sibling_confidence(classes_path) -> Path | None:
    """The ``<stem>.confidence.tif`` that ``geoseg run`` wrote next to ``<stem>.classes.tif``."""
    p = Path(classes_path)
    if p.name.endswith(".classes.tif"):
        conf = p.with_name(p.name[: -len(".classes.tif")] + ".confidence.tif")
        if conf.exists():
            return conf
    return None


def journal_path(scratch: Path, stem: str) -> Path:
    """The resume journal of scene ``stem`` (hidden, a ``.partial`` name) in a scratch directory."""
    return Path(scratch) / f".{stem}.run.json.journal.partial.jsonl"


def stripes_path(final: Path) -> Path:
    """The hidden stripes file a product's tiles are written into (see :mod:`geoseg.io.cog`)."""
    return final.with_name(f".{final.name}.stripes.partial.tif")


# --------------------------------------------------------------------------- destinations


def is_remote_destination(dest) -> bool:
    """True when ``dest`` names an object-store prefix (``s3://...``), not a local directory."""
    return isinstance(dest, str) and dest.lower().startswith("s3://")


def parse_destination(dest) -> tuple[str, str, str]:
    """``(scheme, bucket, prefix)`` of a destination: ``("file", "", "/abs/dir")`` or
    ``("s3", "bucket", "pre/fix")``. An unknown or malformed scheme raises one line."""
    if isinstance(dest, os.PathLike):
        return "file", "", str(Path(dest).expanduser().resolve())
    text = str(dest)
    m = _SCHEME.match(text)
    if m is None:
        return "file", "", str(Path(text).expanduser().resolve())
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        raise OutputError(
            f"cannot write to {text}: unsupported scheme {scheme}://: give a local directory or s3://bucket/prefix"
        )
    rest = text[m.end():]
    if not rest.startswith("//") or not rest[2:].split("/", 1)[0]:
        raise OutputError(f"cannot write to {text}: not a valid {scheme} URL: write {scheme}://bucket/prefix")
    bucket, _, prefix = rest[2:].partition("/")
    return scheme, bucket, prefix.strip("/")


def split_target(target) -> tuple[str | Path, str]:
    """A file destination (a local path or ``s3://bucket/prefix/name``) as its store's
    destination and the file's name in it."""
    scheme, bucket, prefix = parse_destination(target)
    if scheme == "file":
        p = Path(prefix)
        return p.parent, p.name
    parent, _, name = prefix.rpartition("/")
    if not name:
        raise OutputError(f"cannot write to {target}: name a file, e.g. {scheme}://{bucket}/prefix/name")
    return f"{scheme}://{bucket}/{parent}".rstrip("/"), name


# --------------------------------------------------------------------------- backends


class _Backend:
    """The operations a kind of store provides, on names relative to the destination."""

    url: str

    def head(self, name: str) -> dict | None:  # {"size", "etag"} or None when absent
        raise NotImplementedError

    def list(self, prefix: str) -> dict[str, dict]:  # name -> {"size", "etag"}
        raise NotImplementedError

    def put(self, name: str, local: Path, create_only: bool = False) -> dict:  # -> {"etag": ...}
        raise NotImplementedError

    def put_bytes(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def where(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"


def _s3_endpoint() -> tuple[str | None, bool]:
    """The S3 endpoint (``AWS_ENDPOINT_URL[_S3]``, else GDAL's ``AWS_S3_ENDPOINT`` with
    ``AWS_HTTPS``) and whether plain HTTP is allowed."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url and os.environ.get("AWS_S3_ENDPOINT"):
        host = os.environ["AWS_S3_ENDPOINT"]
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        url = host if "://" in host else ("https://" if https else "http://") + host
    return url, bool(url and url.startswith("http://"))


class _S3Backend(_Backend):
    """An S3 (or S3-compatible) prefix through obstore."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._store = None

    @property
    def store(self):
        if self._store is None:
            try:
                from obstore.store import S3Store
            except ImportError as exc:  # pragma: no cover - a dependency of geoseg
                raise OutputError(f"cannot write to {self.url}: obstore is not installed (pip install obstore)") from exc
            endpoint, allow_http = _s3_endpoint()
            kw: dict = {"client_options": {"allow_http": True}} if allow_http else {}
            if endpoint:
                kw["endpoint"] = endpoint
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kw["region"] = region
            if os.environ.get("AWS_VIRTUAL_HOSTING", "").upper() in ("FALSE", "NO", "0"):
                kw["virtual_hosted_style_request"] = False
            for var, key in (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                             ("AWS_SESSION_TOKEN", "token")):
                if os.environ.get(var):
                    kw[key] = os.environ[var]
            if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
                kw["skip_signature"] = True
            self._store = S3Store(self.bucket, prefix=self.prefix or None, **kw)
        return self._store

    def head(self, name: str) -> dict | None:
        import obstore

        try:
            meta = obstore.head(self.store, name)
        except FileNotFoundError:
            return None
        return {"size": int(meta["size"]), "etag": meta.get("e_tag")}

    def list(self, prefix: str) -> dict[str, dict]:
        import obstore

        out = {}
        for chunk in obstore.list(self.store, prefix=prefix or None):
            for meta in chunk:
                out[meta["path"]] = {"size": int(meta["size"]), "etag": meta.get("e_tag")}
        return out

    def put(self, name: str, local: Path, create_only: bool = False) -> dict:
        import obstore

        size = Path(local).stat().st_size
        with open(local, "rb") as f:
            res = obstore.put(self.store, name, f, mode="create" if create_only else "overwrite",
                              use_multipart=size > _SINGLE_PUT_BYTES)
        return {"etag": res.get("e_tag")}

    def put_bytes(self, name: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, name, data, use_multipart=False)

    def get_bytes(self, name: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, name).bytes())

    def delete(self, name: str) -> None:
        import obstore

        try:
            obstore.delete(self.store, name)
        except FileNotFoundError:
            pass


def _remote_reason(exc: BaseException) -> str:
    """Why an object-store call failed, in a few words (HTTP status and S3 error code; no
    request details, which could carry signed headers)."""
    text = str(exc)
    status = re.search(r"status code: (\d{3})", text) or re.search(r"\b(40[0-9]|5\d\d) [A-Z][a-z]+", text)
    code = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    code_s = code.group(1) if code else ""
    st = status.group(1) if status else ""
    name = type(exc).__name__
    if code_s in ("ExpiredToken", "TokenRefreshRequired", "RequestExpired"):
        why = "the credentials have expired"
    elif code_s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken") or name == "UnauthenticatedError":
        why = "the credentials were rejected"
    elif code_s == "NoSuchBucket":
        why = "no such bucket"
    elif st == "403" or name == "PermissionDeniedError":
        why = "access denied"
    elif st == "404" or isinstance(exc, FileNotFoundError):
        why = "not found"
    elif "connect" in text.lower() or "dns" in text.lower():
        why = "cannot reach the object store"
    else:
        why = "request failed"
    detail = " ".join(x for x in (f"HTTP {st}" if st else "", code_s) if x)
    return why + (f" ({detail})" if detail else "")


# --------------------------------------------------------------------------- the store


class OutputStore:
    """One destination's outputs: names, scratch, tracked temporaries, stage and commit
    (the manifest last), fingerprints, existence/read/delete, cleanup, errors."""

    def __init__(self, dest, overwrite: bool = False) -> None:
        scheme, bucket, prefix = parse_destination(dest)
        self.scheme = scheme
        self.overwrite = overwrite
        if scheme == "file":
            self.backend: _Backend | None = None
            self.url = prefix
            self.root = Path(prefix)
            self._scratch = self.root
        else:
            self.backend = _S3Backend(bucket, prefix)
            self.url = self.backend.url
            base = Path(os.environ.get("GEOSEG_SCRATCH") or Path(tempfile.gettempdir()) / "geoseg-scratch")
            self._scratch = base / hashlib.sha256(self.url.encode()).hexdigest()[:16]
            self.root = self._scratch  # finals are named in the scratch directory, uploaded on commit
        self._pending: dict[Path, Path] = {}
        self._temps: set[Path] = set()
        self._prepared = False

    def __repr__(self) -> str:
        return f"OutputStore({self.url!r})"

    @property
    def remote(self) -> bool:
        return self.backend is not None

    @property
    def out_dir(self) -> Path:
        """The local directory outputs are named in (the destination, or its scratch)."""
        return self.root

    @property
    def scratch(self) -> Path:
        """The local directory temporaries, stripes and the journal are written in."""
        return self._scratch

    # ------------------------------------------------------------------ names
    def path(self, name: str) -> Path:
        """The final path of output ``name`` (for an object store: its scratch stand-in)."""
        return self.root / name

    def where(self, name: str) -> str:
        """Where output ``name`` lives, for messages and reports (a path or a URL)."""
        return self.backend.where(name) if self.remote else str(self.root / name)

    def scene_outputs(self, stem: str, has_masks: bool, vectorize: bool = True, stac: bool = False,
                      probabilities: bool = False) -> dict[str, Path]:
        """The final paths of a scene run's outputs (the manifest, written last, comes last)."""
        paths = {"classes": self.path(f"{stem}.classes.tif"), "confidence": self.path(f"{stem}.confidence.tif")}
        if has_masks:
            paths["mask"] = self.path(f"{stem}.mask.tif")
        if vectorize:
            paths["vectors"] = self.path(f"{stem}.gpkg")
        if stac:
            paths["stac"] = self.path(f"{stem}.stac.json")
        if probabilities:
            paths["probabilities"] = self.path(f"{stem}.probabilities.tif")
        paths["manifest"] = self.path(f"{stem}.run.json")
        return paths

    def resume_files(self, stem: str, finals: Iterable[Path] | None = None) -> list[Path]:
        """The files a killed run of ``stem`` keeps for resuming (journal and stripes)."""
        if finals is None:
            finals = [self.path(f"{stem}.{k}") for k in ("classes.tif", "confidence.tif", "mask.tif", "probabilities.tif")]
        return [journal_path(self.scratch, stem), *(stripes_path(Path(f)) for f in finals)]

    # ------------------------------------------------------------------ errors
    def writing(self, what: str, retry: str = "rerun with --resume", **kw):
        """:func:`geoseg.io.faults.writing` for a local write of this store (in its scratch
        directory), naming the destination."""
        label = None if not self.remote else f"{self.scratch} (local scratch for {self.url}; set GEOSEG_SCRATCH)"
        return writing(what, self.scratch, retry, label=label, **kw)

    @contextmanager
    def _remote(self, what: str, name: str | None = None) -> Iterator[None]:
        """Turn an object-store failure into one OutputError line naming the destination."""
        try:
            yield
        except OutputError:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore raises its own, OSError and friends
            mod = type(exc).__module__ or ""
            if not (mod.startswith("obstore") or isinstance(exc, OSError)):
                raise
            where = self.backend.where(name) if name else self.url
            raise OutputError(
                f"cannot {what} {where}: {_remote_reason(exc)}: check the bucket, its policy and the credentials "
                "(AWS_* environment), then run again"
            ) from None

    # ------------------------------------------------------------------ before writing
    def prepare(self) -> OutputStore:
        """Create the (scratch) directory and prove it writable; for an object store, prove
        the bucket answers (one listing of the prefix)."""
        if self._prepared:
            return self
        d = self.scratch
        label = str(d) if not self.remote else f"the local scratch directory {d} for {self.url}"
        if d.exists() and not d.is_dir():
            raise OutputError(f"output directory {d} exists and is not a directory: choose another -o/--out")
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".geoseg-write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            hint = "choose a writable -o/--out" if not self.remote else "set GEOSEG_SCRATCH to a writable directory"
            raise OutputError(f"cannot write to {label} ({exc.strerror or exc}): {hint}") from exc
        if self.remote:  # a bucket that refuses writes fails now, not after the inference
            probe_name = f".geoseg-write-test-{uuid.uuid4().hex}"
            with self._remote("write to"):
                self.backend.put_bytes(probe_name, b"")
                self.backend.delete(probe_name)
        self._prepared = True
        return self

    def check_free(self, finals: list[Path]) -> None:
        """Refuse to start when an output exists and overwrite is off."""
        if self.overwrite:
            return
        existing = [p for p in finals if self.exists(p.name)]
        if existing:
            names = ", ".join(p.name for p in existing)
            raise OutputError(f"{names} already exist(s) in {self.url}: pass --overwrite to replace, or choose another -o/--out")

    # ------------------------------------------------------------------ temporaries and staging
    def temp(self, final: Path, tag: str = "") -> Path:
        """A fresh temporary path next to ``final`` in the scratch directory, tracked
        (removed by :meth:`discard` unless committed)."""
        tmp = temp_path(self.scratch / Path(final).name, tag)
        self._temps.add(tmp)
        return tmp

    temp_for = temp

    @property
    def staged(self) -> dict[Path, Path]:
        """Final path -> finished temporary file, for everything staged so far."""
        return dict(self._pending)

    def stage(self, final: Path, tmp: Path) -> None:
        """Register ``tmp`` as the finished content of ``final``."""
        self._pending[Path(final)] = Path(tmp)

    @contextmanager
    def staging(self, final: Path, tag: str = "", what: str | None = None) -> Iterator[Path]:
        """Yield a tracked temporary for ``final``; stage it when the block succeeds (a
        failure leaves it to :meth:`discard`). ``what``: wrap the block in :meth:`writing`."""
        tmp = self.temp(final, tag)
        if what is None:
            yield tmp
        else:
            with self.writing(what):
                yield tmp
        self.stage(final, tmp)

    def write_text(self, final: Path, text: str, tag: str = "json-", what: str | None = None) -> Path:
        """Stage ``text`` as the content of ``final``."""
        with self.staging(final, tag, what) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return tmp

    def entry(self, final: Path, tmp: Path) -> dict:
        """What the manifest records of one output, from its finished temporary file: size
        and sha256, and the fingerprint checked later without reading it (the local file's
        ``mtime_ns``, which survives the rename; an object's ``etag`` is added on commit)."""
        st = Path(tmp).stat()
        out = {"path": Path(final).name, "sha256": file_sha256(tmp), "bytes": st.st_size}
        if not self.remote:
            out["mtime_ns"] = st.st_mtime_ns
        return out

    def entries(self, stem: str) -> dict[str, dict]:
        """kind -> :meth:`entry` of every output staged so far (``<stem>.<kind>``)."""
        return {f.name[len(stem) + 1:]: self.entry(f, t) for f, t in self._pending.items()}

    def commit(self, manifest: tuple[Path, dict] | None = None) -> list[Path]:
        """Make every staged output final, then write ``manifest`` (final path, content) last:
        the commit marker. Local: renames. Object store: the old manifest is deleted first,
        each output uploaded to its final key (its ETag recorded in the manifest's
        ``outputs``), the manifest put last. Temporaries are removed either way."""
        done = []
        try:
            if not self.remote:
                if manifest is not None:  # written before any rename, renamed last
                    final, content = manifest
                    self.write_text(final, json.dumps(content, indent=2) + "\n", what=f"the run manifest {final.name}")
                with self.writing("the outputs (renaming them into place)"):
                    for final, tmp in self._pending.items():
                        os.replace(tmp, final)
                        done.append(final)
            else:
                if manifest is not None:
                    with self._remote("replace", manifest[0].name):
                        self.backend.delete(manifest[0].name)  # not done until the new one is put
                etags = {}
                for final, tmp in self._pending.items():
                    with self._remote("upload to", final.name):
                        etags[final.name] = self.backend.put(final.name, tmp)["etag"]
                    done.append(final)
                if manifest is not None:
                    final, content = manifest
                    for entry in (content.get("outputs") or {}).values():
                        if entry.get("path") in etags:
                            entry["etag"] = etags[entry["path"]]
                    tmp = self.write_text(final, json.dumps(content, indent=2) + "\n", what=f"the run manifest {final.name}")
                    with self._remote("upload to", final.name):
                        self.backend.put(final.name, tmp)
                    done.append(final)
                remove_files(list(self._pending.values()))
        finally:
            self._pending.clear()
            remove_files([t for t in self._temps if t.exists()])
            self._temps.clear()
        return done

    def discard(self, extra: Iterable[Path] = ()) -> None:
        """Remove every staged file and every temporary handed out (after a failure)."""
        remove_files(list(self._pending.values()) + list(self._temps) + list(extra))
        self._pending.clear()
        self._temps.clear()

    # ------------------------------------------------------------------ reading back, skip, clean
    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.root / name).exists()
        with self._remote("read", name):
            return self.backend.head(name) is not None

    def read_text(self, name: str) -> str:
        """The content of a small output (a manifest, a STAC Item)."""
        if not self.remote:
            return (self.root / name).read_text()
        with self._remote("read", name):
            return self.backend.get_bytes(name).decode("utf-8")

    def names(self, pattern: str) -> list[str]:
        """The outputs whose names match the glob ``pattern`` (e.g. :func:`kind_glob`)."""
        import fnmatch

        if not self.remote:
            return sorted(p.name for p in self.root.glob(pattern)) if self.root.is_dir() else []
        prefix = pattern.split("*", 1)[0].replace("[[]", "[").replace("[]]", "]")
        with self._remote("list", prefix):
            return sorted(n for n in self.backend.list(prefix) if fnmatch.fnmatchcase(n, pattern))

    def delete(self, name: str) -> None:
        """Delete output ``name`` if present (with a local file's GDAL side-cars)."""
        if not self.remote:
            p = self.root / name
            if p.exists():
                remove_files([p])
            return
        with self._remote("delete", name):
            self.backend.delete(name)

    def unchanged(self, entries: Iterable[dict], stem: str) -> str | None:
        """None when every manifest entry is still there with its recorded fingerprint; else
        the name of the first one missing or changed. An object store is listed once
        (size and ETag); a local file is stat-ed and hashed only when its mtime changed."""
        entries = list(entries)
        if self.remote:
            with self._remote("list", f"{stem}.*"):
                listed = self.backend.list("")
            for e in entries:
                now = listed.get(e["path"])
                if now is None or now["size"] != e.get("bytes") or not e.get("etag") or now["etag"] != e["etag"]:
                    return e["path"]
            return None
        for e in entries:
            p = self.root / e["path"]
            try:
                st = p.stat()
            except FileNotFoundError:
                return e["path"]
            if st.st_size != e.get("bytes"):
                return e["path"]
            if st.st_mtime_ns != e.get("mtime_ns") and file_sha256(p) != e.get("sha256"):
                return e["path"]  # touched or copied: the content decides
        return None

    def clean_partials(self, stem: str) -> list[Path]:
        """Remove what a killed run of scene ``stem`` left in the scratch directory: its hidden
        ``.partial`` files, except its resume journal and stripes (``resume`` reuses them)."""
        removed: list[Path] = []
        d = self.scratch
        if not d.is_dir():
            return removed
        keep = set(self.resume_files(stem))
        for kind in SCENE_OUTPUTS:
            for p in d.glob(f".{kind_glob(stem, kind)}.*.partial*"):
                if p in keep:
                    continue
                p.unlink(missing_ok=True)
                removed.append(p)
        for p in d.glob(".geoseg-write-test-*"):
            p.unlink(missing_ok=True)
        return removed


def open_store(dest, overwrite: bool = False) -> OutputStore:
    """The prepared :class:`OutputStore` of ``dest`` (a local directory or ``s3://bucket/prefix``)."""
    return OutputStore(dest, overwrite=overwrite).prepare()
