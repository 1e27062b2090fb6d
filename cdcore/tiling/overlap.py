"""A tiled pass's buffer reads and writes, done by helper threads while its networks compute.

At a gigapixel a cascade's buffers (17-34 GB) outgrow the page cache, so a window read waits on the
disk and a write waits for the kernel to flush dirty pages; done in line, every tile pays both
(benchmarks/history/sessions-1-9.md, issue 15). pread and pwrite release the GIL, so one thread can
read the next tile's window and another write the last tile's result while torch computes this
one.
Only I/O runs in the helpers: converting to and from tensors stays with the caller, whose torch
threads already fill the cores.

What the helpers hold is bounded by count, never by their pace: one window read ahead per pass,
WRITES_IN_FLIGHT results per writer. A helper slowed by a busy disk or by cores it shares makes the
caller wait; nothing queues up behind it (tests/test_memory.py slows every read and write).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")

# Results waiting to be written: each holds a tile's output (12 MB for a 1024 float window), and
# two keep the writer busy while the next tile computes.
WRITES_IN_FLIGHT = 2


def read_ahead(items: Iterable[Item], load: Callable[[Item], Loaded],
               threaded: bool = True) -> Iterator[tuple[Item, Loaded]]:
    """(item, load(item)) in order, the next item's load running while the caller works on this one
    (`threaded`), or in line where a load only queues work on a device (a window of a device buffer)."""
    if not threaded:
        yield from ((item, load(item)) for item in items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="cdcore-read") as pool:
        items = iter(items)
        pending: deque[tuple[Item, Future]] = deque()
        for item in items:
            pending.append((item, pool.submit(load, item)))
            if len(pending) > 1:
                ready, future = pending.popleft()
                yield ready, future.result()
        while pending:
            ready, future = pending.popleft()
            yield ready, future.result()


class WriteBehind:
    """Runs writes in order on one thread, at most WRITES_IN_FLIGHT waiting; `drain` and leaving
    the `with` wait for all of them (so what was written can be read, or its buffer closed) and
    raise the first write's error, unless the block itself failed.

    guard: told of the bytes of the arrays waiting to be written (`memory.HeapGuard.hold`), which
    come and go with the disk's pace rather than creep."""

    def __init__(self, guard=None) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cdcore-write")
        self._pending: deque[Future] = deque()
        self._guard = guard

    def submit(self, write: Callable[..., None], *args) -> None:
        while len(self._pending) >= WRITES_IN_FLIGHT:
            self._pending.popleft().result()
        held = sum(a.nbytes for a in args if hasattr(a, "nbytes"))
        if self._guard is not None:
            self._guard.hold(held)
        future = self._pool.submit(write, *args)
        if self._guard is not None:
            future.add_done_callback(lambda _: self._guard.hold(-held))
        self._pending.append(future)

    def drain(self) -> None:
        """Wait for every write submitted so far; raise the first one's error."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool = False) -> None:
        """What leaving the `with` does; `failed`: only wait, the caller's own error goes on."""
        try:
            if not failed:
                self.drain()
            while self._pending:
                self._pending.popleft().exception()  # wait, but let the caller's own error through
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
