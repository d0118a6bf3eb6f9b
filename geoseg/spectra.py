"""Measured spectra, sensor bands and water: what synthetic scenes are rendered from.

- **Spectral library**: the field and laboratory reflectance spectra that the ``earthlib``
  package ships (MIT; soils, vegetation canopies, built materials, sand, gravel ...), read
  from its ENVI library (float32 reflectance 0..1 on a 10 nm grid from 400 to 2450 nm)
  and its CSV of classes (``LEVEL_2``/``LEVEL_3``: ``bare``/``soil``, ``vegetation``/``canopy``,
  ``built``/``road`` ...). Optional: ``pip install 'geoseg[spectra]'``.
- **Sensor bands**: each band's spectral response is a Gaussian of the band's centre and
  full width at half maximum, the response functions earthlib defines for each sensor
  (:data:`SENSORS`: Sentinel-2 MSI, Landsat 8 and 9 OLI); a band's reflectance is the
  response-weighted mean of a spectrum, integrated with the trapezoid rule on the
  spectrum's own wavelength grid.
- **Water**: remote-sensing reflectance from a bio-optical model of the inherent optical
  properties: pure water absorption (Pope & Fry 1997 in the visible, Kou et al. 1993 /
  Hale & Querry 1973 beyond), phytoplankton absorption of chlorophyll (peaks at 440 and
  675 nm, Bricaud-like power law), non-algal particle absorption of suspended sediment
  (exponential, slope 0.0123/nm, Babin et al. 2003), coloured dissolved organic matter,
  pure-water backscatter (Morel 1974) and particle backscatter growing with sediment and
  chlorophyll; below-surface ``rrs = u (0.084 + 0.170 u)`` with ``u = bb / (a + bb)``
  (Lee et al. 2002), above-surface ``Rrs = 0.52 rrs / (1 - 1.7 rrs)`` and reflectance
  ``pi Rrs``.

Product value conventions (:data:`PRODUCTS`): the digital numbers real surface-reflectance
products store, and the GeoTIFF scale/offset that turn them back into reflectance x 10000
(the units of ``default``), read by geoseg's own scale/offset handling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.errors import InputError

__all__ = [
    "SENSORS",
    "PRODUCTS",
    "Sensor",
    "Library",
    "library",
    "response",
    "resample",
    "water_reflectance",
]


@dataclass(frozen=True)
class Sensor:
    """A sensor's bands: geoseg band names, centres and FWHMs in micrometres."""

    name: str
    bands: tuple[str, ...]
    centers: tuple[float, ...]
    fwhm: tuple[float, ...]


def _earthlib_sensor(name: str, attr: str) -> Sensor:
    """The six reflective bands geoseg names (blue .. swir2) of an earthlib sensor definition."""
    try:
        from earthlib import sensors
    except ImportError:
        raise InputError(f"the {name} band responses come from earthlib: pip install 'geoseg[spectra]'") from None
    s = getattr(sensors, attr)
    wanted = {"blue": "blue", "green": "green", "red": "red", "near infrared": "nir",
              "shortwave infrared 1": "swir1", "shortwave infrared 2": "swir2"}
    picked = [(wanted[d], float(c), float(w)) for d, c, w in zip(s.band_descriptions, s.band_centers, s.band_widths)
              if d in wanted]
    order = ["blue", "green", "red", "nir", "swir1", "swir2"]
    picked.sort(key=lambda t: order.index(t[0]))
    return Sensor(name, tuple(p[0] for p in picked), tuple(p[1] for p in picked), tuple(p[2] for p in picked))


#: geoseg's sensor names and earthlib's definitions of them.
_EARTHLIB_NAMES = {"sentinel2": "Sentinel2", "landsat8": "Landsat8", "landsat9": "Landsat9"}
SENSORS = tuple(_EARTHLIB_NAMES)


@functools.lru_cache(maxsize=None)
def sensor(name: str) -> Sensor:
    """A sensor of :data:`SENSORS` by name."""
    if name not in _EARTHLIB_NAMES:
        raise InputError(f"unknown sensor {name!r}: use one of {', '.join(SENSORS)}")
    return _earthlib_sensor(name, _EARTHLIB_NAMES[name])


#: Digital numbers of real products: ``DN = (reflectance - offset) / scale``; the GeoTIFF
#: declares ``scale * 10000`` and ``offset * 10000`` so that reads give reflectance x 10000.
#: Sentinel-2 L2A (processing baseline 04.00 on): ``BOA_ADD_OFFSET`` -1000, quantification 10000;
#: Landsat Collection 2 Level-2: scale 0.0000275, offset -0.2.
PRODUCTS = {
    "sentinel2": (0.0001, -0.1),
    "landsat8": (0.0000275, -0.2),
    "landsat9": (0.0000275, -0.2),
}


