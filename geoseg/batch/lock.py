"""One batch at a time per catalog: an exclusive ``flock`` next to the catalog file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.errors import LockedError, OutputError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BatchLock"]


class BatchLock:
    """An exclusive ``flock`` on ``.<catalog name>.lock`` next to the catalog, with the pid inside.

    The kernel drops the lock when its process dies, even by SIGKILL, so a stale file
    never blocks a later batch. The file is removed on release.
    """

    def __init__(self, catalog_path: str | os.PathLike) -> None:
        p = Path(catalog_path)
        self.label = p
        self.path = p.resolve().with_name(f".{p.name}.lock")
        self._fd: int | None = None

    def __enter__(self) -> Self:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the lock file {self.path} ({exc.strerror or exc}): make the catalog's directory writable"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                holder = f" (pid {pid})" if pid.isdigit() else ""
                raise LockedError(
                    f"another geoseg batch{holder} is running {self.label} (lock file {self.path}): "
                    "wait for it to finish"
                ) from None
            try:
                current = os.stat(self.path)
                fresh = (current.st_ino, current.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
            except FileNotFoundError:
                fresh = False
            if fresh:
                break
            os.close(fd)  # its holder removed the file while we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding the lock: no one else uses this file
        finally:
            os.close(self._fd)
            self._fd = None
