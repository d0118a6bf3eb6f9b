"""The scene pipeline end to end through the Python API: seams, georeferencing, nodata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import UTM33_PIXEL_M2, read, write_raster
from pyproj import CRS

import geoseg

PRODUCTS = ("classes.tif", "confidence.tif", "mask.tif")


def run(scene: Path, out: Path, model, **kw) -> dict:
    return geoseg.run_scene(scene, out, model=str(model), quiet=True, **kw)


@pytest.mark.parametrize("tile_size", [64, 96])
def test_tiled_equals_whole_image_inference(tmp_path, synth_scene, small_unet, tile_size) -> None:
    scene, _ = synth_scene
    whole = run(scene, tmp_path / "whole", small_unet, tile_size=2048, vectorize=False)
    tiled = run(scene, tmp_path / "tiled", small_unet, tile_size=tile_size, vectorize=False)
    assert whole["execution"]["tiles"] == 1 and tiled["execution"]["tiles"] > 12
    for product in ("classes.tif", "mask.tif"):
        a, b = read(tmp_path / "whole" / f"scene.{product}"), read(tmp_path / "tiled" / f"scene.{product}")
        assert (a == b).mean() >= 0.9999, product
    ca, cb = read(tmp_path / "whole" / "scene.confidence.tif"), read(tmp_path / "tiled" / "scene.confidence.tif")
    assert np.abs(ca.astype(int) - cb.astype(int)).max() <= 1


def test_tiled_matches_the_module_on_the_whole_image(tmp_path, synth_scene, small_unet) -> None:
    """The stitched class map equals running bundle.module on the full (padded) image."""
    import torch

    scene, _ = synth_scene
    run(scene, tmp_path, small_unet, tile_size=64, vectorize=False)
    bundle = geoseg.load_model(str(small_unet))
    data = read(scene).astype(np.float32)
    x = bundle.normalize(data[None])
    f = bundle.downsampling
    h, w = data.shape[1:]
    x = np.pad(x, ((0, 0), (0, 0), (0, -h % f), (0, -w % f)))
    with torch.no_grad():
        logits, _ = bundle.module.eval()(torch.from_numpy(x))
    expected = logits[0, :, :h, :w].argmax(0).numpy()
    assert (read(tmp_path / "scene.classes.tif")[0] == expected).mean() >= 0.9999


def test_outputs_have_the_exact_georeferencing(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene
    manifest = run(scene, tmp_path, small_unet, tile_size=128)
    with rasterio.open(scene) as src:
        ref = (src.crs, src.transform, src.width, src.height)
    for product in PRODUCTS:
        with rasterio.open(tmp_path / f"scene.{product}") as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == ref, product
            assert ds.dtypes[0] == "uint8" and ds.nodata == 255
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(tmp_path / "scene.classes.tif") as ds:
        assert ds.overviews(1) == [] or ds.overviews(1)[0] == 2
        assert json.loads(ds.tags()["CLASS_NAMES"]) == ["low", "mid", "high"]
        assert ds.colormap(1)[2][:3] == (0xE3, 0x1A, 0x1C)
    info = pyogrio.read_info(tmp_path / "scene.gpkg", layer="classes")
    assert CRS.from_user_input(info["crs"]) == CRS.from_user_input(ref[0])
    # the polygons tile the valid area exactly
    meta, _, geoms, fields = pyogrio.raw.read(tmp_path / "scene.gpkg", layer="classes")
    assert list(meta["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m", "confidence"]
    areas, confidence = fields[2], fields[4]
    assert areas.sum() == pytest.approx(300 * 417 * UTM33_PIXEL_M2, rel=1e-6)  # ground areas
    union = shapely.union_all(shapely.from_wkb(geoms))
    assert union.area == pytest.approx(300 * 417 * 100.0, rel=1e-9)
    assert union.bounds == pytest.approx(tuple(rasterio.open(scene).bounds))
    # polygon confidence is the mean of the confidence raster under it: weighted by pixel
    # counts, the means add up to the raster's total
    conf = read(tmp_path / "scene.confidence.tif")[0].astype(np.float64)
    assert (confidence * areas / UTM33_PIXEL_M2).sum() == pytest.approx(conf.sum(), rel=1e-4)
    assert ((confidence >= 0) & (confidence <= 100)).all()
    names = {m["path"] for m in manifest["outputs"].values()}
    assert names == {"scene.classes.tif", "scene.confidence.tif", "scene.mask.tif", "scene.gpkg",
                     "scene.classes.tif.aux.xml", "scene.classes.qml", "scene.mask.tif.aux.xml", "scene.mask.qml",
                     "scene.classes.png", "scene.thumb.png", "scene.legend.png", "scene.mask-bright.png"}  # quicklooks


def test_nodata_is_propagated_and_never_polygonized(tmp_path, nodata_scene, small_unet) -> None:
    manifest = run(nodata_scene, tmp_path, small_unet, tile_size=64)
    data = read(nodata_scene)
    invalid = (data == 0).all(axis=0)
    assert 0.02 < invalid.mean() < 0.6
    for product in PRODUCTS:
        out = read(tmp_path / f"border.{product}")
        assert ((out == 255).all(axis=0) == invalid).all(), product
    _, _, _, fields = pyogrio.raw.read(tmp_path / "border.gpkg", layer="classes")
    assert fields[2].sum() == pytest.approx((~invalid).sum() * UTM33_PIXEL_M2, rel=1e-6)
    assert manifest["nodata_pixels"] == int(invalid.sum())


def test_tiles_without_valid_pixels_skip_the_model(tmp_path, small_unet) -> None:
    data = np.full((4, 200, 200), 0, dtype=np.uint16)
    data[:, 150:, 150:] = 900
    scene = write_raster(tmp_path / "corner.tif", data, nodata=0)
    manifest = run(scene, tmp_path / "out", small_unet, tile_size=64)
    assert manifest["execution"]["tiles"] == 16
    assert manifest["execution"]["tiles_skipped_nodata"] == 16 - 4


def test_all_nodata_scene_succeeds_with_empty_outputs(tmp_path, small_unet) -> None:
    scene = write_raster(tmp_path / "empty.tif", np.zeros((4, 70, 90), np.uint16), nodata=0)
    manifest = run(scene, tmp_path / "out", small_unet, tile_size=64)
    for product in PRODUCTS:
        assert (read(tmp_path / "out" / f"empty.{product}") == 255).all()
    assert pyogrio.read_info(tmp_path / "out" / "empty.gpkg", layer="classes")["features"] == 0
    assert manifest["execution"]["tiles_skipped_nodata"] == manifest["execution"]["tiles"]


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 300)])
def test_tiny_and_sub_tile_scenes(tmp_path, small_unet, shape) -> None:
    rng = np.random.default_rng(0)
    scene = write_raster(tmp_path / "tiny.tif", rng.integers(1, 3000, (4, *shape), dtype=np.uint16))
    run(scene, tmp_path / "out", small_unet, tile_size=64)
    out = read(tmp_path / "out" / "tiny.classes.tif")
    assert out.shape == (1, *shape) and (out < 3).all()
    _, _, _, fields = pyogrio.raw.read(tmp_path / "out" / "tiny.gpkg", layer="classes")
    assert fields[2].sum() == pytest.approx(shape[0] * shape[1] * UTM33_PIXEL_M2, rel=1e-6)


def test_geographic_crs_areas_are_geodesic(tmp_path) -> None:
    """A 0.01 x 0.01 degree scene at 60N: polygon areas sum to the geodesic area of the box."""
    from pyproj import Geod

    n = 100
    data = np.zeros((4, n, n), np.uint16)
    data[1], data[2], data[3] = 800, 300, 4000  # vegetation everywhere ...
    data[1, :, :40], data[3, :, :40] = 900, 100  # ... but water in the west
    scene = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=Affine(1e-4, 0, 10.0, 0, -1e-4, 60.01))
    manifest = run(scene, tmp_path / "out", "spectral", tile_size=64)
    lons, lats = [10.0, 10.01, 10.01, 10.0], [60.01, 60.01, 60.0, 60.0]
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])
    _, _, _, fields = pyogrio.raw.read(tmp_path / "out" / "geo.gpkg", layer="classes")
    assert fields[2].sum() == pytest.approx(expected, rel=1e-6)
    areas = {c["name"]: c["area_m2"] for c in manifest["classes"]}
    assert areas["water"] == pytest.approx(expected * 0.4, rel=1e-3)  # meridians converge: west ~ east
    assert expected == pytest.approx(1e-2 * 111_400 * 1e-2 * 55_800, rel=0.02)  # ~0.62 km2, not 1e-4 deg2


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_input_dtypes(tmp_path, synth_scene, dtype) -> None:
    """The same values in any dtype give the same class map (spectral model is scale-free)."""
    scene, _ = synth_scene
    data = read(scene)[:, :128, :160]
    scaled = (data // 40).astype(dtype)  # fits uint8
    path = write_raster(tmp_path / f"s_{dtype}.tif", scaled)
    run(path, tmp_path / "out", "spectral", tile_size=64)
    base = write_raster(tmp_path / "ref.tif", (data // 40).astype("float32"))
    run(base, tmp_path / "ref", "spectral", tile_size=256)
    assert (read(tmp_path / "out" / f"s_{dtype}.classes.tif") == read(tmp_path / "ref" / "ref.classes.tif")).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_output_is_identical_to_threads(tmp_path, synth_scene, small_unet, workers) -> None:
    # one core per forward everywhere (pipeline.CPU_TORCH_THREADS): bytes identical, confidence included
    scene, _ = synth_scene
    run(scene, tmp_path / "threads", small_unet, tile_size=128, vectorize=False)
    manifest = run(scene, tmp_path / "cluster", small_unet, tile_size=128, workers=workers, vectorize=False)
    assert manifest["execution"]["scheduler"] == "LocalCluster"
    for product in PRODUCTS:
        a, b = read(tmp_path / "threads" / f"scene.{product}"), read(tmp_path / "cluster" / f"scene.{product}")
        assert (a == b).all(), product


def test_band_selection_by_index_and_by_name(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    data = read(scene)
    # bands stored as nir, red, green, blue without descriptions: --bands puts them back in order
    rev = write_raster(tmp_path / "rev.tif", data[::-1].copy())
    run(rev, tmp_path / "rev", "spectral", bands=(4, 3, 2, 1), tile_size=128)
    # the same, with band descriptions: matched by name without --bands
    named = write_raster(tmp_path / "named.tif", data[::-1].copy(), descriptions=("nir", "red", "green", "blue"))
    manifest = run(named, tmp_path / "named", "spectral", tile_size=128)
    assert manifest["input"]["bands_used"] == [4, 3, 2, 1]
    run(scene, tmp_path / "ref", "spectral", tile_size=128)
    ref = read(tmp_path / "ref" / "scene.classes.tif")
    assert (read(tmp_path / "rev" / "rev.classes.tif") == ref).all()
    assert (read(tmp_path / "named" / "named.classes.tif") == ref).all()


def test_manifest_records_the_run(tmp_path, synth_scene, small_unet) -> None:
    scene, _ = synth_scene
    manifest = run(scene, tmp_path, small_unet, tile_size=128)
    on_disk = json.loads((tmp_path / "scene.run.json").read_text())
    assert on_disk == manifest
    assert manifest["input"]["sha256"] == geoseg.io.file_sha256(scene)
    assert manifest["model"]["sha256"] == geoseg.io.file_sha256(small_unet)
    assert manifest["parameters"]["tile_size"] == 128 and manifest["parameters"]["halo"] == 56
    for kind, out in manifest["outputs"].items():
        assert geoseg.io.file_sha256(tmp_path / out["path"]) == out["sha256"], kind
    assert {"validate", "inference", "write_cogs", "vectorize", "total"} <= set(manifest["timings_s"])
    assert {"torch", "rasterio", "gdal", "dask"} <= set(manifest["versions"])
    assert sum(c["pixels"] for c in manifest["classes"]) == 300 * 417


def test_existing_outputs_need_overwrite(tmp_path, synth_scene) -> None:
    scene, _ = synth_scene
    run(scene, tmp_path, "spectral")
    before = (tmp_path / "scene.classes.tif").stat().st_mtime_ns
    with pytest.raises(geoseg.OutputError, match="--overwrite"):
        run(scene, tmp_path, "spectral")
    assert (tmp_path / "scene.classes.tif").stat().st_mtime_ns == before
    run(scene, tmp_path, "spectral", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_geopackage_is_gis_ready(tmp_path, synth_scene, small_unet) -> None:
    """Spatial index, layers per product, and a parseable default QGIS style per layer
    whose colours are the class raster's colour table."""
    import sqlite3
    import xml.etree.ElementTree as ET

    scene, _ = synth_scene
    run(scene, tmp_path, small_unet, tile_size=128)
    gpkg = tmp_path / "scene.gpkg"
    layers = dict(pyogrio.list_layers(gpkg))
    assert layers["classes"] == "Polygon" and layers["bright"] == "Polygon"
    con = sqlite3.connect(gpkg)
    ext = {r[0] for r in con.execute("SELECT table_name FROM gpkg_extensions WHERE extension_name = 'gpkg_rtree_index'")}
    assert {"classes", "bright"} <= ext
    rows = con.execute("SELECT f_table_name, styleQML, styleSLD, useAsDefault FROM layer_styles").fetchall()
    assert {r[0] for r in rows} == {"classes", "bright"} and all(r[3] == 1 for r in rows)
    qml = ET.fromstring(next(r[1] for r in rows if r[0] == "classes").split("'SYSTEM'>", 1)[1])
    renderer = qml.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    labels = [c.get("label") for c in renderer.iter("category")]
    assert labels == ["low", "mid", "high"]
    colors = [o.get("value") for o in renderer.iter("Option") if o.get("name") == "color"]
    with rasterio.open(tmp_path / "scene.classes.tif") as ds:
        cmap = ds.colormap(1)
    assert colors == [f"{cmap[i][0]},{cmap[i][1]},{cmap[i][2]},255" for i in range(3)]
    ET.fromstring(next(r[2] for r in rows if r[0] == "classes"))  # the SLD parses too


