"""Exact tiled stylization: images of any size in memory that does not grow with them.

A stage k of the cascade (`stylize.run_stage`) runs here in two passes over tiles:

1. statistics: encode each tile's window, keep the features of the part the tile owns, and
   accumulate their `Moments` (float64); the sum is the whole image's, so the map A, b is exact;
2. render: per tile, decode the window's features moved by A f + b, and write the part the tile
   owns into the stage's output buffer.

Why every kept pixel equals the whole-image result (up to float rounding). Work in stage k's
feature grid, where one feature pixel is m = 2^(k-1) image pixels. A window starts on a multiple
of m, so its pooling grid is the whole image's; where the window ends at the image edge, every
layer reflect-pads exactly where it does for the whole image; where the window is cut inside the
image, each layer's reflection padding is wrong at the cut, and the wrong band grows by one pixel
per 3x3 conv, halves (rounded up) at each 2x2 pool and doubles at each upsampling.
`encoder_halo` and `decoder_halo` count that band, and a tile owns only pixels at least that far
from its window's cut edges. For stage 5 of the published models the halos are 5 feature pixels
(80 image pixels) each, for stage 1 one. The content is reflect-padded to a multiple of m at the
bottom and right, as `stylize.pad_to_multiple` pads the whole image, by reading the window
through a reflected index.

The halos are recomputed work, so `plan_tiles` shapes the windows to need as little of them as it
can: windows of at most tile_size^2 image pixels (the memory bound), one shape per pass, the split
into rows and columns with the least total window area (on a wide image, full-height windows
need no halo above and below).

Where encoding is dear and the features small (stages 2 to 5), the statistics pass stores them
and the render pass decodes from that store instead of encoding again.

The image between stages and the feature store are `ImageBuffer`s: in RAM, or for large images
`numpy.memmap` files in a temporary directory that is removed afterwards. Features of the whole
image are never in memory at once; peak memory is that of one window's network call, plus the
caller's input and the 8-bit result (`choose_tile_size`).
"""
from __future__ import annotations

import io
import math
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import images, memory, storage, transforms
from .modelset import ModelSet
from .nets import LAYERS, check_stage
from .stylize import DEFAULT_LEVELS, StyleStats, check_style, stage_multiple, style_statistics, stylize, to_uint8

# An intermediate image larger than this goes to disk when `disk_buffer` is left to choose (about
# 5.6 MP of float32 RGB): reading a tile window from the page cache costs far less than encoding it.
DISK_BUFFER_BYTES = 64 << 20
# The statistics pass stores a stage's features for the render pass where re-encoding would cost
# at least this many MACs per stored float: stages 2-5 (490 to 46k for the 16x set), not stage 1
# (27), of both the 16x set and VGG-19. Stage 2 of the 16x set at 4 MP: encoding again took
# 0.19 s, storing 0.05 s.
STORE_MACS_PER_VALUE = 100
# Time per window pixel that does not grow with the networks (copies, pooling, upsampling, the
# float64 moments), in MACs that take as long on the 2-core CPU here; it only weighs the ETA.
PIXEL_WORK_MACS = 16_000
# Peak bytes per pixel of a network call, per channel of the models' widest full-resolution layer.
# Measured on the CPU with the 16x models (24 channels): whole-image runs peak at 230-260 B/px
# above the runtime at 4 and 16 MP, so about 11 B per channel; rounded up.
BYTES_PER_CHANNEL_PIXEL = 14
# Larger windows gain little on the CPU and cost memory: a 42 MP cascade took 85 s in 1.38 GB peak
# RSS with 1024, 77 s in 2.19 GB with 1536 (benchmarks/RESULTS.md).
MAX_CPU_TILE = 1024
MAX_CUDA_TILE = 4096
MIN_TILE = 64
# choose_tile_size keeps whole images and tile windows to this share of the available memory.
MEMORY_SHARE = 0.25
# Stages whose strokes `stylize_stroke_scaled` enlarges: their receptive fields (about 40 to 300
# image pixels) set the size of the style's patterns; stages 2 and 1 refine edges and texture.
COARSE_STAGES = (5, 4, 3)


# ---------------------------------------------------------------- geometry


def _layer_plan(stage: int) -> tuple[str, ...]:
    check_stage(stage)
    return LAYERS[: LAYERS.index(f"conv{stage}1") + 1]


