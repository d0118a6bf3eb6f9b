"""Atomic files: a file is written under a hidden temporary name and renamed into place.

One naming convention for every temporary file geoseg writes,
``.<final name>.<tag><8 hex>.partial<suffix>`` next to the final file, so that a killed
run never leaves anything under a final name and the leftovers of any writer are found by
one pattern. :func:`atomic_write` does it for one local file (model bundles, checkpoints,
reports); a run's outputs go through :class:`geoseg.io.store.OutputStore`, which commits
them together, to a local directory or an object store.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "remove_files", "temp_path", "write_json"]


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
