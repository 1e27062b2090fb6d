"""Exact tiled stylization: images of any size in memory that does not grow with them.

Every pixel a tile keeps equals the whole-image result up to float rounding, because each window
carries a halo as wide as the band its cut edges corrupt, starts on the stage's pooling grid, and
reflect-pads where the whole image does at the image's own edges.

    engine     `TiledEngine`: stylize an image, or compute a style's statistics, tile by tile
    planning   where the windows go (halos, `plan_tiles`), their work, and the tile size
    passes     the statistics and render passes of a stage (`StageRun`), and the cascade of stages
    placement  where the buffers live (device, pinned host memory, RAM, disk), from free memory
    buffers    the image between stages, as tensors, in RAM or in raw files, read by window (or a
               ring of rows)
    devices    windows and results crossing between host and device without the host waiting
    overlap    a pass's window reads and result writes, on helper threads beside the networks
    strokes    stroke scale: the coarse stages on a downscaled content
    resample   Lanczos and bilinear resizes of buffers, a band of rows at a time
    progress   `TileProgress` reports and the heap guard

    engine = TiledEngine(models, tile_size=1024, progress=print)
    stats = engine.style_statistics(style_rgb, "wct")
    result = engine.stylize(content_rgb, stats, alpha=0.8)      # (H, W, 3) uint8

Peak memory is that of one window's network call, plus the caller's input and the 8-bit result
(`choose_tile_size`).
"""
from .buffers import ImageBuffer
from .engine import TiledEngine
from .planning import (MAX_CPU_TILE, MAX_CUDA_TILE, MIN_TILE, Tile, choose_tile_size, decoder_halo,
                       encoder_halo, plan_tiles, resolve_tile_size)
from .progress import TileProgress

__all__ = ["MAX_CPU_TILE", "MAX_CUDA_TILE", "MIN_TILE", "ImageBuffer", "Tile", "TiledEngine", "TileProgress",
           "choose_tile_size", "decoder_halo", "encoder_halo", "plan_tiles", "resolve_tile_size"]
