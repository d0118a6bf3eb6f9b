"""``geoseg run``, ``vectorize``, ``synth``, ``models`` and ``demo``: thin click commands over the Python API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from geoseg.cli._errors import handle_errors
from geoseg.cli._options import (
    CONTEXT,
    bands_option,
    connectivity_option,
    device_option,
    json_option,
    min_area_option,
    model_option,
    out_dir_option,
    overwrite_option,
    placement_option,
    quiet_option,
    scheduler_file_option,
    scheduler_option,
    simplify_option,
    source_options,
    threads_option,
    tile_size_option,
    workers_option,
)

__all__ = ["demo_cmd", "format_summary", "models_cmd", "run_cmd", "synth_cmd", "vectorize_cmd"]


@click.command("run", context_settings=CONTEXT)
@click.argument("scene", type=str)
@out_dir_option()
@model_option("A built-in model name (see `geoseg models`), a model bundle, an ONNX file, a TorchScript "
              "archive, a torch.export program (.pt2) or a STAC MLM Item (path or URL); a sidecar "
              "MODEL.geoseg.json completes a contract (see `geoseg models inspect`).")
@bands_option("1-based scene bands, in the order the model expects them (e.g. 3,2,1,4). "
              "Default: bands matched by name (band descriptions), else all bands in order.")
@source_options
@tile_size_option("Core tile size in pixels (rounded up to the model's downsampling factor). "
                  "Results do not depend on it; larger tiles spend less compute on the halo, "
                  "smaller ones less memory.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Tiles per model call [default: 1 on CPU, 4 on CUDA].")
@device_option()
@workers_option("Start a local Dask cluster with N worker processes [default: local threads].")
@scheduler_option("Use an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
@scheduler_file_option()
@placement_option("On a cluster: `tile` spreads the scene's tiles and polygonize blocks over the workers "
                  "(auto); `scene` runs the whole scene as one task on one worker, which writes the "
                  "outputs to -o itself (a directory the workers can write).")
@threads_option("Threads of the local threaded scheduler, each running one tile's forward on one core "
                "[default: the number of cores, at least 2].")
@click.option("--no-vectorize", is_flag=True, help="Skip the GeoPackage of polygons.")
@min_area_option("Drop polygons smaller than this many square metres from the GeoPackage.")
@simplify_option("Simplify the polygons with this tolerance, keeping shared boundaries shared.")
@connectivity_option("Pixels of a class join into one polygon across edges (4) or also corners (8).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average the class probabilities of the 8 flips and 90-degree "
                   "rotations of every tile (8x the compute; seams stay exact).")
@click.option("--probabilities", is_flag=True,
              help="Also write <stem>.probabilities.tif: one uint8 band per class, round(probability x 254), "
                   "255 = nodata, to re-threshold without rerunning the model.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"], case_sensitive=False), default="fp32",
              show_default=True, help="Precision of the forward pass: fp16/bf16 (autocast) need CUDA.")
@click.option("--aoi", default=None, metavar="FILE[:LAYER]",
              help="Segment only this area: the polygons of a vector layer (any OGR format and CRS; LAYER picks "
                   "a layer of a multi-layer file). Only tiles that touch it are read and predicted; pixels "
                   "outside it are nodata.")
@click.option("--bbox", default=None, metavar="MINX,MINY,MAXX,MAXY[,CRS]",
              help="Segment only this box, in longitude/latitude (EPSG:4326) unless a CRS follows, e.g. "
                   "--bbox=12.1,45.2,12.3,45.4 or --bbox 500000,5490000,510000,5500000,EPSG:32633.")
@click.option("--aoi-crop/--no-aoi-crop", default=True, show_default=True,
              help="With --aoi/--bbox: outputs cover the area's bounding window (on the output grid) or the "
                   "whole scene.")
@click.option("--output-grid", type=click.Choice(["input", "model"]), default="input", show_default=True,
              help="A scene whose ground sample distance differs from the model's (the bundle's gsd, e.g. 10 m "
                   "for `default`) by more than 5% is read resampled to the model's (area average, tile by "
                   "tile); `input` writes the products back onto the scene's own grid (nearest neighbour for "
                   "classes, masks and confidence), `model` leaves them on the model's grid.")
@overwrite_option()
@click.option("--resume", is_flag=True,
              help="Continue a run that was killed, stopped or failed from the tiles it finished (kept in a "
                   "journal beside its hidden partial outputs; tiles are checked, damaged ones redone). The "
                   "outputs are the same bytes as an uninterrupted run's. A changed input, model or option "
                   "starts over. Without --resume a run always starts from the first tile.")
@quiet_option()
@json_option("Print the run manifest as JSON on stdout.")
@handle_errors
def run_cmd(scene, out_dir, model, bands, assets, grid_asset, scale_offset, tile_size, batch_size, device, workers,
            scheduler, scheduler_file, placement, threads, no_vectorize, min_area, simplify, connectivity, aoi, bbox, aoi_crop, output_grid, tta,
            probabilities, precision, overwrite, resume, quiet, as_json):
    """Segment SCENE (any GDAL raster with a CRS) into georeferenced outputs.

    SCENE is a local raster, an http(s):// or s3:// URL of one (read with range
    requests, never downloaded; credentials from the usual AWS_*/GDAL_* environment),
    or a STAC Item (path or URL) whose per-band assets are stacked in the model's
    band order.

    \b
    Writes, in the output directory (or object-store prefix s3://bucket/prefix: built in a
    local scratch directory, $GEOSEG_SCRATCH, and uploaded), with exactly the input's CRS and grid:
      <stem>.classes.tif     uint8 COG of class ids (255 = nodata), colour table, class names
      <stem>.classes.tif.aux.xml  its legend for GDAL and ArcGIS (category names, attribute table)
      <stem>.classes.qml     its QGIS style: the legend lists exactly the classes by name
      <stem>.mask.tif        one 0/1 band per mask head (when the model has mask heads; with
                             .mask.tif.aux.xml and .mask.qml)
      <stem>.confidence.tif  max class probability, 0-100 (255 = nodata)
      <stem>.probabilities.tif  with --probabilities: per-class probability x 254 (255 = nodata)
      <stem>.gpkg            polygons: layer `classes` and one layer per mask head, QGIS-styled
      <stem>.run.json        the run manifest (inputs, model, parameters, timings, checksums)
    Outputs appear under their final names only once complete. Finished tiles are
    journaled: after a kill, SIGTERM (exit 143), Ctrl-C or a full disk, rerun with
    --resume to continue where it stopped.
    """
    from geoseg._dask import resolve_scheduler
    from geoseg.batch.placement import check_placement, run_on_cluster
    from geoseg.scene.pipeline import run_scene

    scheduler = resolve_scheduler(scheduler, scheduler_file)
    options = dict(
        bands=bands, assets=assets, grid_asset=grid_asset, scale_offset=scale_offset,
        tile_size=tile_size, batch_size=batch_size, device=device, threads=threads, vectorize=not no_vectorize,
        min_area=min_area, simplify=simplify, connectivity=int(connectivity),
        aoi=aoi, bbox=bbox, aoi_crop=aoi_crop, output_grid=output_grid,
        tta=tta, probabilities=probabilities, precision=precision.lower(),
        overwrite=overwrite, quiet=quiet or as_json, resume=resume,
    )
    if (scheduler or workers) and not (scheduler and workers):  # both: run_scene's one-line error
        manifest = run_on_cluster(scene, out_dir, model, scheduler=scheduler, workers=workers, placement=placement,
                                  **options)
    else:
        check_placement(placement, False)
        manifest = run_scene(scene, out_dir, model=model, workers=workers, scheduler=scheduler, **options)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    elif not quiet:
        click.echo(format_summary(manifest), err=True)


def format_summary(manifest: dict) -> str:
    """A short human summary of a run manifest."""
    inp = manifest["input"]
    lines = [
        f"{Path(inp['path']).name}: {inp['width']}x{inp['height']} px, model '{manifest['model']['name']}', "
        f"{manifest['timings_s']['total']:.1f} s ({manifest['throughput_mpx_s']:.2f} Mpx/s)"
    ]
    total = sum(c["area_m2"] for c in manifest["classes"]) or 1.0
    for c in manifest["classes"]:
        lines.append(f"  {c['name']:<12} {c['area_m2'] / 1e6:12.3f} km2  {100 * c['area_m2'] / total:5.1f} %")
    lines.append("outputs:")
    for o in manifest["outputs"].values():
        lines.append(f"  {o['path']}")
    return "\n".join(lines)


@click.command("vectorize", context_settings=CONTEXT)
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("out")
@click.option("--layer", default=None, help="Layer name [default: classes; with --mask: the mask names].")
@min_area_option("Drop polygons smaller than this many square metres (they are dropped, not merged "
                 "into a neighbour).")
@simplify_option("Simplify boundaries with this tolerance, keeping topology: each boundary shared by "
                 "two polygons is simplified once, so no gaps or overlaps open. 0 keeps pixel edges.")
@connectivity_option("Pixels of a class join across edges (4) or also across corners (8).")
@workers_option("Blocks polygonized in parallel on local threads [default: all cores].")
@scheduler_option("Run the block tasks on an existing dask.distributed scheduler instead (its workers must "
                  "see RASTER at the same path).")
@scheduler_file_option()
@click.option("--classes-from", default=None, metavar="MODEL_OR_JSON",
              help="Class names and colours from a model (built-in name or bundle) or a JSON file "
                   "[default: the raster's metadata, as `geoseg run` writes it; else class_<id>].")
@click.option("--confidence", type=click.Path(path_type=Path), default=None,
              help="Confidence raster on the same grid; its mean per polygon becomes `confidence` "
                   "[default: the <stem>.confidence.tif next to a `geoseg run` class map].")
@click.option("--mask", "is_mask", is_flag=True,
              help="RASTER holds 0/1 masks: one layer per band, polygons where the value is 1.")
@click.option("--band", type=click.IntRange(min=1), default=1, show_default=True, help="Band of the class map.")
@click.option("--format", "fmt", type=click.Choice(["GPKG", "FlatGeobuf", "GeoParquet"], case_sensitive=False),
              default="GPKG", show_default=True, help="Output format (OUT's suffix: .gpkg, .fgb, .parquet).")
@click.option("--block-size", type=click.IntRange(min=16), default=None,
              help="Block edge in pixels [default: 512 to 2048, from the map's boundary density: small blocks "
                   "bound the memory of speckled maps, large ones save joins on maps of large regions]. "
                   "Results do not depend on it.")
@overwrite_option()
@quiet_option()
@json_option("Print the summary as JSON on stdout.")
@handle_errors
def vectorize_cmd(raster, out, layer, min_area, simplify, connectivity, workers, scheduler, scheduler_file, classes_from,
                  confidence, is_mask, band, fmt, block_size, overwrite, quiet, as_json):
    """Polygonize a class map (or masks) into a GIS-ready GeoPackage, FlatGeobuf or GeoParquet.

    \b
    The result is exactly what a whole-map gdal_polygonize.py gives (one polygon per
    connected region of a class, nodata never polygonized), computed block by block in
    parallel with memory bounded by the block size. Attributes: class_id, class_name,
    area_m2 and perimeter_m (geodesic for geographic CRSs) and, when a confidence raster
    is known, confidence (its mean under the polygon). The GeoPackage has a spatial
    index and a QGIS style with the class raster's colours.
    \b
    Example:  geoseg vectorize out/scene.classes.tif scene.gpkg --min-area 200 --simplify 5
    """
    from geoseg._dask import resolve_scheduler
    from geoseg.io.store import OutputStore, split_target
    from geoseg.vector.api import vectorize

    scheduler = resolve_scheduler(scheduler, scheduler_file)
    dest, name = split_target(out)
    with OutputStore(dest).writing(f"the polygons {name}", retry="run it again", disk_only=True):
        summary = vectorize(
            raster, out, layer=layer, mask=is_mask, classes_from=classes_from, confidence=confidence, band=band,
            overwrite=overwrite, quiet=quiet or as_json, connectivity=int(connectivity), min_area=min_area,
            simplify=simplify, workers=workers, scheduler=scheduler, block_size=block_size, format=fmt,
        )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        for lay in summary["layers"]:
            dropped = f", {lay['dropped_below_min_area']} below --min-area dropped" if lay["dropped_below_min_area"] else ""
            click.echo(f"{lay['name']}: {lay['features']} polygons{dropped}", err=True)
        click.echo(f"wrote {', '.join(summary['outputs'])} in {summary['seconds']:.1f} s", err=True)


@click.command("synth", context_settings=CONTEXT)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", type=int, default=4096, show_default=True, help="Width and height in pixels.")
@click.option("--bands", type=int, default=4, show_default=True, help="4: blue, green, red, nir; 3: blue, green, red.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed always gives the same bytes.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Also write the ground-truth class raster here.")
@click.option("--crs", default="EPSG:32633", show_default=True, help="CRS of the scene (projected or geographic).")
@click.option("--nodata-border", is_flag=True, help="Add an irregular nodata border (value 0).")
@click.option("--sensor", type=click.Choice(["sentinel2", "landsat8", "landsat9"]), default=None,
              help="Render from measured spectra (earthlib) through this sensor's band responses, in its "
                   "product's digital numbers with a GeoTIFF scale/offset (needs geoseg[spectra]).")
@handle_errors
def synth_cmd(out, size, bands, seed, labels, crs, nodata_border, sensor):
    """Write a realistic synthetic multi-band scene (uint16) and its ground truth.

    Water bodies and rivers, forest, cropland fields, bare soil, buildings in blocks and a
    road network, generated window by window from the seed (bounded memory for any size).
    """
    from geoseg.synthetic import synthesize

    t = time.perf_counter()
    info = synthesize(out, size, bands=bands, seed=seed, labels_path=labels, crs=crs, nodata_border=nodata_border,
                      sensor=sensor)
    click.echo(f"wrote {info.path} ({info.width}x{info.height}, {bands} bands, seed {seed})"
               + (f" and {info.labels_path}" if labels else "") + f" in {time.perf_counter() - t:.1f} s", err=True)


@click.group("models", context_settings=CONTEXT, invoke_without_command=True)
@json_option("Print as JSON.")
@click.pass_context
@handle_errors
def models_cmd(ctx, as_json):
    """List the built-in models; `geoseg models show MODEL` describes one, `geoseg models inspect MODEL`
    measures its halo."""
    from geoseg.models import list_models

    if ctx.invoked_subcommand is not None:
        return

    models = list_models()
    if as_json:
        click.echo(json.dumps([{"name": n, "description": d} for n, d in models], indent=2))
        return
    width = max(len(n) for n, _ in models)
    for name, desc in models:
        click.echo(f"{name:<{width}}  {desc}")


@click.command("demo", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=Path("geoseg_demo"))
@click.option("--size", type=int, default=2048, show_default=True, help="Size of the synthetic scene.")
@model_option("Model to run.")
@handle_errors
def demo_cmd(directory, size, model):
    """Synthesise a scene in DIRECTORY [default: ./geoseg_demo], segment it, summarise."""
    from geoseg.scene.pipeline import run_scene
    from geoseg.synthetic import synthesize

    directory.mkdir(parents=True, exist_ok=True)
    scene = directory / "demo_scene.tif"
    labels = directory / "demo_labels.tif"
    if not scene.exists() or not labels.exists():
        click.echo(f"synthesising a {size}x{size} scene ...", err=True)
        synthesize(scene, size, seed=2026, labels_path=labels)
    manifest = run_scene(scene, directory / "outputs", model=model, overwrite=True)
    click.echo(format_summary(manifest))
    click.echo(f"outputs are in {directory / 'outputs'} (open demo_scene.classes.tif and demo_scene.gpkg in QGIS)")
