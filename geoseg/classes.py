"""Class schemes: names, ids and display colours of segmentation classes.

The land-cover scheme used by the synthetic scenes (and the ``default`` model) is
:data:`LANDCOVER_CLASSES`; label rasters use :data:`LABEL_NODATA` (255) for "no label".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from geoseg._constants import NODATA
from geoseg.errors import InputError

__all__ = [
    "LABEL_NODATA",
    "LANDCOVER_CLASSES",
    "ClassInfo",
    "class_identifier",
    "classes_json",
    "colormap",
    "hex_to_rgb",
    "rgb_to_hex",
]

#: Label value meaning "no class" (outside the valid data of a scene).
LABEL_NODATA: int = NODATA

_HEX_RE = re.compile(r"^#?([0-9a-fA-F]{6})$")


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """Convert a ``"#rrggbb"`` colour string to an ``(r, g, b)`` tuple of ints 0..255.

    Args:
        color: Colour as ``"#rrggbb"`` (the leading ``#`` is optional, case-insensitive).

    Returns:
        The red, green and blue components.

    Raises:
        InputError: If ``color`` is not a 6-digit hex colour.
    """
    if not isinstance(color, str):
        raise InputError(f"colour {color!r} is not a string; use '#rrggbb'")
    match = _HEX_RE.match(color.strip())
    if match is None:
        raise InputError(f"colour {color!r} is not a hex colour; use '#rrggbb', e.g. '#1f78b4'")
    value = match.group(1)
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb_to_hex(rgb: Sequence[int]) -> str:
    """Convert an ``(r, g, b)`` triple of ints 0..255 to ``"#rrggbb"``.

    Raises:
        InputError: If ``rgb`` is not three ints in 0..255.
    """
    values = list(rgb)
    if len(values) != 3 or any(not isinstance(v, int) or not 0 <= v <= 255 for v in values):
        raise InputError(f"colour {rgb!r} is not three integers 0..255")
    return "#{:02x}{:02x}{:02x}".format(*values)


def class_identifier(name: str) -> str:
    """``name`` as the identifier STAC's classification extension (v2.0 ``name``) and MLM
    ask for: letters, digits, ``-`` and ``_`` (anything else becomes ``_``)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    return out or "class"


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class.

    Attributes:
        id: Label value of the class in label rasters (0..254).
        name: Short snake_case name, e.g. ``"water"``.
        color: Display colour ``"#rrggbb"``.
    """

    id: int
    name: str
    color: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or not 0 <= self.id < LABEL_NODATA:
            raise InputError(f"class id {self.id!r} must be an int in 0..{LABEL_NODATA - 1}")
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"class name {self.name!r} must be a non-empty string")
        hex_to_rgb(self.color)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as an ``(r, g, b)`` tuple."""
        return hex_to_rgb(self.color)

    def to_dict(self) -> dict[str, int | str]:
        """Return ``{"id": .., "name": .., "color": ..}``."""
        return {"id": self.id, "name": self.name, "color": self.color}


#: Land-cover classes of synthetic scenes and of the ``default`` model, in id order.
LANDCOVER_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "water", "#1f78b4"),
    ClassInfo(1, "forest", "#1b7837"),
    ClassInfo(2, "cropland", "#e6c229"),
    ClassInfo(3, "bare_soil", "#a6761d"),
    ClassInfo(4, "building", "#e31a1c"),
    ClassInfo(5, "road", "#525252"),
)


def colormap(classes: Iterable[ClassInfo]) -> dict[int, tuple[int, int, int, int]]:
    """Colour table for ``rasterio``'s ``write_colormap``: ``{id: (r, g, b, 255)}``.

    The nodata value :data:`LABEL_NODATA` maps to transparent black.
    """
    table: dict[int, tuple[int, int, int, int]] = {LABEL_NODATA: (0, 0, 0, 0)}
    for info in classes:
        table[info.id] = (*info.rgb, 255)
    return table


def classes_json(classes: Iterable[ClassInfo]) -> str:
    """Compact JSON ``[{"id":..,"name":..,"color":..}, ...]`` describing ``classes``."""
    return json.dumps([c.to_dict() for c in classes], separators=(",", ":"))
