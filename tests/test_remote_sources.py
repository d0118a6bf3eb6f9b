"""Remote and STAC-Item scene sources against real servers on loopback.

A 4-band synthetic scene is split into four single-band COGs plus a STAC Item (relative
hrefs, eo:bands common names); served by an HTTP server honouring range requests and by
moto's S3 server. Running the Item (or a raster URL) must give byte-identical class,
confidence and mask COGs to running the stacked local file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from remote_servers import RangeServer, S3Server

BANDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
PRODUCTS = ("classes.tif", "confidence.tif")


def _cog(path: Path, data: np.ndarray, profile: dict, **tags) -> Path:
    prof = {"driver": "COG", "width": data.shape[-1], "height": data.shape[-2], "count": 1, "dtype": data.dtype.name,
            "crs": profile["crs"], "transform": profile["transform"], "compress": "deflate", "blocksize": 128}
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data, 1)
    return path


def make_item(d: Path, scene: Path, *, offset: float | None = None, item_id: str = "scene-1") -> Path:
    """Split ``scene`` into per-band COGs next to an Item with relative hrefs."""
    with rasterio.open(scene) as src:
        data, profile = src.read(), src.profile
        bounds = list(src.bounds)
    assets = {}
    for i, (common, key) in enumerate(BANDS.items()):
        band = data[i]
        if offset is not None:  # stored = true - offset (Sentinel-2 baseline 04.00 style)
            band = (band.astype(np.int32) - int(offset)).astype(np.uint16)
        _cog(d / f"{key}.tif", band, profile)
        asset = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "roles": ["data"], "eo:bands": [{"name": key, "common_name": common}]}
        if offset is not None:
            asset["raster:bands"] = [{"data_type": "uint16", "scale": 1.0, "offset": offset}]
        assets[key] = asset
    assets["thumbnail"] = {"href": "./thumb.png", "type": "image/png", "roles": ["thumbnail"]}
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "geometry": None, "properties": {"datetime": "2026-06-01T10:00:00Z"},
        "links": [], "assets": assets, "bbox": bounds,
    }
    path = d / "item.json"
    path.write_text(json.dumps(item))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("scene")
    return Path(synthesize(d / "scene.tif", (200, 264), seed=3, block=128).path)


@pytest.fixture(scope="module")
def served(tmp_path_factory, scene):
    d = tmp_path_factory.mktemp("served")
    make_item(d, scene)
    (d / "scene.tif").write_bytes(scene.read_bytes())
    with RangeServer(d) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scene) -> Path:
    """The outputs of running the stacked local file."""
    from geoseg import run_scene

    out = tmp_path_factory.mktemp("ref")
    run_scene(scene, out, quiet=True, vectorize=False, threads=2)
    return out


def same_products(ref: Path, out: Path, ref_stem: str, stem: str) -> None:
    for kind in PRODUCTS:
        a, b = ref / f"{ref_stem}.{kind}", out / f"{stem}.{kind}"
        assert b.exists(), f"{b} missing"
        assert a.read_bytes() == b.read_bytes(), f"{kind} differs"


def test_item_over_http_matches_local(served, reference, tmp_path):
    from geoseg import run_scene

    served.reset()
    m = run_scene(f"{served.url}/item.json", tmp_path, quiet=True, vectorize=False, threads=2)
    same_products(reference, tmp_path, "scene", "scene-1")
    assert m["input"]["kind"] == "stac-item"
    assert m["input"]["assets"] == ["B02", "B03", "B04", "B08"]
    fp = m["input"]["fingerprint"]
    assert fp["kind"] == "stac-item" and set(fp["assets"]) == set(BANDS.values())
    assert all("etag" in a and a["size"].isdigit() for a in fp["assets"].values())
    # range requests only: every GET of a COG names a byte range
    cog_gets = [r for r in served.gets(".tif")]
    assert cog_gets and all(r[2] and r[2].startswith("bytes=") for r in cog_gets)
    assert not any(r[1].endswith("thumb.png") for r in served.requests)
    with rasterio.open(tmp_path / "scene-1.classes.tif") as a, rasterio.open(reference / "scene.classes.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform


def test_item_url_without_suffix(served, reference, tmp_path):
    """An API's Item URL (``.../items/ID``, no .json): recognised by its JSON content type."""
    from geoseg import run_scene

    served.reset()
    (served.root / "scene-1-item").write_bytes((served.root / "item.json").read_bytes())
    run_scene(f"{served.url}/scene-1-item", tmp_path, quiet=True, vectorize=False, threads=2)
    same_products(reference, tmp_path, "scene", "scene-1")


