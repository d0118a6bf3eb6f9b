"""Stopping cleanly on SIGTERM and Ctrl-C.

Kubernetes, Airflow, Slurm and cron stop a job with SIGTERM, a user with Ctrl-C (SIGINT).
:func:`handle_stop_signals` (installed by the CLI) makes both raise in the main thread:
SIGINT a :class:`KeyboardInterrupt`, SIGTERM a :class:`Terminated` (a subclass, so every
``except KeyboardInterrupt`` cleanup runs for it too), and the CLI exits 130 or 143.
Inside :func:`critical` (a resume-journal checkpoint) the signal is held and raised when
the section ends, so a journal is never left half-updated.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "critical", "handle_stop_signals"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


_depth = 0
_held: list[BaseException] = []


def _raise(exc: BaseException) -> None:
    if _depth > 0:
        if not _held:
            _held.append(exc)
        return
    raise exc


def _on_signal(signum, frame) -> None:  # runs in the main thread, between bytecodes
    _raise(Terminated("terminated (SIGTERM)") if signum == signal.SIGTERM else KeyboardInterrupt())


@contextmanager
def critical() -> Iterator[None]:
    """Hold SIGTERM / Ctrl-C (handled by :func:`handle_stop_signals`) until the block ends."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held:
            raise _held.pop()


def handle_stop_signals() -> Callable[[], None]:
    """Install the SIGTERM and SIGINT handlers (main thread only); returns a restore function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, _on_signal)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
