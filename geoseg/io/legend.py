"""Legends of the class and mask rasters that GIS software shows: names, colours, a RAT.

A GeoTIFF has no place inside the file that QGIS or ArcGIS read class names from: GDAL
keeps category names and raster attribute tables (RATs) in a PAM side-car,
``<raster>.aux.xml``, and a TIFF palette always has 2^bits entries, so QGIS lists 256
values even when the first ones are named. geoseg therefore writes, next to each
categorical COG:

- ``<raster>.aux.xml``: per band, GDAL category names (index = value) and a thematic RAT
  (``Value``, ``Count``, ``ClassName``, ``Red``, ``Green``, ``Blue``), which ArcGIS and
  QGIS >= 3.30 read as the raster's attribute table;
- ``<stem>.<kind>.qml``: a QGIS paletted renderer with one entry per class, which QGIS
  loads as the layer's default style, so the legend lists exactly the classes by name.

Both are written as text (no GDAL call) and committed with the COG by the caller. The
COG itself keeps its colour table and the class names in its metadata tags
(:func:`geoseg.io.cog.class_tags`), so losing the side-cars loses no information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from geoseg._constants import NODATA
from geoseg.classes import hex_to_rgb

__all__ = ["BandLegend", "Category", "aux_xml", "mask_legends", "paletted_qml"]

#: GDAL RAT field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage).
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_PIXELCOUNT, _GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE = 0, 1, 2, 5, 6, 7, 8

#: Colour of the "yes" value of a mask band in its QGIS style (the "no" value is transparent).
MASK_COLOR = "#e31a1c"


@dataclass(frozen=True)
class Category:
    """One value of a categorical band: its name, display colour and pixel count."""

    value: int
    name: str
    color: str  # "#rrggbb"
    count: int | None = None
    transparent: bool = False  # drawn fully transparent in the QGIS style


@dataclass(frozen=True)
class BandLegend:
    """The categories of one band (values 0..254; nodata is never listed)."""

    band: int  # 1-based
    categories: tuple[Category, ...]


def mask_legends(heads: Sequence[str], counts: Sequence[Sequence[int]] | None = None) -> list[BandLegend]:
    """One legend per mask band: 0 = ``not_<head>`` (transparent), 1 = ``<head>``."""
    out = []
    for b, head in enumerate(heads):
        c = counts[b] if counts is not None else (None, None)
        out.append(
            BandLegend(
                b + 1,
                (
                    Category(0, f"not_{head}", "#000000", c[0], transparent=True),
                    Category(1, head, MASK_COLOR, c[1]),
                ),
            )
        )
    return out


def aux_xml(legends: Sequence[BandLegend]) -> str:
    """A GDAL PAM document (``<raster>.aux.xml``) with category names and a thematic RAT per band.

    Category names are indexed by value: values between classes get empty names, so
    ``GDALGetRasterCategoryNames`` has exactly ``max(value) + 1`` entries.
    """
    bands = []
    for leg in legends:
        cats = sorted(leg.categories, key=lambda c: c.value)
        if any(not 0 <= c.value < NODATA for c in cats):
            raise ValueError(f"category values must be in 0..{NODATA - 1}")
        by_value = {c.value: c for c in cats}
        top = max(by_value, default=-1)
        names = "".join(
            f"<Category>{escape(by_value[v].name) if v in by_value else ''}</Category>" for v in range(top + 1)
        )
        fields = [
            ("Value", _GFT_INTEGER, _GFU_MINMAX),
            ("Count", _GFT_INTEGER, _GFU_PIXELCOUNT),
            ("ClassName", _GFT_STRING, _GFU_NAME),
            ("Red", _GFT_INTEGER, _GFU_RED),
            ("Green", _GFT_INTEGER, _GFU_GREEN),
            ("Blue", _GFT_INTEGER, _GFU_BLUE),
        ]
        defs = "".join(
            f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
            for i, (n, t, u) in enumerate(fields)
        )
        rows = []
        for i, c in enumerate(cats):
            r, g, b = hex_to_rgb(c.color)
            cnt = 0 if c.count is None else int(c.count)
            rows.append(
                f'<Row index="{i}"><F>{c.value}</F><F>{cnt}</F><F>{escape(c.name)}</F>'
                f"<F>{r}</F><F>{g}</F><F>{b}</F></Row>"
            )
        bands.append(
            f'  <PAMRasterBand band="{leg.band}">\n'
            f"    <CategoryNames>{names}</CategoryNames>\n"
            f'    <GDALRasterAttributeTable tableType="thematic">{defs}{"".join(rows)}</GDALRasterAttributeTable>\n'
            "  </PAMRasterBand>\n"
        )
    return "<PAMDataset>\n" + "".join(bands) + "</PAMDataset>\n"


def paletted_qml(legend: BandLegend) -> str:
    """A QGIS style (``.qml``): a paletted renderer of ``legend``'s band with one entry per
    category, nodata transparent. QGIS applies ``<stem>.qml`` next to ``<stem>.tif`` on load."""
    entries = "".join(
        f'      <paletteEntry value="{c.value}" color="{c.color}" label="{escape(c.name, quote=True)}" '
        f'alpha="{0 if c.transparent else 255}"/>\n'
        for c in sorted(legend.categories, key=lambda c: c.value)
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        "  <pipe>\n"
        f'    <rasterrenderer type="paletted" band="{legend.band}" opacity="1" alphaBand="-1" nodataColor="">\n'
        "      <rasterTransparency/>\n"
        f"      <colorPalette>\n{entries}      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )
