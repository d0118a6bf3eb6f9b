"""How every ``geoseg`` command ends on an error: one line on stderr and an exit code."""

from __future__ import annotations

import functools
import sys

import click

from geoseg.errors import GeosegError


def fail(message: str, code: int = 1) -> None:
    """Print ``geoseg: error: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"geoseg: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn geoseg's (and the usual I/O) errors into one line and exit code 1.

    With ``--debug`` the traceback is shown instead.
    """

    @click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        if debug:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except GeosegError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted; no output was left under a final name", 130)
        except MemoryError:
            fail("out of memory: use a smaller --tile-size or --batch-size")
        except OSError as exc:
            fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if getattr(exc, 'filename', None) else ''}")

    return wrapper
