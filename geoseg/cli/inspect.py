"""``geoseg models inspect MODEL``: a model's contract and its receptive field, measured."""

from __future__ import annotations

import json
import time

import click

from geoseg.cli._errors import handle_errors
from geoseg.cli._options import CONTEXT, json_option

__all__ = ["inspect_cmd", "inspect_model"]


def inspect_model(ref: str, verify: bool = False) -> dict:
    """What ``geoseg models inspect`` reports, as data (the library call behind the command)."""
    import torch

    from geoseg.models.inspect import inspect_runtime, seam_error
    from geoseg.models.registry import load_model

    model = load_model(ref)
    runtime = getattr(model, "runtime", None) or model.module  # a foreign runtime, or a bundle's module
    declared = getattr(model, "contract", None)
    size = getattr(model, "input_size", None)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with torch.inference_mode():
        measured = inspect_runtime(
            runtime, len(model.bands), input_size=size,
            downsampling=declared.downsampling if declared is not None else None, source=str(ref), radius=True,
        )
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    halo_declared = declared.halo if declared is not None else model.halo
    report = {
        "model": str(ref),
        "name": model.name,
        "runtime": getattr(runtime, "kind", "torch"),
        "sha256": model.checksum,
        "bands": list(model.bands),
        "value_range": list(model.value_range) if model.value_range else None,
        "normalization": {"mean": list(model.normalization.mean), "std": list(model.normalization.std)},
        "classes": list(model.class_names),
        "mask_heads": list(model.mask_heads),
        "input_size": list(size) if size else None,
        "outputs": measured.outputs,
        "receptive_radius": measured.radius,
        "context": measured.context,
        "downsampling": measured.downsampling,
        "halo": measured.halo if measured.seams == "exact" else None,
        "halo_declared": halo_declared,
        "seams": getattr(model, "seams", None) or measured.seams,
        "seams_measured": measured.seams,
        "probe": measured.probe,
        "forwards": measured.forwards,
        "seconds": round(seconds, 2),
    }
    if verify and measured.seams == "exact" and size is None:
        halo, f = measured.halo, measured.downsampling
        report["seam_error"] = seam_error(runtime, len(model.bands), halo, f)
        report["seam_error_one_step_less"] = seam_error(runtime, len(model.bands), max(0, halo - f), f) if halo else None
    return report


def _text(r: dict) -> str:
    radius = "beyond the probe (global context)" if r["receptive_radius"] is None else f"{r['receptive_radius']} px"
    context = "more than the probe can test" if r["context"] is None else f"{r['context']} px"
    lines = [
        f"model            {r['model']} ({r['runtime']}, sha256 {r['sha256'][:12]})",
        f"bands            {', '.join(r['bands'])}" + (f"  (values {r['value_range'][0]:g}..{r['value_range'][1]:g})" if r["value_range"] else ""),
        f"classes          {', '.join(r['classes'])}",
        f"mask heads       {', '.join(r['mask_heads']) or '-'}",
        f"input size       {'x'.join(map(str, r['input_size'])) if r['input_size'] else 'any (padded to the downsampling factor)'}",
        f"outputs          {r['outputs']}",
        f"receptive field  radius {radius} (measured on a {r['probe']}x{r['probe']} probe, {r['forwards']} forwards, {r['seconds']} s)",
        f"downsampling     {r['downsampling']}",
        f"context          {context}: what a tile aligned to the factor needs around its core",
    ]
    if r["halo"] is not None:
        lines.append(f"halo             {r['halo']} px: exact seams need it" + (f" (declared: {r['halo_declared']})" if r["halo_declared"] is not None and r["halo_declared"] != r["halo"] else ""))
    lines.append(f"seams            {r['seams']}" + ("" if r["seams"] == r["seams_measured"] else f" (declared; measured: {r['seams_measured']})"))
    if "seam_error" in r:
        lines.append(f"verified         tiles with the halo differ from whole-image outputs by {r['seam_error']:.2g}; "
                     f"with {r['downsampling']} px less by {r['seam_error_one_step_less']:.2g}")
    return "\n".join(lines)


@click.command("inspect", context_settings=CONTEXT)
@click.argument("model")
@click.option("--verify", is_flag=True, help="Also run tiles with the measured halo (and one factor step less) "
              "against whole-image inference on a random probe, and print the largest output differences.")
@json_option("Print the report as JSON.")
@handle_errors
def inspect_cmd(model, verify, as_json):
    """Measure MODEL's receptive field and downsampling factor on its own runtime.

    MODEL is a built-in name, a bundle, an ONNX file, a TorchScript archive, a torch.export
    program (.pt2) or a STAC MLM Item (path or URL). The model runs on a random probe and on
    copies changed in one block; the farthest output that moves gives the receptive field,
    rounded up to the downsampling factor the halo that exact seams need. `geoseg run` uses
    a declared halo, else this measured one; a model whose outputs move all the way to the
    probe's edge (global pooling, attention) runs with blended seams.
    """
    report = inspect_model(model, verify)
    click.echo(json.dumps(report, indent=2) if as_json else _text(report))
