"""A STAC Item as a scene: its per-band assets stacked lazily into one GDAL VRT.

An Item from Earth Search, Planetary Computer or a company's STAC API carries one
Cloud-Optimized GeoTIFF per band. :func:`item_scene` matches the model's bands to the
Item's assets (``--assets blue=B02,...``, else ``eo:bands``/``bands`` ``common_name`` or
``name``, else the asset key), opens each matched asset's header (range requests only),
and writes an in-memory VRT that stacks them in model band order on one grid (the finest
of the matched bands, or ``resolution=`` metres/units). No pixel is copied; the tile
tasks read the VRT window by window, which reads the COG blocks it needs.

Scale and offset (``raster:scale``/``raster:offset`` of the asset's band, else the
GeoTIFF's own) are returned per band; :class:`~geoseg.io.raster.SceneSource` applies them.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import escape

import numpy as np

from geoseg.errors import InputError

from . import remote

ITEM_SUFFIXES = (".json", ".geojson")
#: media types of assets that can be raster bands (others are thumbnails, metadata ...)
_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf", "image/vnd.stac.geotiff", "application/octet-stream")
_NON_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual"}


def looks_like_item(uri: str | os.PathLike) -> bool:
    """A JSON path or URL (by suffix; query strings ignored)."""
    path = urlsplit(str(uri)).path if "://" in str(uri) else str(uri)
    return path.lower().endswith(ITEM_SUFFIXES)


def load_item(uri: str | os.PathLike) -> tuple[dict, str]:
    """Read a STAC Item (local path or URL): ``(item, its location for relative hrefs)``."""
    s = str(uri)
    where = remote.display_url(s)
    try:
        data = json.loads(remote.read_bytes(s))
    except FileNotFoundError:
        raise InputError(f"STAC Item {where} does not exist: check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where} is not JSON ({exc}): give a STAC Item") from None
    if not isinstance(data, dict) or data.get("type") != "Feature":
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"{where} has type {kind!r}, not a STAC Item (Feature): give one Item "
            "(catalogs and ItemCollections go into a batch catalog's `stac:` entry)"
        )
    base = s if remote.is_remote(s) or s.startswith("file://") else str(Path(s).resolve())
    return data, base


def resolve_href(href: str, base: str) -> str:
    """An asset href as a local path or URL: absolute as given, relative against ``base``."""
    if href.startswith((*remote.REMOTE_SCHEMES, "/vsi")):
        return href
    if href.startswith("file://"):
        return urlsplit(href).path
    if base.startswith("s3://"):  # urljoin does not know s3://
        bucket_key = base[len("s3://") :]
        return "s3://" + posixpath.normpath(posixpath.join(posixpath.dirname(bucket_key), href))
    if remote.is_remote(base):
        return urljoin(base, href)
    p = Path(href)
    return str(p if p.is_absolute() else (Path(base).parent / p).resolve())


def _asset_bands(asset: dict) -> list[dict]:
    """The band objects of an asset: STAC 1.1 ``bands``, else ``eo:bands`` merged with ``raster:bands``."""
    if isinstance(asset.get("bands"), list):
        return [b if isinstance(b, dict) else {} for b in asset["bands"]]
    eo = asset.get("eo:bands") if isinstance(asset.get("eo:bands"), list) else []
    rb = asset.get("raster:bands") if isinstance(asset.get("raster:bands"), list) else []
    n = max(len(eo), len(rb))
    out = []
    for i in range(n):
        b: dict = {}
        if i < len(rb) and isinstance(rb[i], dict):
            b.update({f"raster:{k}": v for k, v in rb[i].items()})
        if i < len(eo) and isinstance(eo[i], dict):
            b.update({("eo:common_name" if k == "common_name" else k): v for k, v in eo[i].items()})
        out.append(b)
    return out


def _is_raster_asset(key: str, asset: dict) -> bool:
    roles = set(asset.get("roles") or [])
    if roles and roles <= _NON_DATA_ROLES:
        return False
    media = str(asset.get("type") or "").lower()
    href = urlsplit(str(asset.get("href", ""))).path.lower()
    return media.startswith(_RASTER_TYPES) or href.endswith((".tif", ".tiff", ".vrt", ".jp2")) or not media


def describe_assets(item: dict) -> str:
    """``B02 (blue), B03 (green), ...``: the Item's assets and their common names."""
    parts = []
    for key, asset in (item.get("assets") or {}).items():
        if not isinstance(asset, dict):
            continue
        names = [b.get("eo:common_name") or b.get("common_name") or b.get("name") for b in _asset_bands(asset)]
        names = [n for n in names if n]
        parts.append(f"{key} ({', '.join(names)})" if names else key)
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class BandAsset:
    """Where one model band comes from: an asset's href and the band within it (1-based)."""

    band: str
    key: str
    href: str  # local path or URL
    index: int
    scale: float | None
    offset: float | None


