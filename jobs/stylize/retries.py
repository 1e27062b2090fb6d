"""Faults cost time, not rows: the driver's bookkeeping for transient failures.

A row that fails transiently (storage did not answer, timed out, said 5xx or "slow down") waits
and runs again, with exponential backoff, until `deadline_s` after its first such failure; only
then does it fail, with its last reason and how long it was retried. When several rows in a row
fail transiently, `Breaker` opens: the dispatcher stops handing out rows (so they are not burned
while storage is down; the actors stay up with their models and styles) and probes storage with
backoff until it answers. (Why an actor died, and which rows it is charged to, is
jobs.stylize.deaths and the dispatcher's.)
"""
from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
DEFAULT_DEADLINE_S = 600.0
BREAKER_IN_A_ROW = 3  # transient failures in a row that pause dispatching
PROBE_FIRST_S = 1.0
PROBE_MAX_S = 30.0


@dataclass
class Retries:
    """Rows waiting to run again after a transient failure: when each may go, and since when it
    has been failing."""

    deadline_s: float = DEFAULT_DEADLINE_S
    seed: int = 0
    _due: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, position), a heap
    _since: dict[int, tuple[float, int]] = field(default_factory=dict)  # position -> (first failure, retries)

    def __post_init__(self):
        self._random = random.Random(self.seed)

    def __len__(self) -> int:
        return len(self._due)

    def failed(self, position: int, now: float | None = None) -> tuple[float, int] | None:
        """Note a transient failure: None when the row is to be retried, else (seconds it has been
        retried for, retries) when its deadline has passed and it fails for good."""
        now = time.monotonic() if now is None else now
        first, retries = self._since.get(position, (now, 0))
        if now - first >= self.deadline_s:
            del self._since[position]
            return now - first, retries
        self._since[position] = (first, retries + 1)
        delay = min(RETRY_FIRST_S * 2 ** retries, RETRY_MAX_S) * (0.5 + self._random.random())  # jitter
        heapq.heappush(self._due, (now + delay, position))
        return None

    def due(self, now: float | None = None) -> list[int]:
        """Positions whose wait is over, in the order they became due."""
        now = time.monotonic() if now is None else now
        ready = []
        while self._due and self._due[0][0] <= now:
            ready.append(heapq.heappop(self._due)[1])
        return ready

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def done(self, position: int) -> int:
        """The row finished (one way or another): how many transient retries it took."""
        return self._since.pop(position, (0.0, 0))[1]


@dataclass
class Breaker:
    """Opens after `in_a_row` transient failures with nothing else between them; while open, the
    dispatcher hands out no rows and probes storage at `next_probe`, backing off until it answers."""

    in_a_row: int = BREAKER_IN_A_ROW
    failures: int = 0
    since: float | None = None  # when it opened (time.time(), for messages)
    next_probe: float = 0.0  # monotonic
    delay: float = PROBE_FIRST_S

    @property
    def open(self) -> bool:
        return self.since is not None

    def failed(self) -> bool:
        """Count a transient failure; True when this one opens the breaker."""
        self.failures += 1
        if self.open or self.failures < self.in_a_row:
            return False
        self.since, self.delay = time.time(), PROBE_FIRST_S
        self.next_probe = time.monotonic() + self.delay
        return True

    def answered(self) -> None:
        """Storage answered (a row got past it, or a probe did): close."""
        self.failures, self.since = 0, None

    def probe_failed(self) -> None:
        self.delay = min(self.delay * 2, PROBE_MAX_S)
        self.next_probe = time.monotonic() + self.delay
