"""The run manifest (``<stem>.run.json``): what was run, how long it took, what it wrote."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
import numpy as np



def package_versions() -> dict[str, str]:
    """Versions of geoseg and the libraries that shape its results."""
    from importlib.metadata import PackageNotFoundError, version

    import rasterio

    out = {"python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for name in ("geoseg", "torch", "numpy", "rasterio", "dask", "distributed", "pyogrio", "shapely", "pyproj"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[name] = "unknown"
    return out


def pixel_area_m2(geobox) -> float:
    """Mean ground area of the scene's pixels in m^2, on the ellipsoid in any CRS
    (:mod:`geoseg.vector.areas`): the class areas when no polygons measured them."""
    from geoseg.vector.areas import mean_pixel_area_m2

    return mean_pixel_area_m2(geobox.crs, geobox.transform, geobox.height, geobox.width)


def build_manifest(
    *,
    source,
    input_sha256: str | dict,
    bundle,
    model_ref: str,
    grid,
    options,
    device: str,
    batch_size: int,
    scheduler: dict,
    timings: dict[str, float],
    counts: np.ndarray,
    skipped: int,
    n_tiles: int,
    vector_stats,
    outputs: dict[str, dict],
    pixel_geobox=None,
) -> dict:
    """Assemble the manifest of a finished run (outputs still under temporary names).
    ``outputs``: kind -> entry (:meth:`geoseg.io.store.OutputStore.entries`);
    ``pixel_geobox``: the products' grid when it is not the input's (model grid, AOI crop)."""
    gb = source.geobox
    px_area = pixel_area_m2(pixel_geobox or gb)
    poly_area = {}
    n_polys = {}
    if vector_stats:
        poly_area = vector_stats[0].area_m2
        n_polys = {s.name: s.features for s in vector_stats}
    classes = []
    for i, name in enumerate(bundle.class_names):
        classes.append(
            {
                "id": i,
                "name": name,
                "color": bundle.class_colors[i],
                "pixels": int(counts[i]),
                "area_m2": float(poly_area.get(name, counts[i] * px_area)),
            }
        )
    mpx = gb.width * gb.height / 1e6
    return {
        "geoseg_manifest": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": source.path,
            "width": gb.width,
            "height": gb.height,
            "count": source.count,
            "dtype": source.dtype,
            "crs": gb.crs,
            "transform": list(gb.transform)[:6],
            "nodata": source.nodata,
            "bands_used": list(source.band_indexes),
            # local inputs: their content's sha256; remote ones are not read in full (None)
            "sha256": input_sha256.get("sha256") if isinstance(input_sha256, dict) else input_sha256,
            # what `geoseg batch` compares to skip a finished scene: content (local), or
            # ETag/size/Last-Modified (remote), or the Item's JSON and its assets' (STAC Item)
            "kind": source.kind,
            "fingerprint": input_sha256 if isinstance(input_sha256, dict) else {"kind": "sha256", "sha256": input_sha256},
            "scale_offset": source.describe_scaling(),
            **({"assets": list(source.asset_keys)} if source.asset_keys else {}),
        },
        "model": {
            "ref": str(model_ref),
            "name": bundle.name,
            "architecture": bundle.architecture,
            "sha256": bundle.checksum,
            "bands": list(bundle.bands),
            "classes": list(bundle.class_names),
            "mask_heads": list(bundle.mask_heads),
            "halo": int(bundle.halo),
            "downsampling": int(bundle.downsampling),
            "gsd": bundle.gsd,
        },
        "options": options.output_options(),
        "parameters": {
            "tile_size": grid.tile_size,
            "halo": grid.halo,
            "batch_size": batch_size,
            "device": device,
            "bands": list(options.bands) if options.bands else None,
            "workers": options.workers,
            "scheduler": options.scheduler,
            "vectorize": options.vectorize,
            "min_area_m2": options.min_area,
            "simplify_m": options.simplify,
            "connectivity": options.connectivity,
        },
        "execution": {**scheduler, "tiles": n_tiles, "tiles_skipped_nodata": int(skipped), "host": platform.node()},
        "versions": package_versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "throughput_mpx_s": round(mpx / timings["total"], 3) if timings.get("total") else None,
        "classes": classes,
        "nodata_pixels": int(counts[255]),
        "polygons": n_polys,
        "outputs": dict(outputs),
    }
