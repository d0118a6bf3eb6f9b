"""What every ``geoseg`` command shares: click settings, error handling, argument parsers."""

from __future__ import annotations

import functools
import sys

import click

from .errors import GeosegError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, code: int = 1) -> None:
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
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; no output was left under a final name", 130)
        except MemoryError:
            _fail("out of memory: use a smaller --tile-size or --batch-size")
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if getattr(exc, 'filename', None) else ''}")

    return wrapper


def _parse_bands(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give 1-based band numbers separated by commas, e.g. 3,2,1,4") from None
    if not out:
        raise click.BadParameter("give at least one band number")
    return out
