"""The streamed stylization of one file: read by window, stylize in tiles, encode by strips."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .. import tiling
from ..io import images, storage
from ..io.images import ImageError
from ..models.modelset import ModelSet
from ..models.precision import networks
from ..options import DEFAULT_MAX_PIXELS, Recipe
from ..results import StylizeError, Stylized, naming
from ..timings import Timings
from ..transfer.stylize import StyleStats
from ..tiling.placement import choose as choose_placement
from ..tiling.planning import available_memory, buffer_bytes, stages_to_recompute
from ..tiling.resample import lanczos
from . import scratch as scratches
from .headers import Header, check_output, open_image, probe
from .reading import RegionReader
from .scratch import Scratch, require_space, scratch_space
from .writing import OUTPUT_BYTES_PER_PIXEL, save


def _stream_tile_size(models: ModelSet, device: torch.device, levels, height: int, width: int,
                      tile_size: int | None) -> int:
    """The caller's tile size; where that is the whole image (0, or None on a roomy device), the
    largest tile for the device instead: a streamed image is never held whole."""
    tile = tiling.resolve_tile_size(models, levels, height, width, tile_size)
    if tile:
        return tile
    return tiling.MAX_CUDA_TILE if device.type == "cuda" else tiling.MAX_CPU_TILE


def check_request(output: str, recipe: Recipe) -> str:
    """The extension of `output`, or a StylizeError naming it where the streamed path cannot write
    it or cannot run `recipe`'s method."""
    with naming(output):
        ext = check_output(output)
    if recipe.method == "gatys":
        raise StylizeError(f"{output}: DeepZoom output is streamed, which takes wct or adain (gatys "
                           f"optimizes the whole image at once)")
    return ext


# ---------------------------------------------------------------------------------------- the flow

def stylize_file(models: ModelSet, style: StyleStats, content: str, output: str, recipe: Recipe, *,
                 device: torch.device, precision: str = "fp32", tile_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress=None, temp_dir: str | None = None,
                 timings: Timings | None = None) -> Stylized:
    """Stylize a streamed content (see `headers.streams`) with a prepared `style`: read region-wise,
    resize band by band (`--content-size`), stylize with the tiled engine into a disk buffer,
    encode by strips. Every temporary file lives in one scratch directory under `temp_dir` ($TMPDIR
    by default), checked for space first and removed afterwards. `device`, `precision`, `tile_size`
    and `max_pixels` are the Stylist's settings of the same names."""
    ext = check_request(output, recipe)
    timings = timings or Timings()
    with scratch_space(temp_dir) as scratch:
        with naming(content):
            with timings.phase("read_s"):
                path = scratch.local_input(content)
            header = probe(str(path))
            if header is None:
                open_image(path, content)  # raises the reason
            images.check_pixels(content, header.width, header.height, path.stat().st_size, max_pixels)
            width, height = images.scaled_size(header.width, header.height, recipe.content_size)
            if width * height > max_pixels:
                raise ImageError(f"{content}: --content-size {recipe.content_size} makes it {width}x{height} = "
                                 f"{width * height / 1e6:.1f} MP, more than the limit of "
                                 f"{max_pixels / 1e6:.1f} MP (--max-pixels)")
            tile = _stream_tile_size(models, device, recipe.stages, height, width, tile_size)
            recompute = _check_space(models, scratch, header, (height, width), recipe, tile, output, ext)
            reader = RegionReader(path, content, scratch.directory)
        colour, alpha = reader, (reader.alpha_image() if reader.has_alpha else None)
        result = tiling.ImageBuffer.on_disk(scratch.directory, (height, width, 3), np.uint8)
        try:
            if (width, height) != (header.width, header.height):
                # Resizing reads the whole content, so decoding is timed here.
                with naming(content), timings.phase("decode_s"):
                    colour = _resized(reader, height, width, scratch.directory)
                    alpha = alpha and _resized(alpha, height, width, scratch.directory)
            # Otherwise decoding happens on demand inside the engine's first pass, in stylize_s.
            with naming(content), timings.phase("stylize_s"), networks(device, precision):
                where, recompute = _placement(models, device, recipe, tile, (height, width), recompute)
                engine = tiling.TiledEngine(models, tile, temp_dir=scratch.directory, progress=progress,
                                            recompute=recompute, placement=where)
                engine.stylize(colour, style, recipe.alpha, recipe.stages, recipe.stroke_scale, out=result)
            with naming(output), timings.phase("encode_s"):  # encoding and writing are one stream
                rows_of_alpha = (lambda rows: alpha.read(rows, slice(None))[..., 0]) if alpha else None
                save(result, output, scratch, rows_of_alpha)
        finally:
            for buffer in {id(b): b for b in (reader, colour, alpha, result) if b is not None}.values():
                buffer.close()
    return Stylized(width, height, timings)


