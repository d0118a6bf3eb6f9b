"""From what xarray users hold to what a model reads: bands picked and ordered, nodata, grid.

Accepted shapes (the conventions of the libraries that load imagery lazily):

- a DataArray ``(band, y, x)`` (``rioxarray.open_rasterio``) or ``(time, band, y, x)``
  (``stackstac.stack``), any leading dimensions mapped over;
- a Dataset with one ``(..., y, x)`` variable per band (``odc.stac.load``).

Band names come from the ``band`` coordinate (when it holds names), a ``common_name``
coordinate (stackstac), ``long_name`` attributes (rioxarray: the band descriptions) or the
variable names of a Dataset; the model's bands are matched against them, case-insensitively,
else the bands are taken by position. Nodata comes from ``_FillValue`` (attributes or
encoding), ``nodata`` attributes, and NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ContractError, InputError

#: Names of the two spatial dimensions, as the loaders write them.
SPATIAL_DIMS = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))

#: Name of the band dimension of the stacked array.
BAND = "band"


@dataclass
class BandStack:
    """The model's input: ``array`` with dims ``(*lead, band, y, x)``, bands in model order."""

    array: object  # xarray.DataArray
    lead: tuple[str, ...]
    ydim: str
    xdim: str
    names: tuple[str, ...]  # names of the selected bands ('' where unknown)
    nodata: tuple[float | None, ...]  # per selected band
    coords: dict  # coordinates of the outputs (lead, y, x and scalar ones such as spatial_ref)


def spatial_dims(obj) -> tuple[str, str]:
    """The ``(y, x)`` dimension names of a DataArray or Dataset."""
    dims = set(obj.dims)
    for ydim, xdim in SPATIAL_DIMS:
        if ydim in dims and xdim in dims:
            return ydim, xdim
    raise InputError(
        f"data has dimensions {tuple(obj.dims)}: geoseg.segment needs spatial dimensions named "
        "(y, x), (latitude, longitude) or (lat, lon); rename them, e.g. data.rename({'rows': 'y', 'cols': 'x'})"
    )


def _fill_value(var) -> float | None:
    """Declared nodata of a variable: ``_FillValue`` (attrs, then encoding) or ``nodata``."""
    for value in (var.attrs.get("_FillValue"), var.attrs.get("nodata"), var.encoding.get("_FillValue")):
        if value is None:
            continue
        value = np.asarray(value).ravel()
        if value.size:
            return float(value[0])
    return None


def _names_from_attr(value, n: int) -> list[str] | None:
    if isinstance(value, str):
        value = [value] if n == 1 else None
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == n:
        return [str(v) if v is not None else "" for v in value]
    return None


def _band_name_sources(da, band_dim: str) -> list[list[str]]:
    """Lists of names for the bands of ``da`` along ``band_dim``, most specific first."""
    n = da.sizes[band_dim]
    sources = []
    if band_dim in da.coords and da[band_dim].dtype.kind in "UOS":
        sources.append([str(v) for v in da[band_dim].values])
    for coord in ("common_name", "name", "long_name"):
        if coord in da.coords and da[coord].dims == (band_dim,):
            sources.append([str(v) for v in da[coord].values])
    for attr in ("long_name", "band_names", "descriptions"):
        names = _names_from_attr(da.attrs.get(attr), n)
        if names is not None:
            sources.append(names)
    return sources


def _select(
    n: int, sources: list[list[str]], bands: Sequence | None, model_bands: Sequence[str], described: str
) -> list[int]:
    """0-based positions of the bands that feed the model, in model order."""
    if bands is not None:
        if isinstance(bands, (str, int)):
            bands = [bands]
        picked = []
        for b in bands:
            if isinstance(b, (int, np.integer)) and not isinstance(b, bool):
                if not 1 <= int(b) <= n:
                    raise InputError(f"bands={list(bands)} names band {b} but the data has {n} band(s) ({described}): use 1-based positions 1..{n} or band names")
                picked.append(int(b) - 1)
                continue
            key = str(b).lower()
            for names in sources:
                lower = [s.lower() for s in names]
                if key in lower:
                    picked.append(lower.index(key))
                    break
            else:
                raise InputError(f"bands={list(bands)}: no band named {b!r} in the data ({described}): use its names or 1-based positions")
    else:
        picked = None
        for names in sources:
            lower = [s.lower() for s in names]
            if all(b.lower() in lower for b in model_bands):
                picked = [lower.index(b.lower()) for b in model_bands]
                break
        if picked is None:
            picked = list(range(n))
    if len(picked) != len(model_bands):
        raise ContractError(
            f"the data gives {len(picked)} band(s) ({described}) but the model expects {len(model_bands)} "
            f"({', '.join(model_bands)}): pass bands= with {len(model_bands)} names or 1-based positions in that order"
        )
    return picked


