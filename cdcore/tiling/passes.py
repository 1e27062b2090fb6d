"""The two passes of a tiled stage, and the cascade of stages built from them.

A stage k of the cascade (`stylize.run_stage`) runs here in two passes over tiles:

1. statistics: encode each tile's window, keep the features of the part the tile owns, and
   accumulate their `Moments` (float64); the sum is the whole image's, so the map A, b is exact;
2. render: per tile, decode the window's features moved by A f + b, and write the part the tile
   owns into the stage's output buffer.

Where encoding is dear and the features small (stages 2 to 5), the statistics pass stores them
and the render pass decodes from that store instead of encoding again. Both passes read the next
tile's window and write the last tile's result while the networks compute (`overlap`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
import torch

from .. import transforms
from ..modelset import ModelSet
from ..nets import Decoder, Encoder, stage_multiple
from ..stylize import StyleStats, check_content_size, stylize
from .buffers import Buffers, ImageBuffer, PaddedImage, read_whole, to_numpy, to_tensor
from .overlap import WriteBehind, read_ahead
from .planning import StagePlan, Tile, encoder_halo, expand, image_span, plan_stage, span_length
from .progress import Meter


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _image_under(source: PaddedImage, k: int, rows: slice, cols: slice, grid: tuple[int, int]):
    """The image pixels (h, w, 3) under stage k's feature window [rows, cols]."""
    m = stage_multiple(k)
    return source.read(image_span(rows, m, grid[0], source.height), image_span(cols, m, grid[1], source.width))


def accumulate(encoder: Encoder, source: PaddedImage, grid: tuple[int, int], tiles: list[Tile], meter: Meter,
               store: ImageBuffer | None = None) -> transforms.Moments:
    """Moments of the features of the whole grid, summed tile by tile (and the features written to
    `store` when given). The caller starts the meter's pass."""
    k, device = encoder.stage, _device(encoder)
    m, total = stage_multiple(k), None
    with WriteBehind() as writes:
        windows = read_ahead(tiles, lambda tile: _image_under(source, k, tile.rows, tile.cols, grid))
        for i, (tile, block) in enumerate(windows):
            # exact but within `encoder_halo` of the window's edges inside the grid: keep the rest
            feature = tile.kept(encoder(to_tensor(block, device)))
            part = transforms.moments(feature)
            total = part if total is None else total + part
            if store is not None:
                writes.submit(store.write, tile.keep_rows, tile.keep_cols, to_numpy(feature))
            meter.tile_done(i, span_length(tile.keep_rows) * span_length(tile.keep_cols) * m * m)
    return total


@dataclass
class StageRun:
    """Stage k, tiled, over one image: `run` equals `stylize.run_stage` on the whole image."""

    encoder: Encoder
    decoder: Decoder
    plan: StagePlan
    source: PaddedImage
    meter: Meter

    @classmethod
    def over(cls, models: ModelSet, k: int, image: ImageBuffer, tile_size: int, meter: Meter,
             store: bool = True) -> "StageRun":
        plan = plan_stage(models, k, *image.shape[:2], tile_size, store)
        m = stage_multiple(k)
        source = PaddedImage(image, plan.grid[0] * m, plan.grid[1] * m)
        return cls(models.encoder(k), models.decoder(k), plan, source, meter)

    def run(self, dest: ImageBuffer, style: StyleStats, alpha: float, buffers: Buffers,
            release: Callable[[], None] | None = None) -> None:
        """image -> dest (H, W, 3), through the content's exact statistics. `release` frees the
        image as soon as the stage is done with it: after the statistics pass where the features
        are stored, which at a gigapixel gives 12 GB of page cache and scratch back a pass early."""
        k, plan = self.plan.k, self.plan
        store = buffers.new((*plan.grid, self.encoder.out_channels)) if plan.stored else None
        try:
            self.meter.start_pass(k, "statistics", len(plan.statistics), plan.statistics_work)
            content = accumulate(self.encoder, self.source, plan.grid, plan.statistics, self.meter, store)
            if store is not None and release is not None:
                release()
            a, b = transforms.affine_map(content, style.stages[k], alpha, style.method)
            self.render(a, b, dest, store)
        finally:
            if store is not None:
                store.close()

    def render(self, a: torch.Tensor, b: torch.Tensor, dest: ImageBuffer, store: ImageBuffer | None) -> None:
        """Decode every tile's window of features, moved by A f + b; keep the part the tile owns,
        cropped to the unpadded image, in `dest`. Features come from `store`, or are encoded again."""
        k, plan, m = self.plan.k, self.plan, stage_multiple(self.plan.k)
        height, width = dest.shape[:2]
        device = _device(self.decoder)
        self.meter.start_pass(k, "render", len(plan.render), plan.render_work)
        load = (lambda tile: store.read(tile.rows, tile.cols)) if store is not None else self._image_to_encode
        with WriteBehind() as writes:
            for i, (tile, block) in enumerate(read_ahead(plan.render, load)):
                if store is not None:
                    feature = to_tensor(block, device)
                else:
                    feature = self._encoder_window(tile).kept(self.encoder(to_tensor(block, device)))
                image = self.decoder(feature, affine=(a, b))
                y = slice(tile.keep_rows.start * m, min(tile.keep_rows.stop * m, height))
                x = slice(tile.keep_cols.start * m, min(tile.keep_cols.stop * m, width))
                y0, x0 = y.start - tile.rows.start * m, x.start - tile.cols.start * m
                kept = image[..., y0: y0 + span_length(y), x0: x0 + span_length(x)]
                writes.submit(dest.write, y, x, dest.block_of(kept))
                self.meter.tile_done(i, span_length(y) * span_length(x))

    def _encoder_window(self, tile: Tile) -> Tile:
        """Where to encode a render tile's features [rows, cols] again, exact up to its edges: the
        encoder halo around it."""
        halo, grid = encoder_halo(self.plan.k), self.plan.grid
        return Tile(expand(tile.rows, halo, grid[0]), expand(tile.cols, halo, grid[1]), tile.rows, tile.cols)

    def _image_to_encode(self, tile: Tile):
        window = self._encoder_window(tile)
        return _image_under(self.source, self.plan.k, window.rows, window.cols, self.plan.grid)


@dataclass
class Cascade:
    """Runs levels of the cascade over images, with what every stage of a run shares."""

    models: ModelSet
    style: StyleStats
    alpha: float
    buffers: Buffers
    meter: Meter
    recompute: frozenset[int] = frozenset()  # stages that encode again rather than store features

    def run(self, image: ImageBuffer, dest: ImageBuffer, levels: tuple[int, ...], tile_size: int) -> None:
        """Stages `levels` in order from `image` to `dest` (uint8 or float32, (H, W, 3)). Each
        stage's float result, unclamped, is the next one's input, in a buffer freed once read."""
        if tile_size == 0:
            dest.store(slice(None), slice(None), stylize(self.models, read_whole(image), self.style,
                                                         self.alpha, levels))
            return
        check_content_size(*image.shape[:2], levels)
        self.meter.heap.start()
        current = image
        for i, k in enumerate(levels):
            out = dest if i == len(levels) - 1 else self.buffers.new((*image.shape[:2], 3))
            stage = StageRun.over(self.models, k, current, tile_size, self.meter, k not in self.recompute)
            release = current.close if current is not image else None  # the caller's image stays
            stage.run(out, self.style, self.alpha, self.buffers, release)
            if release is not None:
                release()
            current = out
