"""Process-wide glibc malloc settings for stylization (no-ops where libc is not glibc).

Activations of a full-resolution stage are hundreds of megabytes each. By default glibc serves
every allocation above 32 MB with a fresh mmap and unmaps it when freed, so each new activation is
page-faulted in again on first touch, a large share of a CPU cascade's time
(benchmarks/history/sessions-1-9.md, issue 2). `reuse_freed_memory` keeps freed blocks in the heap
for the next tensor instead; peak memory is unchanged, since the same sizes recur stage after
stage. The tiled engine bounds its resident set with a `HeapGuard`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import Counter

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters, glibc's malloc.h
_KEEP = 1 << 30  # bytes: blocks up to this size are served from, and returned to, the heap


def _glibc():
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name else None
    return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


_LIBC = _glibc()


def reuse_freed_memory() -> bool:
    """Make freed tensors' memory serve later ones instead of going back to the OS. Returns
    whether the allocator took the setting. Call once, early, in a process that stylizes."""
    if _LIBC is None:
        return False
    # One arena: torch's worker threads otherwise allocate from arenas of their own, whose free
    # blocks cannot serve the main thread's tensors, and tiled runs peak higher
    # (benchmarks/history/sessions-1-9.md, issue 3).
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP))
    return all([bool(_LIBC.mallopt(param, value)) for param, value in settings])


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS now."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident set now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class HeapGuard:
    """Keeps a loop of like-sized steps (the tiles of a pass) from creeping up in memory.

    Between steps the heap keeps freed blocks so that the next step reuses them instead of
    page-faulting fresh memory, but the blocks do not always fit the next step's tensors, and the
    resident set can creep up by a step's working set every few steps. `start` trims the heap;
    `step_done` notes where the resident set settled, the most it reached over the first
    `settle_steps` steps, and trims again only when it has grown past that by `slack` (a share of
    it). One step is too few to settle on: right after a trim the heap grows back over two steps,
    and a guard settled on the first trimmed every second tile of a gigapixel run, 50 million
    page faults (benchmarks/history/sessions-1-9.md, issue 15).

    Two things move the resident set without creeping, and do not count against the slack:
    - steps of different kinds taking turns (a stage's render and the next stage's statistics
      pass run band by band, `tiling.passes`): the guard settles over the first steps of every
      kind since the last trim. A kind it has not seen before (a new pass) starts with a trim, so
      that a pass does not settle on top of what the passes before it left in the heap;
    - arrays waiting for a writer thread (`hold`), which pile up while the disk is slow: the most
      held at once since the last trim is allowed on top of the slack.

    What it settles on must not depend on the pace of the helper threads, or a slowed run would
    settle higher and hold more for the rest of its pass (issue 28): the bytes held at a sample
    are taken out of it (they are allowed on top, once), and where `budget` is given (bytes: what
    planning expects one step's working set to be, `tiling.planning`), it settles at most that
    far above the heap as trimmed.
    """

    def __init__(self, slack: float = 0.05, settle_steps: int = 3, budget: int | None = None):
        self.slack, self.settle_steps, self.budget = slack, settle_steps, budget
        self._lock = threading.Lock()
        self.held = self.held_peak = self.settled = self.floor = 0
        self.steps: Counter = Counter()
        self.kinds: set = set()  # of the passes under way

    def start(self) -> None:
        release_freed_memory()
        self.settled, self.steps, self.held_peak = 0, Counter(), self.held
        self.floor = resident_bytes() - self.held

    def hold(self, nbytes: int) -> None:
        """Bytes now waiting in a pipeline (negative: no longer); any thread may call it."""
        with self._lock:
            self.held += nbytes
            self.held_peak = max(self.held_peak, self.held)

    def step_done(self, kind=None, last: bool = False) -> None:
        """A step of `kind` is done; `last`: the last of its kind (its pass is over)."""
        rss = resident_bytes()
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.start()
            rss = resident_bytes()
        self.steps[kind] += 1
        if self.steps[kind] <= self.settle_steps:
            level = rss - self.held
            if self.budget is not None:
                level = min(level, self.floor + self.budget)
            self.settled = max(self.settled, level)
        elif self._grown(rss):
            self.start()
        if last:
            self.kinds.discard(kind)

    def _grown(self, rss: int) -> bool:
        return rss > self.settled * (1 + self.slack) + self.held_peak