def _placement(models: ModelSet, device: torch.device, recipe: Recipe, tile: int, size: tuple[int, int],
               recompute: frozenset[int]) -> tuple[str, frozenset[int]]:
    """Where a streamed run's buffers go, and the stages that encode their features again: on a
    GPU its memory where they fit (the tiled engine then runs at nearly the whole image's pace,
    issue 28), else disk; never pinned host memory, which would count against the host memory
    that streaming exists to bound."""
    if device.type == "cuda":
        where, fewer = choose_placement(models, recipe.stages, *size, tile, None, recipe.stroke_scale, recompute)
        if where == "device":
            return where, fewer
    return "disk", recompute


def _resized(image: tiling.ImageBuffer, height: int, width: int, directory: str) -> tiling.ImageBuffer:
    """`image` (uint8) resized as `images.resize_to` resizes, into a raw file in `directory`."""
    def new(shape, dtype) -> tiling.ImageBuffer:
        return tiling.ImageBuffer.on_disk(directory, shape, dtype)

    out = new((height, width, image.shape[2]), np.uint8)
    lanczos(image, out, new)
    return out


def _check_space(models: ModelSet, scratch: Scratch, header: Header, size: tuple[int, int], recipe: Recipe,
                 tile: int, output: str, ext: str) -> frozenset[int]:
    """Check everything the run will write against the free space where it goes: the spools, a
    resized content, the engine's buffers, and the output (in scratch for S3, beside it for a local
    file). Returns the stages that encode their features again rather than store them: to fit,
    and where the buffers outgrow the host's memory (`tiling.planning.stages_to_recompute`)."""
    (height, width), pixels = size, size[0] * size[1]
    files = header.pixels * (3 + 1) + pixels * 3  # the content's colour and alpha (budgeted either way), result
    if pixels != header.pixels:  # resized colour and alpha, and the image between Lanczos' passes
        files += pixels * 4 + header.height * width * 4
    encoded = int(pixels * OUTPUT_BYTES_PER_PIXEL[ext])
    if storage.is_local(output):
        folder = storage.local_path(output).resolve().parent
        while not folder.exists():
            folder = folder.parent
        if os.stat(folder).st_dev == os.stat(scratch.directory).st_dev:
            files += encoded
        else:
            require_space(str(folder), encoded, f"writing {output}")
    else:
        files += encoded
    levels, scale = recipe.stages, recipe.stroke_scale
    budget = scratches.free_bytes(scratch.directory) - files
    # Host memory bounds what the page cache keeps of the buffers, on a GPU node too.
    recompute = stages_to_recompute(models, levels, height, width, tile, budget, scale, available_memory("cpu"))
    need = files + buffer_bytes(models, levels, height, width, tile, scale, recompute)
    scratch.require(need, f"stylizing {width}x{height} streamed (spools, stage buffers, output)")
    every_store = buffer_bytes(models, levels, height, width, tile, scale)
    if every_store > budget:  # slower, not wrong: say so
        stages = ", ".join(map(str, sorted(recompute)))
        warnings.warn(f"{output}: {scratch.directory} is short of space for every stage's stored features "
                      f"({(files + every_store) / 1e9:.1f} GB in all); "
                      f"stage {stages} encodes them again instead (the same result, a little slower)",
                      RuntimeWarning, stacklevel=3)
    return recompute
