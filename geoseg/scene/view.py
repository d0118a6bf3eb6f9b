"""What the tiles of a scene run read and where their products go: the model grid (when
the scene's GSD differs from the model's) and the area of interest.

A :class:`SceneView` is small and picklable; every tile task carries it. It wraps any
scene source with a ``read(window, dataset)`` method (the local :class:`SceneSource`
today): :meth:`SceneView.read` reads a tile's window of the *tile grid* (the model grid
or the scene grid), :meth:`SceneView.finish` turns the tile's products into products of
the *output grid* (the scene's unless ``output_grid="model"``), masked to the area of
interest and cut to the output window (the area's bounding window with ``aoi_crop``).
Without a warp or an area both are identities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg._constants import NODATA
from geoseg.errors import InputError
from geoseg.grid import GeoBox, PixelWindow, Tile, TileGrid
from geoseg.io.aoi import Area, area_mask, area_window, read_area
from geoseg.io.warp import GSD_TOLERANCE, WarpPlan, output_window, plan_warp, resample, source_window, to_output

__all__ = ["OUTPUT_GRIDS", "SceneView", "plan_view"]

#: Values of ``output_grid``: products on the scene's grid, or on the model grid.
OUTPUT_GRIDS = ("input", "model")


@dataclass(frozen=True)
class SceneView:
    """The grids of one scene run.

    Attributes:
        scene: the scene's grid.
        warp: the model grid of a scene whose GSD differs from the model's, or None.
        output_grid: ``"input"`` (the scene's grid) or ``"model"``.
        area: the area of interest, or None.
        window: the output window within the full output grid (the area's bounding
            window with ``aoi_crop``, else the whole grid).
    """

    scene: GeoBox
    warp: WarpPlan | None = None
    output_grid: str = "input"
    area: Area | None = None
    window: PixelWindow | None = None

    @property
    def tile_geobox(self) -> GeoBox:
        """The grid the tiles cut and the model sees."""
        return self.warp.model if self.warp is not None else self.scene

    @property
    def full_output(self) -> GeoBox:
        """The whole output grid (before cropping to :attr:`window`)."""
        return self.warp.model if self.warp is not None and self.output_grid == "model" else self.scene

    @property
    def output(self) -> GeoBox:
        """The grid of the products written."""
        return self.full_output.crop(self.window or self.full_output.window)

    @property
    def trivial(self) -> bool:
        return self.warp is None and self.area is None

    # ------------------------------------------------------------------ tiles

    def _back(self) -> bool:
        """Whether tile products are mapped from the model grid back to the scene grid."""
        return self.warp is not None and self.output_grid == "input"

    def tile_output_window(self, tile: Tile) -> PixelWindow:
        """Where ``tile``'s core lands on the full output grid."""
        return output_window(self.warp, tile.core) if self._back() else tile.core

    def written_window(self, tile: Tile) -> PixelWindow | None:
        """Where :meth:`finish` writes ``tile``'s products on the :attr:`output` grid (the
        window the resume journal checks), or None when the tile writes nothing.

        The windows of different tiles never overlap: the cores partition the tile grid;
        mapped back to the scene grid, every scene pixel takes its products from the one
        model pixel its centre falls in (:func:`geoseg.io.warp.output_window`); the area's
        mask changes values, not windows; and cropping cuts every window by the same one.
        """
        core = self.tile_output_window(tile)
        if core.height == 0 or core.width == 0:
            return None
        win = self.window
        if win is None:
            return core
        cut = core.intersection(win)
        return None if cut is None else cut.shift(-win.row, -win.col)

    def select(self, grid: TileGrid) -> list[Tile]:
        """The tiles of ``grid`` (on :attr:`tile_geobox`) whose products reach the output
        window and that touch the area (a model-grid core can also own no scene pixel: a
        last column narrower than half a scene pixel)."""
        if self.trivial:
            return list(grid)
        candidates = grid if self.area is None else grid.tiles_within(area_window(self.area, self.tile_geobox))
        out = []
        win = self.window or self.full_output.window
        for t in candidates:
            ow = self.tile_output_window(t)
            if ow.height == 0 or ow.width == 0 or ow.intersection(win) is None:
                continue
            if self.area is None or self.area.touches(self.tile_geobox, t.core):
                out.append(t)
        return out

    def source_window(self, window: PixelWindow) -> PixelWindow:
        """The scene window :meth:`read` reads for tile-grid ``window``."""
        if self.warp is None:
            return window
        src = source_window(self.warp, window)
        if self._back():  # also the scene pixels the core's products go to (their validity)
            src = src.union(output_window(self.warp, window))
        return src

    def read(self, source: Any, window: PixelWindow, dataset=None) -> tuple[np.ndarray, np.ndarray, Any]:
        """Read tile-grid ``window``: ``(data, valid, native)``; ``native`` is the scene
        window read and its validity when the products go back to the scene grid."""
        if self.warp is None:
            data, valid = source.read(window, dataset)
            return data, valid, None
        src = self.source_window(window)
        data, valid = source.read(src, dataset)
        out, ok = resample(data, valid, src, self.warp, window)
        return out, ok, ((src, valid) if self._back() else None)

    def finish(self, tiles: list[Tile], results: list, reads: list) -> list:
        """Tile results (dataclasses with ``core``, ``classes``, ``confidence``, ``masks``)
        -> results on the output window; tiles that miss it are dropped."""
        out = []
        for tile, r, read in zip(tiles, results, reads):
            core, arrays = r.core, [r.classes, r.confidence, r.masks]
            if self._back():
                core, arrays = to_output(self.warp, core, arrays)
                src, native = read[2]
                invalid = ~native[core.relative_to(src)]
                for a in arrays:
                    a[..., invalid] = NODATA
            if self.area is not None:
                outside = ~area_mask(self.area, self.full_output, core)
                if outside.any():
                    for a in arrays:
                        a[..., outside] = NODATA
            win = self.window
            if win is not None:
                cut = core.intersection(win)
                if cut is None:
                    continue
                sl = cut.relative_to(core)
                arrays = [np.ascontiguousarray(a[(..., *sl)]) for a in arrays]
                core = cut.shift(-win.row, -win.col)
            out.append(dataclasses.replace(r, core=core, classes=arrays[0], confidence=arrays[1], masks=arrays[2]))
        return out

    def describe(self) -> dict:
        """What the manifest records: ``gsd`` and ``aoi`` sections and the output grid."""
        g = self.output
        info: dict = {
            "output_grid": {
                "grid": self.output_grid if self.warp is not None else "input",
                "width": g.width,
                "height": g.height,
                "transform": list(g.transform)[:6],
                "crs": g.crs,
            }
        }
        if self.warp is not None:
            info["gsd"] = {
                **self.warp.describe(),
                "resampled": True,
                "output_resampling": "nearest (classes, masks and confidence)" if self._back() else None,
            }
        if self.area is not None:
            w = self.window
            info["aoi"] = {**self.area.describe(), "crop": w is not None,
                           "window": [w.row, w.col, w.height, w.width] if w is not None else None}
        return info


def plan_view(
    scene: GeoBox,
    model_gsd: float | None,
    *,
    output_grid: str = "input",
    aoi=None,
    bbox=None,
    aoi_crop: bool = True,
    gsd_tolerance: float = GSD_TOLERANCE,
    name: str = "the scene",
) -> SceneView:
    """The :class:`SceneView` of a run: the model grid if the scene's GSD differs from
    ``model_gsd`` by more than ``gsd_tolerance``, and the area of interest."""
    if output_grid not in OUTPUT_GRIDS:
        raise InputError(f"--output-grid {output_grid!r} is not one of {', '.join(OUTPUT_GRIDS)}")
    warp = plan_warp(scene, model_gsd, gsd_tolerance)
    view = SceneView(scene, warp, output_grid)
    if aoi is None and bbox is None:
        return view
    area = read_area(scene.crs, aoi=aoi, bbox=bbox)
    full = view.full_output
    window = area_window(area, full, name)
    return dataclasses.replace(view, area=area, window=window if aoi_crop else None)
