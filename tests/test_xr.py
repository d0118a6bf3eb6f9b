"""geoseg.segment / polygons / to_cog: xarray in, the same bytes as `geoseg run` out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import read, write_raster

import geoseg
from geoseg.errors import ContractError, InputError, OutputError

xr = pytest.importorskip("xarray")
rioxarray = pytest.importorskip("rioxarray")
gpd = pytest.importorskip("geopandas")
dask = pytest.importorskip("dask")

TILE = 128
PRODUCTS = {"classes": "classes.tif", "confidence": "confidence.tif"}


def run(scene: Path, out: Path, model, **kw) -> Path:
    geoseg.run_scene(scene, out, model=str(model), quiet=True, vectorize=False, **kw)
    return out


def assert_equals_run(ds, out: Path, stem: str, heads=("bright",), index: dict | None = None) -> None:
    """Every product of ``ds`` (optionally at ``index``) equals the COG of ``geoseg run``, byte for byte."""
    if index:
        ds = ds.isel(index)
    got = ds.compute()
    for var, product in PRODUCTS.items():
        want = read(out / f"{stem}.{product}")[0]
        assert got[var].dtype == np.uint8
        assert np.array_equal(got[var].values, want), var
    masks = read(out / f"{stem}.mask.tif")
    for m, head in enumerate(heads):
        assert np.array_equal(got[head].values, masks[m]), head


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, synth_scene, small_unet) -> Path:
    """`geoseg run` of the synthetic scene with the test U-Net, tile size 128."""
    scene, _ = synth_scene
    return run(scene, tmp_path_factory.mktemp("run") / "out", small_unet, tile_size=TILE)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, synth_scene) -> Path:
    """`geoseg run` of the synthetic scene with the built-in default model, tile size 128."""
    scene, _ = synth_scene
    return run(scene, tmp_path_factory.mktemp("run_default") / "out", "default", tile_size=TILE)


class CountingScheduler:
    """A Dask scheduler that fails on any compute (as xarray's ``raise_if_dask_computes``)."""

    def __init__(self) -> None:
        self.computes = 0

    def __call__(self, dsk, keys, **kwargs):
        self.computes += 1
        raise RuntimeError(f"geoseg computed something ({len(dsk)} tasks) while building the graph")


# ------------------------------------------------------------------------------------------ segment


@pytest.mark.parametrize(
    "chunks",
    [
        {"x": 70, "y": 70},  # not multiples of the model's factor (8) nor of the tile size
        {"x": 128, "y": 64},  # aligned to the factor
        {"x": 1000, "y": 1000, "band": 1},  # one block per band
        None,  # numpy-backed
    ],
    ids=["70px", "aligned", "band-chunks", "numpy"],
)
def test_segment_equals_run_scene_whatever_the_chunking(synth_scene, small_unet, baseline, chunks) -> None:
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks=chunks, lock=False) if chunks else rioxarray.open_rasterio(scene).load()
    ds = geoseg.segment(data, str(small_unet), tile_size=TILE)
    assert ds.classes.chunks == ((128, 128, 44), (128, 128, 128, 33))  # the tiles' cores
    assert_equals_run(ds, baseline, "scene")


def test_batches_of_tiles_equal_run_scene_batches(tmp_path, synth_scene, small_unet) -> None:
    """batch_size > 1: tiles of equal shape share one forward, grouped as `geoseg run` groups them."""
    scene, _ = synth_scene
    out = run(scene, tmp_path / "out", small_unet, tile_size=64, batch_size=3)
    ds = geoseg.segment(rioxarray.open_rasterio(scene, chunks={"x": 90, "y": 110}, lock=False), str(small_unet),
                        tile_size=64, batch_size=3)
    assert_equals_run(ds, out, "scene")


def test_tiles_read_their_windows_from_the_source_of_a_from_array_input(synth_scene) -> None:
    """rioxarray's chunked arrays are from_array of a windowed reader: the tasks read their own
    windows (as `geoseg run` does) and no input block is computed; other graphs give blocks."""
    from geoseg.xr.windows import BlockWindows, SourceWindows, windows_for

    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 70, "y": 70}, lock=False)
    assert isinstance(windows_for(data.data), SourceWindows)
    out = geoseg.segment(data, "default", tile_size=TILE).classes.data
    needed = out.__dask_graph__().cull(set(dask.core.flatten(out.__dask_keys__())))
    assert not [k for k in needed.keys() if isinstance(k, tuple) and k[0] == data.data.name]
    assert len([k for k in needed.keys() if not isinstance(k, tuple)]) == 1  # the source itself
    stacked = xr.concat([data, data], dim="time").data
    assert isinstance(windows_for(stacked), BlockWindows) and isinstance(windows_for(data.data[[3, 1, 0, 2]]), BlockWindows)


