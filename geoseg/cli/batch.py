"""The ``batch`` command: a thin click wrapper over :func:`geoseg.batch.run_batch`.

Registered in :mod:`geoseg.cli`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from geoseg.cli._errors import fail, handle_errors
from geoseg.cli._options import (
    CONTEXT,
    json_option,
    placement_option,
    quiet_option,
    scheduler_file_option,
    scheduler_option,
    workers_option,
)
from geoseg.errors import CatalogError, LockedError


@click.command("batch", context_settings=CONTEXT)
@click.argument("catalog", type=click.Path(path_type=Path))
@scheduler_option("Run the scenes on an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
@scheduler_file_option()
@workers_option("Start one local Dask cluster with N worker processes for all scenes "
                "[default: local threads, one scene after the other].")
@placement_option("On a cluster: `scene` runs each scene as one task on one worker, which writes its outputs "
                  "itself; `tile` spreads each scene's tiles over the cluster; `auto` is `scene` when at least "
                  "as many scenes run as there are workers. Recorded in each manifest and the report.")
@click.option("--only", multiple=True, metavar="ID",
              help="Only these scene ids (repeat the option, or separate ids by commas).")
@click.option("--dry-run", is_flag=True, help="Show what would run and why; write nothing.")
@click.option("--force", is_flag=True, help="Rerun scenes that are up to date.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the batch report (per scene: status, reason, seconds, Mpx/s, class areas, error) as JSON, "
                   "and its self-contained HTML page beside it (R.json -> R.html; `geoseg report` rebuilds it).")
@quiet_option("No progress bars or summary.")
@json_option("Print the report as JSON on stdout.")
@handle_errors
def batch_command(catalog, scheduler, scheduler_file, workers, placement, only, dry_run, force, report, quiet, as_json):
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
    from geoseg.batch.runner import EXIT_CATALOG, EXIT_LOCKED, format_summary, run_batch

    try:
        result = run_batch(catalog, only=only, dry_run=dry_run, force=force, scheduler=scheduler,
                           scheduler_file=scheduler_file, workers=workers, placement=placement, report=report,
                           quiet=quiet or as_json)
    except CatalogError as exc:
        fail(str(exc), EXIT_CATALOG)
    except LockedError as exc:
        fail(str(exc), EXIT_LOCKED)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif dry_run:
        click.echo(format_summary(result))
    elif not quiet:
        click.echo(format_summary(result), err=True)
    sys.exit(result.exit_code)
