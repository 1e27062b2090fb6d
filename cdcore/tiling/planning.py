"""Where the windows of a tiled stage go, how much work they are, and how large they may be.

Work in stage k's feature grid, where one feature pixel is m = 2^(k-1) image pixels. A window
starts on a multiple of m, so its pooling grid is the whole image's; where it ends at the image
edge, every layer reflect-pads exactly where it does for the whole image; where it is cut inside
the image, each layer's reflection padding is wrong at the cut, and the wrong band grows by one
pixel per 3x3 conv, halves (rounded up) at each 2x2 pool and doubles at each upsampling.
`encoder_halo` and `decoder_halo` count that band, and a tile owns only pixels at least that far
from its window's cut edges, so every owned pixel equals the whole-image result.

The halos are recomputed work, so `plan_tiles` shapes the windows to need as little of them as it
can: at most tile_size^2 image pixels each (the memory bound), one shape per pass, and the split
into rows and columns with the least total window area.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..models.modelset import ModelSet
from ..models.architecture import stage_layers, stage_multiple
from ..options import split_levels

# Time per window pixel that does not grow with the networks (copies, pooling, upsampling, the
# float64 moments), in MACs of about the same time on a CPU; it only weighs the ETA.
PIXEL_WORK_MACS = 16_000
# The statistics pass stores a stage's features for the render pass where encoding them again
# would cost at least this many MACs per stored value (a float written and read back): stages
# 2-5 of the 16x set and VGG-19, not stage 1 (27 MACs per value for the 16x set).
STORE_MACS_PER_VALUE = 100
# Where a run's buffers outgrow the memory the page cache can keep them in (a gigapixel cascade's
# 17-34 GB), a stored value goes to disk and back: storing then pays only above this. Stage 2 of
# the 16x set (486 MACs per value) writes its 32 GB of features at 1 GP as fast as the disk takes
# them (360 MB/s here), no faster overall than encoding them again, whether its statistics pass
# runs alone or fused with stage 3's render; stage 3 (1,836) writes half as much in twice the
# compute, which the disk keeps up with; stages 4 and 5 (7,700, 45,800) store
# (benchmarks/history/sessions-1-9.md, issue 15).
DISK_STORE_MACS_PER_VALUE = 1000
# Peak bytes per pixel of a network call, per channel of the models' widest full-resolution layer
# (about 11 measured for the 16x set on the CPU, rounded up; benchmarks/history/sessions-1-9.md).
BYTES_PER_CHANNEL_PIXEL = 14
# Windows larger than this gain little speed on a CPU and cost memory
# (benchmarks/history/sessions-1-9.md, issue 3).
MAX_CPU_TILE = 1024
# On a GPU the host reads, writes and stores each window, so host memory grows with the square of
# the side: streaming on an H200, windows of 4096 held 4.2-4.7 GB of it against 2.2-2.4 GB at 2048,
# for the same speed at 200 MP and 15% more at 1 GP (1024: 1.7 GB, 1.6x slower). Several actors
# share a GPU node's host, so the default takes the smaller
# (benchmarks/history/sessions-1-9.md, issues 11, 15).
MAX_CUDA_TILE = 2048
MIN_TILE = 64
# choose_tile_size keeps whole images and tile windows to this share of the available memory.
MEMORY_SHARE = 0.25
FLOAT_PIXEL_BYTES = 12  # an (H, W, 3) float32 image between stages


# ---------------------------------------------------------------- halos


def encoder_halo(stage: int) -> int:
    """Feature pixels along a cut window edge that encoder `stage` gets wrong.

    The first 3x3 conv reflect-pads at the cut, so its edge pixel is wrong; each further conv
    widens the band by one pixel, each 2x2 pool halves it (rounded up). Stage 5: 5 (80 image px).
    """
    depth = 0
    for name in stage_layers(stage):
        depth = -(-depth // 2) if name == "pool" else depth + 1
    return depth


def decoder_halo(stage: int) -> int:
    """Feature pixels of context around a tile that decoder `stage` needs for an exact interior.

    A cut edge of the decoder's input corrupts a band that grows by one pixel per conv and doubles
    at each upsampling; this is that band in image pixels, in feature pixels rounded up.
    Stage 5: 70 image pixels, so 5 feature pixels.
    """
    depth = 0
    for name in reversed(stage_layers(stage)):
        depth = 2 * depth if name == "pool" else depth + 1
    return -(-depth // stage_multiple(stage))


# ---------------------------------------------------------------- tiles


def span_length(span: slice) -> int:
    return span.stop - span.start


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
        return feature[..., r0: r0 + span_length(self.keep_rows), c0: c0 + span_length(self.keep_cols)]


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


def plan_tiles(grid: tuple[int, int], halo: int, side: int) -> list[Tile]:
    """Row-major tiles covering a grid of feature pixels, for a network wrong within `halo` of a
    cut window edge. Windows hold at most side x side pixels (`side` is clamped to at least
    4 x halo, so that at least half of a window is kept); of the splits into rows x columns of
    windows, the one with the least total window area is taken, the fewest tiles on ties: a long
    image gets full-height windows where they fit, which need no halo above and below.

    Every window of a pass has one shape because oneDNN builds kernels for each new shape, which
    costs more than the convolutions themselves on small runs (benchmarks/history/sessions-1-9.md,
    issue 13).
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


