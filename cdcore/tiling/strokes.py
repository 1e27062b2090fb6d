"""Stroke scale: the coarse stages on a downscaled content, so brush strokes keep their size.

The size of a style's patterns in the output is set by the receptive fields of the coarse stages
(`options.COARSE_STAGES`: 5, 4, 3; about 40 to 300 image pixels), which are fixed in pixels, so on a 40 MP
image the strokes that look right at 1 MP shrink to fine texture. Running those stages on the
content downscaled by S paints strokes S times larger; the fine stages (2, 1) then run at full
size on the upsampled result, restoring sharp edges and fine texture.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..options import split_levels
from ..stylize import StyleStats
from .buffers import Buffers, ImageBuffer
from .passes import Cascade
from .planning import cascade_work, resolve_tile_size
from .progress import Meter

if TYPE_CHECKING:
    from .engine import TiledEngine


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


def stylize_stroke_scaled(engine: "TiledEngine", content: np.ndarray, style: StyleStats, alpha: float,
                          levels: tuple[int, ...], stroke_scale: float, out: np.ndarray) -> None:
    """`engine.stylize` with a stroke scale S > 1, into `out`: the coarse levels on the content
    downscaled by S (Lanczos); their float result upsampled back to full size (bilinear); the fine
    levels on that, at full size. `content` is (H, W, 3) uint8."""
    coarse, fine = split_levels(levels)
    if not isinstance(content, np.ndarray) or content.dtype != np.uint8:
        raise ValueError(f"a stroke scale needs uint8 content in a numpy array (got "
                         f"{type(content).__name__} of {getattr(content, 'dtype', '?')})")
    models, height, width = engine.models, *content.shape[:2]
    small_size = (max(1, round(width / stroke_scale)), max(1, round(height / stroke_scale)))
    small = np.asarray(Image.fromarray(content).resize(small_size, Image.Resampling.LANCZOS))
    coarse_tile = resolve_tile_size(models, coarse, *small.shape[:2], engine.tile_size)
    fine_tile = resolve_tile_size(models, fine, height, width, engine.tile_size)
    meter = Meter(engine.progress, cascade_work(models, coarse, *small.shape[:2], coarse_tile)
                  + cascade_work(models, fine, height, width, fine_tile))
    with Buffers.open(height, width, engine.disk_buffer, engine.temp_dir) as buffers:
        cascade = Cascade(models, style, alpha, buffers, meter)
        coarse_result = buffers.new(small.shape)
        cascade.run(ImageBuffer(small), coarse_result, coarse, coarse_tile)
        upsampled = buffers.new((height, width, 3))
        upsample_bilinear(coarse_result, upsampled)
        coarse_result.close()
        cascade.run(upsampled, ImageBuffer(out), fine, fine_tile)
        upsampled.close()
