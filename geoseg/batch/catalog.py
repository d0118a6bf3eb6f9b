"""The batch catalog (``catalog.yaml``): defaults and scenes, validated with file:line errors.

A catalog names scenes and how to run them::

    defaults:                     # every field optional; scenes override any of them
      model: default              # built-in name, or a bundle path (relative to this file)
      tile_size: 1024
      out: outputs/{id}           # output directory template: {id}, {stem}
      vectorize: true
      min_area: 0                 # m^2
      resources: {GPU: 1}         # Dask worker resources of the tile tasks (on a cluster)
    scenes:
      - path: scenes/a.tif        # one scene (id: the file stem, or `id:`)
        id: scene-a
        tile_size: 512
      - glob: "tiles/*.tif"       # every match, sorted; ids from the file stems
      - stac: items.json          # ItemCollection, Item or Catalog (local files)
        asset: visual             # which asset is the image [default: the only data asset]
      - stac_search:              # the Items a STAC API search returns (pystac-client)
          url: https://earth-search.aws.element84.com/v1
          collections: [sentinel-2-l2a]
          bbox: [9, 49, 12, 51]
          datetime: 2026-06-01/2026-06-30
          filter: "eo:cloud_cover < 20"   # CQL2 text or JSON; or query: {eo:cloud_cover: {lt: 20}}
          max_items: 50
        aoi: fields.gpkg          # with stac_search: also what the search must intersect

Relative paths resolve against the catalog file's directory. :func:`load_catalog` parses
and validates (every error reads ``catalog.yaml:12: scenes[1].tile_size: ...``);
:func:`resolve` turns the catalog into one :class:`SceneJob` per scene.
"""

from __future__ import annotations

import difflib
import glob as globlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from geoseg._constants import DEFAULT_TILE_SIZE
from geoseg.errors import CatalogError, InputError
from geoseg.io.remote import is_remote
from geoseg.io.stac_source import looks_like_item
from geoseg.models.refs import resolve_model_ref

#: Output directory template when a catalog sets none.
DEFAULT_OUT = "outputs/{id}"

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class Settings(BaseModel):
    """How a scene runs: the ``defaults`` block, and the overrides of each scene."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tile_size: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    bands: list[PositiveInt] | None = Field(default=None, min_length=1)
    device: str | None = None
    vectorize: bool | None = None
    min_area: NonNegativeFloat | None = None
    simplify: NonNegativeFloat | None = None
    connectivity: Literal[4, 8] | None = None
    out: str | None = None
    resources: dict[str, PositiveFloat] | None = None
    assets: dict[str, str] | None = None  # STAC Items: model band -> asset key (like --assets)
    grid_asset: str | None = None  # STAC Items: the asset whose grid the bands are read on
    scale_offset: Literal["apply", "ignore"] | None = None
    aoi: str | None = None  # FILE[:LAYER] of a vector layer (relative to the catalog)
    bbox: str | list[float | str] | None = None  # MINX,MINY,MAXX,MAXY[,CRS]
    aoi_crop: bool | None = None
    output_grid: Literal["input", "model"] | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not _DEVICE.match(v.strip().lower()):
            raise ValueError(f"{v!r} is not one of auto, cpu, cuda, cuda:N")
        return v

    @field_validator("out")
    @classmethod
    def _out(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.format(id="id", stem="stem")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{v!r} is not a valid template ({exc}): use only {{id}} and {{stem}}") from None
        return v


class StacSearch(BaseModel):
    """A ``stac_search:`` source: the Items a STAC API search returns (pystac-client)."""

    model_config = ConfigDict(extra="forbid")

    url: str  # the API's root, e.g. https://earth-search.aws.element84.com/v1
    collections: list[str] | None = None
    bbox: list[float] | None = None  # minx, miny, maxx, maxy in WGS84
    datetime: str | None = None  # e.g. 2026-06-01/2026-06-30
    query: dict | None = None  # STAC API query extension, e.g. {"eo:cloud_cover": {"lt": 20}}
    filter: str | dict | None = None  # CQL2 text (e.g. "eo:cloud_cover < 20") or JSON
    max_items: int | None = Field(default=None, ge=1)

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v):
        if v is not None and (len(v) != 4 or v[0] >= v[2] or v[1] >= v[3]):
            raise ValueError(f"bbox must be [minx, miny, maxx, maxy] with min < max, got {v}")
        return v

    @field_validator("filter")
    @classmethod
    def _filter(cls, v):
        """Parsed now (cql2): an invalid filter fails at load, with the catalog's line."""
        if v is not None:
            from geoseg.io.stac_search import parse_filter

            parse_filter(v)
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v):
        if v is not None:
            from geoseg.io.stac_search import query_filter

            query_filter(v)
        return v


