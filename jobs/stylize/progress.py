"""Progress lines for a running job: rows by status, throughput and time left."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from .results import Tally


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class JobProgress:
    """Counts results as they arrive and prints a line at most every `every` seconds.

    Rates count only rows that reached an actor, so rows refused while planning do not inflate
    them; the ETA assumes the remaining rows go at the rate so far.
    """

    def __init__(self, total: int, every: float = 10.0, out: TextIO | None = None):
        self.total = total
        self.every = every
        self.out = out or sys.stderr
        self.tally = Tally()
        self._ran = 0
        self._started = time.monotonic()
        self._last_print = self._started

    @property
    def done(self) -> int:
        return sum(self.tally.counts.values())

    def add(self, record: dict) -> None:
        self.tally.add(record)
        if record.get("actor"):
            self._ran += 1

    def line(self, actors: str = "") -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self._ran / elapsed
        left = self.total - self.done
        eta = _duration(left / rate) if rate else "?"
        counts = self.tally.counts
        return (f"jobs.stylize: {self.done}/{self.total} rows ({counts['ok']} ok, {counts['skipped']} skipped, "
                f"{counts['failed']} failed)  {rate:.0f} rows/s  {self.tally.megapixels / elapsed:.2f} MP/s  "
                f"ETA {eta}" + (f"  actors {actors}" if actors else ""))

    def maybe_print(self, actors: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_print >= self.every:
            self._last_print = now
            print(self.line(actors), file=self.out, flush=True)
