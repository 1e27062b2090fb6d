"""What a running stylization job tells Prometheus (the series are defined in jobs/metrics.py).

The driver's series come from what it keeps anyway: the row and megapixel counters follow the
progress tally (by its growth since the last tick, so counting costs nothing per row), the gauges
are read off the dispatcher. Ticks come after the dispatcher's waits, at most every `every`
seconds, well inside an export interval, so no gauge ages out while the job runs. The actors
record where each stylized row's time went (`RowPhases`).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

from cdcore.timings import PHASES

from ..metrics import Recorder
from .progress import JobProgress


class JobTelemetry:
    """The driver's side: `tick(dispatcher)` after each wait, `tick(dispatcher, force=True)` at the end."""

    def __init__(self, run: str, progress: JobProgress, every: float = 1.0):
        self.metrics = Recorder(run=run)
        self.progress = progress
        self.every = every
        self._sent: Counter = Counter()  # (status, failure) -> rows counted so far
        self._megapixels = 0.0
        self._transient = 0
        self._last = float("-inf")
        self._seen: dict[str, float] = {}  # actor name -> when a tick first saw it ready

    def tick(self, pool=None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self._counters()
        if pool is not None:
            self._gauges(pool, now)

    def _counters(self) -> None:
        tally = self.progress.tally
        rows = Counter({("ok", ""): tally.counts["ok"], ("skipped", ""): tally.counts["skipped"],
                        **{("failed", why): n for why, n in tally.failures_by_class.items()}})
        for (status, failure), n in rows.items():
            self.metrics.inc("cdstyle_rows", n - self._sent[status, failure], status=status, failure=failure)
        self._sent = rows
        self.metrics.inc("cdstyle_megapixels", tally.megapixels - self._megapixels)
        self._megapixels = tally.megapixels

    def _gauges(self, pool, now: float) -> None:
        m = self.metrics
        m.inc("cdstyle_transient_failures", pool.transient_failures - self._transient)
        self._transient = pool.transient_failures
        m.set("cdstyle_rows_queued", len(pool.queue) + len(pool.retries))
        m.set("cdstyle_rows_in_flight", sum(len(b) for a in pool.actors for b in a.batches.values()))
        m.set("cdstyle_actors_alive", len(pool.actors))
        m.set("cdstyle_actor_replacements", pool.replaced)
        m.set("cdstyle_storage_paused", float(pool.breaker.open))
        eta = self.progress.eta_seconds()
        if eta is not None:  # None until a row has run
            m.set("cdstyle_eta_seconds", eta)
        for actor in pool.actors:
            if actor.label is None:  # not ready yet
                continue
            counters = pool.counters.get(actor.label)
            since = self._seen.setdefault(actor.name, now)
            if counters and now > since:
                share = counters.get("device_seconds", 0.0) / (now - since)
                m.set("cdstyle_actor_device_busy", min(share, 1.0), actor=actor.name)


class RowPhases:
    """An actor's part: the phase seconds of each row it stylized into the histogram as the row
    finishes, and their sums into the phase-seconds counter once a batch (`flush`). Ok rows only:
    a skipped row ran no phase, and a failed one stopped partway."""

    def __init__(self, run: str):
        self.metrics = Recorder(run=run)
        self._sums: Counter = Counter()
        self._lock = threading.Lock()  # rows finish on the actor's saving threads

    def row(self, record: dict, method: str) -> None:
        if record["status"] != "ok":
            return
        for phase in PHASES:
            self.metrics.observe("cdstyle_row_phase_seconds", record[phase], phase=phase[:-2], method=method)
        with self._lock:
            self._sums.update({phase: record[phase] for phase in PHASES})

    def flush(self) -> None:
        with self._lock:
            sums, self._sums = self._sums, Counter()
        for phase, seconds in sums.items():
            self.metrics.inc("cdstyle_phase_seconds", seconds, phase=phase[:-2])