def _describe(n: int, sources: list[list[str]]) -> str:
    names = sources[0] if sources else [""] * n
    return ", ".join(f"{i}:{s or '?'}" for i, s in enumerate(names, 1))


def _output_coords(obj, drop_dim: str | None) -> dict:
    """Coordinates to carry to the outputs: all but those along the band dimension."""
    return {k: v for k, v in obj.coords.items() if drop_dim is None or drop_dim not in v.dims}


def band_stack(data, model_bands: Sequence[str], bands: Sequence | None = None) -> BandStack:
    """Pick and order the model's bands of ``data`` (DataArray or Dataset)."""
    import xarray as xr

    model_bands = tuple(model_bands)
    if isinstance(data, xr.Dataset):
        ydim, xdim = spatial_dims(data)
        names = [k for k, v in data.data_vars.items() if ydim in v.dims and xdim in v.dims]
        if not names:
            raise InputError(f"the Dataset has no variable with dimensions ({ydim}, {xdim}): give one variable per band")
        variables = [data[k] for k in names]
        sources = [[str(k) for k in names]]
        for attr in ("common_name", "long_name"):
            vals = [v.attrs.get(attr) for v in variables]
            if all(isinstance(s, str) for s in vals):
                sources.append(vals)
        described = _describe(len(names), sources)
        picked = _select(len(names), sources, bands, model_bands, described)
        chosen = [variables[i] for i in picked]
        dims = chosen[0].dims
        if any(v.dims != dims for v in chosen):
            raise InputError(
                f"the band variables {[names[i] for i in picked]} have different dimensions "
                f"({[v.dims for v in chosen]}): give variables on one grid"
            )
        array = xr.Variable.concat([v.variable for v in chosen], dim=BAND)  # (band, *dims)
        array = xr.DataArray(array, dims=(BAND, *dims))
        nodata = tuple(_fill_value(v) for v in chosen)
        coords = _output_coords(data, None)
        sel_names = tuple(names[i] for i in picked)
    elif isinstance(data, xr.DataArray):
        ydim, xdim = spatial_dims(data)
        others = [d for d in data.dims if d not in (ydim, xdim)]
        if BAND in others:
            band_dim = BAND
        elif len(others) == 1 and data.ndim == 3:
            band_dim = others[0]
        elif not others:
            band_dim = None
        else:
            raise InputError(
                f"data has dimensions {tuple(data.dims)}: name its band dimension 'band', "
                f"e.g. data.rename({{{others[-1]!r}: 'band'}})"
            )
        if band_dim is None:
            data = data.expand_dims(BAND)
            band_dim = BAND
        n = data.sizes[band_dim]
        sources = _band_name_sources(data, band_dim)
        described = _describe(n, sources)
        picked = _select(n, sources, bands, model_bands, described)
        nd = _fill_value(data)
        nodata = (nd,) * len(picked)
        coords = _output_coords(data, band_dim)
        sel_names = tuple(sources[0][i] if sources else "" for i in picked)
        array = data.variable
        if band_dim != BAND:
            array = array.rename({band_dim: BAND})
        array = xr.DataArray(array[{BAND: picked}] if picked != list(range(n)) else array)
    else:
        raise InputError(
            f"data is a {type(data).__name__}: geoseg.segment takes an xarray DataArray (band, y, x) or "
            "(time, band, y, x), or a Dataset with one variable per band"
        )
    lead = tuple(d for d in array.dims if d not in (BAND, ydim, xdim))
    array = array.transpose(*lead, BAND, ydim, xdim)
    if array.dtype.kind not in "uif":
        raise InputError(f"the data is {array.dtype} but a model reads real numbers: give integer or float imagery")
    return BandStack(array, lead, ydim, xdim, sel_names, nodata, coords)


def geo_info(obj) -> tuple[str | None, object | None]:
    """``(crs_wkt, affine transform)`` of a DataArray or Dataset (``(None, None)`` if unknown)."""
    try:
        import rioxarray
    except ImportError:
        rioxarray = None
    crs = transform = None
    if rioxarray is not None:
        from pyproj.exceptions import CRSError
        from rioxarray.exceptions import RioXarrayError

        try:
            c = obj.rio.crs
            crs = c.to_wkt() if c is not None else None
        except (RioXarrayError, CRSError, ValueError):  # malformed metadata: as if none
            crs = None
        try:
            transform = obj.rio.transform()
        except (RioXarrayError, ValueError):
            transform = None
    if crs is None:
        ref = obj.coords.get("spatial_ref")
        if ref is not None:
            crs = ref.attrs.get("crs_wkt") or ref.attrs.get("spatial_ref")
        crs = crs or obj.attrs.get("crs")
        if crs is not None and not str(crs).lstrip().startswith(("GEOG", "PROJ", "COMPD", "BOUND")):
            from pyproj import CRS

            crs = CRS.from_user_input(crs).to_wkt()
    return crs, transform
