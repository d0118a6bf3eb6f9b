"""Default QGIS styles stored inside GeoPackages (the ``layer_styles`` table).

QGIS looks for a ``layer_styles`` table in a GeoPackage and applies the row marked
``useAsDefault`` when the layer is opened; we write a categorized renderer whose
colours are those of the class raster's colour table, plus an SLD for other clients.
"""

from __future__ import annotations

import sqlite3
from html import escape
from pathlib import Path

from geoseg.classes import hex_to_rgb

_CREATE = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
  f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
  useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT CURRENT_TIMESTAMP
)
"""


def _fill_symbol(name: str, color: str) -> str:
    r, g, b = hex_to_rgb(color)
    return (
        f'<symbol type="fill" name="{escape(name)}" alpha="1" clip_to_extent="1" force_rhr="0">'
        '<layer class="SimpleFill" enabled="1" locked="0" pass="0"><Option type="Map">'
        f'<Option type="QString" name="color" value="{r},{g},{b},255"/>'
        '<Option type="QString" name="outline_color" value="35,35,35,128"/>'
        '<Option type="QString" name="outline_style" value="solid"/>'
        '<Option type="QString" name="outline_width" value="0.1"/>'
        '<Option type="QString" name="style" value="solid"/>'
        "</Option></layer></symbol>"
    )


def categorized_qml(field: str, categories: list[tuple[int, str, str]]) -> str:
    """A QGIS QML categorized renderer on ``field`` for ``(value, label, colour)``."""
    cats = "".join(
        f'<category symbol="{i}" value="{v}" label="{escape(label)}" render="true"/>'
        for i, (v, label, _) in enumerate(categories)
    )
    syms = "".join(_fill_symbol(str(i), c) for i, (_, _, c) in enumerate(categories))
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
        '<qgis version="3.28.0" styleCategories="Symbology">'
        f'<renderer-v2 type="categorizedSymbol" attr="{escape(field)}" symbollevels="0" '
        'enableorderby="0" forceraster="0">'
        f"<categories>{cats}</categories><symbols>{syms}</symbols></renderer-v2></qgis>"
    )


def single_qml(color: str) -> str:
    """A QGIS QML single-symbol renderer."""
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
        '<qgis version="3.28.0" styleCategories="Symbology">'
        f'<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<symbols>{_fill_symbol('0', color)}</symbols></renderer-v2></qgis>"
    )


def categorized_sld(layer: str, field: str, categories: list[tuple[int, str, str]]) -> str:
    """An OGC SLD 1.1 equivalent of :func:`categorized_qml`."""
    rules = "".join(
        f"<se:Rule><se:Name>{escape(label)}</se:Name><ogc:Filter><ogc:PropertyIsEqualTo>"
        f"<ogc:PropertyName>{escape(field)}</ogc:PropertyName><ogc:Literal>{v}</ogc:Literal>"
        f"</ogc:PropertyIsEqualTo></ogc:Filter><se:PolygonSymbolizer><se:Fill>"
        f'<se:SvgParameter name="fill">{color}</se:SvgParameter></se:Fill></se:PolygonSymbolizer></se:Rule>'
        for v, label, color in categories
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><StyledLayerDescriptor version="1.1.0" '
        'xmlns="http://www.opengis.net/sld" xmlns:ogc="http://www.opengis.net/ogc" '
        'xmlns:se="http://www.opengis.net/se">'
        f"<NamedLayer><se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(layer)}</se:Name>"
        f"<se:FeatureTypeStyle>{rules}</se:FeatureTypeStyle></UserStyle></NamedLayer></StyledLayerDescriptor>"
    )


def write_layer_style(gpkg: Path, layer: str, qml: str, sld: str, geometry_column: str = "geom") -> None:
    """Store ``qml``/``sld`` as the default style of ``layer`` in ``gpkg``."""
    con = sqlite3.connect(gpkg)
    try:
        con.execute(_CREATE)
        con.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles', 'QGIS layer styles')"
        )
        con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
        con.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
            "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
            "VALUES ('', '', ?, ?, ?, ?, ?, 1, 'geoseg default style', '', '')",
            (layer, geometry_column, layer, qml, sld),
        )
        con.commit()
    finally:
        con.close()
