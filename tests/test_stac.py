"""STAC Items of a scene's outputs (projection, classification, raster, file extensions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyproj import Transformer

import geoseg
from geoseg.io.raster import file_sha256
from geoseg.io.stac import asset_path, footprint_wgs84, read_items, write_catalog
from stac_schemas import stac_validator


def test_run_scene_stages_a_stac_item_with_the_outputs(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene
    manifest = geoseg.run_scene(scene, tmp_path, model=str(small_unet), tile_size=128, quiet=True, stac=True,
                                stac_item={"id": "my-scene", "properties": {"datetime": "2024-05-01T00:00:00Z"}})
    path = tmp_path / "scene.stac.json"
    item = json.loads(path.read_text())
    assert manifest["outputs"]["stac.json"]["sha256"] == file_sha256(path)
    assert manifest["options"]["stac"] is True
    assert item["type"] == "Feature" and item["stac_version"] == "1.1.0" and item["id"] == "my-scene"
    assert any("projection" in e for e in item["stac_extensions"])
    assert any("classification" in e for e in item["stac_extensions"])
    props = item["properties"]
    assert props["datetime"] == "2024-05-01T00:00:00Z" and props["created"] == manifest["created"]
    assert props["proj:code"] == "EPSG:32633" and "proj:epsg" not in props and props["proj:shape"] == [300, 417]
    assert props["proj:transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 5500000.0]
    assert props["proj:bbox"] == [500000.0, 5497000.0, 504170.0, 5500000.0]
    # bbox and geometry in lon/lat contain the scene's corners
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    w, s, e, n = item["bbox"]
    for x, y in ((500000, 5500000), (504170, 5497000), (500000, 5497000), (504170, 5500000)):
        lon, lat = to_ll.transform(x, y)
        assert w - 1e-6 <= lon <= e + 1e-6 and s - 1e-6 <= lat <= n + 1e-6
    ring = item["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and item["geometry"]["type"] == "Polygon"
    assets = item["assets"]
    assert set(assets) == {"classes", "confidence", "mask", "vectors", "manifest",
                           "classes_legend", "classes_style", "mask_legend", "mask_style",
                           "thumbnail", "overview", "legend", "overview_bright"}
    for key, asset in assets.items():
        assert (tmp_path / asset["href"]).exists(), key
    classes = assets["classes"]["classification:classes"]
    assert [(c["value"], c["name"], c["color_hint"]) for c in classes[:3]] == [
        (0, "low", "1F78B4"), (1, "mid", "33A02C"), (2, "high", "E31A1C")]
    assert [c["count"] for c in classes[:3]] == [c["pixels"] for c in manifest["classes"]]
    assert sum(c["percentage"] for c in classes[:3]) == pytest.approx(100.0, abs=1e-3)
    assert classes[-1]["value"] == 255 and classes[-1]["nodata"] is True
    assert assets["classes"]["data_type"] == "uint8" and assets["classes"]["nodata"] == 255
    assert [b["name"] for b in assets["mask"]["raster:bands"]] == [b["name"] for b in assets["mask"]["bands"]] == ["bright"]
    assert assets["vectors"]["type"] == "application/geopackage+sqlite3"
    assert assets["classes"]["file:checksum"] == "1220" + file_sha256(tmp_path / "scene.classes.tif")
    assert assets["manifest"]["roles"] == ["metadata"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_footprint_of_a_geographic_grid() -> None:
    wkt = 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
    bbox, geometry = footprint_wgs84(wkt, [0.5, 0, 10.0, 0, -0.5, 50.0], 4, 2)
    assert bbox == [10.0, 49.0, 12.0, 50.0]
    assert geometry["coordinates"][0][0] == [10.0, 50.0]


def test_outputs_catalog_reads_back_as_a_stac_source(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    for name in ("a", "b"):
        geoseg.run_scene(scene, tmp_path / name, model="spectral", tile_size=256, quiet=True, stac=True,
                         vectorize=False, stac_item={"id": name})
    write_catalog(tmp_path / "catalog.json", [(n, tmp_path / n / "scene.stac.json") for n in ("a", "b")],
                  id="out", description="test", source="here")
    items = read_items(tmp_path / "catalog.json")
    assert [i["id"] for i, _, _ in items] == ["a", "b"]
    assert asset_path(items[1][0], items[1][1], "classes") == tmp_path / "b" / "scene.classes.tif"
    with pytest.raises(geoseg.InputError, match="assets classes, confidence, mask, classes_legend, classes_style, mask_legend, mask_style, thumbnail, overview, legend, overview_water, manifest: name the image"):
        asset_path(items[0][0], items[0][1])
    assert Path(asset_path(items[0][0], items[0][1], "manifest")).exists()


def test_items_and_catalogs_validate_against_stac_1_1_schemas(tmp_path, synth_scene, small_unet) -> None:
    """Scene Items (also with probabilities and a CRS without an EPSG code) and the outputs
    Catalog validate offline against STAC 1.1.0 core and every extension they declare; pystac
    (a reader of both versions) reads the projection back from ``proj:code``."""
    import copy

    import jsonschema

    from geoseg.io.stac import scene_item

    validate = stac_validator()
    scene, _ = synth_scene
    manifest = geoseg.run_scene(scene, tmp_path / "a", model=str(small_unet), tile_size=256, quiet=True, stac=True,
                                vectorize=False, stac_item={"id": "a"})
    item = json.loads((tmp_path / "a" / "scene.stac.json").read_text())
    validate(item)
    assert "https://stac-extensions.github.io/projection/v2.0.0/schema.json" in item["stac_extensions"]
    # a CRS without an EPSG code: proj:code null and the WKT2; a probabilities asset
    local = copy.deepcopy(manifest)
    local["input"]["crs"] = ('PROJCS["local tm",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                             'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
                             'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15.1],PARAMETER["scale_factor",0.9996],'
                             'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]')
    local["outputs"]["probabilities.tif"] = dict(local["outputs"]["classes.tif"], path="scene.probabilities.tif")
    other = scene_item(local)
    validate(other)
    assert other["properties"]["proj:code"] is None and "Transverse_Mercator" in other["properties"]["proj:wkt2"]
    assert [b["name"] for b in other["assets"]["probabilities"]["raster:bands"]] == ["low", "mid", "high"]
    # the validator is not a rubber stamp: the projection v1.1 field is refused under v2.0
    broken = copy.deepcopy(item)
    broken["properties"]["proj:epsg"] = 32633
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    write_catalog(tmp_path / "catalog.json", [("a", tmp_path / "a" / "scene.stac.json")], id="out", description="t", source="x")
    catalog = json.loads((tmp_path / "catalog.json").read_text())
    assert catalog["stac_version"] == "1.1.0"
    validate(catalog)
    pystac = pytest.importorskip("pystac")
    from pystac.extensions.projection import ProjectionExtension

    read_back = pystac.Item.from_file(str(tmp_path / "a" / "scene.stac.json"))
    assert ProjectionExtension.ext(read_back).epsg == 32633
    assert read_back.assets["classes"].media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
