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
import torch
from PIL import Image

from ..modelset import ModelSet
from ..options import COARSE_STAGES, split_levels
from ..options import stroke_scale as check_stroke_scale
from ..stylize import StyleStats, check_style
from .buffers import Buffers, ImageBuffer, as_buffer
from .engine import Cascade, new_output, stylize_tiled
from .planning import cascade_work, resolve_tile_size
from .progress import Meter, TileProgress


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and the weight of i1 for linear resampling of n_in samples to n_out
    with half-pixel centres (torch's align_corners=False)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)


def upsample_bilinear(small: ImageBuffer, dest: ImageBuffer, band: int = 128) -> None:
    """Bilinear resize of an (h, w, 3) float32 buffer into dest (H, W, 3), `band` output rows at
    a time, so that neither image is held whole."""
    (h, w), (height, width) = small.shape[:2], dest.shape[:2]
    r0, r1, rw = _linear_taps(height, h)
    c0, c1, cw = _linear_taps(width, w)
    for y in range(0, height, band):
        ys = slice(y, min(y + band, height))
        lo = r0[ys][0]
        block = small.read(slice(lo, r1[ys][-1] + 1), slice(None))
        top, bottom = block[r0[ys] - lo], block[r1[ys] - lo]
        rows = top + (bottom - top) * rw[ys, None, None]
        left, right = rows[:, c0], rows[:, c1]
        dest.write(ys, slice(None), left + (right - left) * cw[None, :, None])


@torch.inference_mode()
def stylize_stroke_scaled(models: ModelSet, content: np.ndarray, style: StyleStats, alpha: float = 1.0,
                          levels=None, stroke_scale: float = 2.0, tile_size: int | None = None, *,
                          out: np.ndarray | None = None, disk_buffer: bool | None = None,
                          temp_dir: str | None = None,
                          progress: Callable[[TileProgress], None] | None = None) -> np.ndarray:
    """Stylize with brush strokes `stroke_scale` (S) times larger than `stylize_tiled` paints them.

    The coarse levels run on the content downscaled by S (Lanczos); their float result is
    upsampled back to full size (bilinear) and the fine levels run on it at full size. S = 1 is
    `stylize_tiled`. The levels must list the coarse stages first, and hold both kinds.

    content: (H, W, 3) uint8. The other arguments, and the result, as in `stylize_tiled`.
    """
    stroke_scale = check_stroke_scale(stroke_scale)
    if stroke_scale == 1.0:
        return stylize_tiled(models, content, style, alpha, levels, tile_size, out=out,
                             disk_buffer=disk_buffer, temp_dir=temp_dir, progress=progress)
    levels = check_style(models, style, levels)
    coarse, fine = split_levels(levels)
    dtype = as_buffer(content).dtype  # checks the shape
    if not isinstance(content, np.ndarray) or dtype != np.uint8:
        raise ValueError(f"a stroke scale needs uint8 content in a numpy array (got {type(content).__name__} "
                         f"of {dtype})")
    height, width = content.shape[:2]
    out = new_output(out, height, width)
    small_size = (max(1, round(width / stroke_scale)), max(1, round(height / stroke_scale)))
    small = np.asarray(Image.fromarray(content).resize(small_size, Image.Resampling.LANCZOS))
    coarse_tile = resolve_tile_size(models, coarse, *small.shape[:2], tile_size)
    fine_tile = resolve_tile_size(models, fine, height, width, tile_size)
    meter = Meter(progress, cascade_work(models, coarse, *small.shape[:2], coarse_tile)
                  + cascade_work(models, fine, height, width, fine_tile))
    with Buffers.open(height, width, disk_buffer, temp_dir) as buffers:
        cascade = Cascade(models, style, alpha, buffers, meter)
        coarse_result = buffers.new(small.shape)
        cascade.run(ImageBuffer(small), coarse_result, coarse, coarse_tile)
        upsampled = buffers.new((height, width, 3))
        upsample_bilinear(coarse_result, upsampled)
        coarse_result.close()
        cascade.run(upsampled, ImageBuffer(out), fine, fine_tile)
        upsampled.close()
    return out
