"""The actor side of the job: a `Stylist` loaded once, rows run one at a time.

`Stylizer` is a plain class (the driver wraps it with `ray.remote`), so it also runs, and is
tested, without Ray. Images move through storage only: the Stylist reads the row's inputs from
their URIs and writes the output to its URI; the actor returns a small status dict, never pixels.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import ray

from cdcore import memory, storage
from cdcore.options import DEFAULT_MAX_PIXELS
from cdcore.pipeline import Stylist, StylizeError

from .manifest import Row


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


class Stylizer:
    """One actor's work: a Stylist on its device, and `process` for each row it is sent."""

    def __init__(self, name: str, config: WorkerConfig):
        memory.reuse_freed_memory()
        self.config = config
        self.stylist = Stylist(config.models, config.device, stages=config.stages, tile_size=config.tile_size,
                               max_pixels=config.max_pixels, style_cache=config.style_cache)
        self.label = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.counters = {"rows": 0, "styles_encoded": 0, "busy_seconds": 0.0}

    def ready(self) -> dict:
        """Who this actor is; answering at all means the models loaded."""
        return {"actor": self.label, "pid": os.getpid(), "device": str(self.stylist.device),
                "model_id": self.stylist.models.model_id, "node": _node_id()}

    def process_batch(self, rows: list[Row], budget_s: float) -> dict:
        """Run rows in order until they are done or have taken `budget_s` (one at least); the
        driver sends the rest again. Returns the status dicts of the rows run and the counters."""
        started, results = time.monotonic(), []
        for row in rows:
            results.append(self.process(row))
            if time.monotonic() - started >= budget_s:
                break
        return {"results": results, "actor": self.label, "counters": dict(self.counters)}

    def process(self, row: Row) -> dict:
        """Run one row; every outcome, including failure, is a status dict (see jobs.stylize.results)."""
        started = time.monotonic()
        outcome = {"status": "ok", "error": None, "failure": None, "width": None, "height": None}
        try:
            if not self.config.overwrite and self._exists(row.output):
                outcome["status"] = "skipped"
            else:
                done = self.stylist.stylize_file(row.content, row.style, row.output, row.recipe)
                outcome.update(width=done.width, height=done.height)
        except StylizeError as e:
            # Transient: storage did not answer, or said "later"; the driver runs the row again.
            outcome.update(status="failed", error=str(e),
                           failure="transient" if storage.is_transient(e) else "permanent")
        seconds = time.monotonic() - started
        self.counters["rows"] += 1
        self.counters["busy_seconds"] += seconds
        self.counters["styles_encoded"] = self.stylist.styles_prepared
        return {**outcome, "row": row.index, "seconds": seconds, "model_id": self.stylist.models.model_id,
                "actor": self.label}

    @staticmethod
    def _exists(uri: str) -> bool:
        try:
            return storage.exists(uri)
        except storage.StorageError as e:
            raise StylizeError(str(e)) from e  # storage errors name the URI already


def _node_id() -> str | None:
    """The Ray node this actor runs on (None outside Ray), so the driver can tell a lost node."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
