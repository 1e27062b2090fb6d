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

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import numpy as np
import torch
from PIL import Image

from . import images, tiling
from .gatys import gatys
from .modelset import ModelSet, load_model_set
from .options import DEFAULT_MAX_PIXELS, Recipe
from .options import tile_size as check_tile_size
from .stylize import StyleStats, pick_device, stylize, to_tensor, to_uint8

Progress = Callable[[object], None]  # called with a tiling.TileProgress or gatys.IterationProgress


class StylizeError(ValueError):
    """A content/style pair could not be stylized; the message names the input at fault (the
    cause may still be no fault of the input, such as storage that did not answer)."""


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """Re-raise any error inside as a one-line StylizeError that names `name` (once)."""
    try:
        yield
    except StylizeError:
        raise
    except Exception as e:  # decoding, storage, torch: each ends this image, never the caller
        text = " ".join(str(e).split()) or type(e).__name__
        raise StylizeError(text if name in text else f"{name}: {text}") from e


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

    def get_or_make(self, key: Hashable, make: Callable[[], PreparedStyle]) -> PreparedStyle:
        """The cached value for `key`, or `make()`'s, which is then cached (a failure is not)."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class Stylized:
    """What `stylize_file` wrote: the output's size."""

    width: int
    height: int


class Stylist:
    """A model set on a device, and everything needed to stylize with it.

    models: a ModelSet, or a model directory or URI to load (None: `cdcore models fetch`'s).
    stages: the stages to load from a directory (all it has by default; fewer load faster).
    tile_size: None chooses per image from free memory (whole image when it fits), 0 always runs
        the whole image, N bounds the exact tiled engine's windows to N x N pixels.
    max_pixels: inputs with more pixels are refused before they are decoded.
    style_cache: prepared styles kept, by URI and recipe, for the files that use them again.
    """

    def __init__(self, models: ModelSet | str | None = None, device: str | torch.device = "auto", *,
                 stages=None, tile_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 style_cache: int = 16):
        if isinstance(models, ModelSet):
            self.models = models
            self.device = next(models.encoder(models.stages[0]).parameters()).device
        else:
            self.device = pick_device(str(device))
            self.models = load_model_set(models, stages, self.device)
        if self.device.type == "cpu":  # oneDNN convolves channels-last fastest
            self.models.to(self.device, channels_last=True)
        self.tile_size = check_tile_size(tile_size)
        self.max_pixels = max_pixels
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
        atomically in the format of its extension. The style's preparation is cached."""
        with _naming(output):
            images.output_format(output)  # a bad extension fails before any work
        with _naming(content):
            picture = images.resize_to(images.read_image(content, self.max_pixels), recipe.content_size)
        prepared = self.styles.get_or_make((style, recipe.style_key),
                                           lambda: self._prepare_file(style, recipe, progress))
        canvas = images.Canvas(*picture.rgb.shape[:2], picture.alpha)
        with _naming(content):
            self._paint(picture.rgb, prepared, recipe, canvas.rgb, progress)
        with _naming(output):
            canvas.save(output)
        return Stylized(*picture.size)

    def _prepare_file(self, style: str, recipe: Recipe, progress: Progress | None) -> PreparedStyle:
        with _naming(style):
            return self._prepare(images.read_image(style, self.max_pixels), recipe, progress)

    # ------------------------------------------------------------------ images in memory

    def prepare_style(self, style, recipe: Recipe = Recipe(), **options) -> PreparedStyle:
        """Prepare a style (a PIL image, an (H, W, 3) uint8 array, a path or URI) for `recipe` (with
        `options` changed), to pass to `stylize` for any number of contents."""
        recipe = recipe.replace(**options)
        with _naming(style if isinstance(style, str) else "style"):
            return self._prepare(self._picture(style, "style"), recipe, None)

    def stylize(self, content, style, recipe: Recipe = Recipe(), *, progress: Progress | None = None,
                **options) -> Image.Image:
        """Stylize a content (a PIL image, an (H, W, 3) uint8 array, a path or URI) with a style
        given the same way or prepared by `prepare_style`; `options` change fields of `recipe`.
        Returns a PIL image (RGBA when the content has alpha) of the content's size, or of
        `content_size`."""
        recipe = recipe.replace(**options)
        with _naming("content"):
            picture = images.resize_to(self._picture(content, "content"), recipe.content_size)
        if not isinstance(style, PreparedStyle):
            style = self.prepare_style(style, recipe)
        canvas = images.Canvas(*picture.rgb.shape[:2], picture.alpha)
        with _naming("content"):
            self._paint(picture.rgb, style, recipe, canvas.rgb, progress)
        return canvas.image().convert("RGBA" if canvas.has_alpha else "RGB")

    # ------------------------------------------------------------------ the work

    def _prepare(self, picture: images.Picture, recipe: Recipe, progress: Progress | None) -> PreparedStyle:
        rgb = images.resize_to(picture, recipe.style_size).rgb
        if recipe.method == "gatys":  # it matches Gram matrices of the style image itself
            prepared = PreparedStyle(recipe.style_key, image=to_tensor(rgb, self.device))
        else:
            engine = tiling.TiledEngine(self.models, self.tile_size, progress=progress)
            prepared = PreparedStyle(recipe.style_key, stats=engine.style_statistics(rgb, recipe.method,
                                                                                    recipe.stages))
        self.styles_prepared += 1
        return prepared

    def _paint(self, rgb: np.ndarray, style: PreparedStyle, recipe: Recipe, out: np.ndarray,
               progress: Progress | None) -> None:
        """Stylize (H, W, 3) uint8 `rgb` into `out` (H, W, 3) uint8."""
        if style.key != recipe.style_key:
            raise ValueError(f"the style was prepared for {style.key}, not {recipe.style_key}")
        levels = recipe.stages
        if recipe.method == "gatys":
            result, _ = gatys(self.models, to_tensor(rgb, self.device), style.image, recipe.iterations,
                              recipe.style_weight, recipe.init, progress=progress)
            out[...] = to_uint8(result)
            return
        tile_size = self.tile_size  # with a stroke scale the engine sizes its two scales apart
        if recipe.stroke_scale == 1.0:
            tile_size = tiling.resolve_tile_size(self.models, levels, *rgb.shape[:2], self.tile_size)
            if tile_size == 0:  # it fits: no detour through the engine
                image = stylize(self.models, to_tensor(rgb, self.device), style.stats, recipe.alpha, levels)
                out[...] = to_uint8(image)
                return
        engine = tiling.TiledEngine(self.models, tile_size, progress=progress)
        engine.stylize(rgb, style.stats, recipe.alpha, levels, recipe.stroke_scale, out=out)