def test_segment_is_lazy_and_ships_no_model(synth_scene) -> None:
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 70, "y": 70}, lock=False)
    guard = CountingScheduler()
    with dask.config.set(scheduler=guard), dask.annotate(resources={"GPU": 1}):
        ds = geoseg.segment(data, "default", tile_size=TILE)
    assert guard.computes == 0
    segment_layers = [v for k, v in ds.classes.data.dask.layers.items() if k.startswith("geoseg-segment-")]
    assert [lay.annotations for lay in segment_layers] == [{"resources": {"GPU": 1}}]
    assert all(isinstance(v.data, dask.array.Array) for v in ds.data_vars.values())
    import cloudpickle
    import torch

    graph = dict(ds.__dask_graph__())
    size = len(cloudpickle.dumps(graph))
    weights = sum(p.numel() * 4 for p in geoseg.load_model("default").module.parameters())
    assert size < weights / 4, (size, weights)  # the tasks name the model; they do not carry it
    assert not any(isinstance(a, torch.nn.Module) for task in graph.values() for a in getattr(task, "args", ()))


def test_result_carries_grid_classes_and_contract(synth_scene) -> None:
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 256, "y": 256}, lock=False)
    ds = geoseg.segment(data, "default")
    bundle = geoseg.load_model("default")
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.rio.transform() == data.rio.transform()
    assert np.array_equal(ds.x, data.x) and np.array_equal(ds.y, data.y)
    assert ds.classes.rio.crs.to_epsg() == 32633  # spatial_ref + grid_mapping, as rioxarray reads them
    c = ds.classes.attrs
    assert list(c["flag_values"]) == list(range(len(bundle.class_names)))
    assert c["flag_meanings"].split() == list(bundle.class_names)
    assert c["flag_colors"].split() == list(bundle.class_colors)
    assert c["_FillValue"] == 255 and ds.confidence.attrs["units"] == "percent"
    assert ds.built_up.attrs["flag_meanings"] == "not_built_up built_up"
    assert ds.attrs["geoseg_model_sha256"] == bundle.checksum
    assert ds.attrs["geoseg_halo"] == bundle.halo and ds.attrs["geoseg_downsampling"] == bundle.downsampling
    assert ds.attrs["geoseg_input_bands"] == '["blue", "green", "red", "nir"]'


def test_time_band_y_x_array(tmp_path, synth_scene, small_unet, baseline) -> None:
    """(time, band, y, x), as stackstac gives: every time step equals `geoseg run` of that scene."""
    scene, _ = synth_scene
    second = tmp_path / "second.tif"
    write_raster(second, read(scene)[:, ::-1, :].copy(), nodata=None)  # another scene on the same grid
    ref2 = run(second, tmp_path / "out2", small_unet, tile_size=TILE)
    stack = xr.concat(
        [rioxarray.open_rasterio(p, chunks={"x": 100, "y": 90}, lock=False) for p in (scene, second)], dim="time"
    )
    stack = stack.assign_coords(time=np.array(["2026-01-01", "2026-02-01"], dtype="datetime64[ns]"))
    stack = stack.assign_coords(common_name=("band", ["blue", "green", "red", "nir"]))
    ds = geoseg.segment(stack, str(small_unet), tile_size=TILE)
    assert ds.classes.dims == ("time", "y", "x") and np.array_equal(ds.time, stack.time)
    assert_equals_run(ds, baseline, "scene", index={"time": 0})
    assert_equals_run(ds, ref2, "second", index={"time": 1})


