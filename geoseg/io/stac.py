"""STAC: an Item describing a scene's outputs, a Catalog of Items, and reading local STAC files.

Writing: :func:`scene_item` turns a run manifest into a STAC 1.1.0 Item whose assets are
the scene's outputs (class map, confidence, masks, GeoPackage, quicklooks, manifest), with
the projection (v2.0: ``proj:code``), classification (v2.0), raster and file extensions;
``run_scene(..., stac=True)`` stages it with the other outputs as ``<stem>.stac.json``.
:func:`write_catalog` links such Items into a Catalog, so that the outputs of a batch form
a catalog of their own.

STAC 1.1 for readers of 1.0: band and data-value fields are written both the 1.1 way
(``data_type``, ``nodata``, ``unit`` and the masks' ``bands`` on the asset) and as
``raster:bands`` (raster extension v1.1, still valid in 1.1; the probabilities' scale is
there only), and every class keeps its ``description`` (classification v1.1 required it)
beside v2.0's ``name``/``title``/``count``/``percentage``; the projection extension v2.0
forbids ``proj:epsg``, so the EPSG code is in ``proj:code`` (``"EPSG:32633"``) only.

Reading: :func:`read_items` collects the Items of an ItemCollection, a single Item, or a
Catalog/Collection with ``item`` (and ``child``) links, all on local disk, and
:func:`asset_path` finds an asset's file (hrefs relative to the JSON file holding them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from geoseg._constants import NODATA
from geoseg._files import write_json
from geoseg.classes import class_identifier
from geoseg.errors import InputError

STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GPKG_TYPE = "application/geopackage+sqlite3"
JSON_TYPE = "application/json"
PNG_TYPE = "image/png"
ITEM_TYPE = "application/geo+json"

#: Marks a Catalog written by :func:`write_catalog` (it may be replaced; others are not).
GEOSEG_CATALOG_KEY = "geoseg:outputs_of"


# --------------------------------------------------------------------------- writing


def footprint_wgs84(crs_wkt: str, transform: list[float], width: int, height: int, densify: int = 8):
    """The footprint of a grid in EPSG:4326: ``(bbox, geometry)`` (GeoJSON, lon/lat).

    Each edge is densified with ``densify`` points, so the outline follows curved edges
    of the reprojected footprint; the ring is counter-clockwise (RFC 7946).
    """
    import numpy as np
    from pyproj import CRS, Transformer

    a, b, c, d, e, f = transform[:6]
    t = np.linspace(0.0, 1.0, densify + 1)[:-1]
    # top-left -> bottom-left -> bottom-right -> top-right (counter-clockwise on a north-up grid)
    cols = np.concatenate([np.zeros_like(t), t * width, np.full_like(t, width), (1 - t) * width])
    rows = np.concatenate([t * height, np.full_like(t, height), (1 - t) * height, np.zeros_like(t)])
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    crs = CRS.from_wkt(crs_wkt)
    if crs.to_epsg() != 4326:
        xs, ys = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    lon, lat = np.round(np.asarray(xs, float), 7), np.round(np.asarray(ys, float), 7)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
    ring.append(ring[0])
    bbox = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
    return bbox, {"type": "Polygon", "coordinates": [ring]}


def _multihash_sha256(hexdigest: str) -> str:
    """A sha256 hex digest as the multihash the file extension uses (0x12, 32 bytes)."""
    return "1220" + hexdigest


def _file_fields(entry: dict | None) -> dict:
    if not entry:
        return {}
    return {"file:size": entry["bytes"], "file:checksum": _multihash_sha256(entry["sha256"])}


def _color_hint(color: str) -> str:
    return color.lstrip("#").upper()


def scene_classes(manifest: dict) -> list[dict]:
    """The class map's ``classification:classes`` (v2.0) from a run manifest: per class its
    identifier ``name``, its own name as ``title``, colour, pixel ``count`` and
    ``percentage`` of the valid pixels; the nodata value last."""
    valid = sum(int(c["pixels"]) for c in manifest["classes"])
    out = []
    for c in manifest["classes"]:
        entry = {"value": c["id"], "name": class_identifier(c["name"]), "title": c["name"],
                 "description": c["name"].replace("_", " "), "color_hint": _color_hint(c["color"]),
                 "count": int(c["pixels"])}
        if valid:
            entry["percentage"] = round(100.0 * int(c["pixels"]) / valid, 4)
        out.append(entry)
    out.append({"value": NODATA, "name": "nodata", "title": "no data", "description": "no data", "nodata": True,
                "count": int(manifest.get("nodata_pixels", 0))})
    return out


def scene_item(
    manifest: dict, *, id: str | None = None, properties: dict | None = None, links: list[dict] | None = None
) -> dict:
    """The STAC Item of a finished scene run, from its manifest.

    Args:
        manifest: the run manifest (``outputs`` may still be under temporary names:
            only their final names, sizes and checksums are used).
        id: Item id [default: the scene's file stem].
        properties: merged into the Item's properties (e.g. the acquisition
            ``datetime`` of a source Item) [default datetime: the run's time].
        links: the Item's links (e.g. ``derived_from`` the source Item).

    Returns:
        The Item as a JSON-ready dict; asset hrefs are relative (``./<stem>.classes.tif``).
    """
    from pyproj import CRS

    inp, outputs = manifest["input"], manifest["outputs"]
    stem = Path(inp["path"]).stem
    grid = manifest.get("output_grid") or inp  # the products' grid (model grid, AOI window) when not the input's
    width, height, transform = grid["width"], grid["height"], list(grid["transform"])[:6]
    bbox, geometry = footprint_wgs84(inp["crs"], transform, width, height)
    epsg = CRS.from_wkt(inp["crs"]).to_epsg()
    a, _, c, _, e, f = transform
    xs, ys = (c, c + a * width), (f, f + e * height)
    proj = {
        "proj:code": f"EPSG:{epsg}" if epsg is not None else None,
        "proj:shape": [height, width],
        "proj:transform": transform,
        "proj:bbox": [min(xs), min(ys), max(xs), max(ys)],
    }
    if epsg is None:
        proj["proj:wkt2"] = inp["crs"]
    model = manifest["model"]
    assets: dict[str, dict] = {}
    byte = {"data_type": "uint8", "nodata": NODATA}
    if "classes.tif" in outputs:
        assets["classes"] = {
            "href": f"./{outputs['classes.tif']['path']}",
            "type": COG_TYPE,
            "title": f"Classes ({', '.join(model['classes'])})",
            "roles": ["data"],
            **byte,
            "classification:classes": scene_classes(manifest),
            "raster:bands": [dict(byte)],
            **_file_fields(outputs["classes.tif"]),
        }
    if "confidence.tif" in outputs:
        assets["confidence"] = {
            "href": f"./{outputs['confidence.tif']['path']}",
            "type": COG_TYPE,
            "title": "Confidence: the highest class probability, in percent",
            "roles": ["data", "quality"],
            **byte,
            "unit": "percent",
            "raster:bands": [{**byte, "unit": "percent"}],
            **_file_fields(outputs["confidence.tif"]),
        }
    if "mask.tif" in outputs:
        heads = list(model["mask_heads"])
        bands = [
            {
                "name": head,
                "description": f"1 where {head}, else 0",
                **byte,
                "classification:classes": [
                    {"value": 0, "name": class_identifier(f"not_{head}"), "title": f"not {head}", "description": f"not {head}"},
                    {"value": 1, "name": class_identifier(head), "title": head, "description": head.replace("_", " ")},
                ],
            }
            for head in heads
        ]
        assets["mask"] = {
            "href": f"./{outputs['mask.tif']['path']}",
            "type": COG_TYPE,
            "title": f"Masks, one band per head ({', '.join(heads)})",
            "roles": ["data"],
            **byte,
            "bands": bands,
            "raster:bands": bands,
            **_file_fields(outputs["mask.tif"]),
        }
    if "probabilities.tif" in outputs:
        bands = [{"name": name, **byte, "scale": 1 / 254, "offset": 0} for name in model["classes"]]
        assets["probabilities"] = {
            "href": f"./{outputs['probabilities.tif']['path']}",
            "type": COG_TYPE,
            "title": "Class probabilities, one band per class: round(p x 254), 255 = nodata",
            "roles": ["data"],
            **byte,
            "raster:bands": bands,  # (as 1.1 ``bands`` they would need raster v2.0's raster:scale)
            **_file_fields(outputs["probabilities.tif"]),
        }
    if "gpkg" in outputs:
        layers = ["classes", *model["mask_heads"]]
        assets["vectors"] = {
            "href": f"./{outputs['gpkg']['path']}",
            "type": GPKG_TYPE,
            "title": f"Polygons (GeoPackage layers: {', '.join(layers)})",
            "roles": ["data"],
            **_file_fields(outputs["gpkg"]),
        }
    for kind, key, title, media, roles in (
        ("classes.tif.aux.xml", "classes_legend", "Class names and attribute table of the class map (GDAL PAM side-car)",
         "application/xml", ["metadata"]),
        ("classes.qml", "classes_style", "QGIS style of the class map: one legend entry per class", "text/xml",
         ["style", "metadata"]),
        ("mask.tif.aux.xml", "mask_legend", "Names and attribute tables of the mask bands (GDAL PAM side-car)",
         "application/xml", ["metadata"]),
        ("mask.qml", "mask_style", "QGIS style of the first mask band", "text/xml", ["style", "metadata"]),
    ):
        if kind in outputs:  # legends of the COGs (geoseg.io.legend)
            assets[key] = {"href": f"./{outputs[kind]['path']}", "type": media, "title": title, "roles": roles,
                           **_file_fields(outputs[kind])}
    for kind, key, title, roles in (  # quicklooks (geoseg.io.quicklook)
        ("thumb.png", "thumbnail", "Thumbnail of the class map (PNG, class colours, nodata transparent)", ["thumbnail"]),
        ("classes.png", "overview", "Overview of the class map (PNG, class colours, nodata transparent)", ["overview", "visual"]),
        ("legend.png", "legend", f"Legend of the class map: {', '.join(model['classes'])}", ["metadata", "legend"]),
        *((k, f"overview_{k[5:-4]}", f"Overview of the mask {k[5:-4]} (PNG: 1 red, 0 grey, nodata transparent)",
           ["overview"]) for k in outputs if k.startswith("mask-") and k.endswith(".png")),
    ):
        if kind in outputs:
            assets[key] = {"href": f"./{outputs[kind]['path']}", "type": PNG_TYPE, "title": title, "roles": roles,
                           **_file_fields(outputs[kind])}
    assets["manifest"] = {
        "href": f"./{stem}.run.json",
        "type": JSON_TYPE,
        "title": "geoseg run manifest: input and model checksums, parameters, timings",
        "roles": ["metadata"],
    }
    props = {
        "datetime": manifest["created"],
        "created": manifest["created"],
        **proj,
        "geoseg:model": {"name": model["name"], "sha256": model["sha256"]},
        # remote inputs are not read in full: no sha256 (the manifest has their fingerprint)
        **({"geoseg:input_sha256": inp["sha256"]} if inp.get("sha256") else {}),
        **(properties or {}),
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION, CLASSIFICATION, RASTER, FILE],
        "id": id or stem,
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
        "links": list(links or []),
        "assets": assets,
    }


def write_catalog(path: Path, items: list[tuple[str, Path]], *, id: str, description: str, source: str) -> dict:
    """Write a STAC Catalog at ``path`` linking the Items ``[(title, item_path), ...]``.

    ``source`` (e.g. the batch catalog file) is recorded under :data:`GEOSEG_CATALOG_KEY`.
    """
    base = path.parent
    links = [{"rel": "root", "href": f"./{path.name}", "type": JSON_TYPE}]
    for title, item in items:
        href = Path(os.path.relpath(item, base)).as_posix()
        links.append({"rel": "item", "href": href if href.startswith(".") else f"./{href}", "type": ITEM_TYPE, "title": title})
    catalog = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": id,
        "description": description,
        GEOSEG_CATALOG_KEY: source,
        "links": links,
    }
    write_json(path, catalog)
    return catalog


# --------------------------------------------------------------------------- reading


def _local_path(href: str, base: Path) -> Path:
    """A STAC href (relative, absolute or ``file://``) as a local path."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise InputError(f"{href} is not a local file ({parsed.scheme}://): download the STAC files and assets first")
    p = Path(href)
    return p if p.is_absolute() else (base / p)


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"STAC file {path} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read STAC file {path} ({exc}): check the file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON (line {exc.lineno}: {exc.msg}): give a STAC Item, ItemCollection or Catalog") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a STAC object (a JSON object with a 'type'): give an Item, ItemCollection or Catalog")
    return data


def read_items(path: str | os.PathLike) -> list[tuple[dict, Path, bool]]:
    """The Items of a local STAC file: ``(item, file it came from, whether that file is
    the Item alone)``.

    Accepts an ItemCollection (``FeatureCollection``), a single Item (``Feature``) or a
    Catalog/Collection whose ``item`` and ``child`` links (followed recursively) point to
    local files.
    """
    out: list[tuple[dict, Path, bool]] = []
    _collect(Path(path), out, seen=set())
    return out


def _collect(path: Path, out: list, seen: set) -> None:
    key = path.resolve()
    if key in seen:
        return
    seen.add(key)
    data = _load_json(path)
    kind = data.get("type")
    if kind == "Feature":
        out.append((data, path, True))
    elif kind == "FeatureCollection":
        for feature in data.get("features") or []:
            if isinstance(feature, dict) and feature.get("type") == "Feature":
                out.append((feature, path, False))
    elif kind in ("Catalog", "Collection"):
        for link in data.get("links") or []:
            if isinstance(link, dict) and link.get("rel") in ("item", "child") and link.get("href"):
                _collect(_local_path(link["href"], path.parent), out, seen)
    else:
        raise InputError(f"{path} has type {kind!r}: give a STAC Item, ItemCollection (FeatureCollection), Catalog or Collection")


def asset_path(item: dict, item_file: Path, key: str | None = None) -> Path:
    """The local file of an Item's asset ``key`` (default: its only ``data`` asset)."""
    assets = item.get("assets") or {}
    name = item.get("id", "?")
    if key is None:
        data = [k for k, a in assets.items() if "data" in (a.get("roles") or [])]
        candidates = data if len(data) == 1 else list(assets) if len(assets) == 1 else []
        if not candidates:
            raise InputError(
                f"item {name!r} ({item_file}) has assets {', '.join(assets) or 'none'}: "
                "name the image with `asset:` in the catalog"
            )
        key = candidates[0]
    asset = assets.get(key)
    if not isinstance(asset, dict) or not asset.get("href"):
        raise InputError(
            f"item {name!r} ({item_file}) has no asset {key!r} (assets: {', '.join(assets) or 'none'}): "
            "set `asset:` to one of them"
        )
    return _local_path(asset["href"], item_file.parent)


def item_datetime(item: dict) -> str | None:
    """An Item's ``datetime`` (or ``start_datetime``), as written."""
    props = item.get("properties") or {}
    return props.get("datetime") or props.get("start_datetime")
