"""One stylization flow for every front end: `Stylist` reads, stylizes and writes.

`cdcore stylize`, the batch job's actors and library users all call it, so a file stylized by
any of them is stylized the same way: the same checks (`options.Recipe`), the same choice between
the whole image and the exact tiled engine, the same stroke scale, the same 8-bit output through
a `Canvas` that the encoders read in place.

    stylist = Stylist("models/cd16x")                      # loads the models once
    stylist.stylize_file("photo.jpg", "style.jpg", "out.png", Recipe(alpha=0.8))
    picture = stylist.stylize(pil_image, pil_style, method="adain")   # PIL in, PIL out

Every error is a `StylizeError` whose message names the file (or "content"/"style") at fault; its
`__cause__` is the original exception.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import torch
from PIL import Image

from . import streaming, tiling
from .batching import choose_batch_images
from .io import codecs, images, storage
from .models import precision as precisions
from .models.modelset import ModelSet, load_model_set
from .options import DEFAULT_MAX_PIXELS, Recipe
from .options import tile_size as check_tile_size
from .results import StylizeError, Stylized, naming
from .timings import Timings
from .transfer.gatys import gatys
from .transfer.stylize import (StyleStats, pick_device, stylize, stylize_batch, to_tensor, to_tensor_batch, to_uint8,
                               to_uint8_batch)

__all__ = ["Loaded", "PreparedStyle", "StyleCache", "Stylist", "StylizeError", "Stylized"]

Progress = Callable[[object], None]  # called with a tiling.TileProgress or gatys.IterationProgress


@dataclass(frozen=True)
class PreparedStyle:
    """A style made ready for one model set and `Recipe.style_key`: statistics per stage for wct
    and adain, the image itself for gatys."""

    key: tuple
    stats: StyleStats | None = None
    image: torch.Tensor | None = None


class StyleCache:
    """A bounded least-recently-used map from style key to prepared style."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"style cache capacity must be at least 1 (got {capacity})")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, PreparedStyle] = OrderedDict()

        self._lock = threading.Lock()  # `has` is asked from loading threads

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get_or_make(self, key: Hashable, make: Callable[[], PreparedStyle]) -> PreparedStyle:
        """The cached value for `key`, or `make()`'s, which is then cached (a failure is not)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: it runs the networks
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


@dataclass
class Loaded:
    """A content decoded and ready to stylize, and its style's image when the cache lacked it."""

    content: str
    picture: images.Picture
    style: str
    style_picture: images.Picture | None
    timings: Timings


