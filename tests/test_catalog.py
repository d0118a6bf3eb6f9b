"""The batch catalog: schema errors with file:line, path/glob/STAC sources, templates, overrides."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import write_raster

from geoseg.batch.catalog import load_catalog, resolve
from geoseg.errors import CatalogError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def tiny(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return write_raster(path, rng.integers(1, 3000, (4, 8, 8), dtype=np.uint16))


def error_of(path: Path) -> str:
    with pytest.raises(CatalogError) as info:
        resolve(load_catalog(path))
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("""
         defaults:
           tile_size: 512
         scenes:
           - path: a.tif
           - path: b.tif
             tile_size: -5
         """, "catalog.yaml:6: scenes[1].tile_size: Input should be greater than 0 (got -5)"),
        ("""
         defaults:
           tile-size: 512
         scenes:
           - path: a.tif
         """, "catalog.yaml:2: defaults.tile-size: unknown field: did you mean 'tile_size'?"),
        ("""
         scenes:
           - path: a.tif
           - id: b
             model: default
         """, "catalog.yaml:3: scenes[1]: give exactly one of path, glob or stac"),
        ("""
         scenes:
           - glob: "*.tif"
             id: x
         """, "catalog.yaml:2: scenes[0]: id names a single scene"),
        ("""
         scenes:
           - path: a.tif
             connectivity: 6
         """, "catalog.yaml:3: scenes[0].connectivity: Input should be 4 or 8"),
        ("""
         scenes:
           - path: a.tif
             device: gpu
         """, "catalog.yaml:3: scenes[0].device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
        ("""
         defaults:
           out: out/{name}
         scenes:
           - path: a.tif
         """, "catalog.yaml:2: defaults.out: 'out/{name}' is not a valid template"),
        ("""
         scenes:
           - path: a.tif
             bands: [3, 2, 0]
         """, "catalog.yaml:3: scenes[0].bands[2]: Input should be greater than 0 (got 0)"),
        ("""
         scenes:
           - path: a.tif
             path: b.tif
         """, "catalog.yaml:3: scenes[0].path: duplicate key (also on line 2)"),
        ("""
         scenes:
           - path: [a.tif
         """, "catalog.yaml:3: not valid YAML"),
        ("""
         defaults:
           model: default
         """, "catalog.yaml:1: scenes: required field missing"),
        ("- a.tif\n", "catalog.yaml:1: a catalog is a mapping"),
    ],
)
def test_schema_errors_name_file_line_and_field(tmp_path, monkeypatch, text, expected) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "catalog.yaml", text)
    with pytest.raises(CatalogError) as info:
        load_catalog("catalog.yaml")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_all_errors_in_one_line(tmp_path) -> None:
    cat = write(tmp_path / "c.yaml", """
        scenes:
          - path: a.tif
            tile_size: 0
          - path: b.tif
            simplify: -1
        """)
    with pytest.raises(CatalogError) as info:
        load_catalog(cat)
    assert f"{cat}:3: scenes[0].tile_size" in str(info.value) and f"{cat}:5: scenes[1].simplify" in str(info.value)


def test_path_and_glob_sources_with_defaults_and_overrides(tmp_path) -> None:
    for name in ("b", "a", "c"):
        tiny(tmp_path / "data" / "tiles" / f"{name}.tif")
    tiny(tmp_path / "data" / "one.tif")
    (tmp_path / "data" / "tiles" / "notes.txt").write_text("not a scene")
    bundle = tmp_path / "models" / "m.safetensors"
    bundle.parent.mkdir()
    bundle.write_bytes(b"x")
    (tmp_path / "cfg").mkdir()
    cat = write(tmp_path / "cfg" / "catalog.yaml", """
        defaults:
          model: ../models/m.safetensors
          tile_size: 512
          out: ../out/{id}
          min_area: 100
          resources: {GPU: 1}
        scenes:
          - path: ../data/one.tif
            id: first
            model: spectral
            bands: [3, 2, 1, 4]
          - glob: ../data/tiles/*.tif
            tile_size: 256
            out: ../out/tiles/{stem}
            vectorize: false
        """)
    jobs = resolve(load_catalog(cat))
    assert [j.id for j in jobs] == ["first", "a", "b", "c"]  # glob matches sorted, ids from stems
    first, a = jobs[0], jobs[1]
    assert first.path == (tmp_path / "data" / "one.tif").resolve()
    assert first.out_dir == (tmp_path / "out" / "first").resolve()
    assert first.model == "spectral"
    assert first.options == {"tile_size": 512, "batch_size": None, "bands": (3, 2, 1, 4), "device": "auto",
                             "vectorize": True, "min_area": 100.0, "simplify": 0.0, "connectivity": 4}
    assert first.resources == {"GPU": 1.0}
    assert a.model == str(bundle.resolve())  # relative to the catalog file
    assert a.out_dir == (tmp_path / "out" / "tiles" / "a").resolve()
    assert a.options["tile_size"] == 256 and a.options["vectorize"] is False and a.options["min_area"] == 100.0
    assert jobs[0].line == 8 and jobs[1].line == 12


def test_resolution_errors_have_lines(tmp_path) -> None:
    tiny(tmp_path / "x" / "a.tif")
    tiny(tmp_path / "y" / "a.tif")
    cat = write(tmp_path / "c.yaml", """
        setup: geoseg synth nothing.tif --size 64
        scenes:
          - path: x/a.tif
          - glob: nothing/*.tif
        """)
    msg = error_of(cat)
    assert msg.startswith(f"{cat}:4: scenes[1].glob: 'nothing/*.tif' matches no file")
    assert msg.endswith("(make the scenes first: geoseg synth nothing.tif --size 64)")
    write(cat, """
        scenes:
          - path: x/a.tif
          - path: y/a.tif
        """)
    assert error_of(cat).startswith(f"{cat}:3: scenes[1].path: scene id 'a' is already used on line 2")
    write(cat, """
        defaults:
          out: out
        scenes:
          - path: x/a.tif
            id: one
          - path: y/a.tif
            id: two
        """)
    msg = error_of(cat)
    assert msg.startswith(f"{cat}:2: defaults.out: scenes 'one' and 'two' would both write") and "{id}" in msg


def item(item_id: str, href: str, **assets) -> dict:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": None, "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [],
        "assets": {"visual": {"href": href, "roles": ["data"]}, "thumbnail": {"href": "t.png", "roles": ["thumbnail"]},
                   **assets},
    }


def test_stac_item_collection_item_and_catalog_sources(tmp_path) -> None:
    for n in ("s1", "s2", "s3", "s4"):
        tiny(tmp_path / "img" / f"{n}.tif")
    stac = tmp_path / "stac"
    (stac / "items").mkdir(parents=True)
    (stac / "collection.json").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [item("scene-1", "../img/s1.tif"), item("scene-2", "../img/s2.tif")]}))
    (stac / "items" / "scene-3.json").write_text(json.dumps(item("scene-3", "../../img/s3.tif")))
    (stac / "items" / "scene-4.json").write_text(json.dumps(item("scene-4", f"file://{tmp_path}/img/s4.tif")))
    (stac / "child.json").write_text(json.dumps(
        {"type": "Catalog", "id": "child", "links": [{"rel": "item", "href": "./items/scene-4.json"}]}))
    (stac / "catalog.json").write_text(json.dumps(
        {"type": "Catalog", "id": "root", "links": [{"rel": "root", "href": "./catalog.json"},
                                                    {"rel": "item", "href": "./items/scene-3.json"},
                                                    {"rel": "child", "href": "./child.json"}]}))
    cat = write(tmp_path / "catalog.yaml", """
        defaults:
          model: spectral
        scenes:
          - stac: stac/collection.json
            asset: visual
          - stac: stac/catalog.json
          - stac: stac/items/scene-3.json
            out: single/{id}
        """)
    with pytest.raises(CatalogError, match="scene id 'scene-3' is already used on line 6"):
        resolve(load_catalog(cat))
    write(cat, """
        defaults:
          model: spectral
        scenes:
          - stac: stac/collection.json
            asset: visual
          - stac: stac/catalog.json
        """)
    jobs = resolve(load_catalog(cat))
    assert [j.id for j in jobs] == ["scene-1", "scene-2", "scene-3", "scene-4"]
    assert [j.path.name for j in jobs] == ["s1.tif", "s2.tif", "s3.tif", "s4.tif"]
    assert jobs[0].source_item["item"] is False and jobs[2].source_item["item"] is True
    assert jobs[2].source_item["properties"] == {"datetime": "2024-06-01T10:00:00Z"}
    # the asset key is configurable, and a wrong one is a catalog error with a line
    write(cat, """
        scenes:
          - stac: stac/collection.json
            asset: red
        """)
    msg = error_of(cat)
    assert msg.startswith(f"{cat}:2: scenes[0].stac: item 'scene-1'") and "has no asset 'red' (assets: visual, thumbnail)" in msg
    (stac / "bad.json").write_text(json.dumps({"type": "Catalog", "links": [{"rel": "item", "href": "https://x/y.json"}]}))
    write(cat, "scenes:\n  - stac: stac/bad.json\n")
    assert "is not a local file" in error_of(cat)


def test_the_repository_example_catalog_is_valid(tmp_path) -> None:
    catalog = load_catalog(ROOT / "catalog.yaml")
    assert "geoseg synth" in catalog.spec.setup
    example = tmp_path / "catalog.yaml"
    example.write_text((ROOT / "catalog.yaml").read_text())
    with pytest.raises(CatalogError, match="geoseg synth examples/scene_a.tif"):
        resolve(load_catalog(example))
    for name in ("scene_a", "tiles/tile_1", "tiles/tile_2"):  # what the setup commands write
        tiny(tmp_path / "examples" / f"{name}.tif")
    jobs = resolve(load_catalog(example))
    assert [(j.id, j.out_dir.relative_to(tmp_path).as_posix()) for j in jobs] == [
        ("scene-a", "outputs/scene-a"), ("tile_1", "outputs/tile_1"), ("tile_2", "outputs/tile_2")]
