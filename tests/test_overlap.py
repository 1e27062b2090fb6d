"""The helper threads of a tiled pass: reads run one tile ahead, writes run behind in order, and
an error in either reaches the caller."""
from __future__ import annotations

import threading
import time

import pytest

from cdcore.tiling.overlap import WRITES_IN_FLIGHT, WriteBehind, read_ahead


def test_read_ahead_yields_every_load_in_order_one_ahead():
    loads, seen = [], []

    def load(i):
        loads.append(i)
        return i * i

    for item, value in read_ahead(range(6), load):
        time.sleep(0.01)  # the next load has time to run meanwhile
        assert value == item * item
        assert loads[-1] <= item + 1  # never more than one item ahead
        seen.append(item)
    assert seen == loads == list(range(6))


def test_read_ahead_runs_the_next_load_while_the_caller_works():
    main = threading.get_ident()
    started = {}
    for item, _ in read_ahead(range(3), lambda i: started.setdefault(i, threading.get_ident())):
        if item < 2:
            deadline = time.monotonic() + 5
            while item + 1 not in started and time.monotonic() < deadline:
                time.sleep(0.001)
            assert item + 1 in started  # loaded while this item was still being worked on
    assert main not in started.values()


def test_read_ahead_raises_a_load_error_at_its_item():
    def load(i):
        if i == 2:
            raise OSError(f"bad window {i}")
        return i

    got = []
    with pytest.raises(OSError, match="bad window 2"):
        for item, _ in read_ahead(range(5), load):
            got.append(item)
    assert got == [0, 1]


def test_write_behind_writes_everything_in_order_before_the_block_ends():
    done = []
    with WriteBehind() as writes:
        for i in range(10):
            writes.submit(lambda j: (time.sleep(0.002), done.append(j)), i)
        assert len(done) < 10  # some were still waiting: they ran behind
    assert done == list(range(10))


def test_write_behind_keeps_at_most_a_few_writes_waiting():
    gate, done = threading.Event(), []
    with WriteBehind() as writes:
        writes.submit(gate.wait)
        for i in range(WRITES_IN_FLIGHT - 1):
            writes.submit(done.append, i)
        # the next submit must wait for the first write: it returns once the gate opens
        threading.Timer(0.2, gate.set).start()
        started = time.monotonic()
        writes.submit(done.append, "last")
        assert time.monotonic() - started >= 0.15
    assert done == [*range(WRITES_IN_FLIGHT - 1), "last"]


def test_write_behind_raises_a_failed_write():
    def fail(_):
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with WriteBehind() as writes:
            writes.submit(fail, 0)
    with pytest.raises(OSError, match="No space left"):  # or at the next submit that waits for it
        with WriteBehind() as writes:
            for i in range(WRITES_IN_FLIGHT + 3):
                writes.submit(fail, i)


def test_write_behind_lets_the_blocks_own_error_through_after_waiting():
    done = []
    with pytest.raises(ValueError, match="the block's"):
        with WriteBehind() as writes:
            writes.submit(lambda: (time.sleep(0.05), done.append(1)))
            writes.submit(lambda: 1 / 0)
            raise ValueError("the block's")
    assert done == [1]  # the write finished before the error left the block