def match_assets(item: dict, base: str, model_bands: tuple[str, ...], assets: dict[str, str] | None = None) -> list[BandAsset]:
    """Map each model band to an Item asset (and band within it).

    Matching order: the ``assets`` override (``{"blue": "B02", ...}``; a value may be
    ``KEY:N`` for band N of a multi-band asset); then a band whose ``common_name`` or
    ``name`` equals the model band (case-insensitive); then an asset key equal to it.

    Raises:
        InputError: a band without a match, or an override naming an unknown asset; the
            message lists the Item's assets and their common names.
    """
    all_assets = {k: a for k, a in (item.get("assets") or {}).items() if isinstance(a, dict) and a.get("href")}
    raster = {k: a for k, a in all_assets.items() if _is_raster_asset(k, a)}
    item_id = item.get("id", "?")
    overrides = {k.lower(): v for k, v in (assets or {}).items()}
    unknown = [k for k in overrides if k not in {b.lower() for b in model_bands}]
    if unknown:
        raise InputError(
            f"--assets names band(s) {unknown} the model does not have (its bands: {', '.join(model_bands)})"
        )
    out: list[BandAsset] = []
    missing: list[str] = []
    for band in model_bands:
        want = band.lower()
        found: tuple[str, int] | None = None
        if want in overrides:
            key, _, idx = overrides[want].partition(":")
            if key not in all_assets:
                raise InputError(
                    f"--assets {band}={overrides[want]}: item {item_id!r} has no asset {key!r} "
                    f"(assets: {describe_assets(item)})"
                )
            found = (key, int(idx) if idx.isdigit() else 1)
        else:
            for key, asset in raster.items():
                for i, b in enumerate(_asset_bands(asset), 1):
                    names = {str(b.get(n, "")).lower() for n in ("eo:common_name", "common_name", "name")}
                    if want in names:
                        found = (key, i)
                        break
                if found:
                    break
            if found is None:
                for key in raster:
                    if key.lower() == want:
                        found = (key, 1)
                        break
        if found is None:
            missing.append(band)
            continue
        key, idx = found
        asset = all_assets[key]
        bands = _asset_bands(asset)
        meta = bands[idx - 1] if idx - 1 < len(bands) else {}
        scale = meta.get("raster:scale", meta.get("scale"))
        offset = meta.get("raster:offset", meta.get("offset"))
        out.append(
            BandAsset(
                band=band,
                key=key,
                href=resolve_href(str(asset["href"]), base),
                index=idx,
                scale=None if scale is None else float(scale),
                offset=None if offset is None else float(offset),
            )
        )
    if missing:
        raise InputError(
            f"item {item_id!r} has no asset for model band(s) {', '.join(missing)} (assets: {describe_assets(item)}): "
            f"map them with --assets {missing[0]}=ASSET_KEY,..."
        )
    return out


@dataclass(frozen=True)
class AssetGrid:
    """What an asset's header says (read with range requests)."""

    width: int
    height: int
    transform: tuple[float, ...]  # affine a, b, c, d, e, f
    crs_wkt: str
    dtype: str
    nodata: float | None
    block: tuple[int, int]
    scale: float
    offset: float
    count: int


