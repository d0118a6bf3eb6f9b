"""The ``batch`` command: a thin click wrapper over :func:`geoseg.batch.run_batch`.

Registered in :mod:`geoseg.cli` with ``cli.add_command(batch_command)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_common import CONTEXT, handle_errors
from .errors import CatalogError, LockedError


def _exit(message: str, code: int) -> None:
    click.echo(f"geoseg: error: {message}", err=True)
    sys.exit(code)


@click.command("batch", context_settings=CONTEXT)
@click.argument("catalog", type=click.Path(path_type=Path))
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run every scene's tiles on an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Start one local Dask cluster with N worker processes for all scenes "
                   "[default: local threads, one scene after the other].")
@click.option("--only", multiple=True, metavar="ID",
              help="Only these scene ids (repeat the option, or separate ids by commas).")
@click.option("--dry-run", is_flag=True, help="Show what would run and why; write nothing.")
@click.option("--force", is_flag=True, help="Rerun scenes that are up to date.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the batch report (per scene: status, reason, seconds, Mpx/s, class areas, error) as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@handle_errors
def batch_command(catalog, scheduler, workers, only, dry_run, force, report, quiet, as_json):
    """Run every scene of CATALOG (a catalog.yaml) through the `geoseg run` pipeline.

    \b
    Scenes whose outputs are complete and whose input, model and parameters are
    unchanged are skipped (checksums in each scene's <stem>.run.json); the others run.
    A failing scene is recorded and the others go on. Each scene's outputs include a
    STAC Item (<stem>.stac.json), linked into a STAC Catalog of all outputs.
    \b
    Exit code: 0 all scenes done or skipped, 1 a scene failed, 2 invalid catalog
    (errors name file:line: field), 3 another batch is running on CATALOG.
    \b
    Example:  geoseg batch catalog.yaml --workers 2 --report report.json
    """
    from .batch import EXIT_CATALOG, EXIT_LOCKED, format_summary, run_batch

    try:
        result = run_batch(catalog, only=only, dry_run=dry_run, force=force, scheduler=scheduler,
                           workers=workers, report=report, quiet=quiet or as_json)
    except CatalogError as exc:
        _exit(str(exc), EXIT_CATALOG)
    except LockedError as exc:
        _exit(str(exc), EXIT_LOCKED)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif dry_run:
        click.echo(format_summary(result))
    elif not quiet:
        click.echo(format_summary(result), err=True)
    sys.exit(result.exit_code)
