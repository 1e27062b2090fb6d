"""The two passes of a tiled stage, and the cascade of stages built from them.

A stage k of the cascade (`stylize.run_stage`) runs here in two passes over tiles:

1. statistics: encode each tile's window, keep the features of the part the tile owns, and
   accumulate their `Moments` (float64); the sum is the whole image's, so the map A, b is exact;
2. render: per tile, decode the window's features moved by A f + b, and write the part the tile
   owns into the stage's output buffer.

Where encoding is dear and the features small (stages 2 to 5), the statistics pass stores them
and the render pass decodes from that store instead of encoding again. Both passes read the next
tile's window and write the last tile's result while the networks compute (`overlap`).

Where the next stage stores its features, a stage's render and that stage's statistics pass run
fused, a band of rows at a time: once the render has written a band, the statistics pass encodes
every window whose rows are all written. That stage never reads its image again, so only a band
of its rows is kept (a `RowRing`): at a gigapixel, a 12 GB float image neither written to disk nor
read back, at two stages. A next stage that encodes again reads its image twice, so the image is
whole; fusing gained nothing measurable there (benchmarks/history/sessions-1-9.md, issue 15) and
would hold two full-resolution working sets (stages 2 and 1) at once, so it is not done.
"""
from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Callable

import torch

from ..transfer import transforms
from ..models.modelset import ModelSet
from ..models.nets import Decoder, Encoder, stage_multiple
from ..transfer.stylize import StyleStats, check_content_size, decode_moved, stylize
from .buffers import Buffers, ImageBuffer, PaddedImage, read_whole
from .devices import as_input, to_device
from .overlap import WriteBehind, read_ahead
from .planning import (BYTES_PER_CHANNEL_PIXEL, StagePlan, Tile, encoder_halo, expand, full_resolution_width,
                       image_span, plan_stage, ring_rows, span_length, window_rows, window_side)
from .progress import Meter, PassMeter


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _image_under(source: PaddedImage, k: int, rows: slice, cols: slice, grid: tuple[int, int],
                 device: torch.device):
    """The image pixels (h, w, 3) under stage k's feature window [rows, cols], on their way to
    `device` (`devices.to_device`)."""
    m = stage_multiple(k)
    block = source.read(image_span(rows, m, grid[0], source.height), image_span(cols, m, grid[1], source.width))
    return to_device(block, device)


def _put(writes: WriteBehind, buffer: ImageBuffer, rows: slice, cols: slice, image: torch.Tensor) -> None:
    """Store a network result: through the writer thread where the buffer's writes wait on the
    disk or on a copy to the host; at once where they are copies queued on the device."""
    if buffer.overlapped:
        writes.submit(buffer.write, rows, cols, buffer.block_of(image))
    else:
        buffer.store(rows, cols, image)


class Statistics:
    """Stage k's statistics pass over an image that may still be being written: `advance` encodes
    the windows whose rows are written, `moments` the rest, and returns the features' `Moments`
    (written to `store` too, when given). Closing it (or leaving its `with`) stops its writer."""

    def __init__(self, encoder: Encoder, source: PaddedImage, grid: tuple[int, int], tiles: list[Tile],
                 meter: PassMeter, store: ImageBuffer | None = None, guard=None):
        self.encoder, self.source, self.grid, self.tiles = encoder, source, grid, tiles
        self.meter, self.store = meter, store
        self.encoded, self.total = 0, None
        self.writes = WriteBehind(guard)

    def advance(self, written: int) -> None:
        """Encode every window not yet encoded that lies within the image's first `written` rows."""
        device, m, rows = _device(self.encoder), stage_multiple(self.encoder.stage), self.source.image.shape[0]
        ready = self.encoded
        while ready < len(self.tiles) and window_rows(self.tiles[ready], m, rows).stop <= written:
            ready += 1
        threaded = self.source.image.overlapped
        for tile, block in read_ahead(self.tiles[self.encoded: ready], self._window, threaded):
            # exact but within `encoder_halo` of the window's edges inside the grid: keep the rest
            feature = tile.kept(self.encoder(as_input(block, device)))
            part = transforms.moments(feature)  # on the device, in float64: no host sync per tile
            self.total = part if self.total is None else self.total + part
            if self.store is not None:
                _put(self.writes, self.store, tile.keep_rows, tile.keep_cols, feature)
            self.meter.tile_done(self.encoded, span_length(tile.keep_rows) * span_length(tile.keep_cols) * m * m)
            self.encoded += 1

    def _window(self, tile: Tile):
        return _image_under(self.source, self.encoder.stage, tile.rows, tile.cols, self.grid, _device(self.encoder))

    def moments(self) -> transforms.Moments:
        """Encode the windows left (the image is whole by now); wait for the stored features."""
        self.advance(self.source.image.shape[0])
        self.writes.drain()
        return self.total

    def __enter__(self) -> "Statistics":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool = False) -> None:
        """Stop the writer, after its writes (only waiting for them where `failed`)."""
        self.writes.close(failed)


