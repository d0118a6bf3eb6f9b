"""Measured spectra through sensor responses, the water model, and scenes rendered from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("earthlib")

from geoseg import spectra as sp  # noqa: E402
from geoseg.synthetic import synthesize  # noqa: E402

SENSORS = ("sentinel2", "landsat8", "landsat9")


@pytest.mark.parametrize("name", SENSORS)
def test_a_flat_spectrum_gives_equal_bands(name: str) -> None:
    lib = sp.library()
    got = sp.resample(np.full(lib.wavelengths.shape, 0.37), lib.wavelengths, sp.sensor(name))
    assert got.shape == (6,) and np.allclose(got, 0.37, atol=1e-12)


def test_a_library_spectrum_gives_the_band_values_of_its_response_functions() -> None:
    """By hand: each band's Gaussian response (earthlib's centre and FWHM), trapezoid-integrated."""
    import earthlib.sensors

    lib = sp.library()
    spectrum = lib.select("canopy")[7]
    s2 = earthlib.sensors.Sentinel2
    wl = lib.wavelengths
    expected = []
    for c, fwhm in zip(s2.band_centers[[0, 1, 2, 6, 8, 9]], s2.band_widths[[0, 1, 2, 6, 8, 9]]):
        srf = np.exp(-4.0 * np.log(2.0) * (wl - float(c)) ** 2 / float(fwhm) ** 2)
        expected.append(np.trapezoid(srf * spectrum, wl) / np.trapezoid(srf, wl))
    got = sp.resample(spectrum, wl, sp.sensor("sentinel2"))
    assert np.allclose(got, expected, rtol=1e-9)
    assert got[3] > 4 * got[2]  # a canopy: the red edge


def test_water_reflectance_rises_with_sediment_in_red_and_nir() -> None:
    lib = sp.library()
    s2 = sp.sensor("sentinel2")
    bands = [sp.resample(sp.water_reflectance(lib.wavelengths, chl=2.0, tss=t), lib.wavelengths, s2) for t in (1, 10, 50, 200)]
    red, nir = [b[2] for b in bands], [b[3] for b in bands]
    assert all(a < b for a, b in zip(red, red[1:])) and all(a < b for a, b in zip(nir, nir[1:]))
    assert bands[0][2] < 0.01 and 0.05 < bands[-1][2] < 0.3  # clear water dark, turbid water bright in red
    assert all(b[4] < 0.005 for b in bands)  # water is black in the SWIR
    algal = sp.resample(sp.water_reflectance(lib.wavelengths, chl=60.0, tss=2.0), lib.wavelengths, s2)
    assert algal[1] > algal[0] and algal[1] > algal[2]  # green peak of algal water


@pytest.mark.parametrize("name", ["sentinel2", "landsat8"])
def test_scene_statistics_fall_within_the_real_spectra(name: str, tmp_path: Path) -> None:
    info = synthesize(tmp_path / "s.tif", 384, bands=6, seed=3, labels_path=tmp_path / "l.tif", sensor=name)
    with rasterio.open(info.path) as ds:
        raw = ds.read().astype(np.float64)
        scales, offsets = ds.scales, ds.offsets
        tags = json.loads(ds.tags()["GEOSEG_SYNTHETIC"])
    with rasterio.open(tmp_path / "l.tif") as ds:
        labels = ds.read(1)
    assert tags["sensor"] == name
    scale, offset = sp.PRODUCTS[name]
    assert np.allclose(scales, scale * 1e4) and np.allclose(offsets, offset * 1e4)
    refl = (raw * np.array(scales)[:, None, None] + np.array(offsets)[:, None, None]) / 1e4  # geoseg's scale/offset
    lib, sen = sp.library(), sp.sensor(name)
    canopy = sp.resample(lib.select("canopy"), lib.wavelengths, sen)
    soil = sp.resample(lib.select("soil"), lib.wavelengths, sen)
    water = np.array([sp.resample(sp.water_reflectance(lib.wavelengths, chl=c, tss=t), lib.wavelengths, sen)
                      for c in (0.1, 80) for t in (0.3, 400)])
    for cls, pool in ((0, water), (1, canopy), (2, np.concatenate([canopy, soil])), (3, soil)):
        px = refl[:, labels == cls]
        assert px.shape[1] > 100
        med = np.median(px, axis=1)
        lo, hi = pool.min(0) * 0.5 - 0.02, pool.max(0) * 1.2 + 0.03  # shading, haze, noise and mixing
        assert ((med >= lo) & (med <= hi)).all(), (cls, med, lo, hi)
    nir_red = lambda c: np.median(refl[3, labels == c] / np.maximum(refl[2, labels == c], 1e-3))  # noqa: E731
    assert nir_red(1) > 3 and nir_red(0) < 1.5  # forest has a red edge, water none


def test_synth_cli_writes_a_landsat_scene(tmp_path: Path) -> None:
    env_path = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "geoseg", "synth", str(tmp_path / "l8.tif"), "--size", "128",
                           "--sensor", "landsat8", "--labels", str(tmp_path / "lab.tif")],
                          capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "l8.tif") as ds:
        assert ds.count == 4 and ds.scales[0] == pytest.approx(0.275) and ds.offsets[0] == pytest.approx(-2000)
        assert ds.read().min() > 7000  # (reflectance + 0.2) / 0.0000275 > 7272 for reflectance >= 0
    bad = subprocess.run([sys.executable, "-m", "geoseg", "synth", str(tmp_path / "x.tif"), "--sensor", "landsat8",
                          "--bands", "8"], capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert bad.returncode != 0 and "at most 6 bands" in bad.stderr and not (tmp_path / "x.tif").exists()
