"""``geoseg export`` and ``geoseg models show``: a model in other formats, and its description."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geoseg.cli._errors import handle_errors
from geoseg.cli._options import CONTEXT, json_option, overwrite_option

__all__ = ["export_cmd", "models_show_cmd"]


@click.command("export", context_settings=CONTEXT)
@click.argument("model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "pt2", "mlm"], case_sensitive=False),
              default="onnx", show_default=True, help="What to write (see below).")
@click.option("--tile-size", type=click.IntRange(min=1), default=None,
              help="Fixed input size in pixels, rounded up to the model's downsampling factor "
                   "[default: 512 for onnx; any multiple of the factor for torchscript and pt2].")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None, metavar="CM",
              help="Ground sample distance of the model's imagery in cm per pixel, for the ONNX "
                   "`resolution` key [default: the GSD the model records].")
@overwrite_option("Replace existing files.")
@json_option("Print what was written as JSON.")
@handle_errors
def export_cmd(model, out, fmt, tile_size, resolution, overwrite, as_json):
    """Write MODEL (a built-in name or a bundle) to OUT in another format, with its contract.

    \b
    onnx         for the Deepness QGIS plugin and GeoDeep, as they are: input raw/255 of a
                 fixed TILE x TILE size (both tools take their tile size from it), class
                 probabilities out, metadata with class names, resolution, tile size and an
                 overlap that covers the model's halo (exact seams in GeoDeep)
    torchscript  the network (normalised input, logits out) + sidecar <stem>.geoseg.json
    pt2          a torch.export program of the network + sidecar <stem>.geoseg.json
    mlm          a STAC MLM Item (v1.5) describing the bundle (the bundle is written
                 beside it when MODEL has no file of its own)
    A model mixing a U-Net with a random forest (architecture unet_forest, what geoseg
    train writes when the forest helps on validation) is kept whole only by the bundle
    and mlm; onnx, torchscript and pt2 refuse it.
    The written file is loaded back and checked against the model before it gets its name.
    \b
    Example:  geoseg export buildings.safetensors buildings.onnx --resolution 10
    """
    from geoseg.models.export import export_model

    result = export_model(model, out, fmt.lower(), tile_size=tile_size, resolution=resolution, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    size = f", input {result.input_size[0]}x{result.input_size[1]}" if result.input_size else ""
    check = f", max |difference| to the model {result.max_abs_diff:.2g}" if result.max_abs_diff is not None else ""
    click.echo(f"wrote {', '.join(str(p) for p in result.files)} ({result.format}{size}{check})", err=True)


@click.command("show", context_settings=CONTEXT)
@click.argument("model")
@click.option("--stac", "stac", is_flag=True, help="Print the model's STAC MLM Item (JSON).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "mlm"], case_sensitive=False), default="text",
              show_default=True, help="text: a summary; json: the model's contract; mlm: the STAC MLM Item.")
@handle_errors
def models_show_cmd(model, stac, fmt):
    """Describe MODEL (a built-in name or a bundle): bands, normalisation, classes, halo.

    `--stac` (or `--format mlm`) prints a STAC Item with the Machine Learning Model
    extension v1.5 for it, whose model asset is the bundle file.
    """
    from geoseg.models import load_model

    bundle = load_model(model)
    fmt = "mlm" if stac else fmt.lower()
    if fmt == "mlm":
        from geoseg.models.mlm_item import item_for_model

        click.echo(json.dumps(item_for_model(bundle, model), indent=2))
        return
    if fmt == "json":
        click.echo(bundle.spec.model_dump_json(indent=2))
        return
    spec = bundle.spec
    norm = spec.normalization
    lines = [
        f"{spec.name}: {spec.description}",
        f"  architecture  {spec.architecture} {spec.arch_params}",
        f"  bands         {', '.join(spec.bands)}"
        + (f" (values {spec.value_range[0]:g}..{spec.value_range[1]:g})" if spec.value_range else ""),
        f"  normalization mean {[round(m, 3) for m in norm.mean]}, std {[round(s, 3) for s in norm.std]}",
        f"  classes       {', '.join(c.name for c in spec.classes)}",
        f"  mask heads    {', '.join(spec.mask_heads) or '-'}",
        f"  halo          {spec.halo} px, downsampling {spec.downsampling}",
        f"  checksum      {bundle.checksum}",
    ]
    click.echo("\n".join(lines))
