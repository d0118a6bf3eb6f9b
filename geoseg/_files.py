"""Atomic files: every output is written under a hidden temporary name and renamed into place.

One naming convention for every temporary file geoseg writes,
``.<final name>.<tag><8 hex>.partial<suffix>`` next to the final file, so that a killed
run never leaves anything under a final name and the leftovers of any writer are found by
one pattern (``geoseg.batch`` cleans them). :class:`OutputSet` commits a group of files
together; :func:`atomic_write` does it for one file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from geoseg.errors import OutputError

__all__ = ["OutputSet", "atomic_write", "prepare_out_dir", "remove_files", "temp_path", "write_json"]


def temp_path(final: str | os.PathLike, tag: str = "") -> Path:
    """A fresh temporary path next to ``final`` (hidden, never a final name)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{tag}{uuid.uuid4().hex[:8]}.partial{final.suffix}")


@contextmanager
def atomic_write(final: str | os.PathLike, tag: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``final``'s content to; rename it into place on
    success, remove it (and its GDAL side-cars) on any error."""
    final = Path(final)
    tmp = temp_path(final, tag)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        remove_files([tmp])
        raise


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove it is writable."""
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise OutputError(f"output directory {d} exists and is not a directory: choose another -o/--out")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".geoseg-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {d} ({exc.strerror or exc}): choose a writable -o/--out") from exc
    return d


@dataclass
class OutputSet:
    """Final paths and their temporary twins; committed together or not at all."""

    out_dir: Path
    overwrite: bool = False
    _pending: dict[Path, Path] = field(default_factory=dict)

    def check_free(self, finals: list[Path]) -> None:
        """Refuse to start when an output exists and overwrite is off."""
        if self.overwrite:
            return
        existing = [p for p in finals if p.exists()]
        if existing:
            names = ", ".join(p.name for p in existing)
            raise OutputError(f"{names} already exist(s) in {self.out_dir}: pass --overwrite to replace, or choose another -o/--out")

    def temp_for(self, final: Path, tag: str = "") -> Path:
        """A fresh temporary path next to ``final`` (see :func:`temp_path`)."""
        return temp_path(final, tag)

    @property
    def staged(self) -> dict[Path, Path]:
        """Final path -> finished temporary file, for everything staged so far."""
        return dict(self._pending)

    def stage(self, final: Path, tmp: Path) -> None:
        """Register ``tmp`` as the finished content of ``final``."""
        self._pending[final] = tmp

    def commit(self) -> list[Path]:
        """Rename every staged file to its final name."""
        done = []
        for final, tmp in self._pending.items():
            os.replace(tmp, final)
            done.append(final)
        self._pending.clear()
        return done

    def discard(self, extra: list[Path] = ()) -> None:
        """Remove every staged file and ``extra`` temporary files (after a failure)."""
        remove_files(list(self._pending.values()) + list(extra))
        self._pending.clear()


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON under a temporary name next to ``path``, then rename it into place."""
    with atomic_write(path, "json-") as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def remove_files(paths: list[Path]) -> None:
    """Delete temporary files and their GDAL side-cars, ignoring missing ones and ones that
    cannot be deleted (a disk gone read-only: they are hidden, and the failure being
    reported is the one that matters)."""
    for tmp in paths:
        for p in (Path(tmp), Path(str(tmp) + ".aux.xml"), Path(str(tmp) + ".ovr")):
            try:
                p.unlink()
            except OSError:
                pass
