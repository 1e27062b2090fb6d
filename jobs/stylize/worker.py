"""The actor side of the job: a `Stylist` loaded once, rows read, stylized and written.

`Stylizer` is a plain class (the driver wraps it with `ray.remote`), so it also runs, and is
tested, without Ray. Images move through storage only: the Stylist reads the row's inputs from
their URIs and writes the output to its URI; the actor returns a small status dict, never pixels.

With `io_threads` other than 0 an actor overlaps its work: while the device stylizes one row,
background threads read and decode the next ones and encode and write finished ones, so the
device does not wait on storage and codecs. The actor then takes two batches at once (the driver
keeps two in flight), so the next batch's rows load while this one's finish. `PixelBudget` bounds
the decoded pixels an actor holds. `io_threads=0` runs each row start to end, one at a time.
`io_threads=None` (auto, the default) starts with two loads in flight and sizes them between calls
from what each call measured (`jobs.stylize.loaders`), so small objects keep the device fed.

Overlapping actors also stylize rows together (`Stylist.render_batch`): loaded rows wait in groups
of one `Stylist.batch_key` (the decoded size after --content-size and --crop, the method and
stages), and a group takes the device when it holds `batch_images` rows (None: the Stylist's
choice from the device's free memory and the image size, `cdcore.batching`), or when no more rows
can join it: every row of the call has loaded, or the loaders wait for pixels the groups hold.
Rows that batch with nothing (gatys, a stroke scale, tiled or streamed contents) run alone as
before. Results stay one per row, failures too: a row that cannot be read or decoded fails before
it joins a group.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from cdcore import memory, streaming
from cdcore.io import paths, storage
from cdcore.options import DEFAULT_MAX_PIXELS
from cdcore.pipeline import Loaded, Stylist, StylizeError, Timings

from .loaders import MIN_LOADERS, CallRates, loader_cap, loader_count
from .manifest import Row
from .telemetry import RowPhases

# Decoded pixels an overlapping actor holds at most: about two 50 MP images with their canvases
# (7 bytes a pixel: ~0.7 GB). One larger image is let in alone.
DEFAULT_PIXEL_BUDGET = 100_000_000
GROUP_POLL_S = 0.02  # how often an actor with rows waiting in groups checks whether its loaders wait


@dataclass(frozen=True)
class WorkerConfig:
    """Settings every actor of a job shares."""

    models: str
    stages: tuple[int, ...]
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    style_cache: int = 16  # styles kept per actor
    tile_size: int | None = None  # None: whole image when it fits the device's memory, else tiles
    precision: str = "fp32"
    io_threads: int | None = None  # loads in flight; None: sized from measured rates; 0: no overlap (nor batches)
    cpus: float = 1.0  # CPUs Ray gave the actor: they bound automatic loaders
    pixel_budget: int = DEFAULT_PIXEL_BUDGET
    output_prefix: str | None = None  # local outputs below it are not written through a symlink out of it
    batch_images: int | None = None  # rows stylized together at most; None: chosen per size
    run: str = ""  # the run id, which tags the actor's metrics

    @property
    def overlaps(self) -> bool:
        return self.io_threads != 0


class PixelBudget:
    """Admits images while the pixels held stay within `limit`; an image larger than the whole
    limit is admitted when nothing else is held, so it waits but never deadlocks."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most ever held, for tests and benchmarks
        self.blocked = 0  # acquirers waiting now
        self._changed = threading.Condition()

    def acquire(self, pixels: int) -> None:
        def admitted() -> bool:
            return self.held == 0 or self.held + pixels <= self.limit

        with self._changed:
            if not admitted():
                self.blocked += 1
                try:
                    self._changed.wait_for(admitted)
                finally:
                    self.blocked -= 1
            self.held += pixels
            self.peak = max(self.peak, self.held)

    def release(self, pixels: int) -> None:
        with self._changed:
            self.held -= pixels
            self._changed.notify_all()