def test_existing_scheduler_address(tmp_path, synth_scene) -> None:
    """--scheduler ADDRESS: tasks run on a cluster started elsewhere; the model is loaded
    once per worker process (the predictor cache), never shipped inside tasks."""
    from distributed import Client, LocalCluster

    import geoseg.scene.predict

    scene, _ = synth_scene
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        manifest = run(scene, tmp_path / "remote", "spectral", tile_size=64, scheduler=cluster.scheduler_address)
        with Client(cluster) as client:
            cached = client.run(lambda: len(geoseg.scene.predict._CACHE))
    assert manifest["execution"]["scheduler"] == cluster.scheduler_address
    assert list(cached.values()) == [1]
    run(scene, tmp_path / "local", "spectral", tile_size=64)
    for product in PRODUCTS:
        assert (read(tmp_path / "remote" / f"scene.{product}") == read(tmp_path / "local" / f"scene.{product}")).all()


def test_products_flush_written_blocks(tmp_path, monkeypatch) -> None:
    """A product keeps at most FLUSH_BYTES of written blocks in GDAL's cache: beyond that they
    are in the stripes file. Writes from other threads than the one that opened it (rasterio
    binds the dataset to it) land too, unflushed, and the opening thread closes it."""
    from concurrent.futures import ThreadPoolExecutor

    import geoseg.io.cog as cog
    from geoseg.io.store import OutputStore
    from geoseg.grid import GeoBox, PixelWindow

    monkeypatch.setattr(cog, "FLUSH_BYTES", 512 * 512)  # every block written below
    box = GeoBox(1024, 1024, Affine(10, 0, 500000, 0, -10, 5500000), "EPSG:32633")
    outputs = OutputStore(tmp_path)
    product = cog.RasterProduct(tmp_path / "c.classes.tif", box, outputs)
    windows = [PixelWindow(r, c, 512, 512) for r in (0, 512) for c in (0, 512)]
    for k in range(3):
        product.write(windows[k], np.full((512, 512), k + 1, np.uint8))
    with rasterio.open(product.tmp) as on_disk:  # still open for writing: the blocks are in the file
        got = on_disk.read(1)
    for k in range(3):
        w = windows[k]
        assert (got[w.row:w.row_end, w.col:w.col_end] == k + 1).all(), k
    with ThreadPoolExecutor(1) as pool:
        pool.submit(product.write, windows[3], np.full((512, 512), 4, np.uint8)).result()
    product.finish()
    product.discard_stripes()
    outputs.commit()
    want = np.zeros((1024, 1024), np.uint8)
    for k, w in enumerate(windows):
        want[w.row:w.row_end, w.col:w.col_end] = k + 1
    assert np.array_equal(read(tmp_path / "c.classes.tif")[0], want)


