"""Tile-grid arithmetic: property tests over random raster sizes, tiles, halos, factors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import InputError
from geoseg.grid import PixelWindow, TileGrid, batches


@st.composite
def grids(draw) -> TileGrid:
    """Random grids of at most ~30x30 tiles (tiny tiles on tiny rasters, big on big)."""
    height, width = draw(st.integers(1, 3000)), draw(st.integers(1, 3000))
    min_tile = max(1, max(height, width) // 30)
    return TileGrid(
        height,
        width,
        tile_size=draw(st.integers(min_tile, max(min_tile, 700))),
        halo=draw(st.integers(0, 200)),
        factor=draw(st.sampled_from([1, 2, 4, 8, 16])),
    )


@settings(max_examples=200, deadline=None)
@given(grids())
def test_cores_partition_the_raster(grid: TileGrid) -> None:
    cover = np.zeros((grid.height, grid.width), dtype=np.uint8)
    for tile in grid:
        cover[tile.core.slices] += 1
    assert (cover == 1).all()
    assert len(list(grid)) == len(grid) == grid.rows * grid.cols


@settings(max_examples=200, deadline=None)
@given(grids())
def test_read_windows_hold_halo_and_stay_aligned(grid: TileGrid) -> None:
    assert grid.tile_size % grid.factor == 0 and grid.halo % grid.factor == 0
    for tile in grid:
        r, c = tile.read, tile.core
        # clamped to the raster
        assert 0 <= r.row and 0 <= r.col and r.row_end <= grid.height and r.col_end <= grid.width
        # the halo is there wherever the raster allows it
        assert c.row - r.row == min(grid.halo, c.row)
        assert c.col - r.col == min(grid.halo, c.col)
        assert r.row_end - c.row_end == min(grid.halo, grid.height - c.row_end)
        assert r.col_end - c.col_end == min(grid.halo, grid.width - c.col_end)
        # read windows start on the model's downsampling grid (pooling alignment)
        assert r.row % grid.factor == 0 and r.col % grid.factor == 0
        # cropping the core out of the read window is consistent
        rs, cs = tile.crop
        assert rs.stop - rs.start == c.height and cs.stop - cs.start == c.width
        ph, pw = grid.padded_shape(r)
        assert ph % grid.factor == 0 and pw % grid.factor == 0 and 0 <= ph - r.height < grid.factor


@settings(max_examples=100, deadline=None)
@given(grids())
def test_padding_at_the_edge_matches_whole_image_padding(grid: TileGrid) -> None:
    """A tile touching the right/bottom edge pads to the same extent as the whole image."""
    whole_h, whole_w = grid.padded_shape(PixelWindow(0, 0, grid.height, grid.width))
    for tile in grid:
        ph, pw = grid.padded_shape(tile.read)
        if tile.read.row_end == grid.height:
            assert tile.read.row + ph == whole_h
        if tile.read.col_end == grid.width:
            assert tile.read.col + pw == whole_w


@settings(max_examples=100, deadline=None)
@given(grids(), st.integers(1, 9))
def test_batches_keep_order_and_equal_shapes(grid: TileGrid, size: int) -> None:
    tiles = list(grid)
    groups = batches(tiles, size)
    flat = sorted(t.index for g in groups for t in g)
    assert flat == [t.index for t in tiles]
    for g in groups:
        assert 1 <= len(g) <= size
        assert len({(t.read.height, t.read.width) for t in g}) == 1


def test_rounding_to_factor_and_one_pixel_raster() -> None:
    g = TileGrid(1, 1, tile_size=100, halo=5, factor=8)
    assert (g.tile_size, g.halo) == (104, 8)
    (tile,) = list(g)
    assert tile.core == tile.read == PixelWindow(0, 0, 1, 1)


@pytest.mark.parametrize(
    "kwargs", [dict(height=0, width=5, tile_size=4), dict(height=5, width=5, tile_size=0), dict(height=5, width=5, tile_size=4, halo=-1)]
)
def test_invalid_grids_raise(kwargs) -> None:
    with pytest.raises(InputError):
        TileGrid(**kwargs)


def test_strips_merge_windows_on_the_same_rows() -> None:
    from geoseg.grid import strips

    tiles = TileGrid(300, 500, 100, halo=10).tiles_within(PixelWindow(50, 0, 200, 500))
    merged = strips(t.read for t in tiles)
    assert [(w.row, w.height, w.col, w.width) for w in merged] == [(40, 120, 0, 500), (140, 120, 0, 500)]
    # apart on the same rows: two strips; touching: one; other rows: their own
    ws = [PixelWindow(0, 0, 10, 10), PixelWindow(0, 30, 10, 10), PixelWindow(0, 10, 10, 5), PixelWindow(5, 0, 10, 10)]
    assert strips(ws) == (PixelWindow(0, 0, 10, 15), PixelWindow(0, 30, 10, 10), PixelWindow(5, 0, 10, 10))
    assert strips([]) == ()