def test_url_raster_matches_local(served, reference, tmp_path):
    from geoseg import run_scene

    served.reset()
    m = run_scene(f"{served.url}/scene.tif", tmp_path, quiet=True, vectorize=False, threads=2)
    same_products(reference, tmp_path, "scene", "scene")
    assert m["input"]["path"] == f"{served.url}/scene.tif"
    assert m["input"]["fingerprint"]["kind"] == "http"
    assert all(r[2] for r in served.gets(".tif"))


def test_transient_failures_are_retried(served, reference, tmp_path):
    from geoseg import run_scene

    served.reset()
    served.fail_next = 3  # the first three requests answer 503
    run_scene(f"{served.url}/item.json", tmp_path, quiet=True, vectorize=False, threads=2)
    same_products(reference, tmp_path, "scene", "scene-1")
    assert sum(1 for r in served.requests) > 3


@pytest.mark.parametrize("status", [404, 403])
def test_permanent_failure_is_one_line_and_writes_nothing(served, tmp_path, status):
    from geoseg import run_scene
    from geoseg.errors import RasterReadError

    served.reset()
    served.status_for["/B04.tif"] = status
    with pytest.raises(RasterReadError) as exc:
        run_scene(f"{served.url}/item.json", tmp_path / "out", quiet=True, vectorize=False, threads=2)
    msg = str(exc.value)
    assert "\n" not in msg and f"HTTP {status}" in msg and f"{served.url}/B04.tif" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_band_lists_assets(served, tmp_path):
    from geoseg import run_scene
    from geoseg.errors import InputError

    with pytest.raises(InputError, match=r"no asset for model band\(s\) nir .*B02 \(blue\).*B03 \(green\)"):
        run_scene(f"{served.url}/item.json", tmp_path, quiet=True, vectorize=False,
                  assets={"nir": "nope"}) if False else run_scene(
            str(_drop_asset(served.root, "B08", tmp_path)), tmp_path / "o", quiet=True, vectorize=False)


def _drop_asset(root: Path, key: str, d: Path) -> Path:
    item = json.loads((root / "item.json").read_text())
    del item["assets"][key]
    for a in item["assets"].values():
        a["href"] = str(root / a["href"])
    p = d / "item.json"
    p.write_text(json.dumps(item))
    return p


def test_assets_override(served, reference, tmp_path):
    from geoseg import run_scene

    served.reset()
    item = json.loads((served.root / "item.json").read_text())
    for a in item["assets"].values():
        a.pop("eo:bands", None)
    (served.root / "nobands.json").write_text(json.dumps(item))
    run_scene(f"{served.url}/nobands.json", tmp_path, quiet=True, vectorize=False, threads=2,
              assets={"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"})
    same_products(reference, tmp_path, "scene", "scene-1")


def test_scale_offset_applied_and_recorded(tmp_path, scene, reference):
    """A Sentinel-2-like -1000 offset: the Item stores value+1000, raster:offset -1000."""
    from geoseg import run_scene

    d = tmp_path / "s2"
    d.mkdir()
    item = make_item(d, scene, offset=-1000.0)
    m = run_scene(item, tmp_path / "out", quiet=True, vectorize=False, threads=2)
    same_products(reference, tmp_path / "out", "scene", "scene-1")
    so = m["input"]["scale_offset"]
    assert so["applied"] is True and so["source"] == "raster:bands"
    assert so["bands"] == [{"scale": 1.0, "offset": -1000.0}] * 4


def test_s3_item_and_url_match_local(scene, reference, tmp_path):
    from geoseg import run_scene

    d = tmp_path / "s3src"
    d.mkdir()
    make_item(d, scene)
    files = {f"s2/{k}.tif": d / f"{k}.tif" for k in BANDS.values()} | {"s2/item.json": d / "item.json", "s2/scene.tif": scene}
    with S3Server() as s3:
        s3.upload("scenes", files)
        m = run_scene("s3://scenes/s2/item.json", tmp_path / "a", quiet=True, vectorize=False, threads=2)
        same_products(reference, tmp_path / "a", "scene", "scene-1")
        assert all("etag" in a for a in m["input"]["fingerprint"]["assets"].values())
        run_scene("s3://scenes/s2/scene.tif", tmp_path / "b", quiet=True, vectorize=False, threads=2)
        same_products(reference, tmp_path / "b", "scene", "scene")
        from geoseg.errors import RasterReadError

        with pytest.raises(RasterReadError, match=r"s3://scenes/s2/missing.tif \(HTTP 404"):
            run_scene("s3://scenes/s2/missing.tif", tmp_path / "c", quiet=True, vectorize=False)
        dumped = json.dumps(m)
        assert "geoseg-test-secret" not in dumped and "geoseg-test" not in dumped


