"""Progress for a running job: rows by status, throughput and time left, on one line kept up to
date on a terminal, as periodic lines in a log."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from cdcore.statusline import StatusLine

from .results import Tally


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class JobProgress:
    """Counts results as they arrive and shows them (cdcore.statusline): on a terminal one line,
    in a log a line at most every `every` seconds.

    Rates count only rows that reached an actor, so rows refused while planning do not inflate
    them; the ETA assumes the remaining rows go at the rate so far.
    """

    def __init__(self, total: int, every: float = 10.0, out: TextIO | None = None):
        self.total = total
        self.status = StatusLine(out or sys.stderr, every_log=every)
        self.tally = Tally()
        self._ran = 0
        self._started = time.monotonic()

    @property
    def done(self) -> int:
        return sum(self.tally.counts.values())

    def add(self, record: dict) -> None:
        self.tally.add(record)
        if record.get("actor"):
            self._ran += 1

    def rate(self) -> float:
        """Rows per second that reached an actor, so far."""
        return self._ran / max(time.monotonic() - self._started, 1e-9)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (None before the first row ran)."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate else None

    def line(self, actors: str = "") -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate, left = self.rate(), self.eta_seconds()
        eta = _duration(left) if left is not None else "?"
        counts = self.tally.counts
        return (f"jobs.stylize: {self.done}/{self.total} rows ({counts['ok']} ok, {counts['skipped']} skipped, "
                f"{counts['failed']} failed)  {rate:.0f} rows/s  {self.tally.megapixels / elapsed:.2f} MP/s  "
                f"ETA {eta}" + (f"  actors {actors}" if actors else ""))

    def maybe_print(self, actors: str = "", force: bool = False) -> None:
        if force or self.status.due():
            self.status.show(self.line(actors), force=True)
        if force:
            self.status.end()

    def clear(self) -> None:
        """Take the progress off the terminal's line for a message (it comes back at the next update)."""
        self.status.clear()