def encoder_halo(stage: int) -> int:
    """Feature pixels along a cut window edge that encoder `stage` gets wrong.

    The first 3x3 conv reflect-pads at the cut, so its edge pixel is wrong; each further conv
    widens the band by one pixel, each 2x2 pool halves it (rounded up). Stage 5: 5 (80 image px).
    """
    depth = 0
    for name in _layer_plan(stage):
        depth = -(-depth // 2) if name == "pool" else depth + 1
    return depth


def decoder_halo(stage: int) -> int:
    """Feature pixels of context around a tile that decoder `stage` needs for an exact interior.

    A cut edge of the decoder's input corrupts a band that grows by one pixel per conv and doubles
    at each upsampling; this is that band in image pixels, in feature pixels rounded up.
    Stage 5: 70 image pixels, so 5 feature pixels.
    """
    depth = 0
    for name in reversed(_layer_plan(stage)):
        depth = 2 * depth if name == "pool" else depth + 1
    return -(-depth // stage_multiple(stage))


def _axis_length(grid: int, halo: int, count: int) -> int:
    """Length of each of `count` equal windows covering an axis of `grid` feature pixels, where
    neighbours overlap by 2 x `halo` so that each is exact over the span it keeps."""
    return grid if count == 1 else min(grid, -(-(grid + 2 * halo * (count - 1)) // count))


def _axis_count(grid: int, halo: int, limit: int) -> int:
    """The fewest windows of at most `limit` feature pixels that cover the axis; 0 if none do."""
    if limit >= grid:
        return 1
    if limit <= 2 * halo:
        return 0
    return -(-(grid - 2 * halo) // (limit - 2 * halo))


def _axis_split(grid: int, halo: int, count: int) -> list[tuple[slice, slice]]:
    """(window, kept span) pairs along one axis: `count` windows of one length spread evenly from
    edge to edge; the kept spans tile the axis, each cut in the middle of an overlap, so at least
    `halo` from the cut edge of either window."""
    length = _axis_length(grid, halo, count)
    starts = [(grid - length) * i // max(count - 1, 1) for i in range(count)]
    cuts = [0] + [(a + b + length) // 2 for a, b in zip(starts, starts[1:])] + [grid]
    return [(slice(s, s + length), slice(lo, hi)) for s, lo, hi in zip(starts, cuts, cuts[1:])]


@dataclass(frozen=True)
class Tile:
    """One network call of a pass, in feature pixels: the window it sees (one shape for every tile
    of a pass) and the part of it that it owns, exact and disjoint from the other tiles'."""

    rows: slice
    cols: slice
    keep_rows: slice
    keep_cols: slice

    def kept(self, feature: torch.Tensor) -> torch.Tensor:
        """The owned part of the window's (1, C, h, w) features."""
        r0, c0 = self.keep_rows.start - self.rows.start, self.keep_cols.start - self.cols.start
        return feature[..., r0: r0 + _len(self.keep_rows), c0: c0 + _len(self.keep_cols)]


def _len(span: slice) -> int:
    return span.stop - span.start


def plan_tiles(grid: tuple[int, int], halo: int, side: int) -> list[Tile]:
    """Row-major tiles covering a grid of feature pixels, for a network wrong within `halo` of a
    cut window edge. Windows hold at most side x side pixels (`side` is clamped to at least
    4 x halo, so that at least half of a window is kept); of the splits into rows x columns of
    windows, the one with the least total window area is taken, the fewest tiles on ties: a long
    image gets full-height windows where they fit, which need no halo above and below.

    Every window of a pass has one shape because oneDNN builds kernels for each new shape: when
    edge tiles had shapes of their own, a fresh 1 MP run spent 6.6 of its 12.3 CPU seconds so.
    """
    (gh, gw), side = grid, max(side, 4 * halo, 1)
    best = None
    for rows in range(1, gh + 1):
        height = _axis_length(gh, halo, rows)
        cols = _axis_count(gw, halo, side * side // height)
        if cols:
            cost = (rows * height * cols * _axis_length(gw, halo, cols), rows * cols)
            best = min(best or (cost, rows, cols), (cost, rows, cols))
        if height <= 2 * halo + 1:  # more rows only shrink the kept spans to nothing
            break
    _, rows, cols = best
    return [Tile(wr, wc, kr, kc) for wr, kr in _axis_split(gh, halo, rows)
            for wc, kc in _axis_split(gw, halo, cols)]


def _expand(span: slice, halo: int, grid: int) -> slice:
    """A window of len(span) + 2 x halo feature pixels (at most the grid) that holds span +- halo,
    shifted inward at the grid's edges so that windows of equal spans have equal shapes."""
    length = min(_len(span) + 2 * halo, grid)
    start = min(max(span.start - halo, 0), grid - length)
    return slice(start, start + length)


def _image_span(window: slice, m: int, grid: int, size: int) -> slice:
    """The image pixels under feature window `window`: to the image edge (`size`) when the window
    reaches the grid's end, so that an unpadded style whose size is not a multiple of m pools and
    pads at its true edge."""
    return slice(window.start * m, size if window.stop == grid else window.stop * m)


# ---------------------------------------------------------------- buffers


class ImageBuffer:
    """An (H, W, C) array read and written by window: in RAM, or a numpy.memmap file.

    A file-backed buffer is mapped afresh for every access, so the pages an access touches leave
    this process's resident set when it returns (they stay in the page cache): a 40 MP float image
    on disk does not count against the run's memory.
    """

    def __init__(self, array: np.ndarray | None = None, path: str | None = None,
                 shape: tuple[int, ...] | None = None, dtype=np.float32):
        self._array, self.path = array, path
        self.shape = tuple(array.shape) if array is not None else tuple(shape)
        self.dtype = np.dtype(array.dtype if array is not None else dtype)

    @classmethod
    def in_memory(cls, shape: tuple[int, ...], dtype=np.float32) -> "ImageBuffer":
        return cls(np.empty(shape, dtype))

    @classmethod
    def on_disk(cls, directory: str, shape: tuple[int, ...], dtype=np.float32) -> "ImageBuffer":
        path = os.path.join(directory, f"{uuid.uuid4().hex}.raw")
        with open(path, "wb") as f:
            f.truncate(math.prod(shape) * np.dtype(dtype).itemsize)  # sparse until written
        return cls(path=path, shape=shape, dtype=dtype)

    def _view(self, mode: str) -> np.ndarray:
        if self._array is not None:
            return self._array
        return np.memmap(self.path, self.dtype, mode, shape=self.shape)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """A copy of [rows, cols]: (h, w, C)."""
        return np.array(self._view("r")[rows, cols])

    def write(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        # No flush: the next mapping of the file sees these pages through the page cache.
        self._view("r+")[rows, cols] = block

    def close(self) -> None:
        """Free the memory or delete the file (a wrapped caller's array is only let go)."""
        self._array = None
        if self.path:
            os.unlink(self.path)
            self.path = None


class _Buffers:
    """Makes the run's ImageBuffers, in RAM or in one temporary directory."""

    def __init__(self, on_disk: bool, directory: str | None):
        self.on_disk, self.directory = on_disk, directory

    def new(self, shape: tuple[int, ...]) -> ImageBuffer:
        if self.on_disk:
            return ImageBuffer.on_disk(self.directory, shape)
        return ImageBuffer.in_memory(shape)


@contextmanager
def _buffers(height: int, width: int, disk_buffer: bool | None, temp_dir: str | None) -> Iterator[_Buffers]:
    on_disk = height * width * 3 * 4 > DISK_BUFFER_BYTES if disk_buffer is None else bool(disk_buffer)
    if not on_disk:
        yield _Buffers(False, None)
        return
    with tempfile.TemporaryDirectory(prefix="cdcore-tiles-", dir=temp_dir) as directory:
        yield _Buffers(True, directory)


def _as_buffer(image) -> ImageBuffer:
    """Wrap an (H, W, 3) uint8 or float32 array (a numpy.memmap too) or pass an ImageBuffer on."""
    if isinstance(image, ImageBuffer):
        buffer = image
    else:
        buffer = ImageBuffer(image)
    if len(buffer.shape) != 3 or buffer.shape[2] != 3 or buffer.dtype not in (np.uint8, np.float32):
        raise ValueError(f"expected an (H, W, 3) uint8 or float32 image, got shape {buffer.shape} "
                         f"dtype {buffer.dtype}")
    return buffer


@dataclass
class _Source:
    """An image buffer seen through reflect padding at the bottom and right up to `height` x
    `width`: the padding `stylize.pad_to_multiple` gives the whole image (replicate where an image
    is too small to reflect)."""

    image: ImageBuffer
    height: int
    width: int

    def window(self, rows: slice, cols: slice, device: torch.device) -> torch.Tensor:
        """(1, 3, h, w) float32 in [0, 1] (uint8 images) on `device`; rows, cols in padded coordinates."""
        h, w = self.image.shape[:2]
        reflect = self.height - h < h and self.width - w < w
        ri, ci = _padded_index(rows, h, reflect), _padded_index(cols, w, reflect)
        block = self.image.read(slice(ri.min(), ri.max() + 1), slice(ci.min(), ci.max() + 1))
        if rows.stop > h or cols.stop > w:  # the window reaches into the padding
            block = block[np.ix_(ri - ri.min(), ci - ci.min())]
        return _to_tensor(block, device)


def _padded_index(span: slice, size: int, reflect: bool) -> np.ndarray:
    """Indices into an axis of length `size` for positions `span` of its bottom/right padding."""
    i = np.arange(span.start, span.stop)
    return np.where(i < size, i, 2 * (size - 1) - i) if reflect else np.minimum(i, size - 1)


def _to_tensor(block: np.ndarray, device: torch.device) -> torch.Tensor:
    """(h, w, C) uint8 or float32 -> (1, C, h, w) float32 on `device`, uint8 scaled to [0, 1] as
    `stylize.to_tensor` scales it. The memory stays in (h, w, C) order: dense channels-last, the
    layout oneDNN convolves fastest (2.5x faster than NCHW for the 16x stage 1 on this CPU)."""
    t = torch.from_numpy(block).to(device)[None].permute(0, 3, 1, 2)
    return t.float().div_(255.0) if block.dtype == np.uint8 else t


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """(1, C, h, w) -> (h, w, C) on the CPU."""
    return t[0].permute(1, 2, 0).cpu().numpy()


def _store(dest: ImageBuffer, rows: slice, cols: slice, image: torch.Tensor) -> None:
    """Write (1, 3, h, w) into dest: as is for float buffers, as `to_uint8` rounds it for uint8."""
    dest.write(rows, cols, to_uint8(image) if dest.dtype == np.uint8 else _to_numpy(image))


# ---------------------------------------------------------------- progress


@dataclass
class Progress:
    """One report per tile: where the run is, how fast and how long it has left."""

    stage: int
    step: str  # "statistics", "render" or "style"
    tile: int  # 1-based
    tiles: int
    mp_per_s: float  # image megapixels per second through the current pass
    eta_s: float  # seconds left in the whole run, from the work done so far

    def __str__(self) -> str:
        minutes, seconds = divmod(round(self.eta_s), 60)
        eta = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
        return (f"stage {self.stage} {self.step}: tile {self.tile}/{self.tiles}, "
                f"{self.mp_per_s:.2f} MP/s, ETA {eta}")


class _Meter:
    """Hears of every finished tile of a run: turns them into Progress reports, and keeps the
    run's memory in check (`heap`).

    The ETA extrapolates the time spent so far by work (`_pass_work`) done and planned, so it
    weighs a stage 5 tile as the heavy one it is.

    `heap` trims the malloc heap as a run starts, and again only when the resident set creeps
    more than 10% past where it settled, which happens when tiles, or the next stage's shapes,
    fit the heap's holes badly. Measured here: never trimming, a 42 MP cascade (1024 px) peaked
    at 1.63 GB; trimming after every tile made a 4 MP cascade take 10.0 s instead of 7.2 s, each
    tile page-faulting its working set in again; with the guard, 42 MP peaked at 1.38 GB.
    """

    def __init__(self, callback: Callable[[Progress], None] | None, total_work: float):
        self.callback, self.total, self.done = callback, total_work, 0.0
        self.started = time.perf_counter()
        self.heap = memory.HeapGuard()

    def start_pass(self, stage: int, step: str, tiles: int, work: float) -> None:
        self.stage, self.step, self.tiles, self.tile_work = stage, step, tiles, work / tiles
        self.pass_started, self.pass_pixels = time.perf_counter(), 0

    def tile_done(self, index: int, pixels: int) -> None:
        self.heap.step_done()
        self.done += self.tile_work
        self.pass_pixels += pixels
        if self.callback is None:
            return
        now = time.perf_counter()
        rate = self.pass_pixels / 1e6 / max(now - self.pass_started, 1e-9)
        eta = (now - self.started) * max(self.total - self.done, 0.0) / max(self.done, 1e-9)
        self.callback(Progress(self.stage, self.step, index + 1, self.tiles, rate, eta))


def _macs_per_pixel(module: torch.nn.Module, stage: int) -> float:
    """Multiply-accumulates per image pixel of encoder or decoder `stage` (its 3x3 convs)."""
    macs, level = 0.0, 0
    for name in _layer_plan(stage):
        if name == "pool":
            level += 1
        else:
            macs += getattr(module, name).weight.numel() / 4 ** level
    return macs


def _pass_work(tiles: list[Tile], m: int, macs: float, pad: int = 0) -> float:
    """Work of a pass whose network (`macs` per pixel) sees every tile's window (one shape for
    all), grown by `pad` feature pixels on each side: window pixels times MACs + PIXEL_WORK_MACS."""
    rows, cols = tiles[0].rows, tiles[0].cols
    return len(tiles) * (_len(rows) + 2 * pad) * (_len(cols) + 2 * pad) * m * m * (macs + PIXEL_WORK_MACS)


# ---------------------------------------------------------------- the two passes


def _stores_features(encoder: torch.nn.Module, m: int) -> bool:
    """Keep a stage's features between the passes where encoding them again would cost more than
    STORE_MACS_PER_VALUE multiply-accumulates per stored value (a float written and read back)."""
    values_per_pixel = encoder.out_channels / (m * m)
    return _macs_per_pixel(encoder, encoder.stage) >= STORE_MACS_PER_VALUE * values_per_pixel


@dataclass
class _StagePlan:
    """How stage k runs over a content: its feature grid, the tiles of its two passes (with the
    encoder's and the decoder's halo) and whether the features are stored between them."""

    k: int
    grid: tuple[int, int]
    statistics: list[Tile]
    render: list[Tile]
    stored: bool


def _stage_plan(models: ModelSet, k: int, height: int, width: int, tile_size: int) -> _StagePlan:
    """The plan for a content of height x width, padded to a multiple of m = 2^(k-1), with windows
    of at most tile_size x tile_size image pixels."""
    m = stage_multiple(k)
    grid = (-(-height // m), -(-width // m))
    side = max(1, tile_size // m)
    return _StagePlan(k, grid, plan_tiles(grid, encoder_halo(k), side), plan_tiles(grid, decoder_halo(k), side),
                      _stores_features(models.encoder(k), m))


def _statistics_work(models: ModelSet, plan: _StagePlan) -> float:
    encoder = models.encoder(plan.k)
    return _pass_work(plan.statistics, stage_multiple(plan.k), _macs_per_pixel(encoder, plan.k))


def _render_work(models: ModelSet, plan: _StagePlan) -> float:
    k, m = plan.k, stage_multiple(plan.k)
    work = _pass_work(plan.render, m, _macs_per_pixel(models.decoder(k), k))
    if not plan.stored:  # the encoder runs again, on windows grown by its halo
        work += _pass_work(plan.render, m, _macs_per_pixel(models.encoder(k), k), encoder_halo(k))
    return work


def _encode(encoder: torch.nn.Module, source: _Source, rows: slice, cols: slice, grid: tuple[int, int],
            device: torch.device) -> torch.Tensor:
    """Features (1, C, h, w) of the feature window [rows, cols], encoded from the image under it:
    exact but within `encoder_halo` of the window's edges inside the grid."""
    m = stage_multiple(encoder.stage)
    y, x = _image_span(rows, m, grid[0], source.height), _image_span(cols, m, grid[1], source.width)
    return encoder(source.window(y, x, device))


def _exact_features(encoder: torch.nn.Module, source: _Source, rows: slice, cols: slice,
                    grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Features of [rows, cols] exact up to its edges: encoded with the encoder halo around it."""
    halo = encoder_halo(encoder.stage)
    window = Tile(_expand(rows, halo, grid[0]), _expand(cols, halo, grid[1]), rows, cols)
    return window.kept(_encode(encoder, source, window.rows, window.cols, grid, device))


def _statistics_pass(encoder, source: _Source, grid, tiles: list[Tile], device, meter: _Meter,
                     work: float, step: str, store: ImageBuffer | None = None) -> transforms.Moments:
    """Moments of the features of the whole grid, accumulated tile by tile (and the features
    written to `store` when given)."""
    m = stage_multiple(encoder.stage)
    meter.start_pass(encoder.stage, step, len(tiles), work)
    total = None
    for i, tile in enumerate(tiles):
        feature = tile.kept(_encode(encoder, source, tile.rows, tile.cols, grid, device))
        part = transforms.moments(feature)
        total = part if total is None else total + part
        if store is not None:
            store.write(tile.keep_rows, tile.keep_cols, _to_numpy(feature))
        meter.tile_done(i, _len(tile.keep_rows) * _len(tile.keep_cols) * m * m)
    return total


def _render_pass(encoder, decoder, source: _Source, grid, tiles: list[Tile], a, b, dest: ImageBuffer,
                 device, meter: _Meter, work: float, store: ImageBuffer | None) -> None:
    """Decode every tile's window of features, moved by A f + b; keep the part the tile owns,
    cropped to the unpadded image, in `dest`. Features come from `store`, or are encoded again."""
    k = decoder.stage
    m = stage_multiple(k)
    height, width = dest.shape[:2]
    meter.start_pass(k, "render", len(tiles), work)
    for i, tile in enumerate(tiles):
        if store is not None:
            feature = _to_tensor(store.read(tile.rows, tile.cols), device)
        else:
            feature = _exact_features(encoder, source, tile.rows, tile.cols, grid, device)
        image = decoder(feature, affine=(a, b))
        y = slice(tile.keep_rows.start * m, min(tile.keep_rows.stop * m, height))
        x = slice(tile.keep_cols.start * m, min(tile.keep_cols.stop * m, width))
        y0, x0 = y.start - tile.rows.start * m, x.start - tile.cols.start * m
        _store(dest, y, x, image[..., y0: y0 + _len(y), x0: x0 + _len(x)])
        meter.tile_done(i, _len(y) * _len(x))


def _run_stage(models: ModelSet, k: int, image: ImageBuffer, dest: ImageBuffer, style: StyleStats,
               alpha: float, tile_size: int, buffers: _Buffers, meter: _Meter) -> None:
    """Stage k, tiled: image (H, W, 3) -> dest (H, W, 3); equals `stylize.run_stage`."""
    encoder, decoder = models.encoder(k), models.decoder(k)
    device = _device(models, k)
    plan = _stage_plan(models, k, *image.shape[:2], tile_size)
    m = stage_multiple(k)
    source = _Source(image, plan.grid[0] * m, plan.grid[1] * m)
    store = buffers.new((*plan.grid, encoder.out_channels)) if plan.stored else None
    try:
        content = _statistics_pass(encoder, source, plan.grid, plan.statistics, device, meter,
                                   _statistics_work(models, plan), "statistics", store)
        a, b = transforms.affine_map(content, style.stages[k], alpha, style.method)
        _render_pass(encoder, decoder, source, plan.grid, plan.render, a, b, dest, device, meter,
                     _render_work(models, plan), store)
    finally:
        if store is not None:
            store.close()


def _cascade_work(models: ModelSet, levels, height: int, width: int, tile_size: int) -> float:
    """The work `_stylize_into` reports for these levels (none for a whole-image run)."""
    if tile_size == 0:
        return 0.0
    plans = [_stage_plan(models, k, height, width, tile_size) for k in levels]
    return sum(_statistics_work(models, plan) + _render_work(models, plan) for plan in plans)


# ---------------------------------------------------------------- public API


def _available_memory(device: torch.device) -> int:
    """Bytes free on `device`: free GPU memory on CUDA, MemAvailable (Linux) or free pages on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_tile_size(height: int, width: int, device: torch.device | str = "cpu", channels: int = 24,
                     available: int | None = None) -> int:
    """A tile size for an image of height x width: 0 (whole image) when it fits comfortably.

    Memory is estimated as BYTES_PER_CHANNEL_PIXEL x `channels` (the widest full-resolution layer
    of the models: 24 for the 16x set, 64 for VGG-19) per pixel of what one network call sees.
    The whole image is chosen when that is at most MEMORY_SHARE of the `available` bytes (default:
    what `device` has free). Otherwise the tile size is the largest whose windows (at most its
    square) fit that share: a multiple of 64 from MIN_TILE to MAX_CPU_TILE (on the CPU, where
    larger windows gain little speed) or MAX_CUDA_TILE.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (got {height}x{width})")
    device = torch.device(device)
    budget = MEMORY_SHARE * (available if available is not None else _available_memory(device))
    per_pixel = BYTES_PER_CHANNEL_PIXEL * channels
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel))
    ceiling = MAX_CUDA_TILE if device.type == "cuda" else MAX_CPU_TILE
    return max(MIN_TILE, min(ceiling, side // 64 * 64))


def _check_tile_size(tile_size) -> None:
    if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 0):
        raise ValueError(f"tile size must be a non-negative integer (got {tile_size!r})")


def _device(models: ModelSet, k: int) -> torch.device:
    return next(models.encoder(k).parameters()).device


def _as_tensor(image: ImageBuffer) -> torch.Tensor:
    return _to_tensor(image.read(slice(None), slice(None)), torch.device("cpu"))


@torch.inference_mode()
def style_statistics_tiled(models: ModelSet, style, method: str = "wct", levels=None,
                           tile_size: int | None = None,
                           progress: Callable[[Progress], None] | None = None) -> StyleStats:
    """`stylize.style_statistics` of an (H, W, 3) uint8 or float32 style, computed tile by tile.

    The style is not padded (pooling floors odd sizes, as in the whole-image path), so tiles at
    its bottom and right reach its true edge. `tile_size` None chooses one from free memory; 0
    encodes the whole style at once.
    """
    if method not in DEFAULT_LEVELS:
        raise ValueError(f"method must be one of {tuple(DEFAULT_LEVELS)} (got {method!r})")
    levels = tuple(levels or DEFAULT_LEVELS[method])
    _check_tile_size(tile_size)
    image = _as_buffer(style)
    height, width = image.shape[:2]
    tile_size = _resolve_tile_size(models, levels, height, width, tile_size)
    if tile_size == 0:
        return style_statistics(models, _as_tensor(image), method, levels)
    need = 2 * stage_multiple(max(levels))
    if min(height, width) < need:
        raise ValueError(f"style image too small: {min(height, width)} px on its short side, stage "
                         f"{max(levels)} needs at least {need}")
    plans = {}
    for k in levels:  # the style is not padded: pooling floors its size, as for the whole style
        m = stage_multiple(k)
        grid = (height // m, width // m)
        tiles = plan_tiles(grid, encoder_halo(k), max(1, tile_size // m))
        plans[k] = grid, tiles, _pass_work(tiles, m, _macs_per_pixel(models.encoder(k), k))
    meter = _Meter(progress, sum(work for _, _, work in plans.values()))
    source = _Source(image, height, width)
    device = _device(models, levels[0])
    stages = {}
    meter.heap.start()
    for k, (grid, tiles, work) in plans.items():
        total = _statistics_pass(models.encoder(k), source, grid, tiles, device, meter, work, "style")
        stages[k] = transforms.style_stage(total, method)
    return StyleStats(method, models.model_id, stages)


def _resolve_tile_size(models: ModelSet, levels, height: int, width: int, tile_size: int | None) -> int:
    if tile_size is not None:
        return tile_size
    channels = max(models.encoder(k).conv11.out_channels for k in levels)
    return choose_tile_size(height, width, _device(models, levels[0]), channels)


def _stylize_into(models: ModelSet, image: ImageBuffer, dest: ImageBuffer, style: StyleStats,
                  alpha: float, levels: tuple[int, ...], tile_size: int, buffers: _Buffers,
                  meter: _Meter) -> None:
    """Stages `levels` in order from `image` to `dest` (uint8 or float32, (H, W, 3)). Each
    stage's float result, unclamped, is the next one's input, in a buffer freed once read."""
    height, width = image.shape[:2]
    if tile_size == 0:
        _store(dest, slice(None), slice(None), stylize(models, _as_tensor(image), style, alpha, levels))
        return
    meter.heap.start()
    current = image
    for i, k in enumerate(levels):
        out = dest if i == len(levels) - 1 else buffers.new((height, width, 3))
        _run_stage(models, k, current, out, style, alpha, tile_size, buffers, meter)
        if current is not image:
            current.close()
        current = out


def _new_output(out: np.ndarray | None, height: int, width: int) -> np.ndarray:
    if out is None:
        return np.empty((height, width, 3), np.uint8)
    if out.shape != (height, width, 3) or out.dtype not in (np.uint8, np.float32):
        raise ValueError(f"out must be ({height}, {width}, 3) uint8 or float32 (got {out.shape} {out.dtype})")
    return out


@torch.inference_mode()
def stylize_tiled(models: ModelSet, content, style: StyleStats, alpha: float = 1.0, levels=None,
                  tile_size: int | None = None, *, out: np.ndarray | None = None,
                  disk_buffer: bool | None = None, temp_dir: str | None = None,
                  progress: Callable[[Progress], None] | None = None) -> np.ndarray:
    """Stylize an (H, W, 3) image tile by tile; the result equals `stylize.stylize`'s.

    content: uint8 RGB, or float32 in [0, 1]; a numpy array, a numpy.memmap or an ImageBuffer.
    tile_size: bounds what one network call sees, and so the memory: every window of stage k
        holds at most tile_size^2 image pixels (side counted in its pooling multiple 2^(k-1),
        rounded down, and at least 4 halos), shaped by `plan_tiles`. 0 runs the whole image at
        once (`stylize.stylize`); None picks a size with `choose_tile_size` from the memory free
        on the models' device.
    out: where the result goes: an (H, W, 3) uint8 array, rounded as `to_uint8` rounds (for
        instance `Canvas.rgb`, which the image encoder then reads in place), or float32 for the
        unclamped floats; a new uint8 array when None. It is also returned.
    disk_buffer: keep the image between stages (and stored features) in numpy.memmap files in a
        temporary directory under `temp_dir` (True), in RAM (False), or decide by size (None: on
        disk above DISK_BUFFER_BYTES per image). Use a disk-backed `temp_dir` where /tmp is tmpfs.
    progress: called with a `Progress` after every tile (whole-image runs report nothing).
    """
    levels = check_style(models, style, levels)
    _check_tile_size(tile_size)
    image = _as_buffer(content)
    height, width = image.shape[:2]
    out = _new_output(out, height, width)
    tile_size = _resolve_tile_size(models, levels, height, width, tile_size)
    meter = _Meter(progress, _cascade_work(models, levels, height, width, tile_size))
    with _buffers(height, width, disk_buffer, temp_dir) as buffers:
        _stylize_into(models, image, ImageBuffer(out), style, alpha, levels, tile_size, buffers, meter)
    return out


# ---------------------------------------------------------------- stroke scale


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and the weight of i1 for linear resampling of n_in samples to n_out
    with half-pixel centres (torch's align_corners=False)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)


def _upsample_bilinear(small: ImageBuffer, dest: ImageBuffer, band: int = 128) -> None:
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


def _split_levels(levels: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    coarse = tuple(k for k in levels if k in COARSE_STAGES)
    fine = levels[len(coarse):]
    if not coarse or not fine or levels[: len(coarse)] != coarse:
        raise ValueError(f"a stroke scale needs coarse levels (of {COARSE_STAGES}) followed by fine "
                         f"ones (2, 1), both present (got levels {levels})")
    return coarse, fine


@torch.inference_mode()
def stylize_stroke_scaled(models: ModelSet, content: np.ndarray, style: StyleStats, alpha: float = 1.0,
                          levels=None, stroke_scale: float = 2.0, tile_size: int | None = None, *,
                          out: np.ndarray | None = None, disk_buffer: bool | None = None,
                          temp_dir: str | None = None,
                          progress: Callable[[Progress], None] | None = None) -> np.ndarray:
    """Stylize with brush strokes `stroke_scale` (S) times larger than `stylize_tiled` paints them.

    The size of a style's patterns in the output is set by the receptive fields of the coarse
    stages (COARSE_STAGES: 5, 4, 3), which are fixed in pixels, so on a 40 MP image the strokes
    that look right at 1 MP shrink to fine texture. Here the coarse levels run on the content
    downscaled by S (Lanczos); their float result is upsampled back to full size (bilinear) and
    the fine levels (2, 1) run on it at full size, restoring sharp edges and fine texture. S = 1
    is `stylize_tiled`. The levels must list the coarse stages first, and hold both kinds.

    content: (H, W, 3) uint8. The other arguments, and the result, as in `stylize_tiled`.
    """
    if not (isinstance(stroke_scale, (int, float)) and stroke_scale >= 1.0):
        raise ValueError(f"stroke scale must be a number >= 1 (got {stroke_scale!r})")
    if stroke_scale == 1.0:
        return stylize_tiled(models, content, style, alpha, levels, tile_size, out=out,
                             disk_buffer=disk_buffer, temp_dir=temp_dir, progress=progress)
    levels = check_style(models, style, levels)
    coarse, fine = _split_levels(levels)
    _check_tile_size(tile_size)
    dtype = _as_buffer(content).dtype  # checks the shape
    if not isinstance(content, np.ndarray) or dtype != np.uint8:
        raise ValueError(f"a stroke scale needs uint8 content in a numpy array (got {type(content).__name__} "
                         f"of {dtype})")
    height, width = content.shape[:2]
    out = _new_output(out, height, width)
    small_size = (max(1, round(width / stroke_scale)), max(1, round(height / stroke_scale)))
    small = np.asarray(Image.fromarray(content).resize(small_size, Image.Resampling.LANCZOS))
    coarse_tile = _resolve_tile_size(models, coarse, *small.shape[:2], tile_size)
    fine_tile = _resolve_tile_size(models, fine, height, width, tile_size)
    meter = _Meter(progress, _cascade_work(models, coarse, *small.shape[:2], coarse_tile)
                   + _cascade_work(models, fine, height, width, fine_tile))
    with _buffers(height, width, disk_buffer, temp_dir) as buffers:
        coarse_result = buffers.new(small.shape)
        _stylize_into(models, ImageBuffer(small), coarse_result, style, alpha, coarse, coarse_tile, buffers,
                      meter)
        upsampled = buffers.new((height, width, 3))
        _upsample_bilinear(coarse_result, upsampled)
        coarse_result.close()
        _stylize_into(models, upsampled, ImageBuffer(out), style, alpha, fine, fine_tile, buffers, meter)
        upsampled.close()
    return out


# ---------------------------------------------------------------- output


class Canvas:
    """The 8-bit result in Pillow's own 4-byte pixel layout, (H, W, 4) uint8: RGBX, or RGBA when
    an alpha channel is carried through.

    `Image.frombuffer` wraps it without a copy, so JPEG, TIFF and WebP encoders read its rows in
    place: the result exists once, 4 bytes per pixel, while it is encoded. (Pillow cannot write
    RGBX as PNG, so an opaque PNG costs one conversion copy.) Write the result into `rgb`.
    """

    def __init__(self, height: int, width: int, alpha: np.ndarray | None = None):
        if height < 1 or width < 1:
            raise ValueError(f"canvas size must be positive (got {height}x{width})")
        if alpha is not None and alpha.shape != (height, width):
            raise ValueError(f"alpha must be ({height}, {width}) (got {alpha.shape})")
        self.pixels = np.empty((height, width, 4), np.uint8)
        self.pixels[..., 3] = 255 if alpha is None else alpha
        self.has_alpha = alpha is not None

    @property
    def rgb(self) -> np.ndarray:
        """The (H, W, 3) colour view to write into (`stylize_tiled(..., out=canvas.rgb)`)."""
        return self.pixels[..., :3]

    def image(self, keep_alpha: bool = True) -> Image.Image:
        """A Pillow image sharing the canvas memory (RGBA when it has alpha and `keep_alpha`)."""
        mode = "RGBA" if self.has_alpha and keep_alpha else "RGBX"
        height, width = self.pixels.shape[:2]
        return Image.frombuffer(mode, (width, height), self.pixels, "raw", mode, 0, 1)

    def save(self, uri: str) -> None:
        """Encode in the format of `uri`'s extension (`images.FORMATS`) and write it atomically:
        a local file through a temporary file in the same directory, renamed when complete."""
        fmt, keeps_alpha, options = images.output_format(uri)
        img = self.image(keeps_alpha)
        if fmt == "PNG" and img.mode == "RGBX":
            img = img.convert("RGB")
        if not storage.is_local(uri):
            data = io.BytesIO()
            img.save(data, fmt, **options)
            storage.write_bytes(uri, data.getvalue())
            return
        with storage.atomic_local(storage.local_path(uri)) as tmp:
            img.save(tmp, fmt, **options)
