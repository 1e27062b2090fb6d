"""Where a tiled run's buffers live: the device, pinned host memory, RAM or disk.

A run's buffers are the images between stages and the stored features (`planning.buffer_bytes`):
a few bytes per pixel at the coarse stages, 12 B per pixel for a float image, 17-34 GB at a
gigapixel. On a GPU, buffers in host RAM or on disk cost a copy of every window to the device and
of every result back, and issue 11 measured that host work at 3-4 MP/s against 43 MP/s for the
whole image; so `choose` puts them, by free memory:

    GPU   "device" where they fit DEVICE_SHARE of the device memory left beside the windows'
          working set; else "pinned" where they fit PINNED_SHARE of the host's available memory
          (several actors share a node's host); else "disk"
    CPU   "ram" where one float image is at most buffers.DISK_BUFFER_BYTES; else "disk", where
          the page cache keeps what it can of the files and the resident set only a window

`disk_buffer=True` puts them on disk anywhere; False keeps them in memory (device, pinned or RAM).
"""
from __future__ import annotations

import torch

from ..models.modelset import ModelSet
from .buffers import DISK_BUFFER_BYTES, PLACEMENTS
from .planning import BYTES_PER_CHANNEL_PIXEL, FLOAT_PIXEL_BYTES, available_memory, buffer_bytes, plan_stage

# Of the device memory free beside one window's working set, what the buffers may take: the
# allocator's caching and fragmentation need the rest.
DEVICE_SHARE = 0.5
# Of the host's available memory, what pinned buffers may take (pinned pages cannot be swapped or
# reclaimed, and a GPU node's host serves several actors and their codecs).
PINNED_SHARE = 0.25


def choose(models: ModelSet, levels, height: int, width: int, tile_size: int, disk_buffer: bool | None = None,
           stroke_scale: float = 1.0, recompute=frozenset(), device: torch.device | None = None,
           device_free: int | None = None, host_free: int | None = None) -> tuple[str, frozenset[int]]:
    """(placement, recompute): where the buffers of a tiled run of `levels` over height x width with
    `tile_size` go on `device` (default: the models'), one of buffers.PLACEMENTS, and the stages
    that encode their features again rather than store them: `recompute`, and on a GPU those that
    make the buffers fit the device, cheapest first (stage 2 of the 16x set spares 32 B per pixel
    for 2.6% more work; the device runs tiles many times faster than copies to the host allow).
    device_free, host_free: bytes free there (default: measured now)."""
    device = torch.device(device) if device is not None else device_of(models)
    recompute = frozenset(recompute)
    if disk_buffer:
        return "disk", recompute
    if device.type != "cuda":
        small = height * width * FLOAT_PIXEL_BYTES <= DISK_BUFFER_BYTES
        return ("ram" if small or disk_buffer is False else "disk"), recompute

    def need(stages: frozenset[int]) -> int:
        return buffer_bytes(models, levels, height, width, tile_size, stroke_scale, stages, files=False)

    channels = max(models.encoder(k).conv11.out_channels for k in levels)
    window = BYTES_PER_CHANNEL_PIXEL * channels * tile_size * tile_size
    device_free = available_memory(device) if device_free is None else device_free
    stored = [k for k in sorted(levels) if k not in recompute
              and plan_stage(models, k, height, width, tile_size).stored]
    for count in range(len(stored) + 1):  # stage 2's features first: the most bytes per extra MAC
        fewer = recompute | frozenset(stored[:count])
        if need(fewer) <= DEVICE_SHARE * (device_free - window):
            return "device", fewer
    host_free = available_memory("cpu") if host_free is None else host_free
    if need(recompute) <= PINNED_SHARE * host_free or disk_buffer is False:
        return "pinned", recompute
    return "disk", recompute


def check(placement: str | None) -> str | None:
    """`placement` itself where it is one of PLACEMENTS or None (planning chooses), else a ValueError."""
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)} or None (got {placement!r})")
    return placement


def device_of(models: ModelSet) -> torch.device:
    """Where the models' networks run."""
    return next(models.encoder(models.stages[0]).parameters()).device
