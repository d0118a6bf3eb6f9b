"""``stac_search:`` filters and queries against real STAC APIs on loopback.

- ``rustac serve`` with its DuckDB backend (Items as stac-geoparquet) evaluates CQL2
  ``filter``: Items with different ``eo:cloud_cover`` are served and the catalog's filter
  selects only the matching ones (the same catalog without the filter gets them all). It
  answers ``query`` with HTTP 500 ("query is not implemented"), so geoseg sends a query
  to it as the equivalent CQL2 filter, which it evaluates.
- A static STAC API (a landing page and one search result, served as files by the range
  server) answers every search with the same Items, as an API without the Filter or
  Query extension may: geoseg sees Items that do not match and stops with one line.
- An invalid filter or query fails when the catalog is loaded, with its file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from remote_servers import RangeServer, StacApiServer, duckdb_home

pytest.importorskip("pystac_client")
pytest.importorskip("cql2")

CLOUD = [5.0, 15.0, 30.0, 60.0, 12.0]
PLATFORM = ["sentinel-2a", "sentinel-2b"]


def _items(base: str = "http://127.0.0.1:9") -> list[dict]:
    items = []
    for i, cc in enumerate(CLOUD):
        x = 10 + i * 0.2
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"scene-{i}", "collection": "s2",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [[[x, 50], [x + 0.1, 50], [x + 0.1, 50.1], [x, 50.1], [x, 50]]]},
            "bbox": [x, 50, x + 0.1, 50.1],
            "properties": {"datetime": f"2026-06-0{i + 1}T10:00:00Z", "eo:cloud_cover": cc, "platform": PLATFORM[i % 2]},
            "links": [],
            "assets": {"B02": {"href": f"{base}/scene-{i}/B02.tif", "type": "image/tiff; application=geotiff",
                               "roles": ["data"], "eo:bands": [{"name": "B02", "common_name": "blue"}]}},
        })
    return items


def _catalog(path: Path, **search) -> Path:
    path.write_text(yaml.safe_dump({
        "version": 1, "defaults": {"vectorize": False, "out": f"{path.parent}/out/{{id}}"},
        "scenes": [{"stac_search": search}],
    }, sort_keys=False))
    return path


def _ids(catalog: Path) -> list[str]:
    from geoseg.batch.catalog import load_catalog, resolve

    return sorted(job.id for job in resolve(load_catalog(catalog)))


@pytest.fixture(scope="module")
def duckdb_api(tmp_path_factory):
    """rustac serve, DuckDB backend, over the Items of :func:`_items`."""
    home = tmp_path_factory.mktemp("duckdb-home")
    reason = duckdb_home(home)
    if reason:
        pytest.skip(reason)
    feed = tmp_path_factory.mktemp("duckdb-items") / "items.json"
    feed.write_text(json.dumps({"type": "FeatureCollection", "features": _items()}))
    with StacApiServer(feed, duckdb=True, home=home) as api:
        yield api


FILTERS = {
    "cql2-text": ("eo:cloud_cover < 20", ["scene-0", "scene-1", "scene-4"]),
    "cql2-json": ({"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]}, ["scene-0", "scene-1", "scene-4"]),
    "and-text": ("eo:cloud_cover < 40 AND platform = 'sentinel-2a'", ["scene-0", "scene-2", "scene-4"]),
    "in-list": ("id IN ('scene-1', 'scene-3')", ["scene-1", "scene-3"]),
}


@pytest.mark.parametrize("form", list(FILTERS))
def test_filter_selects_only_matching_items(duckdb_api, tmp_path, form):
    flt, expected = FILTERS[form]
    common = {"url": duckdb_api.url, "collections": ["s2"], "bbox": [9, 49, 12, 51],
              "datetime": "2026-06-01T00:00:00Z/2026-06-30T00:00:00Z", "max_items": 10}
    assert _ids(_catalog(tmp_path / "all.yaml", **common)) == [f"scene-{i}" for i in range(len(CLOUD))]
    assert _ids(_catalog(tmp_path / "filtered.yaml", **common, filter=flt)) == expected


def test_filter_with_other_search_fields(duckdb_api, tmp_path):
    """bbox, datetime and filter each narrow the search: scene-0/1 lie west of the bbox,
    scene-4 is of 5 June, scene-3 has 60 % clouds."""
    cat = _catalog(tmp_path / "c.yaml", url=duckdb_api.url, collections=["s2"], bbox=[10.35, 49, 12, 51],
                   datetime="2026-06-01T00:00:00Z/2026-06-04T23:59:59Z", filter="eo:cloud_cover < 50")
    assert _ids(cat) == ["scene-2"]


def _catalog_with_area(path: Path, search: dict, **area) -> Path:
    path.write_text(yaml.safe_dump({
        "version": 1, "defaults": {"vectorize": False, "out": f"{path.parent}/out/{{id}}"},
        "scenes": [{"stac_search": search, **area}],
    }, sort_keys=False))
    return path


def test_entry_aoi_is_what_the_search_intersects(duckdb_api, tmp_path):
    """A ``stac_search:`` entry's ``aoi:`` (a layer in EPSG:3857) and ``bbox:`` become the
    search's ``intersects``: only the Item under the area comes back (scene-2 spans
    10.4-10.5 E), and the area stays the scene's processing AOI."""
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame(geometry=[box(10.42, 50.02, 10.48, 50.08)], crs="EPSG:4326").to_crs("EPSG:3857").to_file(
        tmp_path / "field.gpkg", layer="field")
    search = {"url": duckdb_api.url, "collections": ["s2"]}
    cat = _catalog_with_area(tmp_path / "aoi.yaml", search, aoi="field.gpkg:field")
    assert _ids(cat) == ["scene-2"]
    from geoseg.batch.catalog import load_catalog, resolve

    (job,) = resolve(load_catalog(cat))
    assert job.options["aoi"] == f"{(tmp_path / 'field.gpkg').resolve()}:field"
    # a bbox across scene-2 and scene-3 (10.6-10.7 E), with a filter that drops scene-3 (60 % clouds)
    cat = _catalog_with_area(tmp_path / "bbox.yaml", {**search, "filter": "eo:cloud_cover < 50"}, bbox="10.45,50.01,10.65,50.09")
    assert _ids(cat) == ["scene-2"]
    cat = _catalog_with_area(tmp_path / "bbox2.yaml", search, bbox="10.45,50.01,10.65,50.09")
    assert _ids(cat) == ["scene-2", "scene-3"]