def test_dataset_of_band_variables(synth_scene, small_unet, baseline) -> None:
    """odc-stac's shape: one (time, y, x) variable per band, in any order, plus others."""
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 150, "y": 150}, lock=False)
    names = ["blue", "green", "red", "nir"]
    ds_in = xr.Dataset(
        {n: data.sel(band=i + 1, drop=True).expand_dims(time=[np.datetime64("2026-03-01", "ns")])
         for i, n in reversed(list(enumerate(names)))}
    )
    ds_in["scl"] = ds_in["red"] * 0  # a variable the model does not read
    ds_in = ds_in.rio.write_crs("EPSG:32633")
    ds = geoseg.segment(ds_in, str(small_unet), tile_size=TILE)
    assert ds.classes.dims == ("time", "y", "x") and ds.rio.crs.to_epsg() == 32633
    assert_equals_run(ds, baseline, "scene", index={"time": 0})


def test_bands_by_name_from_the_band_coordinate_and_explicit(synth_scene, small_unet, baseline) -> None:
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 200, "y": 200}, lock=False)
    data.attrs.pop("long_name", None)
    shuffled = data.isel(band=[3, 1, 0, 2]).assign_coords(band=["nir", "green", "blue", "red"])
    assert_equals_run(geoseg.segment(shuffled, str(small_unet), tile_size=TILE), baseline, "scene")
    by_position = data.isel(band=[3, 1, 0, 2]).assign_coords(band=[4, 2, 1, 3])
    assert_equals_run(geoseg.segment(by_position, str(small_unet), tile_size=TILE, bands=[3, 2, 4, 1]), baseline, "scene")


def test_nodata_propagates(tmp_path, nodata_scene, small_unet) -> None:
    """A scene with a nodata border: _FillValue in attrs (masked=False) and NaN (masked=True)."""
    out = run(nodata_scene, tmp_path / "out", small_unet, tile_size=64)
    raw = rioxarray.open_rasterio(nodata_scene, chunks={"x": 100, "y": 100}, lock=False)
    assert raw.attrs["_FillValue"] == 0
    ds = geoseg.segment(raw, str(small_unet), tile_size=64)
    assert_equals_run(ds, out, "border")
    assert (ds.classes.values == 255).sum() > 1000
    masked = rioxarray.open_rasterio(nodata_scene, chunks={"x": 100, "y": 100}, lock=False, masked=True)
    assert masked.dtype.kind == "f"
    assert_equals_run(geoseg.segment(masked, str(small_unet), tile_size=64), out, "border")


def test_geographic_crs(tmp_path, small_unet) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3000, size=(4, 150, 170)).astype(np.uint16)
    scene = write_raster(tmp_path / "geo.tif", data, crs="EPSG:4326", transform=Affine(1e-4, 0, 10.0, 0, -1e-4, 60.01))
    out = run(scene, tmp_path / "out", small_unet, tile_size=64)
    ds = geoseg.segment(rioxarray.open_rasterio(scene, chunks={"x": 50, "y": 50}, lock=False), str(small_unet), tile_size=64)
    assert ds.rio.crs.to_epsg() == 4326
    assert_equals_run(ds, out, "geo")
    frame = geoseg.polygons(ds)
    assert frame.crs.to_epsg() == 4326
    from pyproj import Geod

    lons, lats = [10.0, 10.017, 10.017, 10.0], [60.01, 60.01, 59.995, 59.995]
    box = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])
    assert frame.area_m2.sum() == pytest.approx(box, rel=1e-6)  # geodesic m^2, not degrees


def test_precision_is_checked_like_run_scene(synth_scene, small_unet) -> None:
    """fp16/bf16 need CUDA, as `geoseg run --precision`: a one-line error on CPU; fp32 passes."""
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 200, "y": 200}, lock=False)
    with pytest.raises(InputError, match=r"--precision fp16 needs a CUDA device") as exc:
        geoseg.segment(data, str(small_unet), device="cpu", precision="fp16")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match=r"not one of"):
        geoseg.segment(data, str(small_unet), precision="fp8")
    assert geoseg.segment(data, str(small_unet), device="cpu", precision="fp32").classes.dtype == np.uint8