def test_overviews_keep_class_ids_and_average_confidence(tmp_path) -> None:
    """The class map's overviews hold only class ids (mode); the confidence map's are
    means (average): a 1-px checkerboard of classes 1/3 and of confidence 0/100."""
    from geoseg.io.store import OutputStore
    from geoseg.grid import GeoBox
    from geoseg.io.cog import RasterProduct

    n = 1024  # larger than a COG block: the COG gets overviews
    box = GeoBox(n, n, Affine(10, 0, 500000, 0, -10, 5500000), "EPSG:32633")
    checker = (np.add.outer(np.arange(n), np.arange(n)) % 2).astype(np.uint8)
    outputs = OutputStore(tmp_path)
    classes = RasterProduct(tmp_path / "c.classes.tif", box, outputs)
    confidence = RasterProduct(tmp_path / "c.confidence.tif", box, outputs, overview_resampling="AVERAGE")
    classes.write(box.window, 1 + 2 * checker)
    confidence.write(box.window, 100 * checker)
    for product in (classes, confidence):
        product.finish()
        product.discard_stripes()
    outputs.commit()
    with rasterio.open(tmp_path / "c.classes.tif") as ds:
        assert ds.overviews(1)[0] == 2
        assert set(np.unique(ds.read(1, out_shape=(n // 2, n // 2)))) <= {1, 3}
    with rasterio.open(tmp_path / "c.confidence.tif") as ds:
        assert ds.overviews(1)[0] == 2
        assert (ds.read(1, out_shape=(n // 2, n // 2)) == 50).all()
