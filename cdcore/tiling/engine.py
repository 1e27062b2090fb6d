"""`TiledEngine`: the exact tiled engine's public face, for one model set and one way of tiling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..transfer import transforms
from ..models.modelset import ModelSet
from ..models.architecture import stage_multiple
from ..options import DEFAULT_LEVELS
from ..options import stroke_scale as check_stroke_scale
from ..transfer.stylize import StyleStats, check_style, check_style_size, style_statistics
from .buffers import Buffers, ImageBuffer, PaddedImage, as_buffer, read_whole
from .passes import Cascade, accumulate
from .planning import (cascade_work, encoder_halo, macs_per_pixel, pass_work, plan_tiles, resolve_tile_size,
                       window_side)
from .placement import check as check_placement
from .placement import choose as choose_placement
from .placement import device_of
from .progress import Meter, TileProgress
from .strokes import stylize_stroke_scaled


@dataclass
class TiledEngine:
    """Stylizes images of any size tile by tile; results equal the whole-image path's
    (`stylize.stylize`, `stylize.style_statistics`) up to float rounding.

    tile_size: bounds what one network call sees, and so the memory: every window of stage k
        holds at most tile_size^2 image pixels, fewer where the stage is wider at full resolution
        than the others (`planning.window_side`); the side is counted in its pooling multiple
        2^(k-1), rounded down, and at least 4 halos, and windows are shaped by `plan_tiles`. 0 runs
        the whole image at once; None picks a size per image with `choose_tile_size` from the
        memory free on the models' device (the whole image when it fits).
    disk_buffer: keep the image between stages (and stored features) in raw files in a
        temporary directory under `temp_dir` (True), in RAM (False), or decide by size (None: on
        disk above buffers.DISK_BUFFER_BYTES per image). Use a disk-backed `temp_dir` where /tmp
        is tmpfs.
    placement: where those buffers live, one of buffers.PLACEMENTS ("device", "pinned", "ram",
        "disk"; device buffers as tensors on the models' device, also the CPU), overriding
        `disk_buffer`; None: `placement.choose` decides from free memory (on a GPU the device's
        memory first, encoding features again where that makes them fit, then pinned host
        memory, then disk).
    progress: called with a `TileProgress` after every tile (whole-image runs report nothing).
    recompute: stages whose features are encoded again in the render pass instead of stored
        between the passes, to spare disk (`planning.stages_to_recompute`); results are the same.
    """

    models: ModelSet
    tile_size: int | None = None
    disk_buffer: bool | None = None
    temp_dir: str | None = None
    progress: Callable[[TileProgress], None] | None = None
    recompute: frozenset[int] = frozenset()
    placement: str | None = None

    def __post_init__(self):
        check_placement(self.placement)

    @torch.inference_mode()
    def stylize(self, content, style: StyleStats, alpha: float = 1.0, levels=None, stroke_scale: float = 1.0,
                out: np.ndarray | None = None) -> np.ndarray:
        """Stylize an (H, W, 3) image with `style`'s statistics at `levels` (default: all it has).

        content: uint8 RGB, or float32 in [0, 1]; a numpy array, a numpy.memmap or an ImageBuffer.
        stroke_scale: S > 1 runs the coarse levels on the content downscaled by S (uint8 content
            only, which may be an ImageBuffer on disk), so strokes come out S times larger (`strokes`).
        out: where the result goes: an (H, W, 3) uint8 array, rounded as `stylize.to_uint8` rounds
            (for instance `images.Canvas.rgb`, which the image encoder then reads in place), or
            float32 for the unclamped floats, or an ImageBuffer of either (a file on disk, for
            images too large to hold); a new uint8 array when None. It is also returned.
        """
        levels = check_style(self.models, style, levels)
        image = as_buffer(content)
        height, width = image.shape[:2]
        out = _output(out, height, width)
        if check_stroke_scale(stroke_scale) > 1.0:
            stylize_stroke_scaled(self.models, image, style, alpha, levels, stroke_scale, out,
                                  tile_size=self.tile_size, disk_buffer=self.disk_buffer, temp_dir=self.temp_dir,
                                  progress=self.progress, recompute=self.recompute, placement=self.placement)
            return out
        tile_size = resolve_tile_size(self.models, levels, height, width, self.tile_size)
        where, recompute = self.placement, self.recompute
        if where is None:
            where, recompute = choose_placement(self.models, levels, height, width, tile_size, self.disk_buffer,
                                                recompute=recompute)
        meter = Meter(self.progress, cascade_work(self.models, levels, height, width, tile_size, recompute))
        with Buffers.placed(where, self.temp_dir, device_of(self.models)) as buffers:
            dest = out if isinstance(out, ImageBuffer) else ImageBuffer(out)
            Cascade(self.models, style, alpha, buffers, meter, recompute).run(image, dest, levels, tile_size)
        return out

    @torch.inference_mode()
    def style_statistics(self, style, method: str = "wct", levels=None) -> StyleStats:
        """`stylize.style_statistics` of an (H, W, 3) uint8 or float32 style, tile by tile.

        The style is not padded (pooling floors odd sizes, as in the whole-image path), so tiles at
        its bottom and right reach its true edge.
        """
        if method not in DEFAULT_LEVELS:
            raise ValueError(f"method must be one of {tuple(DEFAULT_LEVELS)} (got {method!r})")
        levels = tuple(levels or DEFAULT_LEVELS[method])
        image = as_buffer(style)
        height, width = image.shape[:2]
        tile_size = resolve_tile_size(self.models, levels, height, width, self.tile_size)
        if tile_size == 0:
            return style_statistics(self.models, read_whole(image), method, levels)
        check_style_size(height, width, levels)
        plans = {}
        for k in levels:  # unpadded: pooling floors the style's size, as for the whole style
            m = stage_multiple(k)
            grid = (height // m, width // m)
            tiles = plan_tiles(grid, encoder_halo(k), max(1, window_side(self.models, k, tile_size) // m))
            plans[k] = grid, tiles, pass_work(tiles, m, macs_per_pixel(self.models.encoder(k), k))
        meter = Meter(self.progress, sum(work for _, _, work in plans.values()))
        source = PaddedImage(image, height, width)
        stages = {}
        meter.heap.start()
        for k, (grid, tiles, work) in plans.items():
            counts = meter.start_pass(k, "style", len(tiles), work)
            moments = accumulate(self.models.encoder(k), source, grid, tiles, counts)
            stages[k] = transforms.style_stage(moments, method)
        return StyleStats(method, self.models.model_id, stages)


def _output(out: np.ndarray | ImageBuffer | None, height: int, width: int) -> np.ndarray | ImageBuffer:
    if out is None:
        return np.empty((height, width, 3), np.uint8)
    if out.shape != (height, width, 3) or out.dtype not in (np.uint8, np.float32):
        raise ValueError(f"out must be ({height}, {width}, 3) uint8 or float32 (got {out.shape} {out.dtype})")
    return out