QUERIES = {
    "lt": ({"eo:cloud_cover": {"lt": 20}}, None, ["scene-0", "scene-1", "scene-4"]),
    "two-properties": ({"eo:cloud_cover": {"lte": 30}, "platform": {"eq": "sentinel-2a"}}, None, ["scene-0", "scene-2", "scene-4"]),
    "in": ({"id": {"in": ["scene-1", "scene-3"]}}, None, ["scene-1", "scene-3"]),
    "with-filter": ({"eo:cloud_cover": {"gt": 10}}, "platform = 'sentinel-2a'", ["scene-2", "scene-4"]),
}


@pytest.mark.parametrize("form", list(QUERIES))
def test_query_selects_only_matching_items_through_the_filter_extension(duckdb_api, tmp_path, form):
    """rustac's API does not declare the Query extension (it answers a ``query`` with HTTP
    500, "query is not implemented"): geoseg sends the query as the equivalent CQL2 filter,
    and-ed with the catalog's filter, which the API evaluates."""
    query, flt, expected = QUERIES[form]
    common = {"url": duckdb_api.url, "collections": ["s2"], "max_items": 10}
    extra = {"filter": flt} if flt else {}
    assert _ids(_catalog(tmp_path / "q.yaml", **common, query=query, **extra)) == expected
    import pystac_client  # what the API itself says to a query

    with pytest.raises(pystac_client.exceptions.APIError, match="query is not implemented"):
        list(pystac_client.Client.open(duckdb_api.url).search(collections=["s2"], query=query).items_as_dicts())