def test_tta_and_probabilities_equal_run_scene(tmp_path, nodata_scene, small_unet) -> None:
    """tta and probabilities reach the kernel as `geoseg run --tta --probabilities` passes them:
    every product equals its COG, the probabilities too (nodata border included), also via to_cog."""
    out = run(nodata_scene, tmp_path / "out", small_unet, tile_size=64, tta=True, probabilities=True)
    data = rioxarray.open_rasterio(nodata_scene, chunks={"x": 100, "y": 100}, lock=False)
    ds = geoseg.segment(data, str(small_unet), tile_size=64, tta=True, probabilities=True)
    assert ds.probabilities.dims == ("class", "y", "x") and list(ds["class"].values) == ["low", "mid", "high"]
    assert ds.attrs["geoseg_tta"] == 1
    got = ds.compute()  # once: TTA runs 8 forwards a tile
    assert_equals_run(got, out, "border")
    probs = got.probabilities.values
    assert np.array_equal(probs, read(out / "border.probabilities.tif"))
    assert (probs == 255).any() and (probs < 255).any()
    plain = geoseg.segment(data, str(small_unet), tile_size=64)
    assert "probabilities" not in plain and plain.attrs["geoseg_tta"] == 0
    assert (plain.confidence.values != got.confidence.values).any()  # tta is not a no-op for this model
    written = geoseg.to_cog(got, tmp_path / "cog" / "border")
    assert sorted(written) == ["classes", "confidence", "mask", "probabilities"]
    with rasterio.open(out / "border.probabilities.tif") as a, rasterio.open(written["probabilities"]) as b:
        assert (b.count, b.descriptions, b.nodata, b.tags()) == (a.count, a.descriptions, a.nodata, a.tags())
        assert np.array_equal(a.read(), b.read())


def test_bad_inputs_are_one_line_errors(synth_scene) -> None:
    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 200, "y": 200}, lock=False)
    with pytest.raises(ContractError, match="expects 4"):
        geoseg.segment(data.isel(band=[0, 1, 2]), "default")
    with pytest.raises(InputError, match="no band named 'swir'"):
        geoseg.segment(data, "default", bands=["blue", "green", "red", "swir"])
    with pytest.raises(ContractError, match="uint8"):
        geoseg.segment(data.astype("uint8"), "default")
    with pytest.raises(InputError, match="spatial dimensions"):
        geoseg.segment(data.rename(x="col"), "default")
    with pytest.raises(TypeError, match="workers"):
        geoseg.segment(data, "default", workers=2)  # a run_scene option, but not one of prediction


def test_missing_extra_names_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)  # as if not installed
    data = np.zeros((4, 8, 8), np.uint16)
    for call in (lambda: geoseg.segment(data), lambda: geoseg.to_cog(data, "x.tif")):
        with pytest.raises(ImportError, match=r"needs the package 'xarray'.*pip install 'geoseg\[xarray\]'"):
            call()
    monkeypatch.setitem(sys.modules, "geopandas", None)
    with pytest.raises(ImportError, match=r"geoseg.polygons needs the package 'geopandas'.*geoseg\[xarray\]"):
        geoseg.polygons(data[0])


# ------------------------------------------------------------------------------------------ to_cog


