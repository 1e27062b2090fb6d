"""Progress of a tiled run: a report per tile with rate and ETA, and the run's memory kept in check."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .. import memory


@dataclass
class TileProgress:
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


class Meter:
    """Hears of every finished tile of a run: turns them into TileProgress reports, and keeps the
    run's memory in check (`heap`).

    The ETA extrapolates the time spent so far by work (`planning.pass_work`) done and planned, so
    it weighs a stage 5 tile as the heavy one it is.

    `heap` trims the malloc heap as each pass starts, and again only when the resident set creeps
    more than 5% past where it settled over a few tiles (`memory.HeapGuard`), which happens when
    tiles fit the heap's holes badly. Never trimming lets large runs creep up; trimming after
    every tile makes each tile page-fault its working set in again (both measured in
    benchmarks/history/sessions-1-9.md, issue 3).
    """

    def __init__(self, callback: Callable[[TileProgress], None] | None, total_work: float):
        self.callback, self.total, self.done = callback, total_work, 0.0
        self.started = time.perf_counter()
        self.heap = memory.HeapGuard()

    def start_pass(self, stage: int, step: str, tiles: int, work: float) -> "PassMeter":
        """A pass begins; its tiles are reported through what this returns. Two passes may take
        turns (a render and the next stage's statistics), each with its own count and rate."""
        return PassMeter(self, stage, step, tiles, work / tiles)

    def _tile_done(self, done: "PassMeter", index: int) -> None:
        self.heap.step_done((done.stage, done.step), last=index + 1 == done.tiles)
        self.done += done.tile_work
        if self.callback is None:
            return
        now = time.perf_counter()
        rate = done.pixels / 1e6 / max(now - done.started, 1e-9)
        eta = (now - self.started) * max(self.total - self.done, 0.0) / max(self.done, 1e-9)
        self.callback(TileProgress(done.stage, done.step, index + 1, done.tiles, rate, eta))


@dataclass
class PassMeter:
    """One pass of a `Meter`'s run: its tiles, and the image pixels done since it began (its
    rate counts the time of any pass it takes turns with)."""

    meter: Meter
    stage: int
    step: str
    tiles: int
    tile_work: float
    started: float = field(default_factory=time.perf_counter)
    pixels: int = 0

    def tile_done(self, index: int, pixels: int) -> None:
        self.pixels += pixels
        self.meter._tile_done(self, index)
