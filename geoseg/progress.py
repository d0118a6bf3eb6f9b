"""A thread-safe progress bar (tqdm on stderr) that can be switched off."""

from __future__ import annotations

import sys
import threading


class Progress:
    """``with Progress(total, desc, disable) as p: p.update(1)`` from any thread."""

    def __init__(self, total: int, desc: str = "", disable: bool = False, unit: str = "tile") -> None:
        self.total = total
        self.desc = desc
        self.disable = disable
        self.unit = unit
        self.done = 0
        self._lock = threading.Lock()
        self._bar = None

    def __enter__(self) -> Progress:
        if not self.disable:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True, leave=True)
        return self

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
