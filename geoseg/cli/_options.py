"""Click settings and the options several ``geoseg`` commands share, each defined once.

An option's name, type, default and metavar live here; a command passes its own help
text where its meaning differs (e.g. ``--workers`` starts worker processes for ``run``
but threads for ``vectorize``).
"""

from __future__ import annotations

from pathlib import Path

import click

from geoseg._constants import DEFAULT_TILE_SIZE

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


def out_dir_option(help: str = "Output directory or object-store prefix (s3://bucket/prefix) "
                   "[default: ./<stem>_geoseg/]."):
    # a string, not a click.Path: Path("s3://b/p") would become "s3:/b/p"
    return click.option("-o", "--out", "out_dir", default=None, help=help)


def model_option(help: str, required: bool = False):
    if required:
        return click.option("-m", "--model", required=True, help=help)
    return click.option("-m", "--model", default="default", show_default=True, help=help)


def bands_option(help: str):
    return click.option("--bands", callback=_parse_bands, default=None, metavar="I,J,...", help=help)


def tile_size_option(help: str, default: int | None = DEFAULT_TILE_SIZE):
    return click.option("--tile-size", type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help=help)


def device_option(help: str = "auto, cpu, cuda or cuda:N."):
    return click.option("--device", default="auto", show_default=True, help=help)


def workers_option(help: str):
    return click.option("--workers", type=click.IntRange(min=1), default=None, help=help)


def scheduler_option(help: str):
    return click.option("--scheduler", default=None, metavar="ADDRESS", help=help)


def scheduler_file_option(help: str = "The JSON file with the address of a dask.distributed scheduler, as "
                                      "`dask scheduler --scheduler-file`, dask-jobqueue and dask-mpi write it "
                                      "(waited for up to 20 s); instead of --scheduler."):
    return click.option("--scheduler-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        metavar="FILE", help=help)


def placement_option(help: str):
    return click.option("--placement", type=click.Choice(["auto", "scene", "tile"]), default="auto",
                        show_default=True, help=help)


def threads_option(help: str):
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


def min_area_option(help: str):
    return click.option("--min-area", type=float, default=0.0, show_default=True, metavar="M2", help=help)


def simplify_option(help: str):
    return click.option("--simplify", type=float, default=0.0, show_default=True, metavar="METRES", help=help)


def connectivity_option(help: str):
    return click.option("--connectivity", type=click.Choice(["4", "8"]), default="4", show_default=True, help=help)


def overwrite_option(help: str = "Replace existing outputs."):
    return click.option("--overwrite", is_flag=True, help=help)


def quiet_option(help: str = "No progress bar or summary."):
    return click.option("-q", "--quiet", is_flag=True, help=help)


def json_option(help: str):
    return click.option("--json", "as_json", is_flag=True, help=help)


def _parse_assets(ctx, param, value: str | None):
    """``blue=B02,green=B03`` -> ``{"blue": "B02", "green": "B03"}``."""
    if not value:
        return None
    out = {}
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        band, sep, key = part.partition("=")
        if not sep or not band or not key:
            raise click.BadParameter(f"{part!r}: give BAND=ASSET pairs separated by commas, e.g. blue=B02,green=B03")
        out[band] = key
    return out or None


def source_options(f):
    """Options of scene sources (geoseg.io.sources): STAC Item assets, their grid, scale/offset."""
    f = click.option("--scale-offset", type=click.Choice(["apply", "ignore"]), default="apply", show_default=True,
                     help="Apply the input's scale/offset (STAC raster:scale/raster:offset, else the GeoTIFF's "
                          "own) before the model's normalisation, or feed the raw values.")(f)
    f = click.option("--grid-asset", default=None, metavar="KEY",
                     help="STAC Items: read every band on this asset's grid [default: the finest matched band's].")(f)
    f = click.option("--assets", callback=_parse_assets, default=None, metavar="BAND=KEY,...",
                     help="STAC Items: the asset of each model band, e.g. blue=B02,green=B03,red=B04,nir=B08 "
                          "(KEY:N for band N of a multi-band asset). Default: matched by eo:bands/bands "
                          "common_name or name, else by asset key.")(f)
    return f