def response(centers: np.ndarray, fwhm: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
    """Gaussian spectral responses ``(bands, wavelengths)`` (peak 1) of bands with these centres and FWHMs."""
    c = np.asarray(centers, np.float64)[:, None]
    sigma = np.asarray(fwhm, np.float64)[:, None] / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return np.exp(-0.5 * ((np.asarray(wavelengths, np.float64)[None, :] - c) / sigma) ** 2)


def resample(spectra: np.ndarray, wavelengths: np.ndarray, sensor_: Sensor) -> np.ndarray:
    """Band reflectance ``(..., bands)`` of spectra ``(..., wavelengths)``: response-weighted means.

    ``band = trapz(R * S) / trapz(R)`` over the spectra's own wavelength grid (micrometres).
    """
    wl = np.asarray(wavelengths, np.float64)
    srf = response(np.array(sensor_.centers), np.array(sensor_.fwhm), wl)
    num = np.trapezoid(np.asarray(spectra, np.float64)[..., None, :] * srf, wl, axis=-1)
    return num / np.trapezoid(srf, wl, axis=-1)


@dataclass(frozen=True)
class Library:
    """Spectra ``(n, wavelengths)`` (reflectance 0..1), their wavelengths (micrometres) and classes."""

    wavelengths: np.ndarray
    spectra: np.ndarray
    level2: np.ndarray
    level3: np.ndarray

    def select(self, level3: str | tuple[str, ...], level2: str | None = None) -> np.ndarray:
        """The spectra of these ``LEVEL_3`` classes (and ``LEVEL_2``)."""
        names = (level3,) if isinstance(level3, str) else level3
        keep = np.isin(self.level3, names)
        if level2 is not None:
            keep &= self.level2 == level2
        return self.spectra[keep]


@functools.lru_cache(maxsize=1)
def library() -> Library:
    """earthlib's spectral library (read once per process, with numpy: ENVI float32 little-endian)."""
    try:
        import earthlib
    except ImportError:
        raise InputError("spectra from measured libraries need earthlib: pip install 'geoseg[spectra]'") from None
    data = Path(earthlib.__file__).parent / "data"
    header = (data / "spectra.sli.hdr").read_text()
    fields = {}
    for key in ("samples", "lines", "data type", "byte order", "header offset"):
        line = next(ln for ln in header.splitlines() if ln.split("=")[0].strip() == key)
        fields[key] = int(line.split("=")[1])
    if fields["data type"] != 4 or fields["byte order"] != 0:
        raise InputError(f"{data / 'spectra.sli'}: expected float32 little-endian spectra")
    wl_text = header.split("wavelength = {")[1].split("}")[0]
    wavelengths = np.array([float(v) for v in wl_text.split(",")], np.float64)
    spectra = np.fromfile(data / "spectra.sli", "<f4", offset=fields["header offset"])
    spectra = spectra.reshape(fields["lines"], fields["samples"]).astype(np.float64)
    rows = (data / "spectra.csv").read_text().splitlines()
    head = rows[0].split(",")
    i2, i3 = head.index("LEVEL_2"), head.index("LEVEL_3")
    cells = [r.split(",") for r in rows[1:] if r]
    if len(cells) != len(spectra):
        raise InputError(f"{data}: {len(cells)} rows of classes for {len(spectra)} spectra")
    return Library(wavelengths, spectra, np.array([c[i2] for c in cells]), np.array([c[i3] for c in cells]))


# --------------------------------------------------------------------------- water

# pure water absorption (1/m): Pope & Fry (1997) 400-700 nm, then Kou et al. (1993) and
# Hale & Querry (1973) into the short-wave infrared (water is black there)
_AW_NM = np.array([400, 410, 420, 430, 440, 450, 460, 470, 480, 490, 500, 510, 520, 530, 540, 550, 560, 570,
                   580, 590, 600, 610, 620, 630, 640, 650, 660, 670, 680, 690, 700, 710, 720, 730, 740, 750,
                   760, 770, 780, 790, 800, 820, 840, 860, 880, 900, 950, 1000, 1200, 1600, 2200, 2500])
_AW = np.array([0.00663, 0.00473, 0.00454, 0.00495, 0.00635, 0.00922, 0.00979, 0.0106, 0.0127, 0.0150, 0.0204,
                0.0325, 0.0409, 0.0434, 0.0474, 0.0565, 0.0619, 0.0695, 0.0896, 0.1351, 0.2224, 0.2644, 0.2755,
                0.2916, 0.3108, 0.340, 0.410, 0.439, 0.465, 0.516, 0.624, 0.827, 1.169, 1.799, 2.38, 2.47, 2.55,
                2.51, 2.36, 2.16, 2.07, 2.3, 2.8, 4.3, 5.6, 6.8, 39.0, 36.0, 104.0, 670.0, 1650.0, 2500.0])


def water_reflectance(wavelengths: np.ndarray, chl: float = 1.0, tss: float = 1.0, cdom: float = 0.05) -> np.ndarray:
    """Water-leaving reflectance (0..1, ``pi Rrs``) at ``wavelengths`` (micrometres).

    Args:
        wavelengths: Micrometres.
        chl: Chlorophyll-a, mg/m3 (0.1 clear .. 100 algal bloom).
        tss: Total suspended (mineral) solids, g/m3 (0.5 clear .. 500 very turbid).
        cdom: Absorption of coloured dissolved organic matter at 440 nm, 1/m.
    """
    nm = np.asarray(wavelengths, np.float64) * 1000.0
    aw = np.exp(np.interp(nm, _AW_NM, np.log(_AW)))
    shape = (np.exp(-(((nm - 440.0) / 45.0) ** 2)) + 0.55 * np.exp(-(((nm - 676.0) / 17.0) ** 2))
             + 0.12 * np.exp(-(((nm - 590.0) / 60.0) ** 2)))
    a_ph = 0.06 * chl ** 0.65 * shape
    a_nap = 0.041 * tss * np.exp(-0.0123 * (nm - 443.0))
    a_g = cdom * np.exp(-0.014 * (nm - 440.0))
    bb_w = 0.5 * 0.00288 * (500.0 / nm) ** 4.32
    bb_p = 0.005 * tss * (555.0 / nm) ** 0.8 + 0.002 * chl ** 0.62 * (555.0 / nm)
    a, bb = aw + a_ph + a_nap + a_g, bb_w + bb_p
    u = bb / (a + bb)
    rrs = u * (0.084 + 0.170 * u)
    return np.pi * 0.52 * rrs / (1.0 - 1.7 * rrs)
