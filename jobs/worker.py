"""The actor side of the job: a model set loaded once, rows stylized one at a time.

`Stylizer` is a plain class (the driver wraps it with `ray.remote`), so it also runs, and is
tested, without Ray. Images move through storage only: it reads the row's inputs from their URIs,
writes the output to its URI, and returns a small status dict, never pixels.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import torch

from cdcore import images, memory, storage
from cdcore.gatys import gatys
from cdcore.modelset import load_model_set
from cdcore.stylize import to_tensor, to_uint8
from cdcore.tiling import style_statistics_tiled, stylize_tiled

from .manifest import Row


@dataclass(frozen=True)
class WorkerConfig:
    """Settings every actor of a job shares."""

    models: str
    stages: tuple[int, ...]
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    overwrite: bool = False
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    style_cache: int = 16  # styles kept per actor
    iterations: int = 200  # gatys
    tile_size: int | None = None  # None: whole image when it fits the device's memory, else tiles


class StyleCache:
    """A bounded least-recently-used map from style key to prepared style."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"style cache capacity must be at least 1 (got {capacity})")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def get_or_make(self, key: Hashable, make: Callable[[], object]) -> object:
        """The cached value for `key`, or `make()`'s, which is then cached (a failure is not)."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value


class RowFailed(Exception):
    """A row cannot be done; the message names the URI at fault."""


@contextlib.contextmanager
def blame(uri: str) -> Iterator[None]:
    """Turn any error inside into RowFailed whose message names `uri` (once)."""
    try:
        yield
    except Exception as e:  # decoding, storage, torch: all end the row, never the actor
        text = " ".join(str(e).split()) or type(e).__name__
        raise RowFailed(text if uri in text else f"{uri}: {text}") from e


class Stylizer:
    """One actor's work: load the model set onto its device once, then `process` rows.

    Style preparations (WCT/AdaIN statistics, or the decoded style image for gatys) are cached
    by (style URI, method, levels), so rows grouped by style encode each style once per actor.
    """

    def __init__(self, name: str, config: WorkerConfig):
        memory.reuse_freed_memory()
        self.config = config
        self.device = torch.device(config.device)
        self.models = load_model_set(config.models, config.stages, self.device)
        if self.device.type == "cpu":
            self.models.to(self.device, channels_last=True)
        self.label = f"{name}@{socket.gethostname()}:{os.getpid()}"
        self.styles = StyleCache(config.style_cache)
        self.counters = {"rows": 0, "styles_encoded": 0, "busy_seconds": 0.0}

    def ready(self) -> dict:
        """Who this actor is; answering at all means the models loaded."""
        return {"actor": self.label, "pid": os.getpid(), "device": str(self.device),
                "model_id": self.models.model_id}

    def process(self, row: Row) -> dict:
        """Run one row; every outcome, including failure, is a status dict (see jobs.results)."""
        started = time.monotonic()
        try:
            if not self.config.overwrite and self._exists(row.output):
                outcome = {"status": "skipped", "error": None, "width": None, "height": None}
            else:
                width, height = self._stylize(row)
                outcome = {"status": "ok", "error": None, "width": width, "height": height}
        except RowFailed as e:
            outcome = {"status": "failed", "error": str(e), "width": None, "height": None}
        seconds = time.monotonic() - started
        self.counters["rows"] += 1
        self.counters["busy_seconds"] += seconds
        return {**outcome, "row": row.index, "seconds": seconds, "model_id": self.models.model_id,
                "actor": self.label, "pid": os.getpid(), "counters": dict(self.counters)}

    def _exists(self, uri: str) -> bool:
        with blame(uri):
            return storage.exists(uri)

    def _stylize(self, row: Row) -> tuple[int, int]:
        """Read, stylize, write atomically; the content's (width, height)."""
        with blame(row.content):
            content = images.read_image(row.content, self.config.max_pixels)
        style = self.styles.get_or_make(row.style_key, lambda: self._prepare_style(row))
        with blame(row.content):
            if row.method == "gatys":
                image, _ = gatys(self.models, to_tensor(content.rgb, self.device), style,
                                 iterations=self.config.iterations)
                rgb = to_uint8(image)
            else:  # exact either way; tiles only when the whole image would not fit
                rgb = stylize_tiled(self.models, content.rgb, style, row.alpha, row.levels,
                                    self.config.tile_size)
        with blame(row.output):
            images.write_image(row.output, images.Picture(rgb, content.alpha))
        return content.size

    def _prepare_style(self, row: Row):
        """Statistics for WCT/AdaIN; for gatys, which needs the image itself, the style tensor."""
        with blame(row.style):
            picture = images.read_image(row.style, self.config.max_pixels)
            if row.method == "gatys":
                style = to_tensor(picture.rgb, self.device)
            else:
                style = style_statistics_tiled(self.models, picture.rgb, row.method, row.levels,
                                               self.config.tile_size)
        self.counters["styles_encoded"] += 1
        return style
