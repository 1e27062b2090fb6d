"""What an image file says about itself before any pixel is decoded, and so whether it streams."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import pyvips

from ..io import images, storage
from ..io.images import ImageError
from ..options import Recipe

# libvips keeps up to 100 recent operations and 100 MB of what they hold for reuse, process-wide.
# A streamed run opens each file once and reuses none of them, so the cache would only hold memory
# beside the run, an amount set by libvips rather than by the run's own budget: keep none.
pyvips.cache_set_max(0)

# Above this many pixels a content is streamed: the in-memory path then holds more than about
# 170 MB of image, and one more such copy per actor adds up on a shared GPU node.
STREAM_PIXELS = 24_000_000
# An object on S3 is probed by its first HEAD_BYTES; one whose header lies further in (a TIFF
# written with its directory at the end) is streamed when it is at least STREAM_BYTES.
HEAD_BYTES = 256 << 10
STREAM_BYTES = 64 << 20
# Strips decoded or encoded at once: a few MB keeps libvips busy without holding much.
STRIP_BYTES = 8 << 20
# EXIF orientation -> (transpose, flip rows, flip columns) taking the stored image to the
# displayed one, in that order (the transforms of Pillow's ImageOps.exif_transpose).
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                7: (True, True, True), 8: (True, True, False)}
# (interpretation, bands) of 8-bit images read here: grey, grey + alpha, RGB, RGBA.
STREAMABLE = {("b-w", 1), ("b-w", 2), ("srgb", 3), ("srgb", 4)}


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def extension(name: str) -> str:
    return os.path.splitext(str(name))[1].lower()


def check_output(name: str) -> str:
    """The extension of an output this path can write, or an ImageError naming it."""
    return images.check_output(name)


@dataclass(frozen=True)
class Header:
    """What an image file says about itself, before any pixel is decoded."""

    width: int  # displayed, after EXIF orientation
    height: int
    orientation: int
    streamable: bool  # 8-bit grey or RGB, with or without alpha
    kind: str  # for messages: "srgb uchar, 3 bands"

    @property
    def pixels(self) -> int:
        return self.width * self.height


def header_of(image: pyvips.Image) -> Header:
    orientation = image.get("orientation") if image.get_typeof("orientation") else 1
    orientation = orientation if orientation in ORIENTATIONS else 1
    width, height = image.width, image.height
    if ORIENTATIONS[orientation][0]:
        width, height = height, width
    streamable = (image.format == "uchar" and image.coding == "none"
                  and (image.interpretation, image.bands) in STREAMABLE)
    kind = f"{image.interpretation} {image.format}, {image.bands} bands"
    return Header(width, height, orientation, streamable, kind)


def open_image(path: str | os.PathLike, name: str) -> pyvips.Image:
    """The image at a local path, opened for one top-to-bottom read; truncation is an error."""
    try:
        return pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error")
    except pyvips.Error as e:
        raise ImageError(f"{name}: not a readable image ({one_line(e).split(':')[0]})") from None


def peek(uri: str) -> storage.Head | None:
    """The first HEAD_BYTES of an object on S3, for `streams` to decide by and for the in-memory
    path's read to go on from (`storage.read_bytes`), so the decision costs no request of its own;
    None for a local file (opened where needed) and where the object cannot be read (the read
    that follows reports why)."""
    if storage.is_local(uri):
        return None
    try:
        return storage.read_head(uri, HEAD_BYTES)
    except storage.StorageError:
        return None


def probe(uri: str, head: storage.Head | None = None) -> Header | None:
    """The header of a local file, or of an object on S3 from its `head` (fetched when not given);
    None where the header cannot be read there (the in-memory path then reports why, or `streams`
    decides by size). Never raises for a bad image: that is the reader's to report."""
    if storage.is_local(uri):
        try:
            return header_of(open_image(storage.local_path(uri), uri))
        except ImageError:
            return None
    head = head or storage.read_head(uri, HEAD_BYTES)
    try:
        return header_of(pyvips.Image.new_from_buffer(head.data, "", access="sequential"))
    except pyvips.Error:
        return None


def streams(content: str, output: str, recipe: Recipe,
            runs_whole: Callable[[int, int], bool] | None = None, head: storage.Head | None = None) -> bool:
    """Whether `Stylist.stylize_file` takes this path: for DeepZoom output, and for wct and adain
    on 8-bit grey or RGB contents with more than STREAM_PIXELS before or after `--content-size`,
    unless `runs_whole(height, width)` says the device runs the result's size whole (a GPU with
    room: there the in-memory path is some 14x faster than tiles; benchmarks/history/sessions-1-9.md,
    issues 11 and 15). An object on S3 is judged by its `head` (`peek`), fetched when not given."""
    if extension(output) == ".dzi":
        return True
    if recipe.method == "gatys":
        return False
    try:
        if not storage.is_local(content):
            head = head or storage.read_head(content, HEAD_BYTES)
        header = probe(content, head)
        if header is None:
            return head is not None and head.size >= STREAM_BYTES
    except storage.StorageError:
        return False  # the in-memory path reads it again and reports the failure
    width, height = images.scaled_size(header.width, header.height, recipe.content_size)
    if not (header.streamable and max(header.pixels, width * height) > STREAM_PIXELS):
        return False
    return runs_whole is None or not runs_whole(height, width)
