"""How many rows an overlapping actor loads at once (`--io-threads auto`).

A row's load is mostly waiting: a HEAD and a GET or two to storage, then a decode. Small objects
from S3 take some 20-100 ms each to arrive whatever their size, while a GPU renders a 224x224 row
of a batch in about a millisecond, so two loaders leave such a device idle most of the time. The
actor measures each call (per-row load seconds, device seconds, the seconds the device waited for
loaded rows) and `loader_count` sizes the loaders for the next call from them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_LOADERS = 2  # what a fixed `--io-threads` defaulted to: reads overlap decoding and the device
LOADERS_PER_CPU = 4  # a CPU actor: loaders mostly wait on storage, but decode on the actor's CPUs
MAX_LOADERS_GPU = 32  # a GPU actor: its node's host cores decode; more GETs than that gain little
WAIT_SHARE = 0.1  # the device waiting less than this share of its rendering time is fed


@dataclass
class CallRates:
    """What one call measured: its rows' load seconds (reading and decoding, not the pixel budget's
    waits), the seconds the device spent rendering them, and the seconds the call waited for loaded
    rows (with two calls in flight the other may have had the device meanwhile: an over-count that
    errs towards more loaders, which the pixel budget still bounds)."""

    rows_loaded: int = 0
    load_s: float = 0.0
    rows_rendered: int = 0
    device_s: float = 0.0
    waited_s: float = 0.0


def loader_cap(device: str, cpus: float) -> int:
    """The most loaders an actor runs: 4 per CPU Ray gave it on a CPU, MAX_LOADERS_GPU on a GPU."""
    if device.startswith("cuda"):
        return MAX_LOADERS_GPU
    return max(MIN_LOADERS, math.ceil(LOADERS_PER_CPU * cpus))


def loader_count(current: int, rates: CallRates, cap: int) -> int:
    """Loaders for the next call, from what the last one measured.

    To keep one row a `device_s / rows_rendered` on the device while each row takes `load_s /
    rows_loaded` to load, that ratio of loads must be in flight (Little's law): ceil of it. The
    count grows only when the device really waited (more than WAIT_SHARE of its rendering time):
    slow loads that the device does not wait for, or loads slowed by contending for the CPUs, are no
    reason for more threads. It shrinks when fewer would do, to half of `current` at most: one call
    whose device ran slow (a neighbour's load, the style's first encoding) does not undo what the
    calls before it found. Always within [MIN_LOADERS, cap]; a call that measured no rows keeps
    `current`. The pixel budget still bounds what loaders hold:
    they wait on it, however many there are.
    """
    if rates.rows_loaded == 0 or rates.rows_rendered == 0:
        return current
    per_row_load = rates.load_s / rates.rows_loaded
    per_row_device = rates.device_s / rates.rows_rendered
    need = cap if per_row_device <= 0 else math.ceil(per_row_load / per_row_device)
    if rates.waited_s <= WAIT_SHARE * rates.device_s:
        need = min(need, current)  # fed: do not grow
    need = max(need, current // 2)
    return max(MIN_LOADERS, min(cap, need))