class _RowState:
    """One row on its way through an overlapping actor: its outcome so far and what it holds."""

    def __init__(self, row: Row):
        self.row = row
        self.started = time.monotonic()
        self.timings = Timings()
        self.outcome = {"status": "ok", "error": None, "failure": None, "width": None, "height": None}
        self.loaded: Loaded | None = None
        self.canvas = None  # the stylized result, until it is written
        self.pixels = 0  # admitted by the budget, given back when the row is done
        self.load_s = 0.0  # reading and decoding it took, less its waits for the pixel budget
        self.budget_wait_s = 0.0
        self.streamed = False  # too large to hold: read, stylized and written in one streamed call

    def fail(self, error: StylizeError) -> None:
        # Transient: storage did not answer, or said "later"; the driver runs the row again.
        self.outcome.update(status="failed", error=str(error),
                            failure="transient" if storage.is_transient(error) else "permanent")


class Stylizer:
    """One actor's work: a Stylist on its device, and `process_batch` for the rows it is sent."""

    def __init__(self, name: str, config: WorkerConfig):
        memory.reuse_freed_memory()
        self.config = config
        self.stylist = Stylist(config.models, config.device, stages=config.stages, tile_size=config.tile_size,
                               max_pixels=config.max_pixels, style_cache=config.style_cache,
                               precision=config.precision)
        self.label = f"{name}@{socket.gethostname()}:{os.getpid()}"
        # Loads in flight per call: pinned by io_threads, or from MIN_LOADERS up to the cap (auto);
        # the pools hold the cap's threads, which start only as loads need them.
        self.auto_loaders = config.io_threads is None
        self.loaders = MIN_LOADERS if self.auto_loaders else config.io_threads
        self._loader_cap = threads = loader_cap(config.device, config.cpus) if self.auto_loaders else self.loaders
        self.counters = {"rows": 0, "styles_encoded": 0, "busy_seconds": 0.0, "device_seconds": 0.0,
                         "device_calls": 0, "device_wait_s": 0.0, "loaders": self.loaders}
        self.phases = RowPhases(config.run)  # its metrics
        self._device = threading.Lock()  # one row on the device at a time
        self._counting = threading.Lock()
        self._budget = PixelBudget(config.pixel_budget)
        self._loading = ThreadPoolExecutor(threads, thread_name_prefix="load") if threads else None
        self._saving = ThreadPoolExecutor(threads, thread_name_prefix="save") if threads else None

    def ready(self) -> dict:
        """Who this actor is; answering at all means the models loaded."""
        return {"actor": self.label, "pid": os.getpid(), "device": str(self.stylist.device),
                "model_id": self.stylist.models.model_id, "node": _node_id(),
                "precision": self.stylist.precision}

    def process_batch(self, rows: list[Row], budget_s: float) -> dict:
        """Run rows until they are done or have taken `budget_s` (one at least); the driver sends
        the rest again. Returns the status dicts of the rows run and the counters."""
        run = self._overlapped if self._loading else self._one_by_one
        started = time.monotonic()
        results = run(rows, started + budget_s)
        self.phases.flush()
        with self._counting:
            return {"results": results, "actor": self.label, "counters": dict(self.counters),
                    "wall_s": time.monotonic() - started}

    def process(self, row: Row) -> dict:
        """Run one row start to end; every outcome, including failure, is a status dict (see
        jobs.stylize.results)."""
        state = _RowState(row)
        if self._load(state):
            self._render(state)
        if state.loaded is not None:
            self._save(state)
        return self._finish(state)

    # ------------------------------------------------------------------ the two schedules

    def _one_by_one(self, rows: list[Row], deadline: float) -> list[dict]:
        results = []
        for row in rows:
            results.append(self.process(row))
            if time.monotonic() >= deadline:
                break
        return results

    def _overlapped(self, rows: list[Row], deadline: float) -> list[dict]:
        """Rows load in order on the loading threads, `self.loaders` of them ahead of the device;
        loaded rows join their group (`_group_size`), and a group that is full, or that no more rows
        can join, takes the device; then its rows go to the saving threads. Past the deadline no
        more rows start loading (the driver sends them again); started ones finish."""
        waiting = deque(_RowState(row) for row in rows)
        loading: dict[Future, _RowState] = {}
        groups: dict[tuple, list[_RowState]] = {}
        saving, results = [], []
        rates, loaders = CallRates(), self.loaders

        def start_loading() -> None:
            while waiting and len(loading) < loaders and \
                    (time.monotonic() < deadline or len(waiting) == len(rows)):  # one row at least
                state = waiting.popleft()
                loading[self._loading.submit(self._load, state)] = state

        def finish(state: _RowState) -> None:
            if state.loaded is None:  # skipped, failed or streamed: nothing to write
                results.append(self._finish(state))
            else:
                saving.append(self._saving.submit(self._save_and_finish, state))

        def stylize(states: list[_RowState]) -> None:
            with self._device:
                began = time.monotonic()
                self._render_group(states)
                rates.device_s += time.monotonic() - began
                rates.rows_rendered += len(states)
            for state in states:
                finish(state)

        start_loading()
        while loading or groups:
            # While groups wait, look up now and then: the loaders may be waiting on their pixels.
            began = time.monotonic()  # the device waits for loaded rows from here
            done = wait(loading, GROUP_POLL_S if groups else None, FIRST_COMPLETED)[0] if loading else set()
            rates.waited_s += time.monotonic() - began
            for future in done:
                state = loading.pop(future)
                start_loading()  # the next row loads while this one waits or is on the device
                rates.rows_loaded += 1
                rates.load_s += state.load_s
                if not future.result():
                    finish(state)
                    continue
                key = self._group_key(state)
                if key is None:
                    stylize([state])
                    continue
                group = groups.setdefault(key, [])
                group.append(state)
                if len(group) >= self._group_size(key):
                    stylize(groups.pop(key))
            start_loading()
            if groups and not loading:  # every row has loaded: no more can join
                for key in list(groups):
                    stylize(groups.pop(key))
            elif groups and not done and self._budget.blocked:  # the loaders wait for pixels groups hold
                stylize(groups.pop(max(groups, key=lambda k: len(groups[k]))))
        self._resize_loaders(rates)
        return results + [future.result() for future in saving]

    def _resize_loaders(self, rates: CallRates) -> None:
        """Auto loaders: size the next call's from this one's rates (`loaders.loader_count`)."""
        with self._counting:
            self.counters["device_wait_s"] += rates.waited_s
            if self.auto_loaders:
                self.loaders = loader_count(self.loaders, rates, self._loader_cap)
                self.counters["loaders"] = self.loaders

    def _group_key(self, state: _RowState) -> tuple | None:
        if state.streamed or state.loaded is None:
            return None
        return self.stylist.batch_key(state.loaded, state.row.recipe)

    def _group_size(self, key: tuple) -> int:
        """Rows of `key` to stylize at once: `batch_images`, or the Stylist's choice; never more
        than the pixel budget holds, else the group could not fill."""
        height, width = key[:2]
        size = self.config.batch_images or self.stylist.batch_images(key)
        return max(1, min(size, self._budget.limit // (height * width)))

    # ------------------------------------------------------------------ the phases of a row

    def _load(self, state: _RowState) -> bool:
        """Check for the output and read the inputs; False when there is nothing to stylize."""
        began = time.monotonic()
        try:
            return self._load_inputs(state)
        finally:
            state.load_s = time.monotonic() - began - state.budget_wait_s

    def _load_inputs(self, state: _RowState) -> bool:
        row = state.row
        try:
            self._confined(row.output)  # before the skip check, which would follow a link too
            if not self.config.overwrite and self._exists(row.output):
                state.outcome["status"] = "skipped"
                return False
            timings = Timings()
            with timings.phase("read_s"):
                head = streaming.peek(row.content)  # decides, and is where the read goes on from
            if self.stylist.streams(row.content, row.output, row.recipe, head):  # holds little: no budget
                state.streamed = True
                return True
            state.loaded = self.stylist.load(row.content, row.style, row.recipe, admit=lambda n: self._admit(state, n),
                                             head=head, timings=timings)
        except StylizeError as e:
            state.fail(e)
            return False
        state.timings = state.loaded.timings
        return True

    def _admit(self, state: _RowState, pixels: int) -> None:
        began = time.monotonic()
        self._budget.acquire(pixels)
        state.budget_wait_s += time.monotonic() - began
        state.pixels = pixels

    def _render_group(self, states: list[_RowState]) -> None:
        with self._counting:
            self.counters["device_calls"] += 1
        if len(states) == 1:
            return self._render(states[0])
        outcomes = self.stylist.render_batch([state.loaded for state in states], [state.row.recipe for state in states])
        for state, outcome in zip(states, outcomes):
            if isinstance(outcome, StylizeError):
                state.fail(outcome)
                state.loaded = None
            else:
                state.canvas = outcome

    def _render(self, state: _RowState) -> None:
        if state.streamed:
            return self._stream(state)
        try:
            state.canvas = self.stylist.render(state.loaded, state.row.recipe)
        except StylizeError as e:
            state.fail(e)
            state.loaded = None

    def _stream(self, state: _RowState) -> None:
        """A streamed row (cdcore.streaming) reads, stylizes and writes on the device's turn, in
        memory that does not grow with the image; nothing is left for the saving threads."""
        row = state.row
        try:
            self._confined(row.output)
            # Straight to the streamed path: `_load` has decided, and asking again reads the header again.
            done = self.stylist.stylize_streamed(row.content, row.style, row.output, row.recipe)
            state.timings = done.timings
            state.outcome.update(width=done.width, height=done.height)
        except StylizeError as e:
            state.fail(e)

    def _save(self, state: _RowState) -> None:
        try:
            self._confined(state.row.output)  # again: the row was checked seconds ago, on loading
            self.stylist.save(state.canvas, state.row.output, state.timings)
            state.outcome.update(width=state.loaded.picture.size[0], height=state.loaded.picture.size[1])
        except StylizeError as e:
            state.fail(e)
        finally:
            state.loaded = state.canvas = None

    def _save_and_finish(self, state: _RowState) -> dict:
        self._save(state)
        return self._finish(state)

    def _finish(self, state: _RowState) -> dict:
        """The row's status dict; what it held is given back."""
        if state.pixels:
            self._budget.release(state.pixels)
            state.pixels = 0
        seconds = time.monotonic() - state.started
        timings = state.timings.as_dict()
        with self._counting:
            self.counters["rows"] += 1
            self.counters["busy_seconds"] += seconds
            self.counters["device_seconds"] += timings["style_s"] + timings["stylize_s"]
            self.counters["styles_encoded"] = self.stylist.styles_prepared
        self.phases.row({**state.outcome, **timings}, state.row.method)
        return {**state.outcome, **timings, "row": state.row.index, "seconds": seconds,
                "model_id": self.stylist.models.model_id, "actor": self.label}

    def _confined(self, output: str) -> None:
        """Refuse a local output below the output prefix whose folder a symlink leads out of it."""
        prefix = self.config.output_prefix
        if prefix and storage.is_local(prefix) and storage.is_local(output):
            why = paths.escape(str(storage.local_path(prefix)), str(storage.local_path(output)))
            if why:
                raise StylizeError(f"{output}: refused: {why}")

    @staticmethod
    def _exists(uri: str) -> bool:
        try:
            return storage.exists(uri)
        except storage.StorageError as e:
            raise StylizeError(str(e)) from e  # storage errors name the URI already


def _node_id() -> str | None:
    """The Ray node this actor runs on (None outside Ray), so the driver can tell a lost node."""
    import ray  # here: the actor class also runs, and is benchmarked, where Ray is not installed

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