def expand(span: slice, halo: int, grid: int) -> slice:
    """A window of len(span) + 2 x halo feature pixels (at most the grid) that holds span +- halo,
    shifted inward at the grid's edges so that windows of equal spans have equal shapes."""
    length = min(span_length(span) + 2 * halo, grid)
    start = min(max(span.start - halo, 0), grid - length)
    return slice(start, start + length)


def image_span(window: slice, m: int, grid: int, size: int) -> slice:
    """The image pixels under feature window `window`: to the image edge (`size`) when the window
    reaches the grid's end, so that an unpadded style whose size is not a multiple of m pools and
    pads at its true edge."""
    return slice(window.start * m, size if window.stop == grid else window.stop * m)


# ---------------------------------------------------------------- work


def macs_per_pixel(module: torch.nn.Module, stage: int) -> float:
    """Multiply-accumulates per image pixel of encoder or decoder `stage` (its 3x3 convs)."""
    macs, level = 0.0, 0
    for name in stage_layers(stage):
        if name == "pool":
            level += 1
        else:
            macs += getattr(module, name).weight.numel() / 4 ** level
    return macs


def pass_work(tiles: list[Tile], m: int, macs: float, pad: int = 0) -> float:
    """Work of a pass whose network (`macs` per pixel) sees every tile's window (one shape for
    all), grown by `pad` feature pixels on each side: window pixels times MACs + PIXEL_WORK_MACS."""
    rows, cols = tiles[0].rows, tiles[0].cols
    area = (span_length(rows) + 2 * pad) * (span_length(cols) + 2 * pad) * m * m
    return len(tiles) * area * (macs + PIXEL_WORK_MACS)


def _macs_per_value(encoder: torch.nn.Module) -> float:
    """What encoding a stage costs per feature value it makes."""
    m = stage_multiple(encoder.stage)
    return macs_per_pixel(encoder, encoder.stage) * m * m / encoder.out_channels


def _stores_features(encoder: torch.nn.Module, m: int) -> bool:
    """Keep a stage's features between the passes where encoding them again would cost more than
    STORE_MACS_PER_VALUE multiply-accumulates per stored value."""
    return _macs_per_value(encoder) >= STORE_MACS_PER_VALUE


@dataclass(frozen=True)
class StagePlan:
    """How stage k runs over a content: its feature grid, the tiles of its two passes (with the
    encoder's and the decoder's halo), whether the features are stored between them, and the
    work of each pass (for the ETA)."""

    k: int
    grid: tuple[int, int]
    statistics: list[Tile]
    render: list[Tile]
    stored: bool
    statistics_work: float
    render_work: float


def full_resolution_width(models: ModelSet, k: int) -> int:
    """Channels of the widest layer of stage k's networks at full resolution (before a pool)."""
    layers = stage_layers(k)
    full = layers[: layers.index("pool")] if "pool" in layers else layers
    return max(models.encoder(k).widths.for_stage(k)[name] for name in full)


