"""The ``geoseg`` command line: thin click commands over the public Python API.

One module per group of commands (``run.py``: run, vectorize, synth, models, demo;
``train.py``: train, evaluate; ``batch.py``: batch; ``report.py``: report), options shared between them defined
once in ``_options.py``, and one way to end on an error in ``_errors.py``.
"""

from __future__ import annotations

import click

from geoseg.cli._options import CONTEXT
from geoseg.cli.batch import batch_command
from geoseg.cli.inspect import inspect_cmd
from geoseg.cli.export import export_cmd, models_show_cmd
from geoseg.cli.report import report_command
from geoseg.cli.run import demo_cmd, models_cmd, run_cmd, synth_cmd, vectorize_cmd
from geoseg.cli.train import evaluate_command, train_command

__all__ = ["cli", "main"]


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="geoseg")
def cli() -> None:
    """geoseg: segment satellite and aerial rasters of any size into land-cover maps,
    masks and GIS-ready polygons.

    Start with `geoseg demo`, then `geoseg run SCENE.tif`. `geoseg COMMAND --help`
    explains each command.
    """


models_cmd.add_command(inspect_cmd)  # geoseg models inspect MODEL
for _command in (run_cmd, vectorize_cmd, synth_cmd, models_cmd, demo_cmd, train_command, evaluate_command, batch_command,
                 report_command):
    cli.add_command(_command)
cli.add_command(export_cmd)
models_cmd.add_command(models_show_cmd)


def main() -> None:
    """Console-script entry point: configures the process (allocator, OpenMP, GDAL cache), then runs."""
    from geoseg.allocator import configure_process

    configure_process()  # before any thread allocates and before torch starts (see geoseg.allocator)
    cli(prog_name="geoseg")


if __name__ == "__main__":  # pragma: no cover
    main()
