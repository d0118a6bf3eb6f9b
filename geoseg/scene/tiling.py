"""How a scene is cut for a model: exact seams, fixed input sizes, or blended seams.

:func:`plan_tiles` turns a model's needs into the tiles ``run_scene`` runs:

- **exact** (the default): cores of ``tile_size`` px with the model's halo on each side
  (:class:`~geoseg.grid.TileGrid`); outputs equal whole-image inference.
- **fixed input size** (a model that only accepts ``S x S`` windows, e.g. an ONNX graph
  exported with a static shape): cores of ``S - 2 * halo`` px and windows of exactly ``S``
  px, shifted inward at the raster's far edges (and zero-padded only where the raster is
  smaller than ``S``), never resized.
- **blended** (a receptive field too large for a halo: global pooling, attention): the
  halo becomes an overlap and the windows' probabilities are averaged with cosine weights
  (:mod:`geoseg.scene.blend`), streamed in bounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.errors import InputError
from geoseg.grid import PixelWindow, Tile, TileGrid
from geoseg.scene.blend import BlendLayout, BlendPiece, BlendSink, blend_pieces

__all__ = ["Tiling", "plan_tiles", "fixed_size_tiles", "blend_batch", "blend_tiles"]


@dataclass
class Tiling:
    """The tiles of one run and how their outputs are put together.

    Attributes:
        grid: The core grid (its ``halo`` is the exact-seam halo or the blending overlap).
        tiles: The tiles, read windows included.
        seams: ``"exact"`` or ``"blended"``.
        layout: The blend layout (blended seams only).
        input_size: The model's fixed input size, or None.
    """

    grid: TileGrid
    tiles: list[Tile]
    seams: str
    layout: BlendLayout | None = None
    input_size: tuple[int, int] | None = None

    def writer(self, sink: Any) -> Any:
        """What receives the task results: the sink itself, or a :class:`BlendSink` feeding it."""
        if self.layout is None:
            return sink
        blend = BlendSink(self.layout, sink.write)
        blend.write = blend.add  # type: ignore[method-assign]
        return blend

    def manifest_fields(self) -> dict[str, Any]:
        """What the run manifest records of the tiling (``parameters``)."""
        out: dict[str, Any] = {"seams": self.seams}
        if self.seams == "blended":
            out["overlap"] = self.grid.halo
        if self.input_size is not None:
            out["input_size"] = list(self.input_size)
        return out


def _span(core_start: int, halo: int, size: int, length: int, factor: int) -> tuple[int, int]:
    padded = max(size, int(math.ceil(length / factor) * factor))
    start = max(0, min(core_start - halo, padded - size))
    return start, min(start + size, length)


def fixed_size_tiles(grid: TileGrid, size: tuple[int, int]) -> list[Tile]:
    """The grid's tiles with read windows of exactly ``size`` (clipped to the raster; the
    predictor zero-pads what lies beyond it), shifted inward at the far edges."""
    out = []
    for t in grid:
        r0, r1 = _span(t.core.row, grid.halo, size[0], grid.height, grid.factor)
        c0, c1 = _span(t.core.col, grid.halo, size[1], grid.width, grid.factor)
        read = PixelWindow(r0, c0, r1 - r0, c1 - c0)
        out.append(Tile(t.index, t.core, read, (r0 > 0, r1 < grid.height, c0 > 0, c1 < grid.width)))
    return out


def plan_tiles(model: Any, height: int, width: int, tile_size: int) -> Tiling:
    """The tiling ``run_scene`` uses for ``model`` on a ``height x width`` raster.

    Raises:
        InputError: A fixed input size too small for the halo, or a tile too small to blend.
    """
    factor = int(model.downsampling)
    seams = getattr(model, "seams", "exact")
    size = getattr(model, "input_size", None)
    if seams == "blended":
        overlap = model.blend_overlap(tile_size if size is None else None)
    else:
        overlap = int(model.halo)
    if size is not None:
        halo = int(math.ceil(overlap / factor) * factor)
        core = (min(size) - 2 * halo) // factor * factor
        if core < factor:
            raise InputError(
                f"model {model.name!r} takes {size[0]}x{size[1]} windows, too small for its {halo}-px halo on each side: "
                "declare a smaller 'halo' (or 'seams': 'blended' with a small 'overlap') in its sidecar MODEL.geoseg.json"
            )
        grid = TileGrid(height, width, core, halo=halo, factor=factor)
        tiles = fixed_size_tiles(grid, size)
    else:
        if seams == "blended":
            overlap = min(overlap, max(1, tile_size // 2))
        grid = TileGrid(height, width, tile_size, halo=overlap, factor=factor)
        if seams == "blended" and 2 * grid.halo > grid.tile_size:
            raise InputError(
                f"--tile-size {tile_size} is too small to blend with a {grid.halo}-px overlap: use at least {2 * grid.halo}"
            )
        tiles = list(grid)
    layout = BlendLayout(grid, len(model.class_names), len(model.mask_heads)) if seams == "blended" else None
    return Tiling(grid, tiles, seams, layout, size)


def blend_batch(
    source: Any,
    tiles: list[Tile],
    model: str,
    device: str,
    torch_threads: int | None,
    checksum: str | None,
    layout: BlendLayout,
    precision: str = "fp32",
) -> list[BlendPiece]:
    """Dask task of blended runs: read the windows, predict probabilities, weight them."""
    from geoseg.scene.predict import get_predictor, resolve_device

    predictor = get_predictor(model, checksum, resolve_device(device), torch_threads, precision)
    reads = source.read_windows([t.read for t in tiles])
    data = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    return blend_tiles(predictor, tiles, data, valid, layout)


def blend_tiles(predictor: Any, tiles: list[Tile], data: np.ndarray, valid: np.ndarray, layout: BlendLayout) -> list[BlendPiece]:
    """The weighted probabilities of a batch of tiles' used windows (``run_scene`` and
    ``geoseg.segment`` alike), the model skipped for tiles without a valid pixel there.

    Args:
        data, valid: the tiles' read windows, ``(N, bands, H, W)`` float32 and ``(N, H, W)`` bool.
    """
    ran = np.array([valid[k][layout.used(t).relative_to(t.read)].any() for k, t in enumerate(tiles)])
    n, _, h, w = data.shape
    probs = np.zeros((n, layout.num_classes, h, w), np.float32)
    masks = np.zeros((n, layout.num_masks, h, w), np.float32) if layout.num_masks else None
    if ran.any():
        p, m = predictor.probabilities(data[ran], valid[ran])
        probs[ran] = p
        if masks is not None and m is not None:
            masks[ran] = m
    return blend_pieces(layout, tiles, probs, masks, valid, ran)
