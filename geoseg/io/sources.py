"""SOURCE -> scene: the one entry point that turns what a user gives into a scene source.

A local raster, an ``http(s)://``/``s3://`` raster URL, a STAC Item (path, URL, dict or
``pystac.Item``). Rasters come back as a :class:`~geoseg.io.raster.SceneSource`; Items as
an :class:`~geoseg.io.stac_source.ItemScene`, which becomes one in ``select()`` once the
model's bands are known. Both have ``select(bands, model_bands)`` and ``path``.
"""

from __future__ import annotations

import json

from .raster import SceneSource, file_sha256, open_scene
from .remote import fingerprint as remote_fingerprint
from .stac_source import ItemScene, item_fingerprint, looks_like_item


def open_source(source, *, assets: dict[str, str] | None = None, grid_asset: str | None = None,
                scale_offset: str = "apply") -> SceneSource | ItemScene:
    """Open ``source`` (see the module docstring); ``assets``/``grid_asset`` apply to Items only."""
    if isinstance(source, dict) or hasattr(source, "to_dict") or looks_like_item(source) or _json_url(source):
        return ItemScene.load(source, assets=assets, grid_asset=grid_asset, scale_offset=scale_offset)
    if assets:
        from geoseg.errors import InputError

        raise InputError(f"--assets maps bands to the assets of a STAC Item; {source} is a raster: use --bands")
    return open_scene(source, scale_offset=scale_offset)


_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf", ".h5", ".png", ".jpg")


def _json_url(source) -> bool:
    """A remote URL without a raster suffix that the server says is JSON (an API's Item URL
    such as ``.../collections/c/items/id``): one HEAD request."""
    from urllib.parse import urlsplit

    from .remote import http_metadata, is_remote

    s = str(source)
    if not is_remote(s) or urlsplit(s).path.lower().endswith(_RASTER_SUFFIXES):
        return False
    try:
        return "json" in http_metadata(s).get("content_type", "")
    except OSError:
        return False  # reported when it is opened as a raster


def source_fingerprint(source: SceneSource) -> dict:
    """What identifies the input's content: a local file by content (sha256, read in full),
    a remote file by ETag/size/Last-Modified (one HEAD), an Item by its JSON and its assets'."""
    if source.kind == "stac-item":
        return item_fingerprint(json.loads(source.item_json or "{}"), source.item_base or "", source.asset_keys)
    if source.kind == "url":
        return remote_fingerprint(source.gdal_path)
    return {"kind": "sha256", "sha256": file_sha256(source.path)}


def current_fingerprint(source, recorded: dict | None = None) -> dict:
    """The fingerprint ``source`` (a local path, URL, Item path/URL or Item dict) has now,
    without reading pixels: comparable with a manifest's ``input.fingerprint``.

    ``recorded`` (that manifest's fingerprint) names the asset keys of an Item to check.
    """
    from .remote import is_remote

    keys = list((recorded or {}).get("assets") or {})
    if isinstance(source, dict) or hasattr(source, "to_dict") or looks_like_item(source) or _json_url(source):
        scene = ItemScene.load(source)
        return item_fingerprint(scene.item, scene.base, keys)
    if is_remote(source):
        return remote_fingerprint(str(source))
    return {"kind": "sha256", "sha256": file_sha256(source)}
