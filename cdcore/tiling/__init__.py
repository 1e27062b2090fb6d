"""Exact tiled stylization: images of any size in memory that does not grow with them.

Every pixel a tile keeps equals the whole-image result up to float rounding, because each window
carries a halo as wide as the band its cut edges corrupt, starts on the stage's pooling grid, and
reflect-pads where the whole image does at the image's own edges.

    planning   where the windows go (halos, `plan_tiles`), their work, and the tile size
    buffers    the image between stages, in RAM or in numpy.memmap files, read by window
    engine     the statistics and render passes of a stage; `stylize_tiled`, `style_statistics_tiled`
    strokes    `stylize_stroke_scaled`: coarse stages on a downscaled content
    progress   `TileProgress` reports and the heap guard

Peak memory is that of one window's network call, plus the caller's input and the 8-bit result
(`choose_tile_size`).
"""
from .buffers import ImageBuffer
from .engine import style_statistics_tiled, stylize_tiled
from .planning import (MAX_CPU_TILE, MAX_CUDA_TILE, MIN_TILE, Tile, choose_tile_size, decoder_halo,
                       encoder_halo, plan_tiles, resolve_tile_size)
from .progress import TileProgress
from .strokes import COARSE_STAGES, stylize_stroke_scaled

__all__ = ["COARSE_STAGES", "MAX_CPU_TILE", "MAX_CUDA_TILE", "MIN_TILE", "ImageBuffer", "Tile", "TileProgress",
           "choose_tile_size", "decoder_halo", "encoder_halo", "plan_tiles", "resolve_tile_size",
           "style_statistics_tiled", "stylize_stroke_scaled", "stylize_tiled"]