class SceneEntry(Settings):
    """One entry of ``scenes``: a ``path`` (file, URL or STAC Item), a ``glob``, a ``stac``
    file or a ``stac_search``, plus overrides."""

    path: str | None = None
    glob: str | None = None
    stac: str | None = None
    stac_search: StacSearch | None = None
    asset: str | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SceneEntry:
        given = [k for k in ("path", "glob", "stac", "stac_search") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, glob or stac (or stac_search)" + (f" (got {' and '.join(given)})" if given else ""))
        if self.id is not None and self.path is None:
            raise ValueError("id names a single scene: use it with path (glob and stac scenes take their ids from file stems and item ids)")
        if self.asset is not None and self.stac is None:
            raise ValueError("asset applies to stac sources only")
        return self


class CatalogSpec(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    setup: str | None = None  # commands that create the scenes; shown when they are missing
    stac_catalog: str | None = None  # where the outputs' STAC Catalog goes [default: common output dir]
    defaults: Settings = Field(default_factory=Settings)
    scenes: list[SceneEntry] = Field(min_length=1)


_FIELDS = {
    "catalog": sorted(CatalogSpec.model_fields),
    "defaults": sorted(Settings.model_fields),
    "scene": sorted(SceneEntry.model_fields),
}


@dataclass(frozen=True)
class SceneJob:
    """One resolved scene of a catalog: what to run, where, with which options."""

    id: str
    path: Path  # absolute input raster
    out_dir: Path | str  # absolute output directory, or an object-store prefix "s3://bucket/prefix"
    model: str  # built-in name or absolute bundle path
    options: dict  # RunOptions fields: tile_size, batch_size, bands, device, vectorize, min_area, ...
    resources: dict | None = None
    line: int = 0  # line of its entry in the catalog
    source_item: dict | None = None  # STAC sources: {"path": its file, "item": file is the Item alone, "properties": times}
    label: str = field(default="", compare=False)  # "catalog.yaml:12" for messages
    #: an input that is not a local raster file: a URL (raster or STAC Item), a local
    #: Item file, or a STAC Item (dict) whose assets are stacked (geoseg.io.sources)
    source: str | dict | None = field(default=None, compare=False)

    @property
    def stem(self) -> str:
        if isinstance(self.source, dict):
            return str(self.source.get("id"))
        return self.path.stem

    @property
    def input(self):
        """What run_scene gets: ``source`` when given, else ``path``."""
        return self.source if self.source is not None else self.path

    @property
    def local(self) -> bool:
        """The input is a local raster file (its existence can be checked)."""
        return self.source is None


@dataclass(frozen=True)
class Catalog:
    """A validated catalog file: its spec and where each of its keys is."""

    path: Path  # as given (for messages)
    spec: CatalogSpec
    lines: dict[tuple, int]

    @property
    def root(self) -> Path:
        """The directory relative paths resolve against."""
        return self.path.resolve().parent

    def line(self, loc: tuple) -> int:
        """The line of ``loc`` (or of its nearest enclosing key)."""
        return _line(self.lines, loc)

    def error(self, loc: tuple, message: str) -> CatalogError:
        return CatalogError(f"{self.path}:{self.line(loc)}: {_where(loc)}{message}")


def _line(lines: dict[tuple, int], loc: tuple) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _where(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return f"{s}: " if s else ""


# --------------------------------------------------------------------------- YAML with lines


def _compose(text: str, name: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML safely; also return the line of every mapping key and sequence item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise CatalogError(f"{name}:{line}: not valid YAML ({exc.problem or exc.context}): fix the syntax") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{name}: not valid YAML ({exc}): fix the syntax") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(n, loc: tuple, stack: frozenset) -> None:
        if id(n) in stack:  # a recursive alias
            return
        stack = stack | {id(n)}
        lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                line = k.start_mark.line + 1
                if key in seen and key != "<<":
                    raise CatalogError(f"{name}:{line}: {_where(loc + (key,))}duplicate key (also on line {seen[key]}): keep one")
                seen[key] = line
                lines[loc + (key,)] = line
                walk(v, loc + (key,), stack)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, loc + (i,), stack)

    if node is not None:
        walk(node, (), frozenset())
    return data, lines


def _describe(err: dict, catalog_path: Path, lines: dict) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = loc[:-1]
        fields = _FIELDS["catalog"] if not parent else _FIELDS["defaults"] if parent == ("defaults",) else _FIELDS["scene"]
        guess = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"expected one of {', '.join(fields)}"
        msg = f"unknown field: {hint}"
    elif kind == "missing":
        msg = "required field missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, (str, int, float, bool)) and kind not in ("value_error",):
            msg += f" (got {value!r})"
    return f"{catalog_path}:{_line(lines, loc)}: {_where(loc)}{msg}"


def load_catalog(path: str | os.PathLike) -> Catalog:
    """Read and validate a catalog file.

    Raises:
        CatalogError: unreadable file, invalid YAML or schema; the message names the
            file, line and field (``catalog.yaml:12: scenes[1].tile_size: ...``).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise CatalogError(f"catalog {p} does not exist: check the path") from None
    except IsADirectoryError:
        raise CatalogError(f"catalog {p} is a directory: give the path of a catalog YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {p} ({exc}): check the file") from None
    data, lines = _compose(text, str(p))
    if not isinstance(data, dict):
        raise CatalogError(f"{p}:1: a catalog is a mapping with `defaults` and `scenes` (see catalog.yaml in the geoseg repository)")
    try:
        spec = CatalogSpec.model_validate(data)
    except ValidationError as exc:
        errors = [_describe(e, p, lines) for e in exc.errors(include_url=False)]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise CatalogError("; ".join(errors[:3]) + more) from None
    return Catalog(p, spec, lines)


# --------------------------------------------------------------------------- resolution


def _setting(name: str, entry: Settings, defaults: Settings, fallback: Any) -> Any:
    value = getattr(entry, name)
    if value is None:
        value = getattr(defaults, name)
    return fallback if value is None else value


def _model_ref(model: str, root: Path) -> str:
    """A model reference of the catalog: built-in names stay names, paths are relative to the catalog."""
    return resolve_model_ref(model, base=root)


def _hint(catalog: Catalog) -> str:
    return f" (make the scenes first: {catalog.spec.setup.strip()})" if catalog.spec.setup else ""


def _one_local_asset(item: dict) -> bool:
    """An Item whose image is its only data asset, a local file (the one-file-per-scene case)."""
    assets = {k: a for k, a in (item.get("assets") or {}).items() if isinstance(a, dict)}
    data = [a for a in assets.values() if "data" in (a.get("roles") or [])] or (list(assets.values()) if len(assets) == 1 else [])
    return len(data) == 1 and not is_remote(str(data[0].get("href", "")))


def _with_self(item: dict, where: Path | str) -> dict:
    """The Item with a ``self`` link to where it was read (relative hrefs resolve against it)."""
    href = where if isinstance(where, str) and is_remote(where) else str(Path(where).resolve())
    links = [ln for ln in item.get("links") or [] if not (isinstance(ln, dict) and ln.get("rel") == "self")]
    return {**item, "links": links + [{"rel": "self", "href": href, "type": "application/geo+json"}]}


def search_items(search: StacSearch, aoi: str | None = None, bbox: str | None = None) -> list[dict]:
    """The Items of a ``stac_search:`` entry, as dicts (absolute hrefs, a ``self`` link),
    checked against its filter and query (see :mod:`geoseg.io.stac_search`).

    ``aoi`` (``FILE[:LAYER]``) or ``bbox`` (``MINX,MINY,MAXX,MAXY[,CRS]``), the entry's area
    of interest, become the search's ``intersects`` (in WGS84): a job over a field searches
    only the Items that cover it, and then processes only the field.
    """
    from geoseg.io.stac_search import search as stac_api_search

    intersects = None
    if aoi is not None or bbox is not None:
        from shapely.geometry import mapping

        from geoseg.io.aoi import read_area

        intersects = mapping(read_area("EPSG:4326", aoi=aoi, bbox=bbox).geometry)
    return stac_api_search(
        search.url, collections=search.collections, bbox=search.bbox, intersects=intersects,
        datetime=search.datetime, query=search.query, filter=search.filter, max_items=search.max_items,
    )


def _out_dir(text: str, root: Path, catalog, loc) -> Path | str:
    """A scene's destination from its ``out:`` template: an object-store prefix as a URL,
    else a local directory relative to the catalog. An unknown scheme is a catalog error
    (never a local folder named ``s3:`` or ``gs:``)."""
    from geoseg.errors import OutputError
    from geoseg.io.store import parse_destination

    try:
        scheme, bucket, prefix = parse_destination(text)
    except OutputError as exc:
        raise catalog.error(loc, str(exc)) from None
    if scheme != "file":
        return f"{scheme}://{bucket}/{prefix}".rstrip("/")
    return (root / text).expanduser().resolve()


def resolve(catalog: Catalog) -> list[SceneJob]:
    """One :class:`SceneJob` per scene of the catalog, in catalog order.

    Globs are expanded (sorted), STAC files read, output templates filled in.

    Raises:
        CatalogError: a glob that matches nothing, an unreadable STAC source, duplicate
            scene ids, or two scenes that would write the same outputs.
    """
    spec, root = catalog.spec, catalog.root
    d = spec.defaults
    jobs: list[SceneJob] = []
    ids: dict[str, int] = {}
    targets: dict[tuple[Path, str], str] = {}
    for i, entry in enumerate(spec.scenes):
        loc = ("scenes", i)
        line = catalog.line(loc)
        sources: list[tuple] = []  # id, path, source item, loc of the source[, input that is not a raster file]
        if entry.path is not None and looks_like_item(entry.path):
            # a STAC Item (file or URL): read now (one small request) for its id
            from geoseg.io.stac_source import ItemScene

            where = entry.path if is_remote(entry.path) else str((root / entry.path).expanduser())
            try:
                scene = ItemScene.load(where)
            except (InputError, OSError) as exc:
                raise catalog.error(loc + ("path",), str(exc)) from None
            item = _with_self(scene.item, scene.base)
            sources.append((entry.id or scene.id, Path(scene.id), None, loc + ("path",), item))
        elif entry.path is not None and is_remote(entry.path):
            stem = Path(urlsplit(entry.path).path).stem
            sources.append((entry.id or stem, Path(stem), None, loc + ("path",), entry.path))
        elif entry.path is not None:
            p = (root / entry.path).expanduser()
            sources.append((entry.id or p.stem, p, None, loc + ("path",)))
        elif entry.stac_search is not None:
            try:
                area = {"aoi": _aoi_path(_setting("aoi", entry, d, None), root),
                        "bbox": _bbox_text(_setting("bbox", entry, d, None))}
                for item in search_items(entry.stac_search, **area):
                    props = {k: v for k, v in (item.get("properties") or {}).items()
                             if k in ("datetime", "start_datetime", "end_datetime")}
                    sources.append((item["id"], Path(item["id"]), {"properties": props}, loc + ("stac_search",), item))
            except (InputError, OSError) as exc:
                raise catalog.error(loc + ("stac_search",), str(exc)) from None
        elif entry.glob is not None:
            pattern = str((root / entry.glob).expanduser())
            matches = sorted(Path(m) for m in globlib.glob(pattern, recursive=True) if os.path.isfile(m))
            if not matches:
                raise catalog.error(loc + ("glob",), f"{entry.glob!r} matches no file in {root}: check the pattern{_hint(catalog)}")
            sources.extend((m.stem, m, None, loc + ("glob",)) for m in matches)
        else:
            from geoseg.io.stac import asset_path, read_items

            stac_file = (root / entry.stac).expanduser()
            try:
                items = read_items(stac_file)
                if not items:
                    raise InputError(f"{entry.stac} holds no STAC Items: check the file")
                for item, item_file, standalone in items:
                    if not isinstance(item.get("id"), str) or not item["id"]:
                        raise InputError(f"an item in {item_file} has no id: give every item an id")
                    props = {k: v for k, v in (item.get("properties") or {}).items()
                             if k in ("datetime", "start_datetime", "end_datetime")}
                    source = {"path": str(item_file.resolve()), "item": standalone, "properties": props}
                    if entry.asset is None and not _one_local_asset(item):
                        # one COG per band (or remote assets): the Item itself, stacked by band
                        sources.append((item["id"], Path(item["id"]), source, loc + ("stac",), _with_self(item, item_file)))
                    else:
                        sources.append((item["id"], asset_path(item, item_file, entry.asset), source, loc + ("stac",)))
            except InputError as exc:
                raise catalog.error(loc + ("stac",), str(exc)) from None
        template = _setting("out", entry, d, DEFAULT_OUT)
        out_loc = loc + ("out",) if entry.out is not None else ("defaults", "out")
        for scene_id, path, source, src_loc, *other in sources:
            if not scene_id or "/" in scene_id or "\\" in scene_id or scene_id.startswith("."):
                raise catalog.error(src_loc, f"scene id {scene_id!r} cannot name files: give an id without '/' that does not start with '.'")
            if scene_id in ids:
                raise catalog.error(src_loc, f"scene id {scene_id!r} is already used on line {ids[scene_id]}: give one of them another id")
            ids[scene_id] = line
            path = path if other else path.resolve()  # other: a URL or an Item, not a local file
            out_dir = _out_dir(template.format(id=scene_id, stem=path.stem), root, catalog, out_loc)
            key = (out_dir, path.stem)
            if key in targets:
                raise catalog.error(
                    out_loc,
                    f"scenes {targets[key]!r} and {scene_id!r} would both write {out_dir}/{path.stem}.*: put {{id}} in the out template",
                )
            targets[key] = scene_id
            bands = _setting("bands", entry, d, None)
            options = {
                "tile_size": _setting("tile_size", entry, d, DEFAULT_TILE_SIZE),
                "batch_size": _setting("batch_size", entry, d, None),
                "bands": tuple(bands) if bands else None,
                "device": _setting("device", entry, d, "auto").strip().lower(),
                "vectorize": _setting("vectorize", entry, d, True),
                "min_area": float(_setting("min_area", entry, d, 0.0)),
                "simplify": float(_setting("simplify", entry, d, 0.0)),
                "connectivity": _setting("connectivity", entry, d, 4),
            }
            for name in ("assets", "grid_asset", "scale_offset"):  # scene-source options, only when set
                value = _setting(name, entry, d, None)
                if value is not None:
                    options[name] = tuple(sorted(value.items())) if name == "assets" else value
            area = {  # resolution and area of interest, only where given (RunOptions has the defaults)
                "aoi": _aoi_path(_setting("aoi", entry, d, None), root),
                "bbox": _bbox_text(_setting("bbox", entry, d, None)),
                "aoi_crop": _setting("aoi_crop", entry, d, None),
                "output_grid": _setting("output_grid", entry, d, None),
            }
            options.update({k: v for k, v in area.items() if v is not None})
            jobs.append(
                SceneJob(
                    id=scene_id,
                    path=path,
                    out_dir=out_dir,
                    model=_model_ref(_setting("model", entry, d, "default"), root),
                    options=options,
                    resources=_setting("resources", entry, d, None),
                    line=line,
                    source_item=source,
                    label=f"{catalog.path}:{line}",
                    source=other[0] if other else None,
                )
            )
    return jobs


def _aoi_path(aoi: str | None, root: Path) -> str | None:
    """A catalog's ``aoi:`` (``FILE[:LAYER]``), its file resolved against the catalog's directory."""
    if aoi is None:
        return None
    from geoseg.io.aoi import split_layer

    path, layer = split_layer(str(root / aoi))
    return str(Path(path).resolve()) + (f":{layer}" if layer else "")


def _bbox_text(bbox) -> str | None:
    """A catalog's ``bbox:`` (text or a YAML list) as ``MINX,MINY,MAXX,MAXY[,CRS]``."""
    if bbox is None or isinstance(bbox, str):
        return bbox
    return ",".join(str(v) for v in bbox)


def missing_inputs_error(catalog: Catalog, jobs: list[SceneJob]) -> CatalogError | None:
    """An error when no scene of the catalog exists (e.g. the example before `geoseg synth`)."""
    if not jobs or any(not j.local or j.path.exists() for j in jobs):
        return None
    first = jobs[0]
    return CatalogError(
        f"{first.label}: none of the {len(jobs)} scene(s) of {catalog.path} exists (first: {first.path})"
        + (_hint(catalog) or ": check the paths")
    )