#: What the static API declares: core and item search, no Filter or Query extension.
STATIC_CONFORMS = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]


@pytest.fixture
def static_api(tmp_path):
    """A STAC API as static files on the range server: the landing page ``api.json``
    (GET search only), and ``search.json``, which answers every search with the same
    five Items. ``write(conforms)`` (re)writes the landing page."""
    root = tmp_path / "static"
    root.mkdir()
    with RangeServer(root) as srv:
        def write(conforms: list[str]) -> str:
            landing = {
                "type": "Catalog", "stac_version": "1.0.0", "id": "static", "description": "static search results",
                "conformsTo": conforms,
                "links": [{"rel": "self", "href": f"{srv.url}/api.json"}, {"rel": "root", "href": f"{srv.url}/api.json"},
                          {"rel": "search", "href": f"{srv.url}/search.json", "type": "application/geo+json",
                           "method": "GET"}],
            }
            (root / "api.json").write_text(json.dumps(landing))
            return f"{srv.url}/api.json"

        (root / "search.json").write_text(json.dumps({"type": "FeatureCollection", "features": _items(), "links": []}))
        srv.write = write
        write(STATIC_CONFORMS)
        yield srv


@pytest.mark.parametrize("field,value", [
    ("filter", "eo:cloud_cover < 20"),
    ("query", {"eo:cloud_cover": {"lt": 20}}),
])
def test_api_that_ignores_the_filter_is_an_error(static_api, tmp_path, field, value):
    from geoseg.errors import CatalogError

    url = f"{static_api.url}/api.json"
    cat = _catalog(tmp_path / "c.yaml", url=url, **{field: value})
    with pytest.raises(CatalogError) as exc:
        _ids(cat)
    msg = str(exc.value)
    assert "\n" not in msg and f"the STAC API at {url} ignored the {field}" in msg, msg
    assert "2 of the 5 Items it returned do not match it (e.g. scene-2)" in msg, msg
    assert [r for r in static_api.requests if r[0] == "GET" and r[1] == "/search.json"]  # it did search, by GET
    # without a filter the same API is fine
    assert len(_ids(_catalog(tmp_path / "plain.yaml", url=url))) == 5
    # an API that declares the extension is trusted (no check of its Items)
    ext = {"filter": "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
           "query": "https://api.stacspec.org/v1.0.0/item-search#query"}[field]
    static_api.write([*STATIC_CONFORMS, ext])
    assert len(_ids(cat)) == 5


@pytest.mark.parametrize("field,value,expected", [
    ("filter", "eo:cloud_cover <<< 20", r"filter 'eo:cloud_cover <<< 20' is not valid CQL2 \(at column 17: expected "),
    ("filter", "cloud cover < 20", r"not valid CQL2 \(at column 7: expected "),
    ("filter", {"op": "<"}, r"filter '\{\"op\": \"<\"\}' is not valid CQL2"),
    ("query", {"eo:cloud_cover": {"less": 20}}, r"query: operator 'less' of eo:cloud_cover with 20 is not one of the Query extension's"),
    ("query", {"eo:cloud_cover": 20}, r"query: eo:cloud_cover needs \{operator: value\}"),
])
def test_invalid_filter_or_query_fails_at_load(tmp_path, field, value, expected):
    """Before any request (the url is not even reachable), with the catalog's line."""
    from geoseg.batch.catalog import load_catalog
    from geoseg.errors import CatalogError

    cat = _catalog(tmp_path / "bad.yaml", url="http://127.0.0.1:9/api", **{field: value})
    with pytest.raises(CatalogError, match=expected) as exc:
        load_catalog(cat)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{cat}:") and f"scenes[0].stac_search.{field}" in msg, msg