def test_to_cog_equals_run_scene_cogs(tmp_path, monkeypatch) -> None:
    """A scene large enough for overviews; the spectral model (no training) keeps it cheap.
    The rasters flush their written blocks every 64 KiB here (Dask's threads hand in the blocks,
    to_cog's writer thread flushes: rasterio raised when another thread closed a dataset)."""
    from geoseg.synthetic import synthesize

    monkeypatch.setattr("geoseg.io.cog.FLUSH_BYTES", 64 * 1024)

    scene = Path(synthesize(tmp_path / "big.tif", (700, 900), seed=4).path)
    out = run(scene, tmp_path / "run", "spectral", tile_size=256)
    ds = geoseg.segment(rioxarray.open_rasterio(scene, chunks={"x": 300, "y": 300}, lock=False), "spectral", tile_size=256)
    written = geoseg.to_cog(ds, tmp_path / "cog" / "big")
    assert sorted(written) == ["classes", "confidence", "mask"]
    for kind, product in (("classes", "classes.tif"), ("confidence", "confidence.tif"), ("mask", "mask.tif")):
        with rasterio.open(out / f"big.{product}") as a, rasterio.open(written[kind]) as b:
            assert b.driver == "GTiff" and b.profile["tiled"] and b.overviews(1) == a.overviews(1) != []
            assert (b.crs, b.transform, b.nodata, b.tags()) == (a.crs, a.transform, a.nodata, a.tags())
            assert np.array_equal(a.read(), b.read()), kind
            ov = (a.count, a.height // 2, a.width // 2)
            assert np.array_equal(a.read(out_shape=ov), b.read(out_shape=ov)), kind
            if kind == "classes":
                assert b.colormap(1) == a.colormap(1) and b.colormap(1)[255] == (0, 0, 0, 0)
    assert sorted(p.name for p in (tmp_path / "cog").iterdir()) == ["big.classes.tif", "big.confidence.tif", "big.mask.tif"]
    with pytest.raises(OutputError, match="already exist"):
        geoseg.to_cog(ds, tmp_path / "cog" / "big.classes.tif")
    one = geoseg.to_cog(ds.classes, tmp_path / "one.tif")["classes"]
    assert np.array_equal(read(one), read(out / "big.classes.tif"))


def test_to_cog_is_atomic_and_checks_values(tmp_path) -> None:
    values = np.zeros((40, 60), np.int16)
    values[30:, 50:] = 300  # not a uint8 class id: found while writing the last block
    da = xr.DataArray(values, dims=("y", "x")).chunk(20)
    da = da.assign_coords(y=5500000 - 10 * (np.arange(40) + 0.5), x=500000 + 10 * (np.arange(60) + 0.5))
    with pytest.raises(InputError, match="no CRS"):
        geoseg.to_cog(da, tmp_path / "x.tif")
    da = da.rio.write_crs("EPSG:32633")
    with pytest.raises(InputError, match="outside 0..255"):
        geoseg.to_cog(da, tmp_path / "x.tif")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporaries left
    path = geoseg.to_cog((da % 7).astype("uint8"), tmp_path / "x.tif")["classes"]
    with rasterio.open(path) as f:
        assert f.crs.to_epsg() == 32633 and f.transform == Affine(10, 0, 500000, 0, -10, 5500000)
        assert np.array_equal(f.read(1), values % 7)


# ------------------------------------------------------------------------------------------ polygons


@pytest.mark.parametrize("options", [{}, {"min_area": 2000.0, "simplify": 15.0, "connectivity": 8}], ids=["exact", "options"])
def test_polygons_equal_the_geopackage_layer_of_vectorize(tmp_path, synth_scene, default_run, options) -> None:
    """The trained default model: smooth maps, a few hundred polygons (the untrained U-Net's
    noise makes thousands, and the coverage simplifier takes minutes on them)."""
    import shapely

    scene, _ = synth_scene
    gpkg = tmp_path / "scene.gpkg"
    geoseg.vectorize(default_run / "scene.classes.tif", gpkg, **options)
    want = gpd.read_file(gpkg, layer="classes")
    ds = geoseg.segment(rioxarray.open_rasterio(scene, chunks={"x": 70, "y": 70}, lock=False), "default", tile_size=TILE)
    for got in (geoseg.polygons(ds, **options), geoseg.polygons(default_run / "scene.classes.tif", **options),
                geoseg.polygons(ds.classes.values, transform=ds.rio.transform(), crs="EPSG:32633",
                                confidence=ds.confidence.values, classes_from="default", **options)):
        assert list(got.columns) == ["class_id", "class_name", "area_m2", "perimeter_m", "confidence", "geometry"]
        assert got.crs == want.crs and len(got) == len(want) > 50
        assert list(got.class_id) == list(want.class_id) and list(got.class_name) == list(want.class_name)
        for col in ("area_m2", "perimeter_m", "confidence"):
            assert np.allclose(got[col], want[col], rtol=0, atol=1e-9), col
        assert shapely.equals_exact(np.asarray(got.geometry.values), np.asarray(want.geometry.values), 0).all()


# ------------------------------------------------------------------------------------------ distributed


@pytest.mark.slow
def test_local_cluster_gives_the_same_bytes(tmp_path, synth_scene, small_unet, baseline) -> None:
    from distributed import Client, LocalCluster

    scene, _ = synth_scene
    data = rioxarray.open_rasterio(scene, chunks={"x": 70, "y": 70}, lock=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster):
        ds = geoseg.segment(data, str(small_unet), tile_size=TILE)
        assert_equals_run(ds, baseline, "scene")
        written = geoseg.to_cog(ds, tmp_path / "cog" / "scene")  # blocks stream back from the workers
    for kind, product in (("classes", "classes.tif"), ("confidence", "confidence.tif"), ("mask", "mask.tif")):
        assert np.array_equal(read(written[kind]), read(baseline / f"scene.{product}")), kind
