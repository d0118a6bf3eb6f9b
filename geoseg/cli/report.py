"""The ``report`` command: a thin click wrapper over :mod:`geoseg.batch.report_html`.

Registered in :mod:`geoseg.cli`.
"""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli._errors import handle_errors
from geoseg.cli._options import CONTEXT


@click.command("report", context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the page [default: report.html beside SOURCE's report.json or catalog.json].")
@handle_errors
def report_command(source, out):
    """(Re)build the HTML page of a batch: SOURCE is the report.json `geoseg batch --report`
    wrote, or a folder holding it (or, without one, the outputs' STAC catalog.json).

    \b
    One self-contained file (quicklooks inline, no network): per scene its status and
    message, quicklook, class areas, time, throughput, input and model, links to its
    outputs, and a map of the scene footprints coloured by status.
    \b
    Example:  geoseg report runs/report.json
    """
    from geoseg.batch.report_html import load_report, write_report_html

    report, default = load_report(source)
    click.echo(str(write_report_html(report, out or default)))