def vrt_xml(bands: list[BandAsset], grids: list[AssetGrid], target: AssetGrid, dtype: str, nodata: float | None) -> str:
    """A VRT stacking ``bands`` (one VRT band each) on the ``target`` grid.

    Sources on another grid of the same CRS are resampled (nearest) through their
    source/destination rectangles, so a 20 m band lands on the 10 m grid.
    """
    gdt = {
        "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
        "int32": "Int32", "float32": "Float32", "float64": "Float64", "uint64": "UInt64", "int64": "Int64",
    }[dtype]
    a, b, c, d, e, f = target.transform
    lines = [
        f'<VRTDataset rasterXSize="{target.width}" rasterYSize="{target.height}">',
        f"  <SRS>{escape(target.crs_wkt)}</SRS>",
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    bx, by = target.block
    for i, (band, grid) in enumerate(zip(bands, grids), 1):
        ga, _, gc, _, ge, gf = grid.transform
        # the source's full extent in target pixel coordinates
        x0 = (gc - c) / a
        y0 = (gf - f) / e
        xs = grid.width * ga / a
        ys = grid.height * ge / e
        lines += [
            f'  <VRTRasterBand dataType="{gdt}" band="{i}" blockXSize="{bx}" blockYSize="{by}">',
            f"    <Description>{escape(band.band)}</Description>",
        ]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += [
            "    <SimpleSource>",
            f"      <SourceFilename relativeToVRT=\"0\">{escape(remote.gdal_path(band.href))}</SourceFilename>",
            f"      <SourceBand>{band.index}</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}" />',
            f'      <DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}" />',
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def choose_target(grids: list[AssetGrid], names: list[str], grid_asset: str | None = None) -> AssetGrid:
    """The grid the bands are read on: the finest band's, or asset ``grid_asset``'s."""
    crs = {g.crs_wkt for g in grids}
    if len(crs) > 1:
        raise InputError(
            f"the matched assets ({', '.join(names)}) are in different CRSs: geoseg stacks bands of one CRS; "
            "warp them to one CRS first"
        )
    for g in grids:
        if g.transform[1] != 0 or g.transform[3] != 0:
            raise InputError(f"an asset of {', '.join(names)} has a rotated geotransform: warp it to a north-up grid first")
    if grid_asset is None:
        return grids[int(np.argmin([abs(g.transform[0]) * abs(g.transform[4]) for g in grids]))]
    if grid_asset not in names:
        raise InputError(f"--grid-asset {grid_asset}: not one of the matched assets ({', '.join(names)})")
    return grids[names.index(grid_asset)]


def item_fingerprint(item: dict, base: str, keys: tuple[str, ...] | list[str]) -> dict:
    """What identifies an Item's content without reading its pixels.

    The sha256 of the Item's canonical JSON without its links (which covers ``updated``
    and any ``file:checksum``) plus, for each asset in ``keys`` without a ``file:checksum``, its
    ETag/size/Last-Modified (one HEAD request each) or, for a local file, its sha256.
    """
    # links are left out: an API's links name its host (and may carry tokens or paging)
    content = {k: v for k, v in item.items() if k != "links"}
    canon = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    out: dict = {"kind": "stac-item", "item_sha256": hashlib.sha256(canon).hexdigest()}
    updated = (item.get("properties") or {}).get("updated")
    if updated:
        out["updated"] = updated
    assets: dict = {}
    for key in keys:
        asset = (item.get("assets") or {}).get(key)
        if not isinstance(asset, dict) or not asset.get("href"):
            assets[key] = {"kind": "missing"}
        elif asset.get("file:checksum"):
            assets[key] = {"kind": "file:checksum", "file:checksum": asset["file:checksum"]}
        else:
            href = resolve_href(str(asset["href"]), base)
            if remote.is_remote(href):
                assets[key] = remote.fingerprint(href)
            else:
                from .raster import file_sha256

                assets[key] = {"kind": "sha256", "sha256": file_sha256(href)}
    out["assets"] = assets
    return out


def _self_href(item: dict) -> str | None:
    for link in item.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def _read_grid(href: str) -> AssetGrid:
    """An asset's header (range requests only), retried on transient failures."""
    import rasterio

    path = remote.gdal_path(href)

    def head() -> AssetGrid:
        with open_raster(path, env=False, quiet=True) as ds:
            return AssetGrid(
                width=ds.width,
                height=ds.height,
                transform=tuple(ds.transform)[:6],
                crs_wkt=ds.crs.to_wkt() if ds.crs else "",
                dtype=ds.dtypes[0],
                nodata=None if ds.nodata is None else float(ds.nodata),
                block=tuple(ds.block_shapes[0][::-1]),
                scale=float(ds.scales[0]),
                offset=float(ds.offsets[0]),
                count=ds.count,
            )

    from geoseg._constants import GDAL_ENV

    from .raster import open_raster

    env = {**GDAL_ENV, **remote.remote_env()} if remote.is_remote(href) else dict(GDAL_ENV)
    with rasterio.Env(**env):
        if remote.is_remote(href):
            remote.clear_cache(href)  # what GDAL remembers from an earlier run (e.g. a failure)
            return remote.retrying(head, href, what="cannot open asset")
        if not Path(path).is_file():
            raise InputError(f"asset {path} does not exist: check the Item's href (relative hrefs resolve against the Item's file)")
        try:
            return head()
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"asset {path} is not a raster GDAL can read ({' '.join(str(exc).split())})") from exc


class ItemScene:
    """A STAC Item whose scene is defined once the model's bands are known (:meth:`select`)."""

    def __init__(self, item: dict, base: str, *, assets: dict[str, str] | None = None,
                 grid_asset: str | None = None, scale_offset: str = "apply") -> None:
        if scale_offset not in ("apply", "ignore"):
            raise InputError(f"scale_offset must be 'apply' or 'ignore', got {scale_offset!r}")
        self.item, self.base, self.assets = item, base, assets
        self.grid_asset, self.scale_offset = grid_asset, scale_offset
        self.path = remote.display_url(base)
        self.id = str(item.get("id") or Path(urlsplit(base).path).stem)

    @classmethod
    def load(cls, source, **kw) -> ItemScene:
        """From a path or URL of an Item JSON, or an Item (a dict or a ``pystac.Item``)."""
        if hasattr(source, "to_dict"):  # pystac.Item
            source = source.to_dict(include_self_link=True, transform_hrefs=False)
        if isinstance(source, dict):
            if source.get("type") != "Feature":
                raise InputError(f"the source is a {source.get('type')!r} object, not a STAC Item (Feature)")
            base = _self_href(source) or kw.pop("base", None) or os.getcwd() + "/item.json"
            return cls(source, base, **kw)
        item, base = load_item(source)
        return cls(item, base, **kw)

    @property
    def stem(self) -> str:
        return self.id

    def select(self, bands=None, model_bands: tuple[str, ...] | None = None):
        """Match the model's bands to assets and stack them: a :class:`SceneSource` over a VRT."""
        from concurrent.futures import ThreadPoolExecutor

        from affine import Affine

        from geoseg.grid import GeoBox

        from .raster import SceneSource

        if bands is not None:
            raise InputError(
                f"--bands picks bands of one raster; {self.path} is a STAC Item: map model bands to assets with --assets"
            )
        if not model_bands:
            raise InputError(f"{self.path} is a STAC Item: its assets are matched to a model's bands")
        matched = match_assets(self.item, self.base, tuple(model_bands), self.assets)
        with ThreadPoolExecutor(max_workers=min(8, len(matched))) as pool:
            grids = list(pool.map(lambda b: _read_grid(b.href), matched))
        names = [f"{b.key}" for b in matched]
        for b, g in zip(matched, grids):
            if b.index > g.count:
                raise InputError(f"asset {b.key} of item {self.id!r} has {g.count} band(s), not band {b.index}")
        target = choose_target(grids, names, self.grid_asset)
        dtype = np.result_type(*[np.dtype(g.dtype) for g in grids]).name
        nodatas = {g.nodata for g in grids}
        if len(nodatas) > 1:
            raise InputError(
                f"the assets {', '.join(names)} of item {self.id!r} have different nodata values "
                f"({', '.join(map(str, sorted(nodatas, key=str)))}): geoseg needs one"
            )
        nodata = nodatas.pop()
        so, source_kind = [], set()
        for b, g in zip(matched, grids):
            if b.scale is not None or b.offset is not None:
                so.append((1.0 if b.scale is None else b.scale, 0.0 if b.offset is None else b.offset))
                source_kind.add("raster:bands")
            else:
                so.append((g.scale, g.offset))
                if (g.scale, g.offset) != (1.0, 0.0):
                    source_kind.add("geotiff")
        scaled = any(pair != (1.0, 0.0) for pair in so)
        xml = vrt_xml(matched, grids, target, dtype, nodata)
        canon = json.dumps(self.item, sort_keys=True, separators=(",", ":"))
        remote_inputs = tuple(remote.gdal_path(b.href) for b in matched if remote.is_remote(b.href))
        return SceneSource(
            path=self.path,
            geobox=GeoBox(target.height, target.width, Affine(*target.transform), target.crs_wkt),
            count=len(matched),
            dtype=dtype,
            band_indexes=tuple(range(1, len(matched) + 1)),
            band_names=tuple(b.band for b in matched),
            nodata=nodata,
            mask_band=False,
            dataset=xml,
            scale_offset=tuple(so) if scaled else None,
            apply_scale=scaled and self.scale_offset == "apply",
            scale_source="+".join(sorted(source_kind)) or None,
            kind="stac-item",
            stem=self.id,
            item_json=canon,
            item_base=self.base,
            asset_keys=tuple(b.key for b in matched),
            inputs=remote_inputs,
            opened_at=time.time(),
        )
