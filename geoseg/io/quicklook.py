"""Quicklooks: small PNGs of a run's class map and masks, and a legend strip, read from the COGs' overviews.

A class map is seen before it is opened in a GIS: in STAC Browser, QGIS's STAC panel, the
batch report, a file manager. :func:`stage_quicklooks` writes, beside the COGs and
committed with them:

- ``<stem>.classes.png``: the class map in the class colours, at most
  :data:`OVERVIEW_SIZE` px a side; ``<stem>.thumb.png``: the same at most
  :data:`THUMBNAIL_SIZE` px a side (the STAC Item's ``thumbnail`` asset);
- ``<stem>.mask-<head>.png`` per mask head (1 in red, 0 in light grey);
- ``<stem>.legend.png``: a strip with one colour swatch and name per class.

Nodata is transparent (alpha 0). Each image is one level of the COG's overview pyramid (the
largest no bigger than the size asked for; mode-resampled when the COG was written), read
whole, so a quicklook never reads the full-resolution raster unless that is itself no
bigger than the quicklook; when even the smallest overview is bigger it is decimated
(nearest) on the read (rasterio's ``out_shape``). Every PNG carries ``tEXt`` chunks: what it
shows and, for the legend, the classes with their colours and swatch positions as JSON
(``geoseg:legend``), so that a program can read the legend without OCR.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._constants import NODATA
from geoseg.classes import hex_to_rgb
from geoseg.io.raster import open_raster
from geoseg.io.store import OutputStore

__all__ = ["MASK_COLORS", "OVERVIEW_SIZE", "THUMBNAIL_SIZE", "legend_image",
           "read_overview", "stage_quicklooks", "write_png"]

#: The longest side, in pixels, of the overview PNGs (``classes.png``, ``mask-<head>.png``).
OVERVIEW_SIZE = 1024
#: The longest side of the thumbnail (``thumb.png``).
THUMBNAIL_SIZE = 256
#: Mask quicklook colours: 0 (not the head) light grey, 1 red.
MASK_COLORS = ("#ebebeb", "#e31a1c")

#: Where a TrueType font for the legend may be (Debian's fonts-dejavu-core, matplotlib's copy);
#: without one, Pillow's built-in font.
_FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)


def _head_name(head: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in head) or "head"


@dataclass(frozen=True)
class Overview:
    """The values of one overview level read for a quicklook: ``values`` (h, w), and which
    level (``None``: full resolution) and shape of the COG they came from."""

    values: np.ndarray
    level: int | None
    level_shape: tuple[int, int]


def read_overview(path: str | Path, size: int, band: int = 1) -> Overview:
    """Band ``band`` of ``path`` at the largest overview level whose longest side is at most
    ``size`` (the full resolution when it is that small); when every level is bigger, the
    smallest, decimated (nearest) to fit ``size``."""
    with open_raster(path, env=False) as ds:
        factors = ds.overviews(band)
        full = (ds.height, ds.width)
    levels: list[tuple[int | None, tuple[int, int]]] = [(None, full)]
    levels += [(k, (math.ceil(full[0] / f), math.ceil(full[1] / f))) for k, f in enumerate(factors)]
    fits = [lv for lv in levels if max(lv[1]) <= size]
    level, _ = fits[0] if fits else levels[-1]
    opts = {} if level is None else {"overview_level": level}
    with open_raster(path, env=False, **opts) as ds:
        shape = (ds.height, ds.width)
        scale = min(1.0, size / max(shape))
        out = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
        values = ds.read(band, out_shape=out) if out != shape else ds.read(band)
    return Overview(values, level, shape)


def _palette(colors: list[str]) -> np.ndarray:
    """``(256, 4)`` RGBA per id: the class colours, every other id transparent black."""
    lut = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(colors[:NODATA]):
        lut[i] = (*hex_to_rgb(c), 255)
    return lut


def write_png(path: Path, image: np.ndarray, text: dict[str, str], colors: list[str] | None = None) -> None:
    """Write a PNG with ``text`` as ``tEXt`` (Latin-1) / ``iTXt`` chunks: ``image`` is
    ``(h, w, 4)`` RGBA, or with ``colors`` ``(h, w)`` class ids written as a paletted PNG
    (one byte a pixel, ids without a colour, nodata included, transparent through its
    ``tRNS`` chunk: a quarter of the bytes an RGBA image would compress)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
    if colors is None:
        Image.frombytes("RGBA", (image.shape[1], image.shape[0]), np.ascontiguousarray(image).tobytes()).save(
            path, "PNG", pnginfo=info)
        return
    lut = _palette(colors)
    im = Image.frombytes("P", (image.shape[1], image.shape[0]), np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    im.putpalette(lut[:, :3].tobytes(), "RGB")
    im.save(path, "PNG", pnginfo=info, transparency=lut[:, 3].tobytes())


def _font(size: int):
    from PIL import ImageFont

    candidates = list(_FONT_FILES)
    try:  # matplotlib's copy of DejaVu Sans, without importing matplotlib
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        if spec is not None and spec.submodule_search_locations:
            candidates.append(str(Path(list(spec.submodule_search_locations)[0]) / "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    except (ImportError, ValueError):  # pragma: no cover
        pass
    for f in candidates:
        if Path(f).is_file():
            return ImageFont.truetype(f, size)
    return ImageFont.load_default(size=size)


def legend_image(names: list[str], colors: list[str], *, swatch: int = 16, pad: int = 8) -> tuple[np.ndarray, list[dict]]:
    """A legend strip: one row, per class a colour swatch and its name, on white.

    Returns the ``(h, w, 4)`` RGBA image and per class ``{"value", "name", "color", "swatch":
    [x0, y0, x1, y1]}`` (the swatch's pixel box, end exclusive).
    """
    from PIL import Image, ImageDraw

    font = _font(13)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    widths = [math.ceil(probe.textlength(n, font=font)) for n in names]
    height = swatch + 2 * pad
    width = pad + sum(swatch + 5 + w + 2 * pad for w in widths)
    img = Image.new("RGBA", (max(width, 1), height), (255, 255, 255, 255))
    draw = ImageDraw.Draw(img)
    entries, x = [], pad
    for i, (name, color, w) in enumerate(zip(names, colors, widths)):
        box = [x, pad, x + swatch, pad + swatch]
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(*hex_to_rgb(color), 255), outline=None)
        draw.text((x + swatch + 5, pad + swatch / 2), name, fill=(34, 34, 34, 255), font=font, anchor="lm")
        entries.append({"value": i, "name": name, "color": color, "swatch": box})
        x += swatch + 5 + w + 2 * pad
    return np.asarray(img), entries


def stage_quicklooks(
    finals: dict[str, Path], class_names: list[str], class_colors: list[str], mask_heads: list[str], outputs: OutputStore
) -> dict[str, Path]:
    """Write the quicklooks of a run's staged COGs (``finals["classes"]``, and ``finals["mask"]``
    when there are mask heads) under temporary names and stage them with the COGs.

    Returns ``{kind: final path}``: ``classes.png``, ``thumb.png``, ``legend.png`` and
    ``mask-<head>.png`` (:data:`geoseg.io.store.SCENE_OUTPUTS`).
    """
    classes = finals["classes"]
    stem = classes.name[: -len(".classes.tif")]
    staged = outputs.staged
    out: dict[str, Path] = {}

    def stage(kind: str, image: np.ndarray, text: dict[str, str], colors: list[str] | None = None) -> None:
        final = classes.with_name(f"{stem}.{kind}")
        with outputs.staging(final, "ql-", what=f"the quicklook {final.name}") as tmp:
            write_png(tmp, image, {"Software": "geoseg", **text}, colors)
        out[kind] = final

    def about(ov: Overview, what: str) -> dict[str, str]:
        level = "full resolution" if ov.level is None else f"overview {ov.level} ({ov.level_shape[1]}x{ov.level_shape[0]})"
        return {"Title": f"{stem}: {what}", "Description": f"{what} of {classes.name}, from its {level}"}

    src = staged.get(classes, classes)
    ov = read_overview(src, OVERVIEW_SIZE)
    stage("classes.png", ov.values, about(ov, "classes"), class_colors)
    th = read_overview(src, THUMBNAIL_SIZE)
    stage("thumb.png", th.values, about(th, "classes (thumbnail)"), class_colors)
    rgba, entries = legend_image(class_names, class_colors)
    stage("legend.png", rgba, {"Title": f"{stem}: legend", "geoseg:legend": json.dumps(entries)})
    if mask_heads and "mask" in finals:
        msrc = staged.get(finals["mask"], finals["mask"])
        for band, head in enumerate(mask_heads, 1):
            mv = read_overview(msrc, OVERVIEW_SIZE, band)
            stage(f"mask-{_head_name(head)}.png", mv.values, about(mv, f"mask {head}"), list(MASK_COLORS))
    return out
