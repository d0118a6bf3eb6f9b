"""Fixtures that write small real GeoTIFFs and model bundles for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

UTM33 = "EPSG:32633"
UTM33_10M = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5500000.0)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM33,
    transform: Affine | None = UTM33_10M,
    nodata: float | None = None,
    descriptions: tuple[str, ...] | None = None,
    **profile,
) -> Path:
    """Write ``(bands, h, w)`` (or ``(h, w)``) ``data`` as a tiled GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    opts = {"driver": "GTiff", "width": w, "height": h, "count": count, "dtype": data.dtype.name, "nodata": nodata}
    if crs is not None:
        opts["crs"] = crs
    if transform is not None:
        opts["transform"] = transform
    if h >= 16 and w >= 16:
        opts.update(tiled=True, blockxsize=16 * max(1, min(w, h, 256) // 16), blockysize=16 * max(1, min(w, h, 256) // 16))
    opts.update(profile)
    with rasterio.open(path, "w", **opts) as ds:
        ds.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
    return path


@pytest.fixture(scope="session")
def synth_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 300x417 synthetic 4-band scene (not a multiple of any tile size) and its labels."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("synth")
    info = synthesize(d / "scene.tif", (300, 417), seed=7, labels_path=d / "labels.tif")
    return Path(info.path), Path(info.labels_path)


@pytest.fixture(scope="session")
def nodata_scene(tmp_path_factory) -> Path:
    """A 256x320 synthetic scene with an irregular nodata border (value 0)."""
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("synth_nodata")
    return Path(synthesize(d / "border.tif", (256, 320), seed=3, nodata_border=True).path)


@pytest.fixture(scope="session")
def small_unet(tmp_path_factory) -> Path:
    """An untrained depth-3 U-Net bundle for 4 bands, 3 classes and one mask head."""
    from geoseg.models import build_unet

    bundle = build_unet(
        ("blue", "green", "red", "nir"),
        [("low", "#1f78b4"), ("mid", "#33a02c"), ("high", "#e31a1c")],
        mask_heads=("bright",),
        base_width=8,
        depth=3,
        normalization={"mean": [1000.0] * 4, "std": [800.0] * 4},
        name="test-unet",
        seed=0,
    )
    path = tmp_path_factory.mktemp("models") / "test_unet.safetensors"
    bundle.save(path)
    return path


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


# --------------------------------------------------------------------------- labelled scenes for training


UTM16 = "EPSG:32616"


def write_polygons(path: Path, geoms, crs: str, fields: dict | None = None, driver: str | None = None) -> Path:
    """Write shapely polygons (and attribute columns) with pyogrio."""
    import pyogrio
    import shapely

    fields = fields or {}
    pyogrio.raw.write(
        path, shapely.to_wkb(np.asarray(geoms, dtype=object)), [np.asarray(v) for v in fields.values()],
        list(fields), crs=crs, driver=driver, geometry_type="Polygon",
    )
    return path


def to_crs(geoms, src: str, dst: str):
    """Reproject shapely geometries (densified first, so edges stay straight in ``src``)."""
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs(src, dst, always_xy=True)
    dense = shapely.segmentize(np.asarray(geoms, dtype=object), 0.5)
    return shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


@pytest.fixture(scope="session")
def buildings_scene(tmp_path_factory) -> dict:
    """A 1-band uint16 "panchromatic" 192x192 scene at 0.5 m (EPSG:32616) with bright
    buildings on textured ground and a nodata (0) strip on the left, plus its labels:
    building polygons in EPSG:4326 (GeoJSON, fields ``kind`` (text) and ``code`` (int)),
    and a class raster (0 ground, 1 building) on a 0.3 m EPSG:3857 grid covering the
    image except its first 20 rows. ``truth`` is the building mask on the image grid."""
    import shapely

    d = tmp_path_factory.mktemp("buildings")
    rng = np.random.default_rng(5)
    h = w = 192
    transform = Affine(0.5, 0.0, 733600.0, 0.0, -0.5, 3725140.0)
    boxes = []
    for i, r in enumerate(range(8, h - 20, 40)):
        for j, c in enumerate(range(24, w - 20, 40)):
            hh, ww = 14 + 4 * ((i + j) % 3), 12 + 5 * ((i * j) % 3)
            boxes.append((r, c, hh, ww))
    truth = np.zeros((h, w), np.uint8)
    image = rng.normal(400, 60, size=(h, w))
    polys = []
    for r, c, hh, ww in boxes:
        truth[r : r + hh, c : c + ww] = 1
        image[r : r + hh, c : c + ww] = rng.normal(1400, 80, size=(hh, ww))
        x0, y0 = transform * (c, r)
        x1, y1 = transform * (c + ww, r + hh)
        polys.append(shapely.box(x0, y1, x1, y0))
    image = np.clip(image, 1, 5000).astype(np.uint16)
    image[:, :12] = 0  # nodata strip
    img = write_raster(d / "pan.tif", image, crs=UTM16, transform=transform, nodata=0)
    kinds = np.array(["building" if k % 2 else "house" for k in range(len(polys))], dtype=object)
    geojson = write_polygons(d / "buildings.geojson", to_crs(polys, UTM16, "EPSG:4326"), "EPSG:4326",
                             {"kind": kinds, "code": np.ones(len(polys), np.int32)}, driver="GeoJSON")
    # the class raster: same buildings, web-mercator 0.3 m grid, not covering the top 20 rows
    from rasterio.features import rasterize
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(UTM16, "EPSG:3857", 733600.0, 3725140.0 - 96.0, 733696.0,
                                                3725140.0 - 10.0)
    res = 0.3 / np.cos(np.radians(33.66))  # ~0.3 m on the ground at this latitude
    lw, lh = int((right - left) / res) + 1, int((top - bottom) / res) + 1
    lt = Affine(res, 0.0, left, 0.0, -res, top)
    merc = to_crs(polys, UTM16, "EPSG:3857")
    classes = rasterize(((g, 1) for g in merc), out_shape=(lh, lw), transform=lt, fill=0, dtype="uint8")
    raster = write_raster(d / "classes_3857.tif", classes, crs="EPSG:3857", transform=lt, nodata=255)
    return {"image": img, "vector": geojson, "raster": raster, "truth": truth, "image_array": image,
            "transform": transform, "boxes": boxes}


def ground_area_m2(crs, transform, height: int, width: int, n: int = 100) -> float:
    """Geodesic area (m^2, pyproj.Geod on the CRS's ellipsoid) of a pixel rectangle whose
    edges are densified to ``n`` points: the ground truth for area attributes."""
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(crs)
    cols = np.r_[np.linspace(0, width, n), np.full(n, width), np.linspace(width, 0, n), np.zeros(n)]
    rows = np.r_[np.zeros(n), np.linspace(0, height, n), np.full(n, height), np.linspace(height, 0, n)]
    x, y = transform * (cols, rows)
    lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(x, y)
    return abs(crs.get_geod().polygon_area_perimeter(lon, lat)[0])


#: Ground area of a 10 m pixel of UTM33 near its central meridian (scale 0.9996): not 100 m^2.
UTM33_PIXEL_M2 = 100.0 / 0.9996**2
#: Ground length of 10 m of UTM33 near its central meridian.
UTM33_M = 1 / 0.9996