def test_cli_run_item_url(served, reference, tmp_path):
    served.reset()
    env = {**os.environ}
    r = subprocess.run([sys.executable, "-m", "geoseg", "run", f"{served.url}/item.json", "-o", str(tmp_path),
                        "--no-vectorize", "-q"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    same_products(reference, tmp_path, "scene", "scene-1")
    served.status_for["/B03.tif"] = 404
    r = subprocess.run([sys.executable, "-m", "geoseg", "run", f"{served.url}/item.json", "-o", str(tmp_path / "x"),
                        "--no-vectorize", "-q"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "HTTP 404" in lines[0] and "/B03.tif" in lines[0], r.stderr


def test_scale_offset_out_of_model_range_is_a_clear_error(tmp_path, scene):
    """Reflectance-scaled assets (scale 1e-4, offset -0.1) for a model trained on 0..10000 DN."""
    from geoseg import run_scene
    from geoseg.errors import ContractError

    d = tmp_path / "refl"
    d.mkdir()
    item_path = make_item(d, scene)
    item = json.loads(item_path.read_text())
    for a in item["assets"].values():
        if "eo:bands" in a:
            a["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    item_path.write_text(json.dumps(item))
    with pytest.raises(ContractError, match=r"scale/offset applied .*--scale-offset ignore"):
        run_scene(item_path, tmp_path / "out", quiet=True, vectorize=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_geotiff_scale_offset_is_applied(tmp_path):
    """A GeoTIFF's own scale/offset reaches the model as scaled values, and is recorded."""
    from geoseg.grid import PixelWindow
    from geoseg.io.sources import open_source

    raw = (np.arange(4 * 32 * 40, dtype=np.uint16).reshape(4, 32, 40) % 5000)
    path = tmp_path / "scaled.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=32, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5500000, 10, 10)) as ds:
        ds.write(raw)
        ds.scales = (2.0,) * 4
        ds.offsets = (-1000.0,) * 4
    src = open_source(path).select(None, ("blue", "green", "red", "nir"))
    data, valid = src.read(PixelWindow(0, 0, 32, 40))
    assert np.array_equal(data, raw.astype(np.float32) * 2 - 1000) and valid.all()
    assert src.describe_scaling() == {"applied": True, "source": "geotiff", "bands": [{"scale": 2.0, "offset": -1000.0}] * 4}
    raw_src = open_source(path, scale_offset="ignore").select(None, ("blue", "green", "red", "nir"))
    assert np.array_equal(raw_src.read(PixelWindow(0, 0, 32, 40))[0], raw.astype(np.float32))


def test_bands_at_different_resolutions_on_the_finest_grid(tmp_path):
    """A 20 m nir asset is read on the 10 m grid of the other bands (nearest)."""
    from geoseg.grid import PixelWindow
    from geoseg.io.sources import open_source

    t10 = rasterio.transform.from_origin(500000, 5500000, 10, 10)
    t20 = rasterio.transform.from_origin(500000, 5500000, 20, 20)
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 9000, (3, 64, 80)).astype(np.uint16)
    coarse = rng.integers(0, 9000, (32, 40)).astype(np.uint16)
    assets = {}
    for i, key in enumerate(("B02", "B03", "B04")):
        _cog(tmp_path / f"{key}.tif", fine[i], {"crs": "EPSG:32633", "transform": t10})
        assets[key] = {"href": f"{key}.tif", "roles": ["data"], "eo:bands": [{"common_name": ("blue", "green", "red")[i]}]}
    _cog(tmp_path / "B8A.tif", coarse, {"crs": "EPSG:32633", "transform": t20})
    assets["B8A"] = {"href": "B8A.tif", "roles": ["data"], "eo:bands": [{"common_name": "nir"}]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "mixed", "geometry": None,
            "properties": {"datetime": "2026-06-01T00:00:00Z"}, "links": [], "assets": assets}
    (tmp_path / "mixed.json").write_text(json.dumps(item))
    src = open_source(tmp_path / "mixed.json").select(None, ("blue", "green", "red", "nir"))
    assert (src.height, src.width) == (64, 80) and src.geobox.transform == t10
    data, _ = src.read(PixelWindow(0, 0, 64, 80))
    assert np.array_equal(data[:3], fine.astype(np.float32))
    assert np.array_equal(data[3], np.repeat(np.repeat(coarse, 2, 0), 2, 1).astype(np.float32))
    coarse_grid = open_source(tmp_path / "mixed.json", grid_asset="B8A").select(None, ("blue", "green", "red", "nir"))
    assert (coarse_grid.height, coarse_grid.width) == (32, 40)


def test_url_credentials_never_recorded(served, tmp_path):
    from geoseg import run_scene

    served.reset()
    url = f"{served.url}/scene.tif?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=deadbeefsig&v=1"
    m = run_scene(url, tmp_path, quiet=True, vectorize=False, threads=2)
    dumped = json.dumps(m) + (tmp_path / "scene.run.json").read_text()
    assert "AKIDSECRET" not in dumped and "deadbeefsig" not in dumped
    assert m["input"]["path"].endswith("X-Amz-Signature=REDACTED&v=1")


def test_pystac_item_is_a_source(served):
    """A ``pystac.Item`` (e.g. from pystac-client) is accepted; relative hrefs resolve against its self link."""
    pystac = pytest.importorskip("pystac")
    from geoseg.grid import PixelWindow
    from geoseg.io.sources import open_source

    item = pystac.Item.from_file(str(served.root / "item.json"))
    src = open_source(item).select(None, ("blue", "green", "red", "nir"))
    with rasterio.open(served.root / "scene.tif") as ds:
        want = ds.read(window=((0, 16), (0, 24))).astype(np.float32)
    assert np.array_equal(src.read(PixelWindow(0, 0, 16, 24))[0], want)
    assert src.output_stem == "scene-1"


def _fetched(requests: list, name: str) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of the GETs of ``name``."""
    out = []
    for method, path, rng in requests:
        if method == "GET" and path.endswith(name) and rng:
            a, _, b = rng[len("bytes="):].partition("-")
            out.append((int(a), int(b) + 1))
    return out


def test_aoi_over_http_fetches_each_block_once(tmp_path):
    """A bbox over 5% of a 2048^2 scene (64-px blocks) read over HTTP by two threads in 16
    tiles: the server sends under 10% of the file, no byte of pixel data twice (every thread
    reads through one handle, whose block cache holds the blocks neighbouring tiles' halos
    share), little beyond the blocks the tiles' windows touch (the header, /vsicurl/'s 16 KB
    chunks), and one request per row of those blocks (read ahead along the run's plan)."""
    from rasterio.shutil import copy

    from geoseg import run_scene
    from geoseg.grid import PixelWindow, TileGrid
    from geoseg.models import build_unet
    from geoseg.synthetic import synthesize

    served = tmp_path / "served"
    served.mkdir()
    base = synthesize(tmp_path / "base.tif", 2048, seed=5, block=256).path
    copy(base, served / "big.tif", driver="GTiff", tiled=True, blockxsize=64, blockysize=64, compress="deflate",
         predictor=2)
    model = build_unet(tuple(BANDS), 3, base_width=4, depth=2, seed=0,
                       normalization={"mean": [1000.0] * 4, "std": [800.0] * 4})
    model.save(tmp_path / "m.safetensors")
    side, r0 = 458, 757  # 458^2 = 5.0% of the pixels, not aligned to tiles or blocks
    x0, y0 = 500000 + 10 * r0, 5500000 - 10 * (r0 + side)
    bbox = f"{x0},{y0},{x0 + 10 * side},{y0 + 10 * side},EPSG:32633"
    with RangeServer(served) as srv:
        m = run_scene(f"{srv.url}/big.tif", tmp_path / "out", model=tmp_path / "m.safetensors", bbox=bbox, tile_size=128,
                      quiet=True, vectorize=False, threads=2)
        requests = list(srv.requests)
        sent = srv.raster_bytes
    size = (served / "big.tif").stat().st_size
    assert m["execution"]["tiles"] == 16
    # the blocks the tiles' read windows (area plus the model's halo) touch
    grid = TileGrid(2048, 2048, 128, halo=model.halo, factor=model.downsampling)
    blocks = set()
    for t in grid.tiles_within(PixelWindow(*m["aoi"]["window"])):
        w = t.read
        blocks |= {(by, bx) for by in range(w.row // 64, (w.row_end - 1) // 64 + 1)
                   for bx in range(w.col // 64, (w.col_end - 1) // 64 + 1)}
    with rasterio.open(served / "big.tif") as ds:
        needed = sum(int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1)) for by, bx in blocks)
    assert 0.07 < needed / size < 0.09
    pixel_ranges = [r for r in _fetched(requests, "big.tif") if r[0] > 0]  # not the header (read at each open)
    covered = np.zeros(size, np.uint8)
    for a, b in pixel_ranges:
        covered[a:b] += 1
    assert covered.max() == 1, "a byte range was fetched twice"
    assert sent / size < 0.10, f"{sent / size:.1%} of the file for 5% of the pixels"
    assert sent < needed * 1.1 + 2 * 32768, (sent, needed)
    # merged: the shared handle reads each row of blocks under the tiles ahead, in one request
    assert len(pixel_ranges) == len({by for by, _ in blocks}), pixel_ranges


def test_prefetch_fetches_the_next_strip_in_the_background(tmp_path):
    """After a tile of one strip of the read plan is read, the shared handle fetches the
    next strip's planned blocks in the background (one request per row of blocks): the
    next strip's tiles then read without a request, and the pixels equal a local read."""
    import dataclasses

    from rasterio.shutil import copy

    from geoseg.grid import PixelWindow
    from geoseg.io.raster import _prefetcher, open_scene
    from geoseg.synthetic import synthesize

    served = tmp_path / "served"
    served.mkdir()
    base = synthesize(tmp_path / "base.tif", 512, seed=3, block=256).path
    copy(base, served / "s.tif", driver="GTiff", tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    strip1, strip2 = PixelWindow(0, 0, 160, 512), PixelWindow(128, 0, 160, 512)  # rows of blocks 0-2, 2-4
    local = open_scene(served / "s.tif")
    with RangeServer(served) as srv:
        source = open_scene(f"{srv.url}/s.tif")
        source = dataclasses.replace(source, read_plan=(strip1, strip2))
        try:
            first = source.read_windows([PixelWindow(0, 0, 160, 200)])[0]
            _prefetcher().submit(lambda: None).result()  # the prefetch queued before it has run
            ranges = [r for r in _fetched(list(srv.requests), "s.tif") if r[0] > 0]
            with rasterio.open(served / "s.tif") as ds:
                offsets = {(by, bx): int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
                           for by in range(8) for bx in range(8)}
            fetched_rows = [{by for (by, _), off in offsets.items() if a <= off < b} for a, b in ranges]
            # rows 0-2 by the tile's read-ahead, 3 and 4 by the prefetch; a request may reach
            # into the next row (/vsicurl/ rounds to 16 KB), but no byte is fetched twice
            assert len(ranges) == 5 and set().union(*fetched_rows) >= {0, 1, 2, 3, 4}, fetched_rows
            covered = np.zeros(max(b for _, b in ranges), np.uint8)
            for a, b in ranges:
                covered[a:b] += 1
            assert covered.max() == 1
            n = len(srv.requests)
            second = source.read_windows([PixelWindow(128, 300, 160, 212)])[0]
            assert len(srv.requests) == n, srv.requests[n:]  # all from the block cache
        finally:
            source.release()
    for got, window in ((first, PixelWindow(0, 0, 160, 200)), (second, PixelWindow(128, 300, 160, 212))):
        want = local.read_windows([window])[0]
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


_CACHE_PROBE = """
import ctypes, sys
sys.path.insert(0, {tests!r})
from geoseg.allocator import configure_process
if {configure}:
    configure_process()
from geoseg.io._libgdal import GdalBindings
from geoseg.io.raster import open_scene
from geoseg.grid import PixelWindow
from remote_servers import RangeServer
cache = GdalBindings.load().fn("GDALGetCacheMax64", ctypes.c_int64)
w = [PixelWindow(0, 0, 64, 64)]
open_scene({path!r}).read_windows(w)
sizes = [cache()]
with RangeServer({served!r}) as srv:
    remote = open_scene(srv.url + "/s.tif")
    remote.read_windows(w)
    remote.release()
sizes.append(cache())
open_scene({path!r}).read_windows(w)
sizes.append(cache())
print(*(s // 2**20 for s in sizes))
"""


@pytest.mark.parametrize("user,configure", [(None, True), ("40", True), ("96", False)], ids=["geoseg", "user", "worker"])
def test_block_cache_is_small_for_local_reads_and_raised_for_remote_ones(tmp_path, user, configure):
    """GDAL's block cache (one per process) is 96 MiB while only local rasters were read and
    256 MiB from the first remote read on (the shared handle's read-ahead keeps rows of
    blocks there); a GDAL_CACHEMAX the user set is left alone. A Dask worker process that
    inherited geoseg's own 96 (and never ran configure_process) is sized as geoseg's."""
    from geoseg.synthetic import synthesize

    served = tmp_path / "served"
    served.mkdir()
    path = synthesize(served / "s.tif", 256, seed=1).path
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    if user:
        env["GDAL_CACHEMAX"] = user
    code = _CACHE_PROBE.format(tests=str(Path(__file__).parent), path=str(path), served=str(served), configure=configure)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == (["40", "40", "40"] if user == "40" else ["96", "256", "256"])
