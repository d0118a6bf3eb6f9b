"""Deterministic synthetic satellite scenes with ground-truth land-cover labels.

A scene is a uint16 multi-band raster (reflectance x 10000; bands blue, green, red, nir,
then optionally swir1, swir2, red_edge1..3, coastal, see :func:`band_names`) and a uint8
label raster with the classes of :data:`LANDCOVER_CLASSES` (255 = nodata).

Every pixel is a pure function of its global (row, col) and the seed: all structures
(lakes, meandering rivers, forest patches, field parcels, urban street grids with
buildings, a rural road network, texture and sensor noise) are built from integer
hashes of lattice coordinates, value noise and jittered grids. The content of any window
therefore never depends on the window's size or on the order windows are rendered in,
scenes of any size are written window by window in bounded memory, and the same
arguments always give the same bytes.

Layering (highest first): nodata border > water > road > building > forest > cropland >
bare soil. Urban yards are labelled cropland (grass) or bare soil (gravel), urban parks
forest.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from geoseg._files import remove_files, temp_path
from geoseg.classes import LABEL_NODATA, LANDCOVER_CLASSES, ClassInfo, classes_json, colormap, hex_to_rgb
from geoseg.errors import InputError, OutputError
from geoseg.io.raster import open_raster

__all__ = [
    "BAND_NAMES",
    "LABEL_NODATA",
    "LANDCOVER_CLASSES",
    "ClassInfo",
    "SceneInfo",
    "band_names",
    "hex_to_rgb",
    "render_window",
    "synthesize",
]

#: Version of the generating algorithm, written into the image tags. Bump it whenever
#: the output for a given seed changes.
GENERATOR_VERSION = 1

#: Names of the first spectral bands, in file order; ``bands=n`` writes the first n.
#: Bands beyond these are named ``band11``, ``band12``, ... and are narrow bands
#: interpolated between nir and swir1.
BAND_NAMES: tuple[str, ...] = (
    "blue",
    "green",
    "red",
    "nir",
    "swir1",
    "swir2",
    "red_edge1",
    "red_edge2",
    "red_edge3",
    "coastal",
)

_MAX_BANDS = 64
_MAX_SIDE = 1_000_000
_CHUNK = 512  # render_window works on pieces of at most this many rows and columns

WATER, FOREST, CROPLAND, BARE_SOIL, BUILDING, ROAD = 0, 1, 2, 3, 4, 5

_F32 = np.float32
_U32 = np.uint32
_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------- materials
# Reflectance x 10000 of material end-members in blue, green, red, nir, swir1, swir2.
_MATERIALS: dict[str, tuple[float, float, float, float, float, float]] = {
    "water_clear": (620, 560, 330, 160, 90, 60),
    "water_turbid": (820, 980, 880, 400, 170, 110),
    "forest_broadleaf": (300, 560, 320, 3800, 1800, 800),
    "forest_conifer": (220, 420, 240, 2500, 1150, 520),
    "crop_green": (330, 700, 380, 4300, 2000, 950),
    "crop_senescent": (650, 980, 1150, 2600, 2900, 2100),
    "crop_sparse": (720, 980, 1220, 2050, 2700, 2200),
    "soil_dry": (1100, 1500, 2000, 2500, 3400, 2900),
    "soil_wet": (620, 820, 1080, 1420, 2000, 1700),
    "roof_tile": (850, 950, 1800, 2300, 2600, 2200),
    "roof_concrete": (1700, 1800, 1900, 2100, 2400, 2200),
    "roof_dark": (750, 800, 850, 950, 1100, 1050),
    "roof_metal": (2700, 2850, 2950, 3050, 2900, 2600),
    "roof_painted": (1300, 1250, 900, 1200, 1500, 1300),
    "asphalt": (950, 1050, 1150, 1300, 1600, 1500),
    "concrete": (1500, 1600, 1700, 1850, 2100, 1900),
    "grass": (380, 750, 480, 3400, 2100, 1000),
    "gravel": (1200, 1300, 1450, 1800, 2300, 2100),
}
_MAT = {name: i for i, name in enumerate(_MATERIALS)}
_ROOFS = np.array(
    [_MAT[m] for m in ("roof_tile", "roof_tile", "roof_concrete", "roof_dark", "roof_metal",
                       "roof_painted", "roof_concrete", "roof_tile")],
    dtype=np.uint8,
)


def _material_table(nbands: int) -> np.ndarray:
    """Reflectance of every material in each of the first ``nbands`` bands, (nbands, nmat)."""
    base = np.array(list(_MATERIALS.values()), dtype=np.float64).T  # (6, nmat)
    blue, green, red, nir, swir1, swir2 = base
    derived = [
        blue, green, red, nir, swir1, swir2,
        red + 0.20 * (nir - red),  # red_edge1 (705 nm)
        red + 0.65 * (nir - red),  # red_edge2 (740 nm)
        red + 0.92 * (nir - red),  # red_edge3 (783 nm)
        1.05 * blue + 60.0,  # coastal aerosol (443 nm)
    ]
    rows = []
    for b in range(nbands):
        if b < len(derived):
            rows.append(derived[b])
        else:
            w = ((b - len(derived)) % 9 + 1) / 10.0
            rows.append((1.0 - w) * nir + w * swir1)
    return np.asarray(rows, dtype=_F32).reshape(nbands, base.shape[1])


#: Variants of each material in a scene rendered from measured spectra (chosen per patch).
_VARIANTS = 8
# earthlib LEVEL_3 classes behind each material (see geoseg.spectra)
_BUILT = {
    "roof_tile": ("tile", "concrete_tile"),
    "roof_concrete": ("concrete_tile", "sidewalk", "other"),
    "roof_dark": ("comp_shingle", "wood_shingle"),
    "roof_metal": ("metal",),
    "roof_painted": ("paint",),
    "asphalt": ("asphalt", "road", "parking_lot"),
    "concrete": ("sidewalk", "driveway", "bridge"),
}


def _spectral_table(sensor: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance x 10000 ``(6, nmat * _VARIANTS)`` of every material from measured spectra, and
    each band's centre (micrometres), for one scene (``seed`` picks the spectra and waters).

    Canopies for forest, crops and grass (cropland also soil and canopy mixtures across growth
    stages), soils and sand for bare soil, built materials mixed at sub-pixel scale with
    canopy, soil and shadow for roofs and roads, the bio-optical model for clear to turbid
    and algal water.
    """
    from geoseg import spectra as sp

    lib, sen = sp.library(), sp.sensor(sensor)
    rng = np.random.default_rng([_seed_key(seed), 23])

    def bands(x: np.ndarray) -> np.ndarray:
        return sp.resample(x, lib.wavelengths, sen)

    canopy = bands(lib.select("canopy"))
    soil = bands(np.concatenate([lib.select("soil"), lib.select(("sand", "dirt"), "bare")]))
    by_nir = np.argsort(canopy[:, 3])
    bright_soil = soil[soil[:, 2] >= np.median(soil[:, 2])]
    dark_soil = soil[soil[:, 2] < np.median(soil[:, 2])]

    def pick(pool: np.ndarray) -> np.ndarray:
        return pool[rng.integers(len(pool))]

    def water(turbid: bool) -> np.ndarray:
        if turbid:  # sediment-laden or algal
            tss, chl = float(np.exp(rng.uniform(np.log(15), np.log(400)))), float(np.exp(rng.uniform(np.log(1), np.log(80))))
        else:
            tss, chl = float(np.exp(rng.uniform(np.log(0.3), np.log(8)))), float(np.exp(rng.uniform(np.log(0.1), np.log(8))))
        return bands(sp.water_reflectance(lib.wavelengths, chl=chl, tss=tss, cdom=float(rng.uniform(0.02, 0.4))))

    built = {k: bands(np.concatenate([lib.select(c, "built") for c in v])) for k, v in _BUILT.items()}
    rows = []
    for name in _MATERIALS:
        for _ in range(_VARIANTS):
            if name.startswith("water"):
                v = water(name == "water_turbid")
            elif name == "forest_broadleaf":
                v = pick(canopy[by_nir[len(by_nir) // 3 :]]) * rng.uniform(0.8, 1.0)
            elif name == "forest_conifer":
                v = pick(canopy[by_nir[: len(by_nir) // 2]]) * rng.uniform(0.6, 0.85)
            elif name in ("crop_green", "grass"):
                v = pick(canopy)
            elif name == "crop_senescent":
                f = rng.uniform(0.3, 0.6)
                v = f * pick(canopy) + (1 - f) * pick(soil)
            elif name == "crop_sparse":
                f = rng.uniform(0.1, 0.3)
                v = f * pick(canopy) + (1 - f) * pick(soil)
            elif name == "soil_dry":
                v = pick(bright_soil) * rng.uniform(0.7, 1.0)
            elif name == "soil_wet":
                v = pick(dark_soil) * rng.uniform(0.6, 0.9)
            elif name == "gravel":
                v = pick(bands(lib.select("gravel")))
            else:  # built: a 10-30 m pixel is a mixture with vegetation, soil and shadow
                fv, fs, fh = rng.uniform(0, 0.25), rng.uniform(0, 0.12), rng.uniform(0, 0.2)
                v = (1 - fv - fs - fh) * pick(built[name]) + fv * pick(canopy) + fs * pick(soil)
            rows.append(v)
    table = (np.asarray(rows, np.float64).T * 10000.0).astype(_F32)
    return table, np.array(sen.centers, np.float64)


def band_names(bands: int) -> tuple[str, ...]:
    """Names of the bands of a synthetic scene with ``bands`` bands, in file order."""
    if bands < 1:
        raise InputError(f"bands={bands} must be at least 1")
    return tuple(BAND_NAMES[b] if b < len(BAND_NAMES) else f"band{b + 1}" for b in range(bands))


# --------------------------------------------------------------------------- hashing
def _mix_py(x: int) -> int:
    """32-bit integer finaliser (lowbias32) on a Python int."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def _seed_key(seed: int) -> int:
    """Fold an arbitrary int seed into a 32-bit key (splitmix64 finaliser)."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return (z ^ (z >> 32)) & _M32


def _sub(key: int, n: int) -> int:
    """Independent sub-key number ``n`` of ``key``."""
    return _mix_py(key ^ _mix_py(n * 0x9E3779B9 + 0x632BE5AB))


def _mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash, vectorised over a uint32 array (returns a new array)."""
    x = x ^ (x >> _U32(16))
    x *= _U32(0x7FEB352D)
    x ^= x >> _U32(15)
    x *= _U32(0x846CA68B)
    x ^= x >> _U32(16)
    return x


def _hash(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    """Hash of integer coordinates ``(i, j)`` (broadcast together) and a key, uint32."""
    a = _mix(np.asarray(i).astype(_U32) ^ _U32(key))
    a = a + np.asarray(j).astype(_U32) * _U32(0x9E3779B1)
    return _mix(a)


def _hash1(i: np.ndarray, key: int) -> np.ndarray:
    """Hash of 1-D integer coordinates and a key, uint32."""
    return _mix(_mix(np.asarray(i).astype(_U32) ^ _U32(key)) + _U32(0x68E31DA4))


def _unit(h: np.ndarray) -> np.ndarray:
    """Map uint32 hashes to float32 in [0, 1)."""
    return (h >> _U32(8)).astype(_F32) * _F32(1.0 / 16777216.0)


# --------------------------------------------------------------------------- noise
def _axis(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice index, fraction and smoothstep weight of 1-D coordinates for one octave."""
    g = coords / scale
    idx = np.floor(g)
    frac = g - idx
    return idx.astype(np.int64), frac, frac * frac * (3.0 - 2.0 * frac)


def _noise(
    y: np.ndarray, x: np.ndarray, scale: float, key: int, grad: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D value noise in [-1, 1] on the grid ``y`` x ``x`` (monotonic float64 1-D coords).

    Interpolates along x on the lattice rows first (small), then gathers whole rows.
    With ``grad`` also returns the analytic derivatives d/dy and d/dx (per pixel).
    """
    iy, fy, sy = _axis(y, scale)
    ix, fx, sx = _axis(x, scale)
    i0, j0 = int(iy[0]), int(ix[0])
    ii = np.arange(i0, int(iy[-1]) + 2, dtype=np.int64)
    jj = np.arange(j0, int(ix[-1]) + 2, dtype=np.int64)
    lat = _unit(_hash(ii[:, None], jj[None, :], key)) * _F32(2.0) - _F32(1.0)
    lx = ix - j0
    ly = iy - i0
    a = np.take(lat, lx, axis=1)
    d = np.take(lat, lx + 1, axis=1)
    d -= a
    tx = a + d * sx.astype(_F32)[None, :]  # (lattice rows, w)
    t0 = tx[ly]
    t1 = tx[ly + 1]
    t1 -= t0
    syf = sy.astype(_F32)[:, None]
    v = t1 * syf
    v += t0
    if not grad:
        return v
    gy = t1 * (6.0 * fy * (1.0 - fy) / scale).astype(_F32)[:, None]
    dx = d * (6.0 * fx * (1.0 - fx) / scale).astype(_F32)[None, :]
    g0 = dx[ly]
    gx = dx[ly + 1]
    gx -= g0
    gx *= syf
    gx += g0
    return v, gy, gx


def _fbm(
    y: np.ndarray, x: np.ndarray, octaves: Sequence[tuple[float, float]], key: int
) -> np.ndarray:
    """Sum of value-noise octaves ``[(scale, amplitude), ...]``."""
    out: np.ndarray | None = None
    for n, (scale, amp) in enumerate(octaves):
        v = _noise(y, x, scale, _sub(key, n))
        assert isinstance(v, np.ndarray)
        v *= _F32(amp)
        out = v if out is None else out + v
    assert out is not None
    return out


def _noise1(x: np.ndarray, scale: float, key: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D value noise in [-1, 1] (float64) and its derivative."""
    ix, fx, sx = _axis(x, scale)
    i0 = int(ix.min())
    lat = _unit(_hash1(np.arange(i0, int(ix.max()) + 2, dtype=np.int64), key)).astype(np.float64)
    lat = lat * 2.0 - 1.0
    a = lat[ix - i0]
    d = lat[ix - i0 + 1] - a
    return a + d * sx, d * 6.0 * fx * (1.0 - fx) / scale


def _coarse(
    rows: np.ndarray,
    cols: np.ndarray,
    step: int,
    fn: Callable[[np.ndarray, np.ndarray], list[np.ndarray]],
) -> list[np.ndarray]:
    """Evaluate smooth fields on the global lattice of every ``step``-th pixel and
    interpolate them bilinearly to ``rows`` x ``cols`` (still a pure function of the
    global coordinates, and much cheaper for low-frequency fields)."""
    cy0, cy1 = int(rows[0]) // step, int(rows[-1]) // step + 1
    cx0, cx1 = int(cols[0]) // step, int(cols[-1]) // step + 1
    yc = np.arange(cy0, cy1 + 1, dtype=np.float64) * step
    xc = np.arange(cx0, cx1 + 1, dtype=np.float64) * step
    fields = fn(yc, xc)
    ly = rows // step - cy0
    lx = cols // step - cx0
    wy = ((rows % step) / step).astype(_F32)[:, None]
    wx = ((cols % step) / step).astype(_F32)[None, :]
    out = []
    for f in fields:
        a = np.take(f, lx, axis=1)
        b = np.take(f, lx + 1, axis=1)
        b -= a
        b *= wx
        b += a  # (coarse rows, w)
        t0 = b[ly]
        t1 = b[ly + 1]
        t1 -= t0
        t1 *= wy
        t1 += t0
        out.append(t1)
    return out


def _jgrid(
    x: np.ndarray, pitch: int, jitter: int, key: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Jittered 1-D grid: line k lies at ``k*pitch + hash(k) % (jitter+1)``.

    Returns the cell index of each coordinate, its offset from the cell's first line, the
    cell size and the line-position function.
    """

    def line(k: np.ndarray) -> np.ndarray:
        return k * pitch + (_hash1(k, key) % _U32(jitter + 1)).astype(np.int64)

    k0 = x // pitch
    k = np.where(x >= line(k0), k0, k0 - 1)
    start = line(k)
    return k, x - start, line(k + 1) - start, line


# --------------------------------------------------------------------------- scene model
@dataclass(frozen=True)
class _Keys:
    lake: int
    river: int
    river_width: int
    turbidity: int
    forest: int
    forest_type: int
    field_y: int
    field_x: int
    field_block: int
    field: int
    street_y: int
    street_x: int
    urban: int
    urban_block: int
    lot: int
    road_h: int
    road_v: int
    texture: int
    variation: int
    haze: int
    sensor: int
    border: int

    @classmethod
    def from_seed(cls, seed: int) -> _Keys:
        key = _seed_key(seed)
        names = cls.__dataclass_fields__
        return cls(**{name: _sub(key, 1000 + n) for n, name in enumerate(names)})


# Thresholds (calibrated on the noise distributions to give the intended class fractions).
_LAKE_T = 0.78
_FOREST_T = 0.47
_URBAN_T = 0.62
_ROAD_SPACING = 640
_CLASS_TEXTURE = np.array([0.03, 0.22, 0.07, 0.10, 0.04, 0.03], dtype=_F32)

_CROP_A = np.array([_MAT[m] for m in ("crop_green",) * 4 + ("crop_senescent",) * 2
                    + ("crop_sparse", "crop_green")], dtype=np.uint8)
_CROP_B = np.array([_MAT[m] for m in ("crop_sparse", "crop_sparse", "crop_senescent",
                                      "crop_green", "crop_green", "crop_sparse",
                                      "soil_wet", "grass")], dtype=np.uint8)


def _mix_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """lowbias32 hash of a uint32 array in place (``tmp``: scratch of the same shape)."""
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        np.right_shift(x, _U32(shift), out=tmp)
        x ^= tmp
        x *= _U32(mult)
    np.right_shift(x, _U32(16), out=tmp)
    x ^= tmp


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values of a non-decreasing 1-D int array and each element's index into them."""
    change = np.empty(ids.size, dtype=bool)
    change[0] = True
    np.not_equal(ids[1:], ids[:-1], out=change[1:])
    inverse = np.cumsum(change) - 1
    return ids[change], inverse


def _fields(
    rows: np.ndarray, cols: np.ndarray, keys: _Keys, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Field parcels: a jittered grid of farm blocks, each split into 1..4 strips.

    Returns labels, material a/b, mixing weight and brightness per pixel.
    """
    fky, floc_y, fsize_y, _ = _jgrid(rows, 96, 40, keys.field_y)
    # each row of farm blocks has its own column grid (brick-like layout)
    ky_runs, run_of_row = _runs(fky)
    grids = [_jgrid(cols, 96, 40, _sub(keys.field_x, int(k) & _M32)) for k in ky_runs]
    fkx_runs = np.stack([g[0] for g in grids])
    ky0, kx0 = int(fky[0]), int(fkx_runs.min())
    kys = np.arange(ky0, int(fky[-1]) + 1)
    kxs = np.arange(kx0, int(fkx_runs.max()) + 1)
    nbx = kxs.size
    # per block: orientation and number of strips; per strip: the field's properties
    bh = _hash(kys[:, None], kxs[None, :], keys.field_block).ravel()
    fh = _hash(kys[:, None, None], kxs[None, :, None] * 8 + np.arange(4)[None, None, :],
               keys.field).ravel()
    fu = fh & _U32(255)
    f_lab = np.where(fu < 176, CROPLAND, BARE_SOIL).astype(np.uint8)
    f_lab[fu >= 244] = FOREST  # small woodlots
    bare = f_lab == BARE_SOIL
    state = (fh >> _U32(8)) & _U32(7)
    f_ma = np.where(bare, _MAT["soil_dry"], _CROP_A[state]).astype(np.uint8)
    f_mb = np.where(bare, _MAT["soil_wet"], _CROP_B[state]).astype(np.uint8)
    u = _unit(_mix(fh))
    f_t = np.where(bare, u, u * _F32(0.6))
    f_var = np.where(bare, _F32(0.3), _F32(0.12))
    f_b = _F32(0.9) + _F32(0.2) * _unit(fh * _U32(0x2C1B3C6D))
    # visible crop rows (stripes along the strip direction) in some crop fields
    f_stripe = np.where(((fh >> _U32(12)) & _U32(1)).astype(bool) & (f_lab == CROPLAND),
                        _F32(0.07), _F32(0.0))

    bi = ((fky - ky0) * nbx)[:, None] + (fkx_runs - kx0)[run_of_row]
    bhp = np.take(bh, bi)
    orient = (bhp & _U32(1)).astype(bool)
    bhp >>= _U32(1)
    bhp &= _U32(3)
    nstrip = bhp.astype(_F32)
    nstrip += _F32(1.0)
    fr_y = ((floc_y + 0.5) / fsize_y).astype(_F32)[:, None]
    fr_x = np.stack([((g[1] + 0.5) / g[2]).astype(_F32) for g in grids])[run_of_row]
    frac = np.where(orient, fr_x, fr_y)
    frac *= nstrip
    fidx = frac.astype(np.intp)
    bi *= 4
    fidx += bi
    labels = np.take(f_lab, fidx)
    mat_a = np.take(f_ma, fidx)
    mat_b = np.take(f_mb, fidx)
    tmix = np.take(f_var, fidx)
    tmix *= var
    tmix += np.take(f_t, fidx)
    bright = np.take(f_b, fidx)
    rowcoord = np.where(orient, cols[None, :].astype(np.int32), rows[:, None].astype(np.int32))
    rowcoord &= 2
    stripe = np.take(f_stripe, fidx)
    stripe *= rowcoord.astype(_F32)
    stripe *= _F32(0.5)
    bright -= stripe
    return labels, mat_a, mat_b, tmix, bright


def _urban(
    rows: np.ndarray, cols: np.ndarray, keys: _Keys
) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Urban districts: street grid, lots with buildings (and shadows), yards, parks.

    Returns ``(row slice, col slice, labels, mat_a, mat_b, tmix, bright)`` for the
    bounding box of the urban pixels in the chunk (labels 255 where not urban), or None.
    """
    uky, uloc_y, usize_y, uline_y = _jgrid(rows, 64, 22, keys.street_y)
    ukx, uloc_x, usize_x, uline_x = _jgrid(cols, 64, 22, keys.street_x)
    ky0, kx0 = int(uky[0]) - 1, int(ukx[0]) - 1
    kys = np.arange(ky0, int(uky[-1]) + 1)
    kxs = np.arange(kx0, int(ukx[-1]) + 1)
    yc = 0.5 * (uline_y(kys) + uline_y(kys + 1)).astype(np.float64)
    xc = 0.5 * (uline_x(kxs) + uline_x(kxs + 1)).astype(np.float64)
    ug = _fbm(yc, xc, [(420, 1.0), (160, 0.7), (70, 0.35)], keys.urban) > _F32(_URBAN_T)
    # block codes: bit0 urban, bit1 top street, bit2 left street, bit3 corner, bits 4-5 type
    up = np.zeros_like(ug)
    up[1:] = ug[:-1]
    left = np.zeros_like(ug)
    left[:, 1:] = ug[:, :-1]
    diag = np.zeros_like(ug)
    diag[1:, 1:] = ug[:-1, :-1]
    btype = (_hash(kys[:, None], kxs[None, :], keys.urban_block) & _U32(31)).astype(np.uint8)
    kind = np.where(btype < 3, 1, np.where(btype < 5, 2, 0)).astype(np.uint8)  # park, plaza
    code = (ug.astype(np.uint8) | ((ug | up).astype(np.uint8) << 1)
            | ((ug | left).astype(np.uint8) << 2) | ((ug | up | left | diag).astype(np.uint8) << 3)
            | (kind << 4) * ug)
    code[0, :] = 0
    code[:, 0] = 0
    affected = (code & 15) != 0
    lky, lkx = uky - ky0, ukx - kx0
    rsel = np.flatnonzero(affected.any(axis=1)[lky])
    csel = np.flatnonzero(affected.any(axis=0)[lkx])
    if rsel.size == 0 or csel.size == 0:
        return None
    rs = slice(int(rsel[0]), int(rsel[-1]) + 1)
    cs = slice(int(csel[0]), int(csel[-1]) + 1)
    uky, uloc_y, usize_y, lky = uky[rs], uloc_y[rs], usize_y[rs], lky[rs]
    ukx, uloc_x, usize_x, lkx = ukx[cs], uloc_x[cs], usize_x[cs], lkx[cs]

    pc = np.take(code.ravel(), (lky * kxs.size)[:, None] + lkx[None, :])

    def street_width(k: np.ndarray, key: int) -> np.ndarray:
        hk = _hash1(k, key)
        wd = 2 + (hk & _U32(1)).astype(np.int64) + ((hk >> _U32(1)) & _U32(1)).astype(np.int64)
        return np.where((hk >> _U32(4)) % _U32(7) == 0, 5, wd)

    wy = street_width(uky, _sub(keys.street_y, 5))
    wx = street_width(ukx, _sub(keys.street_x, 5))
    st_top = (uloc_y < wy)[:, None]
    st_left = (uloc_x < wx)[None, :]
    street = (st_top & ((pc & 2) != 0)) | (st_left & ((pc & 4) != 0))
    street |= st_top & st_left & ((pc & 8) != 0)
    interior = ((pc & 1) != 0) & ~st_top & ~st_left
    kindp = pc >> 4
    # lots: each row band / column band of blocks is split into lots of 12..22 px
    iy = (uloc_y - wy).astype(np.float64)
    ih = (usize_y - wy).astype(np.float64)
    ix = (uloc_x - wx).astype(np.float64)
    iw = (usize_x - wx).astype(np.float64)
    ny = np.maximum(1.0, np.round(ih / (12 + (_hash1(uky, _sub(keys.lot, 1)) % _U32(11)))))
    nx = np.maximum(1.0, np.round(iw / (12 + (_hash1(ukx, _sub(keys.lot, 2)) % _U32(11)))))
    len_y, len_x = ih / ny, iw / nx
    ly = np.clip(np.floor(iy / len_y), 0, ny - 1)
    lx = np.clip(np.floor(ix / len_x), 0, nx - 1)
    uy = (iy - ly * len_y).astype(_F32)[:, None]  # position within the lot
    ux = (ix - lx * len_x).astype(_F32)[None, :]
    lot_r, lri = _runs(uky * 16 + ly.astype(np.int64))
    lot_c, lci = _runs(ukx * 16 + lx.astype(np.int64))
    lh_small = _hash(lot_r[:, None], lot_c[None, :], keys.lot)
    lh = np.take(lh_small.ravel(), (lri * lot_c.size)[:, None] + lci[None, :])

    def bits(shift: int, mask: int) -> np.ndarray:
        return ((lh >> _U32(shift)) & _U32(mask)).astype(_F32)

    s_top = _F32(1.0) + bits(0, 1) + bits(1, 1)
    y_end = (len_y.astype(_F32)[:, None] - _F32(1.0)) - bits(2, 1) - bits(3, 1)
    s_left = _F32(1.0) + bits(4, 1) + bits(5, 1)
    x_end = (len_x.astype(_F32)[None, :] - _F32(1.0)) - bits(6, 1) - bits(7, 1)
    lots = interior & (kindp == 0) & (((lh >> _U32(8)) & _U32(7)) != 0)

    def in_building(d: float) -> np.ndarray:
        yy = uy + _F32(d)
        xx = ux + _F32(d)
        return (yy >= s_top) & (yy < y_end) & (xx >= s_left) & (xx < x_end)

    building = lots & in_building(0.0)
    shadow = lots & ~building & in_building(2.0)
    open_lot = interior & (kindp == 0) & ~building
    yard_grass = open_lot & (((lh >> _U32(11)) & _U32(3)) != 0)
    yard_gravel = (open_lot & ~yard_grass) | (interior & (kindp == 2))
    park = interior & (kindp == 1)

    shape = pc.shape
    labels = np.full(shape, 255, dtype=np.uint8)
    mat_a = np.zeros(shape, dtype=np.uint8)
    mat_b = np.zeros(shape, dtype=np.uint8)
    for mask, lab, ma, mb in (
        (yard_grass, CROPLAND, "grass", "crop_sparse"),
        (yard_gravel, BARE_SOIL, "gravel", "soil_dry"),
        (park, FOREST, "forest_broadleaf", "grass"),
        (street, ROAD, "asphalt", "concrete"),
    ):
        labels[mask] = lab
        mat_a[mask] = _MAT[ma]
        mat_b[mask] = _MAT[mb]
    tmix = _unit(lh * _U32(0x5BD1E995))
    tmix *= _F32(0.5)
    tmix[street] = _F32(0.15)
    bright = np.full(shape, _F32(0.95), dtype=_F32)
    bright[shadow] = _F32(0.55 * 0.95)
    # buildings: roof material and brightness per lot, pitched roofs shaded on one side
    labels[building] = BUILDING
    roof = _ROOFS[(lh >> _U32(13)) & _U32(7)]
    np.copyto(mat_a, roof, where=building)
    np.copyto(mat_b, roof, where=building)
    rb = _F32(0.8) + _F32(0.4) * _unit(lh * _U32(0x27D4EB2F))
    pitched = ((lh >> _U32(16)) & _U32(1)).astype(bool)
    ridge = (uy - s_top) < (y_end - s_top) * _F32(0.5)
    rb *= np.where(pitched, np.where(ridge, _F32(1.12), _F32(0.9)), _F32(1.0))
    np.copyto(bright, rb, where=building)
    tmix[building] = _F32(0.0)
    bright[street] = _F32(1.0)
    return rs, cs, labels, mat_a, mat_b, tmix, bright


def _render_chunk(
    rows: np.ndarray,
    cols: np.ndarray,
    keys: _Keys,
    table: np.ndarray,
    border: tuple[int, int] | None,
    centers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render image (float32 reflectance, (bands, h, w)) and labels for a grid chunk.

    With ``centers`` (band centres in micrometres) ``table`` holds :data:`_VARIANTS`
    measured variants per material (:func:`_spectral_table`), chosen per patch; haze grows
    towards the blue as ``centre**-3``, and terrain shading and cloud shadows vary the light.
    """
    h, w = rows.size, cols.size
    yf = rows.astype(np.float64)
    xf = cols.astype(np.float64)

    # ---- low-frequency fields on a coarse lattice: lakes, rivers, cover variation
    def water_fields(yc: np.ndarray, xc: np.ndarray) -> list[np.ndarray]:
        lake = _fbm(yc, xc, [(700, 1.0), (330, 0.5), (150, 0.25)], keys.lake)
        v = np.zeros((yc.size, xc.size), dtype=_F32)
        gy = np.zeros_like(v)
        gx = np.zeros_like(v)
        for n, (scale, amp) in enumerate([(1300, 1.0), (560, 0.45), (240, 0.18)]):
            nv, ngy, ngx = _noise(yc, xc, scale, _sub(keys.river, n), grad=True)
            v += nv * _F32(amp)
            gy += ngy * _F32(amp)
            gx += ngx * _F32(amp)
        # signed distance (px) to the river's centre line, relative to the half width
        dist = v / np.maximum(np.sqrt(gy * gy + gx * gx), _F32(1e-6))
        halfw = _F32(2.5) + _F32(3.75) * (_noise(yc, xc, 1800, keys.river_width) + _F32(1.0))
        cover = _noise(yc, xc, 400, keys.turbidity)
        return [lake, dist / halfw, cover]

    lake_f, river_f, cover = _coarse(rows, cols, 8, water_fields)
    n48 = _noise(yf, xf, 48, _sub(keys.lake, 9))
    n48 *= _F32(0.08)
    lake_f += n48
    del n48
    lake = lake_f > _F32(_LAKE_T)
    del lake_f
    np.abs(river_f, out=river_f)
    river = river_f < _F32(1.0)
    del river_f
    water = lake | river

    # ---- forest patches (mid-frequency fBm with ragged edges) and texture
    forest_f, var = _coarse(
        rows, cols, 4,
        lambda yc, xc: [_fbm(yc, xc, [(340, 1.0), (160, 0.5), (70, 0.25), (24, 0.12)],
                             keys.forest),
                        _noise(yc, xc, 36, keys.variation)],
    )
    n7 = _noise(yf, xf, 7, _sub(keys.forest, 77))
    tex = _noise(yf, xf, 3, keys.texture)
    n7 *= _F32(0.06)
    forest_f += n7
    n7 *= _F32(0.7 / 0.06)
    tex += n7
    del n7
    forest = forest_f > _F32(_FOREST_T)
    del forest_f

    # ---- field parcels (cropland, bare soil, woodlots)
    labels, mat_a, mat_b, tmix, bright = _fields(rows, cols, keys, var)
    del var
    forest |= labels == FOREST
    labels[forest] = FOREST
    mat_a[forest] = _MAT["forest_broadleaf"]
    mat_b[forest] = _MAT["forest_conifer"]
    ftype = cover * _F32(1.4)
    ftype += _F32(0.5)
    np.copyto(tmix, ftype, where=forest)
    del ftype

    # ---- urban districts replace the rural cover
    urban = _urban(rows, cols, keys)
    if urban is not None:
        rs, cs, u_lab, u_ma, u_mb, u_t, u_b = urban
        sel = u_lab != LABEL_NODATA
        np.copyto(labels[rs, cs], u_lab, where=sel)
        np.copyto(mat_a[rs, cs], u_ma, where=sel)
        np.copyto(mat_b[rs, cs], u_mb, where=sel)
        np.copyto(tmix[rs, cs], u_t, where=sel)
        np.copyto(bright[rs, cs], u_b, where=sel)
        del urban, u_lab, u_ma, u_mb, u_t, u_b, sel

    # ---- rural road network: sparse wiggly roads roughly every _ROAD_SPACING px
    for horizontal in (True, False):
        along, across = (xf, yf) if horizontal else (yf, xf)
        rkey = keys.road_h if horizontal else keys.road_v
        lo = int(across[0]) - 300
        hi = int(across[-1]) + 300
        for k in range(lo // _ROAD_SPACING - 1, hi // _ROAD_SPACING + 1):
            hk = _mix_py(rkey ^ _mix_py(k & _M32))
            if hk % 5 == 0:  # this road does not exist
                continue
            base = k * _ROAD_SPACING + (hk >> 8) % (_ROAD_SPACING // 2)
            kk = _sub(rkey, k & _M32)
            n1, d1 = _noise1(along, 420.0, kk)
            n2, d2 = _noise1(along, 130.0, _sub(kk, 1))
            pos = base + 90.0 * n1 + 18.0 * n2
            half = (1.5 + ((hk >> 4) % 3) * 0.5) * np.sqrt(1.0 + (90.0 * d1 + 18.0 * d2) ** 2)
            a0 = int(np.searchsorted(across, np.min(pos - half) - 1.0))
            a1 = int(np.searchsorted(across, np.max(pos + half) + 1.0))
            if a1 <= a0:
                continue
            sub = across[a0:a1] + 0.5
            if horizontal:
                on = np.abs(sub[:, None] - pos[None, :]) < half[None, :]
                region = (slice(a0, a1), slice(None))
            else:
                on = np.abs(sub[None, :] - pos[:, None]) < half[:, None]
                region = (slice(None), slice(a0, a1))
            t_road = _F32(((hk >> 12) % 100) / 100.0)
            labels[region][on] = ROAD
            mat_a[region][on] = _MAT["asphalt"]
            mat_b[region][on] = _MAT["concrete"]
            tmix[region][on] = t_road
            bright[region][on] = _F32(1.0)

    # ---- water on top
    labels[water] = WATER
    mat_a[water] = _MAT["water_clear"]
    mat_b[water] = _MAT["water_turbid"]
    turb = cover * _F32(0.6)
    turb += _F32(0.35)
    turb += river * _F32(0.25)
    np.copyto(tmix, turb, where=water)
    bright[water] = _F32(1.0)
    del turb, cover, water, lake, river, forest

    # ---- spectra: mix end-members, texture, haze, sensor noise
    np.clip(tmix, _F32(0.0), _F32(1.0), out=tmix)
    tex *= np.take(_CLASS_TEXTURE, labels.astype(np.intp))
    tex += _F32(1.0)
    bright *= tex
    del tex
    ma = mat_a.astype(np.intp)
    mb = mat_b.astype(np.intp)
    del mat_a, mat_b
    if centers is not None:
        # a measured variant per patch; terrain shading (slopes facing the sun) and cloud shadows
        pick = _noise(yf, xf, 90.0, _sub(keys.variation, 5))
        variant = np.clip(((pick + _F32(1.0)) * _F32(0.5 * _VARIANTS)).astype(np.intp), 0, _VARIANTS - 1)
        ma *= _VARIANTS
        ma += variant
        mb *= _VARIANTS
        mb += variant
        del pick, variant
        _, gy, gx = _noise(yf, xf, 260.0, _sub(keys.variation, 6), grad=True)
        shade = (gy + gx) * _F32(260.0 * 0.12)
        shade += _F32(1.0)
        cloud = _fbm(yf, xf, [(220, 1.0), (70, 0.3)], _sub(keys.haze, 7))
        cloud -= _F32(0.72)
        np.clip(cloud * _F32(4.0), _F32(0.0), _F32(0.5), out=cloud)
        shade -= cloud
        bright *= shade
        del shade, cloud, gy, gx
    nb = table.shape[0]
    image = np.empty((nb, h, w), dtype=_F32)
    # haze: smooth, separable, strongest in the short wavelengths
    hy, _ = _noise1(yf, 1700.0, keys.haze)
    hx, _ = _noise1(xf, 1900.0, _sub(keys.haze, 1))
    haze = (0.25 * (hy + 2.0)).astype(_F32)[:, None] + (0.25 * hx).astype(_F32)[None, :]
    row_key = _mix(rows.astype(_U32) ^ _U32(keys.sensor))[:, None]
    col_part = (cols.astype(_U32) * _U32(0x9E3779B1))[None, :]
    sensor = np.empty((h, w), dtype=_U32)
    scratch = np.empty((h, w), dtype=_U32)
    tmp = np.empty((h, w), dtype=_F32)
    tri = np.empty((h, w), dtype=_F32)
    haze_gain = {0: 140.0, 1: 70.0, 2: 30.0, 9: 200.0}
    if centers is not None:
        haze_gain = {b: 160.0 * (0.49 / float(c)) ** 3 for b, c in enumerate(centers)}
    for b in range(nb):
        vb = image[b]
        np.take(table[b], ma, out=vb)
        np.take(table[b], mb, out=tmp)
        tmp -= vb
        tmp *= tmix
        vb += tmp
        vb *= bright
        if b in haze_gain:
            np.multiply(haze, _F32(haze_gain[b]), out=tmp)
            vb += tmp
        if b % 2 == 0:
            np.add(row_key, col_part + _U32(b), out=sensor)
            _mix_inplace(sensor, scratch)
        # triangular noise from two bytes of the hash, std ~ (20 + 1.2% of the signal) DN
        by = sensor.view(np.uint8).reshape(h, w, 4)
        off = 2 * (b % 2)
        np.add(by[:, :, off], by[:, :, off + 1], out=tri, dtype=_F32)
        tri -= _F32(255.0)
        np.multiply(vb, _F32(0.012 / 104.0), out=tmp)
        tmp += _F32(20.0 / 104.0)
        tmp *= tri
        vb += tmp

    if border is not None:
        nodata = _border_mask(rows, cols, border, keys.border)
        labels[nodata] = LABEL_NODATA
        np.clip(image, _F32(1.0), _F32(10000.0), out=image)
        image[:, nodata] = 0.0
    else:
        np.clip(image, _F32(1.0), _F32(10000.0), out=image)
    return image, labels


def _border_mask(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], key: int
) -> np.ndarray:
    """Irregular edge-of-swath nodata region along one or two edges of the scene."""
    height, width = shape
    variant = _mix_py(key) % 8
    edges = [("left",), ("right",), ("top",), ("bottom",), ("left", "top"),
             ("right", "bottom"), ("left", "bottom"), ("right", "top")][variant]
    mask = np.zeros((rows.size, cols.size), dtype=bool)
    for n, edge in enumerate(edges):
        ek = _sub(key, n + 1)
        vertical_edge = edge in ("left", "right")
        along = rows if vertical_edge else cols
        extent = width if vertical_edge else height
        length = height if vertical_edge else width
        u1 = (_mix_py(ek) & 0xFFFF) / 65536.0
        u2 = ((_mix_py(ek) >> 16) & 0xFFFF) / 65536.0
        a = along.astype(np.float64)
        span = max(length, 1)
        n1, _ = _noise1(a, max(span / 5.0, 8.0), _sub(ek, 1))
        n2, _ = _noise1(a, max(span / 40.0, 4.0), _sub(ek, 2))
        n3, _ = _noise1(a, 3.0, _sub(ek, 3))
        depth = extent * (0.05 + 0.06 * u1 + 0.05 * (u2 - 0.5) * (a / span - 0.5)
                          + 0.02 * n1 + 0.006 * n2) + 1.5 * n3
        if edge == "left":
            mask |= cols[None, :] < depth[:, None]
        elif edge == "right":
            mask |= cols[None, :] >= width - depth[:, None]
        elif edge == "top":
            mask |= rows[:, None] < depth[None, :]
        else:
            mask |= rows[:, None] >= height - depth[None, :]
    return mask


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}={value!r} must be an integer")
    if value < minimum:
        raise InputError(f"{name}={value!r} must be at least {minimum}")
    return int(value)


def render_window(
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    seed: int = 0,
    bands: int = 4,
    *,
    scene_shape: tuple[int, int] | None = None,
    nodata_border: bool = False,
    sensor: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one window of a synthetic scene (a pure function of its arguments).

    The result for a pixel depends only on its global ``(row, col)``, ``seed``, and, with
    ``nodata_border``, ``scene_shape``: a window equals the same window cut from any
    larger render.

    Args:
        row_off: Global row of the window's first row (>= 0).
        col_off: Global column of the window's first column (>= 0).
        height: Window height in pixels (>= 1).
        width: Window width in pixels (>= 1).
        seed: Scene seed (any int).
        bands: Number of bands (see :func:`band_names`).
        scene_shape: ``(height, width)`` of the whole scene; needed for ``nodata_border``.
        nodata_border: Add the scene's irregular nodata border (image 0, labels 255).
        sensor: Render from measured spectra through this sensor's bands (one of
            :data:`geoseg.spectra.SENSORS`, at most 6 bands: blue .. swir2), with a point
            spread that mixes neighbouring pixels, in the product's digital numbers
            (:data:`geoseg.spectra.PRODUCTS`). None: the invented end-members.

    Returns:
        ``(image, labels)``: uint16 ``(bands, height, width)`` reflectance x 10000 (>= 1
        outside the nodata border; a sensor's product DNs with ``sensor``) and uint8
        ``(height, width)`` class ids.

    Raises:
        InputError: For invalid arguments.
    """
    row_off = _check_int("row_off", row_off, 0)
    col_off = _check_int("col_off", col_off, 0)
    height = _check_int("height", height, 1)
    width = _check_int("width", width, 1)
    bands = _check_int("bands", bands, 1)
    if bands > _MAX_BANDS:
        raise InputError(f"bands={bands} is too many; use at most {_MAX_BANDS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed={seed!r} must be an integer")
    border: tuple[int, int] | None = None
    if nodata_border:
        if scene_shape is None:
            raise InputError("nodata_border=True needs scene_shape=(height, width) of the scene")
        border = (_check_int("scene height", scene_shape[0], 1),
                  _check_int("scene width", scene_shape[1], 1))
    keys = _Keys.from_seed(int(seed))
    centers = None
    if sensor is None:
        table = _material_table(bands)
    else:
        if bands > 6:
            raise InputError(f"bands={bands}: a sensor's scenes have at most 6 bands (blue, green, red, nir, swir1, swir2)")
        table, centers = _sensor_table(sensor, int(seed))
        table, centers = table[:bands], centers[:bands]
    pad = 0 if sensor is None else 1  # the point spread reaches one pixel
    image = np.empty((bands, height, width), dtype=np.uint16)
    labels = np.empty((height, width), dtype=np.uint8)
    for r0 in range(0, height, _CHUNK):
        r1 = min(height, r0 + _CHUNK)
        rows = np.arange(row_off + r0 - pad, row_off + r1 + pad, dtype=np.int64)
        for c0 in range(0, width, _CHUNK):
            c1 = min(width, c0 + _CHUNK)
            cols = np.arange(col_off + c0 - pad, col_off + c1 + pad, dtype=np.int64)
            img, lab = _render_chunk(rows, cols, keys, table, border, centers)
            if pad:
                img, lab = _point_spread(img, lab, sensor)  # type: ignore[arg-type]
            np.rint(img, out=img)
            image[:, r0:r1, c0:c1] = img
            labels[r0:r1, c0:c1] = lab
    return image, labels


_SENSOR_TABLES: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _sensor_table(sensor: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = (sensor, seed)
    if key not in _SENSOR_TABLES:
        if len(_SENSOR_TABLES) > 16:
            _SENSOR_TABLES.clear()
        _SENSOR_TABLES[key] = _spectral_table(sensor, seed)
    return _SENSOR_TABLES[key]


def _point_spread(img: np.ndarray, lab: np.ndarray, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    """Half of each pixel's signal from its 3x3 neighbourhood (mixed edge pixels); the product's DNs.

    ``img`` and ``lab`` carry one extra pixel on every side, which is dropped. Nodata (0) stays 0.
    """
    from geoseg.spectra import PRODUCTS

    h, w = lab.shape[0] - 2, lab.shape[1] - 2
    box = np.zeros((img.shape[0], h, w), _F32)
    for dr in range(3):
        for dc in range(3):
            box += img[:, dr : dr + h, dc : dc + w]
    out = img[:, 1:-1, 1:-1] * _F32(0.5) + box * _F32(0.5 / 9.0)
    lab = lab[1:-1, 1:-1]
    scale, offset = PRODUCTS[sensor]
    nodata = lab == LABEL_NODATA
    out = (out / _F32(10000.0) - _F32(offset)) / _F32(scale)
    np.clip(out, _F32(1.0), _F32(65535.0), out=out)
    out[:, nodata] = 0.0
    return out, lab


# --------------------------------------------------------------------------- writer
@dataclass(frozen=True)
class SceneInfo:
    """What :func:`synthesize` wrote.

    Attributes:
        path: The image GeoTIFF.
        labels_path: The label GeoTIFF, or None when not requested.
        width: Width in pixels.
        height: Height in pixels.
        count: Number of bands.
        crs: CRS as a string (e.g. ``"EPSG:32633"``).
        transform: Affine pixel-to-CRS transform (top-left corner origin).
        seed: The seed.
        band_names: Band descriptions in file order.
        nodata: Image nodata value (0 with a nodata border, else None).
    """

    path: Path
    labels_path: Path | None
    width: int
    height: int
    count: int
    crs: str
    transform: Affine
    seed: int
    band_names: tuple[str, ...] = ()
    nodata: int | None = None


_COMPRESS: str | None = None


def _compression() -> str:
    """ZSTD when this GDAL build supports it, else DEFLATE (probed once)."""
    global _COMPRESS
    if _COMPRESS is None:
        probe = "/vsimem/geoseg_zstd_probe.tif"
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"):
                with open_raster(probe, "w", env=False, driver="GTiff", width=1, height=1, count=1,
                                 dtype="uint16", compress="ZSTD", crs="EPSG:32633",
                                 transform=Affine(10.0, 0.0, 0.0, 0.0, -10.0, 0.0)) as dst:
                    dst.write(np.ones((1, 1, 1), dtype=np.uint16))
                with open_raster(probe, env=False) as src:
                    ok = (src.profile.get("compress") or "").lower() == "zstd"
                rasterio.shutil.delete(probe)
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            ok = False
        _COMPRESS = "ZSTD" if ok else "DEFLATE"
    return _COMPRESS


def _normalize_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
    else:
        raise InputError(f"size={size!r} must be an int or a (height, width) pair")
    height = _check_int("size height", height, 1)
    width = _check_int("size width", width, 1)
    if height > _MAX_SIDE or width > _MAX_SIDE:
        raise InputError(f"size={size!r} is too large; at most {_MAX_SIDE} px per side")
    return height, width


def _parse_crs(crs: object) -> CRS:
    try:
        parsed = CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError) as exc:
        raise InputError(f"invalid CRS {crs!r}: use e.g. 'EPSG:32633' ({exc})") from None
    if not (parsed.is_projected or parsed.is_geographic):
        raise InputError(f"CRS {crs!r} is neither projected nor geographic; use e.g. 'EPSG:32633'")
    return parsed


def _check_output(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: directory {parent} is not writable")
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a directory; give a file name")


def synthesize(
    out_path: str | os.PathLike[str],
    size: int | Sequence[int] = 4096,
    *,
    bands: int = 4,
    seed: int = 0,
    labels_path: str | os.PathLike[str] | None = None,
    crs: str | CRS = "EPSG:32633",
    nodata_border: bool = False,
    block: int = 512,
    pixel_size: float | None = None,
    origin: tuple[float, float] | None = None,
    sensor: str | None = None,
) -> SceneInfo:
    """Write a synthetic scene (and optionally its labels) as tiled, compressed GeoTIFFs.

    The image is uint16 with ``bands`` bands (reflectance x 10000, band descriptions set),
    the labels uint8 with the :data:`LANDCOVER_CLASSES` ids, nodata 255, a colour table,
    and the class scheme in tags: ``GEOSEG_CLASSES`` (JSON ``[{"id", "name", "color"}]``),
    ``CLASS_NAMES`` (JSON list), ``CLASS_<id>``, and ``classes`` in the ``geoseg`` metadata
    domain (``src.tags(ns="geoseg")``, i.e. "geoseg:classes"; GDAL cannot store a ``:`` in
    a default-domain key). Both files carry ``GEOSEG_SYNTHETIC`` (JSON of the arguments).
    Both are written window by window (memory does not grow with the scene size) under a
    temporary name and renamed when complete; existing files are replaced. The same
    arguments always give byte-identical files.

    Args:
        out_path: Image GeoTIFF to write.
        size: Side length in pixels, or ``(height, width)``.
        bands: Number of bands: 3 = blue, green, red; 4 = + nir; more adds swir1, swir2,
            red_edge1..3, coastal, then narrow nir-swir bands (see :func:`band_names`).
        seed: Scene seed.
        labels_path: Where to write the ground-truth label raster (None: not written).
        crs: Any CRS ``rasterio.crs.CRS.from_user_input`` accepts.
        nodata_border: Add an irregular nodata border (image 0 declared nodata, labels 255).
        block: Tile size and write-window size (multiple of 16).
        pixel_size: Pixel size in CRS units; default 10 (m) for projected CRSs and 1e-4
            (degrees) for geographic ones.
        origin: ``(x, y)`` of the top-left corner; default (500000, 5500000) for projected
            CRSs and (12.0, 45.0) for geographic ones.
        sensor: Render from measured spectra through a sensor's bands
            (:data:`geoseg.spectra.SENSORS`: sentinel2, landsat8, landsat9; at most 6 bands),
            stored as the product's digital numbers (Sentinel-2 L2A: reflectance x 10000 +
            1000; Landsat Collection 2: (reflectance + 0.2) / 0.0000275) with the GeoTIFF
            scale/offset that reads them back as reflectance x 10000.

    Returns:
        A :class:`SceneInfo` describing the written scene.

    Raises:
        InputError: For invalid arguments (size, bands, CRS, block, pixel size, origin).
        OutputError: If an output directory is missing or not writable.
    """
    height, width = _normalize_size(size)
    bands = _check_int("bands", bands, 1)
    if bands > _MAX_BANDS:
        raise InputError(f"bands={bands} is too many; use at most {_MAX_BANDS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed={seed!r} must be an integer")
    seed = int(seed)
    block = _check_int("block", block, 16)
    if block % 16:
        raise InputError(f"block={block} must be a multiple of 16 (GeoTIFF tile size)")
    parsed = _parse_crs(crs)
    geographic = bool(parsed.is_geographic)
    if pixel_size is None:
        pixel_size = 1e-4 if geographic else 10.0
    if isinstance(pixel_size, bool) or not isinstance(pixel_size, (int, float)) or not (
        math.isfinite(pixel_size) and pixel_size > 0
    ):
        raise InputError(f"pixel_size={pixel_size!r} must be a positive number")
    if origin is None:
        origin = (12.0, 45.0) if geographic else (500000.0, 5500000.0)
    if len(origin) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in origin):
        raise InputError(f"origin={origin!r} must be an (x, y) pair of finite numbers")
    transform = Affine(float(pixel_size), 0.0, float(origin[0]), 0.0, -float(pixel_size), float(origin[1]))

    out = Path(out_path)
    _check_output(out, "image")
    lab_out = Path(labels_path) if labels_path is not None else None
    if lab_out is not None:
        _check_output(lab_out, "labels")
        if lab_out.resolve() == out.resolve():
            raise InputError(f"labels_path {lab_out} is the image path; give a different file")

    if sensor is not None:
        from geoseg.spectra import PRODUCTS, SENSORS

        if sensor not in SENSORS:
            raise InputError(f"unknown sensor {sensor!r}: use one of {', '.join(SENSORS)}")
        if bands > 6:
            raise InputError(f"bands={bands}: a sensor's scenes have at most 6 bands (blue, green, red, nir, swir1, swir2)")
    names = band_names(bands)
    compress = _compression()
    common = dict(
        driver="GTiff", width=width, height=height, crs=parsed, transform=transform,
        tiled=True, blockxsize=block, blockysize=block, compress=compress, bigtiff="IF_SAFER",
    )
    if compress == "ZSTD":
        common["zstd_level"] = 1
    img_profile = dict(common, count=bands, dtype="uint16", predictor=2, interleave="pixel",
                       nodata=0 if nodata_border else None)
    lab_profile = dict(common, count=1, dtype="uint8", nodata=LABEL_NODATA)
    shape = (height, width)
    # GDAL reads "name:value" as a key/value pair, so "geoseg:*" names cannot live in the
    # default metadata domain: they are written as the keys of the "geoseg" domain.
    synthetic_json = json.dumps(
        {"version": GENERATOR_VERSION, "seed": seed, "height": height, "width": width,
         "bands": bands, "nodata_border": bool(nodata_border),
         **({"sensor": sensor} if sensor is not None else {})},
        sort_keys=True, separators=(",", ":"),
    )
    tags = {"GEOSEG_GENERATOR": "geoseg.synthetic", "GEOSEG_SYNTHETIC": synthetic_json}
    ns_tags = {"generator": "geoseg.synthetic", "synthetic": synthetic_json}
    class_json = classes_json(LANDCOVER_CLASSES)
    class_tags = {
        "GEOSEG_CLASSES": class_json,
        "CLASS_NAMES": json.dumps([c.name for c in LANDCOVER_CLASSES]),
        **{f"CLASS_{c.id}": c.name for c in LANDCOVER_CLASSES},
    }

    tmp_img = temp_path(out)
    tmp_lab = temp_path(lab_out) if lab_out is not None else None
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            with open_raster(tmp_img, "w", env=False, **img_profile) as dst, ExitStack() as labels_file:
                dst.descriptions = names
                if sensor is not None:
                    scale, offset = PRODUCTS[sensor]
                    dst.scales = (scale * 10000.0,) * bands
                    dst.offsets = (offset * 10000.0,) * bands
                dst.update_tags(**tags)
                dst.update_tags(ns="geoseg", **ns_tags)
                lab_dst = None
                if tmp_lab is not None:
                    lab_dst = labels_file.enter_context(open_raster(tmp_lab, "w", env=False, **lab_profile))
                if lab_dst is not None:
                    lab_dst.set_band_description(1, "class")
                    lab_dst.update_tags(**tags, **class_tags)
                    lab_dst.update_tags(ns="geoseg", classes=class_json, **ns_tags)
                    lab_dst.write_colormap(1, colormap(LANDCOVER_CLASSES))
                for r0 in range(0, height, block):
                    h = min(block, height - r0)
                    for c0 in range(0, width, block):
                        w = min(block, width - c0)
                        image, labels = render_window(
                            r0, c0, h, w, seed, bands, scene_shape=shape,
                            nodata_border=nodata_border, sensor=sensor,
                        )
                        win = Window(c0, r0, w, h)
                        dst.write(image, window=win)
                        if lab_dst is not None:
                            lab_dst.write(labels, 1, window=win)
        os.replace(tmp_img, out)
        if tmp_lab is not None and lab_out is not None:
            os.replace(tmp_lab, lab_out)
    except BaseException:
        remove_files([t for t in (tmp_img, tmp_lab) if t is not None])
        raise
    return SceneInfo(
        path=out, labels_path=lab_out, width=width, height=height, count=bands,
        crs=parsed.to_string(), transform=transform, seed=seed, band_names=names,
        nodata=0 if nodata_border else None,
    )
