"""Resizing images held in ImageBuffers a band of rows at a time, so that neither image (nor any
whole-image temporary) is ever held: a gigapixel content resized to `--content-size`, or shrunk
for a stroke scale, costs a few MB of memory.

`lanczos` is Pillow's Lanczos-3 resize, in Pillow's own two passes (across, then down, 8-bit in
between) with Pillow doing the arithmetic on each band: the across pass of a band of rows is
exactly Pillow's; the down pass gives each band of output rows the source rows under its filter
and Pillow's `box` placing them, which matches the whole-image resize except where the band's
origin rounds a filter position differently (off by 1 in about 2 of 100,000 values).
`bilinear` upsamples float images as torch's bilinear interpolation does (align_corners=False).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image

from .buffers import ImageBuffer

# Bytes of source rows one band reads: a few MB, so a 40000 px wide image goes in bands of tens of rows.
BAND_BYTES = 8 << 20
LANCZOS_LOBES = 3  # Pillow's LANCZOS is Lanczos-3: its filter reaches 3 source pixels (scaled when shrinking)

NewBuffer = Callable[[tuple[int, ...], type], ImageBuffer]


def _pil(block: np.ndarray) -> Image.Image:
    """An 8-bit RGB or single-channel (h, w, C) block as a Pillow image."""
    return Image.fromarray(block[..., 0] if block.shape[2] == 1 else block)


def _array(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if channels == 1 else array


def _across(source: ImageBuffer, dest: ImageBuffer) -> None:
    """Resize every row of `source` to dest's width: Pillow's first pass, band by band."""
    (height, width, channels), new_width = source.shape, dest.shape[1]
    band = max(1, BAND_BYTES // (max(width, new_width) * channels))
    for y in range(0, height, band):
        rows = slice(y, min(y + band, height))
        block = _pil(source.read(rows, slice(None))).resize((new_width, rows.stop - y), Image.Resampling.LANCZOS)
        dest.write(rows, slice(None), _array(block, channels))


def _down(source: ImageBuffer, dest: ImageBuffer) -> None:
    """Resize every column of `source` to dest's height: Pillow's second pass, for bands of
    output rows, each from the source rows its filter reaches."""
    (height, width, channels), new_height = source.shape, dest.shape[0]
    scale = height / new_height
    reach = LANCZOS_LOBES * max(scale, 1.0) + 1  # source rows each side of an output row's centre
    band = max(1, int((BAND_BYTES / (width * channels) - 2 * reach) / scale))
    for j in range(0, new_height, band):
        out = slice(j, min(j + band, new_height))
        top = max(0, math.floor(j * scale - reach))
        bottom = min(height, math.ceil(out.stop * scale + reach))
        block = _pil(source.read(slice(top, bottom), slice(None)))
        box = (0, j * scale - top, width, out.stop * scale - top)
        resized = block.resize((width, out.stop - j), Image.Resampling.LANCZOS, box=box)
        dest.write(out, slice(None), _array(resized, channels))


def lanczos(source: ImageBuffer, dest: ImageBuffer, new: NewBuffer) -> None:
    """Resize (H, W, C) uint8 `source` (C = 3 or 1) into `dest` (h, w, C) uint8, as Pillow's
    Lanczos resize of the whole image would. `new(shape, dtype)` makes the (H, w, C) image
    between the two passes (on disk for large images)."""
    if source.dtype != np.uint8 or dest.dtype != np.uint8 or source.shape[2] != dest.shape[2]:
        raise ValueError(f"lanczos resizes uint8 images of one channel count (got {source.shape} "
                         f"{source.dtype} into {dest.shape} {dest.dtype})")
    (height, width), (new_height, new_width) = source.shape[:2], dest.shape[:2]
    if new_width == width:
        _down(source, dest) if new_height != height else _copy(source, dest)
        return
    if new_height == height:
        _across(source, dest)
        return
    middle = new((height, new_width, source.shape[2]), np.uint8)
    try:
        _across(source, middle)
        _down(middle, dest)
    finally:
        middle.close()


def _copy(source: ImageBuffer, dest: ImageBuffer) -> None:
    height, width, channels = source.shape
    band = max(1, BAND_BYTES // (width * channels))
    for y in range(0, height, band):
        rows = slice(y, min(y + band, height))
        dest.write(rows, slice(None), source.read(rows, slice(None)))


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and the weight of i1 for linear resampling of n_in samples to n_out
    with half-pixel centres (torch's align_corners=False)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)


def bilinear(small: ImageBuffer, dest: ImageBuffer) -> None:
    """Bilinear resize of an (h, w, 3) float32 buffer into dest (H, W, 3), in bands of output rows
    whose float temporaries stay near BAND_BYTES."""
    (h, w), (height, width) = small.shape[:2], dest.shape[:2]
    r0, r1, rw = _linear_taps(height, h)
    c0, c1, cw = _linear_taps(width, w)
    band = max(1, BAND_BYTES // (width * 3 * 4))
    for y in range(0, height, band):
        ys = slice(y, min(y + band, height))
        lo = r0[ys][0]
        block = small.read(slice(lo, r1[ys][-1] + 1), slice(None))
        top, bottom = block[r0[ys] - lo], block[r1[ys] - lo]
        rows = top + (bottom - top) * rw[ys, None, None]
        left, right = rows[:, c0], rows[:, c1]
        dest.write(ys, slice(None), left + (right - left) * cw[None, :, None])
