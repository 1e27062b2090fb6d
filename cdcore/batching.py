"""How many same-size contents the whole-image cascade stylizes at once (`stylize_batch`).

Batching shares each network call's fixed cost (dispatches, kernel launches, the eigensolver's
round trip) among the images of a batch. On a CPU that cost is small beside the arithmetic once an
image has some 50 k pixels: a 256x192 photo takes about 150 ms of CPU whatever the batch, while a
64x48 one costs about twice as much alone as in a batch of 32; a batch's activations should also
stay near the cache (benchmarks/history/2026-12-06-dataset-rate.md). On a GPU launches and
synchronisations cost the same whatever the image, so batches there are as large as memory and
BATCH_PIXELS allow.
"""
from __future__ import annotations

from .models.modelset import ModelSet
from .tiling.planning import BYTES_PER_CHANNEL_PIXEL, MEMORY_SHARE, available_memory

# An automatic batch holds at most this many pixels in all, and this many images.
BATCH_PIXELS = {"cpu": 1 << 16, "cuda": 16 << 20}
MAX_BATCH_IMAGES = 64


def choose_batch_images(models: ModelSet, levels, height: int, width: int, limit: int | None = None,
                        available: int | None = None) -> int:
    """How many height x width contents to stylize in one batch on these models' device.

    As many as fit MEMORY_SHARE of the `available` memory (default: what the device has free) at
    BYTES_PER_CHANNEL_PIXEL x the widest full-resolution layer's channels a pixel, which is the
    whole-image rule of `tiling.choose_tile_size` for B images at once; no more than the device's
    BATCH_PIXELS, MAX_BATCH_IMAGES and `limit`; and at least 1: an image that fits only alone, or
    not whole (then it runs in tiles), runs alone.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (got {height}x{width})")
    device = next(models.encoder(levels[0]).parameters()).device
    channels = max(models.encoder(k).conv11.out_channels for k in levels)
    budget = MEMORY_SHARE * (available if available is not None else available_memory(device))
    pixels = height * width
    fits = int(budget // (pixels * BYTES_PER_CHANNEL_PIXEL * channels))
    by_pixels = BATCH_PIXELS["cuda" if device.type == "cuda" else "cpu"] // pixels
    return max(1, min(fits, by_pixels, MAX_BATCH_IMAGES, limit or MAX_BATCH_IMAGES))
