"""How every ``geoseg`` command ends on an error: one line on stderr and an exit code."""

from __future__ import annotations

import functools
import sys

import click

from geoseg._signals import Terminated, handle_stop_signals
from geoseg.errors import GeosegError

#: Exit codes of a run stopped by Ctrl-C (SIGINT) and by SIGTERM: 128 + the signal number.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def fail(message: str, code: int = 1) -> None:
    """Print ``geoseg: error: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"geoseg: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn geoseg's (and the usual I/O) errors into one line and exit code 1.

    SIGTERM is handled like Ctrl-C: the command stops (a scene run keeps its resume
    journal consistent) and exits 143 (Ctrl-C: 130). With ``--debug`` the traceback is
    shown instead.
    """

    @click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        restore = handle_stop_signals()
        try:
            if debug:
                return fn(*args, **kwargs)
            return _run(fn, args, kwargs)
        finally:
            restore()

    return wrapper


def _run(fn, args, kwargs):
    stopped = "no output was left under a final name; `geoseg run --resume` (or `geoseg batch`) continues from the finished tiles"
    try:
        return fn(*args, **kwargs)
    except GeosegError as exc:
        fail(str(exc))
    except Terminated:
        fail(f"terminated (SIGTERM); {stopped}", EXIT_TERMINATED)
    except KeyboardInterrupt:
        fail(f"interrupted; {stopped}", EXIT_INTERRUPTED)
    except MemoryError:
        fail("out of memory: use a smaller --tile-size or --batch-size")
    except OSError as exc:
        fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if getattr(exc, 'filename', None) else ''}")