class Stylist:
    """A model set on a device, and everything needed to stylize with it.

    models: a ModelSet, or a model directory or URI to load (None: `cdcore models fetch`'s).
    stages: the stages to load from a directory (all it has by default; fewer load faster).
    tile_size: None chooses per image from free memory (whole image when it fits), 0 always runs
        the whole image, N bounds the exact tiled engine's windows to N x N pixels.
    max_pixels: inputs with more pixels are refused before they are decoded.
    style_cache: prepared styles kept, by URI and recipe, for the files that use them again.
    precision: fp32, bf16 or fp16 for the networks (`cdcore.models.precision`); a mode this device runs
        no faster than fp32 falls back to fp32 with a warning.

    `stylize_file` is three steps that a caller may also run apart, as the job's actors do to
    overlap storage and codecs with the device: `load` (reading and decoding: no device work, safe
    in other threads), `render` (the style's preparation and the stylization: one at a time), and
    `save` (encoding and writing: safe in other threads).
    """

    def __init__(self, models: ModelSet | str | None = None, device: str | torch.device = "auto", *,
                 stages=None, tile_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 style_cache: int = 16, precision: str = "fp32"):
        if isinstance(models, ModelSet):
            self.models = models
            self.device = next(models.encoder(models.stages[0]).parameters()).device
        else:
            self.device = pick_device(str(device))
            self.models = load_model_set(models, stages, self.device)
        self.precision, note = precisions.resolve(precision, self.device)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        # oneDNN convolves channels-last fastest, and so do tensor cores in reduced precision.
        if self.device.type == "cpu" or self.precision != "fp32":
            self.models.to(self.device, channels_last=True)
        self.tile_size = check_tile_size(tile_size)
        self.max_pixels = max_pixels
        codecs.load()  # now, not inside the first row's decode time
        self.styles = StyleCache(style_cache)
        self.styles_prepared = 0

    def _picture(self, image, name: str) -> images.Picture:
        """A Picture of a PIL image, an (H, W, 3) uint8 array, or a path or URI to read."""
        if isinstance(image, images.Picture):
            return image
        if isinstance(image, (str, os.PathLike)):
            return images.read_image(str(image), self.max_pixels)
        if isinstance(image, Image.Image):
            return images.from_pil(image, name)
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{name}: expected a PIL image, an (H, W, 3) uint8 array or a path "
                             f"(got {array.shape} {array.dtype})")
        return images.Picture(np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"]))

    # ------------------------------------------------------------------ files

    def stylize_file(self, content: str, style: str, output: str, recipe: Recipe = Recipe(),
                     progress: Progress | None = None) -> Stylized:
        """Read `content` and `style` (paths, file:// or s3:// URIs), stylize, and write `output`
        atomically in the format of its extension. The style's preparation is cached. A content too
        large to hold, or DeepZoom (.dzi) output, is streamed instead (`cdcore.streaming`)."""
        timings = Timings()
        with timings.phase("read_s"):
            head = streaming.peek(content)  # an object's first bytes: the decision, and the read's start
        if self.streams(content, output, recipe, head):
            return self.stylize_streamed(content, style, output, recipe, progress)
        with naming(output):
            images.output_format(output)  # a bad extension fails before any work
        loaded = self.load(content, style, recipe, head=head, timings=timings)
        canvas = self.render(loaded, recipe, progress)
        self.save(canvas, output, loaded.timings)
        return Stylized(*loaded.picture.size, loaded.timings)

    def stylize_streamed(self, content: str, style: str, output: str, recipe: Recipe = Recipe(),
                         progress: Progress | None = None) -> Stylized:
        """`stylize_file` on the streamed path (`cdcore.streaming`) whatever the content's size, for
        a caller that has asked `streams` already: reading the header again costs a request."""
        streaming.check_request(output, recipe)  # before the style's preparation, which takes time
        if recipe.crop:  # the streamed path resizes band by band; a crop would need the whole image held
            raise StylizeError(f"{content}: --crop takes contents that are held in memory, and this one is "
                               f"streamed (too large, or DeepZoom output)")
        timings = Timings()
        with timings.phase("style_s"):
            prepared = self.styles.get_or_make((style, recipe.style_key),
                                               lambda: self._prepare_file(style, recipe, progress))
        return streaming.stylize_file(self.models, prepared.stats, content, output, recipe, device=self.device,
                                      precision=self.precision, tile_size=self.tile_size,
                                      max_pixels=self.max_pixels, progress=progress, timings=timings)

    def streams(self, content: str, output: str, recipe: Recipe = Recipe(),
                head: storage.Head | None = None) -> bool:
        """Whether `stylize_file` streams this content (`cdcore.streaming`) rather than holding it, judged
        for an object on S3 by its `head` (`streaming.peek`; fetched when not given). On a GPU an
        image that fits the device whole is held: the host has room for it (about 7 bytes a
        pixel), and the whole-image cascade is many times faster there than tiles."""
        if self.device.type != "cuda":  # on the CPU, host memory is what the whole image would fill
            return streaming.streams(content, output, recipe, head=head)
        return streaming.streams(content, output, recipe, lambda height, width: tiling.resolve_tile_size(
            self.models, recipe.stages, height, width, self.tile_size) == 0, head)

    def load(self, content: str, style: str, recipe: Recipe = Recipe(),
             admit: Callable[[int], None] | None = None, head: storage.Head | None = None,
             timings: Timings | None = None) -> Loaded:
        """Read and decode the content (resized as `recipe` asks), and the style unless prepared
        styles hold it already. `admit`, when given, is called with the content's pixel count
        before it is decoded, and may wait (the job's actors bound the pixels they hold). `head`,
        the content's first bytes from `streaming.peek`, saves reading them again; its time is in
        `timings` when the caller passes the Timings it measured it in."""
        timings = timings or Timings()
        with naming(content):
            with timings.phase("read_s"):
                data = images.read_bytes(content, head)
            if admit is not None:
                admit(images.pixel_count(data))
            with timings.phase("decode_s"):
                picture = images.decode(data, content, self.max_pixels, self._codec_device)
                del data
                picture = images.crop_centre(images.resize_to(picture, recipe.content_size), recipe.crop)
        style_picture = None
        if not self.styles.has((style, recipe.style_key)):
            with timings.phase("style_s"), naming(style):
                style_picture = images.read_image(style, self.max_pixels)
        return Loaded(content, picture, style, style_picture, timings)

    def render(self, loaded: Loaded, recipe: Recipe = Recipe(), progress: Progress | None = None) -> images.Canvas:
        """Stylize what `load` returned into a new 8-bit Canvas, preparing the style if needed."""
        prepared = self._prepared(loaded, recipe, progress)
        picture = loaded.picture
        canvas = images.Canvas(*picture.rgb.shape[:2], picture.alpha)
        with loaded.timings.phase("stylize_s"), naming(loaded.content):
            self._paint(picture.rgb, prepared, recipe, canvas.rgb, progress)
        return canvas

    def _prepared(self, loaded: Loaded, recipe: Recipe, progress: Progress | None = None) -> PreparedStyle:
        def prepare() -> PreparedStyle:  # timed only when it runs: a cache hit costs 0
            with loaded.timings.phase("style_s"):
                return self._prepare_loaded(loaded, recipe, progress)

        return self.styles.get_or_make((loaded.style, recipe.style_key), prepare)

    # ------------------------------------------------------------------ batches of rows

    def batch_key(self, loaded: Loaded, recipe: Recipe) -> tuple | None:
        """What rows must share to be rendered together (`render_batch`): the content's size, the
        method and the stages; None for one that renders alone (gatys, a stroke scale, or a
        content that runs in tiles). Styles and alphas may differ within a batch."""
        if recipe.method == "gatys" or recipe.stroke_scale != 1.0:
            return None
        height, width = loaded.picture.rgb.shape[:2]
        if tiling.resolve_tile_size(self.models, recipe.stages, height, width, self.tile_size) != 0:
            return None
        return height, width, recipe.method, recipe.stages

    def batch_images(self, key: tuple, limit: int | None = None) -> int:
        """How many rows of `batch_key` `key` to render at once: `batching.choose_batch_images`."""
        height, width, _, stages = key
        return choose_batch_images(self.models, stages, height, width, limit)

    def render_batch(self, loaded: list[Loaded], recipes: list[Recipe]) -> list[images.Canvas | StylizeError]:
        """`render` for rows of one `batch_key`, in one `stylize_batch` call: a Canvas per row, or
        the StylizeError of a row that failed (its style could not be prepared, say) while the
        others go on. Each row's stylize_s is its share of the batch's time, by pixels. Should the
        batched call itself fail, its rows render one by one, so that whatever caused it fails
        only its own row."""
        outcomes: list = [None] * len(loaded)
        styles = {}
        for i, (item, recipe) in enumerate(zip(loaded, recipes)):
            try:
                styles[i] = self._prepared(item, recipe).stats
            except StylizeError as e:
                outcomes[i] = e
        ready = list(styles)
        if not ready:
            return outcomes
        try:
            started = time.perf_counter()
            with precisions.networks(self.device, self.precision):
                contents = to_tensor_batch([loaded[i].picture.rgb for i in ready], self.device)
                results = to_uint8_batch(stylize_batch(self.models, contents, [styles[i] for i in ready],
                                                       [recipes[i].alpha for i in ready], recipes[ready[0]].stages))
            seconds = time.perf_counter() - started
        except Exception:  # noqa: BLE001 - any cause: the rows find out alone which of them it was
            for i in ready:
                try:
                    outcomes[i] = self.render(loaded[i], recipes[i])
                except StylizeError as e:
                    outcomes[i] = e
            return outcomes
        pixels = sum(loaded[i].picture.rgb.shape[0] * loaded[i].picture.rgb.shape[1] for i in ready)
        for i, rgb in zip(ready, results):
            picture = loaded[i].picture
            outcomes[i] = canvas = images.Canvas(*rgb.shape[:2], picture.alpha)
            canvas.rgb[...] = rgb
            loaded[i].timings.stylize_s += seconds * rgb.shape[0] * rgb.shape[1] / pixels
        return outcomes

    # ------------------------------------------------------------------ writing

    def save(self, canvas: images.Canvas, output: str, timings: Timings | None = None) -> None:
        """Encode `canvas` in the format of `output`'s extension and write it atomically."""
        timings = timings or Timings()
        with naming(output):
            with timings.phase("encode_s"):
                data = canvas.encode(output, self._codec_device)
            with timings.phase("write_s"):
                images.write_bytes(output, data)

    @property
    def _codec_device(self) -> torch.device | None:
        """Where JPEGs are decoded and encoded: on the GPU (nvJPEG) when we hold one."""
        return self.device if self.device.type == "cuda" else None

    def _prepare_loaded(self, loaded: Loaded, recipe: Recipe, progress: Progress | None) -> PreparedStyle:
        if loaded.style_picture is None:  # the cache let it go since `load` looked
            return self._prepare_file(loaded.style, recipe, progress)
        with naming(loaded.style):
            return self._prepare(loaded.style_picture, recipe, progress)

    def _prepare_file(self, style: str, recipe: Recipe, progress: Progress | None) -> PreparedStyle:
        with naming(style):
            return self._prepare(images.read_image(style, self.max_pixels), recipe, progress)

    # ------------------------------------------------------------------ images in memory

    def prepare_style(self, style, recipe: Recipe = Recipe(), **options) -> PreparedStyle:
        """Prepare a style (a PIL image, an (H, W, 3) uint8 array, a path or URI) for `recipe` (with
        `options` changed), to pass to `stylize` for any number of contents."""
        recipe = recipe.replace(**options)
        with naming(style if isinstance(style, str) else "style"):
            return self._prepare(self._picture(style, "style"), recipe, None)

    def stylize(self, content, style, recipe: Recipe = Recipe(), *, progress: Progress | None = None,
                **options) -> Image.Image:
        """Stylize a content (a PIL image, an (H, W, 3) uint8 array, a path or URI) with a style
        given the same way or prepared by `prepare_style`; `options` change fields of `recipe`.
        Returns a PIL image (RGBA when the content has alpha) of the content's size, or of
        `content_size` and `crop`."""
        recipe = recipe.replace(**options)
        with naming("content"):
            picture = images.resize_to(self._picture(content, "content"), recipe.content_size)
            picture = images.crop_centre(picture, recipe.crop)
        if not isinstance(style, PreparedStyle):
            style = self.prepare_style(style, recipe)
        canvas = images.Canvas(*picture.rgb.shape[:2], picture.alpha)
        with naming("content"):
            self._paint(picture.rgb, style, recipe, canvas.rgb, progress)
        return canvas.image().convert("RGBA" if canvas.has_alpha else "RGB")

    # ------------------------------------------------------------------ the work

    def _prepare(self, picture: images.Picture, recipe: Recipe, progress: Progress | None) -> PreparedStyle:
        rgb = images.resize_to(picture, recipe.style_size).rgb
        if recipe.method == "gatys":  # it matches Gram matrices of the style image itself
            prepared = PreparedStyle(recipe.style_key, image=to_tensor(rgb, self.device))
        else:
            engine = tiling.TiledEngine(self.models, self.tile_size, progress=progress)
            with precisions.networks(self.device, self.precision):
                stats = engine.style_statistics(rgb, recipe.method, recipe.stages)
            prepared = PreparedStyle(recipe.style_key, stats=stats)
        self.styles_prepared += 1
        return prepared

    def _paint(self, rgb: np.ndarray, style: PreparedStyle, recipe: Recipe, out: np.ndarray,
               progress: Progress | None) -> None:
        """Stylize (H, W, 3) uint8 `rgb` into `out` (H, W, 3) uint8."""
        if style.key != recipe.style_key:
            raise ValueError(f"the style was prepared for {style.key}, not {recipe.style_key}")
        if recipe.method == "gatys":  # L-BFGS on pixels: fp32 whatever the precision
            result, _ = gatys(self.models, to_tensor(rgb, self.device), style.image, recipe.iterations,
                              recipe.style_weight, recipe.init, progress=progress)
            out[...] = to_uint8(result)
            return
        with precisions.networks(self.device, self.precision):
            self._cascade(rgb, style, recipe, out, progress)

    def _cascade(self, rgb: np.ndarray, style: PreparedStyle, recipe: Recipe, out: np.ndarray,
                 progress: Progress | None) -> None:
        """The wct / adain cascade: on the whole image when it fits, else in exact tiles."""
        levels = recipe.stages
        tile_size = self.tile_size  # with a stroke scale the engine sizes its two scales apart
        if recipe.stroke_scale == 1.0:
            tile_size = tiling.resolve_tile_size(self.models, levels, *rgb.shape[:2], self.tile_size)
            if tile_size == 0:  # it fits: no detour through the engine
                image = stylize(self.models, to_tensor(rgb, self.device), style.stats, recipe.alpha, levels)
                out[...] = to_uint8(image)
                return
        engine = tiling.TiledEngine(self.models, tile_size, progress=progress)
        engine.stylize(rgb, style.stats, recipe.alpha, levels, recipe.stroke_scale, out=out)