def accumulate(encoder: Encoder, source: PaddedImage, grid: tuple[int, int], tiles: list[Tile],
               meter: PassMeter) -> transforms.Moments:
    """Moments of the features of the whole grid of a whole image, summed tile by tile."""
    with Statistics(encoder, source, grid, tiles, meter) as statistics:
        return statistics.moments()


@dataclass
class StageRun:
    """Stage k, tiled, over one image: its statistics pass, begun as the stage starts and fed as
    its image is written, then its render; together they equal `stylize.run_stage`."""

    decoder: Decoder
    plan: StagePlan
    statistics: Statistics
    store: ImageBuffer | None  # the features, where the plan stores them
    meter: Meter

    @classmethod
    def start(cls, models: ModelSet, plan: StagePlan, image: ImageBuffer, buffers: Buffers,
              meter: Meter) -> "StageRun":
        m, encoder = stage_multiple(plan.k), models.encoder(plan.k)
        store = buffers.new((*plan.grid, encoder.out_channels)) if plan.stored else None
        source = PaddedImage(image, plan.grid[0] * m, plan.grid[1] * m)
        counts = meter.start_pass(plan.k, "statistics", len(plan.statistics), plan.statistics_work)
        statistics = Statistics(encoder, source, plan.grid, plan.statistics, counts, store, meter.heap)
        return cls(models.decoder(plan.k), plan, statistics, store, meter)

    @property
    def image(self) -> ImageBuffer:
        return self.statistics.source.image

    def render(self, a: torch.Tensor, b: torch.Tensor, dest: ImageBuffer,
               band_done: Callable[[int], None] | None = None, discard_input: bool = False) -> None:
        """Decode every tile's window of features, moved by A f + b; keep the part the tile owns,
        cropped to the unpadded image, in `dest`. Features come from the store, or are encoded
        again from the image, whose rows no window reads again are discarded where
        `discard_input`; the store's always are. `band_done(rows)`: called once the first `rows`
        rows of `dest` are written."""
        k, plan, m = self.plan.k, self.plan, stage_multiple(self.plan.k)
        height, width = dest.shape[:2]
        device = _device(self.decoder)
        counts = self.meter.start_pass(k, "render", len(plan.render), plan.render_work)
        store, tiles = self.store, plan.render
        fold = self.decoder.fold_pays(1, plan.grid[0] * plan.grid[1])  # as the whole image would
        if store is not None:
            load, threaded = (lambda tile: to_device(store.window(tile.rows, tile.cols), device)), store.overlapped
        else:
            load, threaded = self._image_to_encode, self.image.overlapped
        with WriteBehind(self.meter.heap) as writes:
            for i, (tile, block) in enumerate(read_ahead(tiles, load, threaded)):
                if store is not None:
                    feature = as_input(block, device)
                else:
                    encoder = self.statistics.encoder
                    feature = self._encoder_window(tile).kept(encoder(as_input(block, device)))
                image = decode_moved(self.decoder, feature, a, b, fold)
                y = slice(tile.keep_rows.start * m, min(tile.keep_rows.stop * m, height))
                x = slice(tile.keep_cols.start * m, min(tile.keep_cols.stop * m, width))
                y0, x0 = y.start - tile.rows.start * m, x.start - tile.cols.start * m
                kept = image[..., y0: y0 + span_length(y), x0: x0 + span_length(x)]
                _put(writes, dest, y, x, kept)
                counts.tile_done(i, span_length(y) * span_length(x))
                if i + 1 < len(tiles) and tiles[i + 1].keep_rows == tile.keep_rows:
                    continue  # the band goes on
                if i + 1 < len(tiles):
                    self._discard_above(tiles[i + 1], discard_input)
                if band_done is not None:
                    writes.drain()
                    band_done(y.stop)

    def _discard_above(self, tile: Tile, discard_input: bool) -> None:
        """Let go of the rows above `tile`'s window, the first of a band: no later window reads them."""
        if self.store is not None:
            self.store.discard(slice(0, tile.rows.start))
        elif discard_input:
            self.image.discard(slice(0, self._encoder_window(tile).rows.start * stage_multiple(self.plan.k)))

    def _encoder_window(self, tile: Tile) -> Tile:
        """Where to encode a render tile's features [rows, cols] again, exact up to its edges: the
        encoder halo around it."""
        halo, grid = encoder_halo(self.plan.k), self.plan.grid
        return Tile(expand(tile.rows, halo, grid[0]), expand(tile.cols, halo, grid[1]), tile.rows, tile.cols)

    def _image_to_encode(self, tile: Tile):
        window = self._encoder_window(tile)
        return _image_under(self.statistics.source, self.plan.k, window.rows, window.cols, self.plan.grid,
                            _device(self.decoder))

    def __enter__(self) -> "StageRun":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool = False) -> None:
        """Stop the statistics pass's writer and free the stored features (again is harmless)."""
        try:
            self.statistics.close(failed)
        finally:
            if self.store is not None:
                self.store.close()


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
        stage's float result, unclamped, is the next one's input, in a buffer freed once read;
        a stage's render runs fused with the next stage's statistics pass where that stage stores
        its features."""
        if tile_size == 0:
            dest.store(slice(None), slice(None), stylize(self.models, read_whole(image), self.style,
                                                         self.alpha, levels))
            return
        height, width = image.shape[:2]
        check_content_size(height, width, levels)
        plans = [plan_stage(self.models, k, height, width, tile_size, k not in self.recompute) for k in levels]
        self.meter.heap.budget = step_budget(self.models, levels, tile_size)
        self.meter.heap.start()
        with ExitStack() as held:  # on an error: every writer stopped, every buffer freed
            stage = held.enter_context(StageRun.start(self.models, plans[0], image, self.buffers, self.meter))
            for i, plan in enumerate(plans):
                content = stage.statistics.moments()
                if stage.store is not None and stage.image is not image:
                    stage.image.close()  # read for the last time: at a gigapixel 12 GB of scratch back
                a, b = transforms.affine_map(content, self.style.stages[plan.k], self.alpha, self.style.method)
                follower, out = None, dest
                if i + 1 < len(plans):
                    out = held.enter_context(closing(self._between(plan, plans[i + 1], height, width)))
                    follower = held.enter_context(StageRun.start(self.models, plans[i + 1], out, self.buffers,
                                                                 self.meter))
                fused = follower is not None and follower.plan.stored
                stage.render(a, b, out, follower.statistics.advance if fused else None,
                             discard_input=stage.image is not image)
                stage.close()
                if stage.image is not image:
                    stage.image.close()
                # The heap's free blocks served the render's tiles; what comes next need not carry
                # them. The guard trims only once a new pass's first tile is done, and at 1 GP stage
                # 1's first window, run on stage 2's blocks, set the run's peak (1.42 GB, against
                # 1.34 for any pass); after the last render, encoding the result peaked on them at
                # 42 MP (0.8 GB of them; benchmarks/history/sessions-1-9.md, issue 15).
                self.meter.heap.start()
                stage = follower

    def _between(self, plan: StagePlan, follower: StagePlan, height: int, width: int) -> ImageBuffer:
        """The float image from one stage to the next: a band of rows where the next stage stores
        its features, since its statistics pass reads each row once, right behind the render."""
        capacity = ring_rows(plan, follower, height) if follower.stored else height
        return self.buffers.rows(height, capacity, (width, 3))


# How far above the trimmed heap the heap guard may settle, in planned working sets of the widest
# window (`memory.HeapGuard`): the estimate is a rounded-up average (BYTES_PER_CHANNEL_PIXEL) and
# a window's read-ahead and written-behind blocks come on top, so one would trim every tile.
STEP_BUDGET_WINDOWS = 2


def step_budget(models: ModelSet, levels, tile_size: int) -> int:
    """Bytes one tile of a tiled run may settle above the trimmed heap (`memory.HeapGuard.budget`)."""
    return STEP_BUDGET_WINDOWS * max(BYTES_PER_CHANNEL_PIXEL * full_resolution_width(models, k)
                                     * window_side(models, k, tile_size) ** 2 for k in levels)
