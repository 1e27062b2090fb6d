"""Stroke scale: the coarse stages on a downscaled content, so brush strokes keep their size.

The size of a style's patterns in the output is set by the receptive fields of the coarse stages
(`options.COARSE_STAGES`: 5, 4, 3; about 40 to 300 image pixels), which are fixed in pixels, so on a 40 MP
image the strokes that look right at 1 MP shrink to fine texture. Running those stages on the
content downscaled by S paints strokes S times larger; the fine stages (2, 1) then run at full
size on the upsampled result, restoring sharp edges and fine texture.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..models.modelset import ModelSet
from ..options import split_levels
from ..transfer.stylize import StyleStats
from .buffers import Buffers, ImageBuffer
from .passes import Cascade
from .planning import cascade_work, coarse_shape, resolve_tile_size
from .placement import choose, device_of
from .progress import Meter, TileProgress
from .resample import bilinear, lanczos


def stylize_stroke_scaled(models: ModelSet, content: ImageBuffer, style: StyleStats, alpha: float,
                          levels: tuple[int, ...], stroke_scale: float, out: np.ndarray | ImageBuffer, *,
                          tile_size: int | None, disk_buffer: bool | None, temp_dir: str | None,
                          progress: Callable[[TileProgress], None] | None, recompute: frozenset[int],
                          placement: str | None = None) -> None:
    """`TiledEngine.stylize` with a stroke scale S > 1, into `out` (the keywords are the engine's
    settings): the coarse levels on the content downscaled by S (Lanczos); their float result
    upsampled back to full size (bilinear); the fine levels on that, at full size. `content` is
    (H, W, 3) uint8; every image in between lives in the engine's buffers (files, for large
    images), resized a band at a time."""
    coarse, fine = split_levels(levels)
    if content.dtype != np.uint8:
        raise ValueError(f"a stroke scale needs uint8 content (got {content.dtype})")
    height, width = content.shape[:2]
    small_shape = coarse_shape(height, width, stroke_scale)
    coarse_tile = resolve_tile_size(models, coarse, *small_shape, tile_size)
    fine_tile = resolve_tile_size(models, fine, height, width, tile_size)
    where = placement
    if where is None:
        where, recompute = choose(models, levels, height, width, fine_tile, disk_buffer, stroke_scale, recompute)
    meter = Meter(progress, cascade_work(models, coarse, *small_shape, coarse_tile, recompute)
                  + cascade_work(models, fine, height, width, fine_tile, recompute))
    with Buffers.placed(where, temp_dir, device_of(models)) as buffers:
        cascade = Cascade(models, style, alpha, buffers, meter, recompute)
        small = buffers.new((*small_shape, 3), np.uint8)
        lanczos(content, small, buffers.new)
        coarse_result = buffers.new((*small_shape, 3))
        cascade.run(small, coarse_result, coarse, coarse_tile)
        small.close()
        upsampled = buffers.new((height, width, 3))
        bilinear(coarse_result, upsampled)
        coarse_result.close()
        cascade.run(upsampled, out if isinstance(out, ImageBuffer) else ImageBuffer(out), fine, fine_tile)
        upsampled.close()