def window_side(models: ModelSet, k: int, tile_size: int) -> int:
    """The side in image pixels of stage k's windows for tiles of `tile_size`.

    A window's activations grow with its full-resolution width, so a stage wider there than the
    models' narrowest stage gets windows shrunk by the square root of the ratio: every stage's
    windows then hold about as much as tile_size^2 pixels of the narrowest. The 16x set's stage 1
    (24 channels against 16) gets 836 at tiles of 1024, which took 160 MB off its passes' heap
    at a gigapixel, for about 1 s more at 42 MP (65 windows a pass, not 40;
    benchmarks/history/sessions-1-9.md, issue 15)."""
    narrowest = min(full_resolution_width(models, j) for j in models.stages)
    return max(1, math.isqrt(tile_size * tile_size * narrowest // full_resolution_width(models, k)))


def plan_stage(models: ModelSet, k: int, height: int, width: int, tile_size: int, store: bool = True) -> StagePlan:
    """The plan for a content of height x width, padded to a multiple of m = 2^(k-1), with windows
    of at most `window_side` squared image pixels (tile_size, or less where stage k is wide).
    `store=False` encodes again rather than store the features even where storing would be cheaper
    (to spare scratch disk)."""
    m = stage_multiple(k)
    encoder, decoder = models.encoder(k), models.decoder(k)
    grid = (-(-height // m), -(-width // m))
    side = max(1, window_side(models, k, tile_size) // m)
    statistics, render = plan_tiles(grid, encoder_halo(k), side), plan_tiles(grid, decoder_halo(k), side)
    stored = store and _stores_features(encoder, m)
    encoder_macs = macs_per_pixel(encoder, k)
    render_work = pass_work(render, m, macs_per_pixel(decoder, k))
    if not stored:  # the encoder runs again, on windows grown by its halo
        render_work += pass_work(render, m, encoder_macs, encoder_halo(k))
    return StagePlan(k, grid, statistics, render, stored, pass_work(statistics, m, encoder_macs), render_work)


def cascade_work(models: ModelSet, levels, height: int, width: int, tile_size: int, recompute=()) -> float:
    """The work a tiled run of these levels reports (none for a whole-image run)."""
    if tile_size == 0:
        return 0.0
    plans = [plan_stage(models, k, height, width, tile_size, k not in recompute) for k in levels]
    return sum(plan.statistics_work + plan.render_work for plan in plans)


# ---------------------------------------------------------------- buffers


def coarse_shape(height: int, width: int, stroke_scale: float) -> tuple[int, int]:
    """(h, w) of a content shrunk by a stroke scale, for its coarse stages."""
    return max(1, round(height / stroke_scale)), max(1, round(width / stroke_scale))


def window_rows(tile: Tile, m: int, height: int) -> slice:
    """The image rows a statistics window of a stage with pooling multiple m reads from an image of
    `height` rows: to the image's last row where it reaches into the padding, which reflects the
    rows above it."""
    return slice(tile.rows.start * m, min(tile.rows.stop * m, height))


def ring_rows(render: StagePlan, follower: StagePlan, height: int) -> int:
    """Image rows the buffer between a stage's render and the next stage's statistics pass must
    hold when the two run fused (`passes.Cascade`): the render writes a band of rows at a time,
    and after each band the statistics pass encodes every window whose rows are then written. As
    a band is written, the buffer still holds every row from the top of the first window not yet
    encoded."""
    m, n = stage_multiple(render.k), stage_multiple(follower.k)
    bands = sorted({min(tile.keep_rows.stop * m, height) for tile in render.render})
    windows = [window_rows(tile, n, height) for tile in follower.statistics]  # row-major: in order
    most, encoded, written = 0, 0, 0
    for stop in bands:
        top = windows[encoded].start if encoded < len(windows) else written
        most = max(most, stop - min(top, written))
        while encoded < len(windows) and windows[encoded].stop <= stop:
            encoded += 1
        written = stop
    return most


def _cascade_bytes(models: ModelSet, levels, height: int, width: int, tile_size: int, recompute,
                   files: bool = True) -> int:
    """Peak bytes of a tiled cascade's buffers. The first stage's statistics pass holds its stored
    features. Then each stage's render reads its stored features (or else its float input, unless
    that is the caller's content) band by band and discards what it has read
    (`ImageBuffer.discard`), while its float output grows band by band (unless it is the caller's
    result), and where the next stage stores features, only `ring_rows` of it beside those
    features, which the next stage's statistics pass, fused with the render (`passes.Cascade`),
    writes band by band. So the bytes held run about linearly from what is read plus the ring, as
    the render starts, to the output, the next stage's features and a window's band of what is
    read, as it ends; the peak is at one end or the other. A stage that stores its features has
    freed its input by then. Buffers in memory (`files=False`) are whole from the start and
    discard nothing: read + out + the next stage's features."""
    if tile_size == 0:
        return 0
    plans = [plan_stage(models, k, height, width, tile_size, k not in recompute) for k in levels]

    def store(plan: StagePlan | None) -> int:
        stored = plan is not None and plan.stored
        return math.prod(plan.grid) * models.encoder(plan.k).out_channels * 4 if stored else 0

    row = FLOAT_PIXEL_BYTES * width
    peak = store(plans[0])
    for i, plan in enumerate(plans):
        follower = plans[i + 1] if i + 1 < len(plans) else None
        window = span_length(plan.render[0].rows)  # feature rows of a render window
        if plan.stored:
            read, band = store(plan), store(plan) * window // plan.grid[0]
        elif i > 0:
            m = stage_multiple(plan.k)
            read, band = row * height, row * min(height, (window + 2 * encoder_halo(plan.k)) * m)
        else:  # the caller's content
            read = band = 0
        if follower is None:
            ring = out = 0
        elif follower.stored:
            ring = out = row * min(height, ring_rows(plan, follower, height))
        else:
            ring, out = 0, row * height
        peak = max(peak, read + ring, (band if files else read) + out + store(follower))
    return peak


def buffer_bytes(models: ModelSet, levels, height: int, width: int, tile_size: int, stroke_scale: float = 1.0,
                 recompute=(), files: bool = True) -> int:
    """Peak bytes of the files `TiledEngine.stylize` keeps over a run with disk buffers: the images
    between stages and the stored features; with `files=False`, of its buffers in memory, which
    cannot be discarded a band at a time and so hold more. The content and the result are the
    caller's. With a stroke scale S: the content shrunk by S (8-bit, and an 8-bit image
    between Lanczos' two passes), the coarse stages' float result at that size, and the full-size
    float image they are upsampled into for the fine stages."""
    if stroke_scale == 1.0:
        return _cascade_bytes(models, levels, height, width, tile_size, recompute, files)
    coarse, fine = split_levels(levels)
    h, w = coarse_shape(height, width, stroke_scale)
    small, coarse_out, full = 3 * h * w, FLOAT_PIXEL_BYTES * h * w, FLOAT_PIXEL_BYTES * height * width
    return max(small + 3 * height * w,
               small + coarse_out + _cascade_bytes(models, coarse, h, w, tile_size, recompute, files),
               coarse_out + full,
               full + _cascade_bytes(models, fine, height, width, tile_size, recompute, files))


def stages_to_recompute(models: ModelSet, levels, height: int, width: int, tile_size: int, budget: int,
                        stroke_scale: float = 1.0, memory: int | None = None) -> frozenset[int]:
    """Stages whose features to encode again rather than store in a run's disk buffers:

    - where the buffers outgrow `memory` (bytes the page cache may keep; None: no bound), those
      cheaper to encode again than to write to disk and read back (DISK_STORE_MACS_PER_VALUE);
    - then, so that `buffer_bytes` fits in `budget` where it can, those that save the most bytes
      per extra multiply-accumulate, where they lower the peak. Recomputing stage 2 of the 16x
      set spares its 32 B per pixel of features for 2.6% more work: a gigapixel cascade needs
      17 GB, not 34.
    """
    def bytes_per_mac(k: int) -> float:
        return 4 / _macs_per_value(models.encoder(k))

    recompute: frozenset[int] = frozenset()
    need = buffer_bytes(models, levels, height, width, tile_size, stroke_scale, recompute)
    if memory is not None and need > memory:
        recompute = frozenset(k for k in levels
                              if STORE_MACS_PER_VALUE <= _macs_per_value(models.encoder(k)) < DISK_STORE_MACS_PER_VALUE)
        need = buffer_bytes(models, levels, height, width, tile_size, stroke_scale, recompute)
    for k in sorted(levels, key=bytes_per_mac, reverse=True):
        if need <= budget:
            break
        fewer = buffer_bytes(models, levels, height, width, tile_size, stroke_scale, recompute | {k})
        if fewer < need:
            recompute, need = recompute | {k}, fewer
    return recompute


# ---------------------------------------------------------------- tile size


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free on `device`: free GPU memory on CUDA, MemAvailable (Linux) or free pages on CPU."""
    device = torch.device(device)
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
    budget = MEMORY_SHARE * (available if available is not None else available_memory(device))
    per_pixel = BYTES_PER_CHANNEL_PIXEL * channels
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel))
    ceiling = MAX_CUDA_TILE if device.type == "cuda" else MAX_CPU_TILE
    return max(MIN_TILE, min(ceiling, side // 64 * 64))


def resolve_tile_size(models: ModelSet, levels, height: int, width: int, tile_size: int | None) -> int:
    """`tile_size` itself, checked; None chooses one for these models' device and widths."""
    if tile_size is not None:
        if not isinstance(tile_size, int) or tile_size < 0:
            raise ValueError(f"tile size must be a non-negative integer (got {tile_size!r})")
        return tile_size
    encoder = models.encoder(levels[0])
    channels = max(models.encoder(k).conv11.out_channels for k in levels)
    return choose_tile_size(height, width, next(encoder.parameters()).device, channels)
