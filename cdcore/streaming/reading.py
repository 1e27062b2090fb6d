"""Images too large to hold in memory: read by window, written by strips, through libvips.

The in-memory path (`images`, Pillow) holds the compressed file, the decoded (H, W, 3) image and
the (H, W, 4) result at once, about 7 bytes per pixel: 7 GB at a gigapixel. Here the image never
exists whole in memory:

- `RegionReader` is the content as an (H, W, 3) uint8 `ImageBuffer` for the tiled engine. libvips
  decodes the file top to bottom (JPEG and PNG cannot be decoded any other way without decoding
  all rows above), a strip at a time and only as far down as the windows asked for reach, into a
  raw spool file from which windows are read back with pread; EXIF orientation is applied per
  window.
- `--content-size` resizes the content band by band into another raw file, and a stroke scale's
  downscaled content and upsampled coarse result are raw files too (`tiling.resample`): both give
  the pixels the in-memory path gives.
- The engine writes its 8-bit result into a raw file (`ImageBuffer.on_disk`), and `save` feeds it
  to a libvips encoder strip by strip, as an uncompressed PNG stream, so the encoder (JPEG, PNG,
  tiled pyramidal TIFF, WebP, DeepZoom) holds a few strips, never the image.
- `Scratch` is the temporary directory of one run: its free space is checked against what the run
  will write before anything is written, and it goes afterwards, also on failure. Where the disk
  is short, the stages whose stored features take the most room for the least work encode them
  again instead (`tiling.planning.stages_to_recompute`; same result, a few % more time). Objects
  on S3 are downloaded into it (in parallel ranged parts) and results uploaded from it (in parts).

`streams` says which path a `Stylist.stylize_file` call takes: this one for wct and adain on 8-bit
grey or RGB images (with or without alpha) read or written above STREAM_PIXELS, and for DeepZoom
output; Pillow's for the rest (small images, CMYK, 16-bit, float, and gatys, which optimizes the
whole image at once). Both decode and encode with libjpeg-turbo, zlib and libwebp, so a JPEG or PNG
read either way gives the same pixels.
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyvips

from ..io import images, storage, tempdirs
from .. import tiling
from ..io.images import ImageError
from ..options import Recipe
from ..tiling.planning import available_memory, buffer_bytes, stages_to_recompute
from ..tiling.resample import lanczos

if TYPE_CHECKING:
    from ..pipeline import Stylist, Stylized

# Above this many pixels a content is streamed: the in-memory path then holds more than about
# 170 MB of image, and one more such copy per actor adds up on a shared GPU node.
STREAM_PIXELS = 24_000_000
# An object on S3 is probed by its first HEAD_BYTES; one whose header lies further in (a TIFF
# written with its directory at the end) is streamed when it is at least STREAM_BYTES.
HEAD_BYTES = 256 << 10
STREAM_BYTES = 64 << 20
# Strips decoded or encoded at once: a few MB keeps libvips busy without holding much.
STRIP_BYTES = 8 << 20
# Output bytes per pixel budgeted for the space check (about; a noisy photo at JPEG quality 95
# 4:4:4 takes about 1.2, a deflated PNG or TIFF up to 3 or 4, a pyramid a third more).
OUTPUT_BYTES_PER_PIXEL = {".jpg": 1.5, ".jpeg": 1.5, ".png": 4, ".tif": 5.4, ".tiff": 5.4, ".webp": 1.5,
                          ".dzi": 2}
KEEPS_ALPHA = {".jpg": False, ".jpeg": False, ".png": True, ".tif": True, ".tiff": True, ".webp": True,
               ".dzi": False}
WEBP_MAX_SIDE = 16383
# EXIF orientation -> (transpose, flip rows, flip columns) taking the stored image to the
# displayed one, in that order (the transforms of Pillow's ImageOps.exif_transpose).
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                7: (True, True, True), 8: (True, True, False)}
# (interpretation, bands) of 8-bit images read here: grey, grey + alpha, RGB, RGBA.
STREAMABLE = {("b-w", 1), ("b-w", 2), ("srgb", 3), ("srgb", 4)}


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def extension(name: str) -> str:
    return os.path.splitext(str(name))[1].lower()


def check_output(name: str) -> str:
    """The extension of an output this path can write, or an ImageError naming it."""
    return images.check_output(name)


# ---------------------------------------------------------------------------------------- headers

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


def _header(image: pyvips.Image) -> Header:
    orientation = image.get("orientation") if image.get_typeof("orientation") else 1
    orientation = orientation if orientation in ORIENTATIONS else 1
    width, height = image.width, image.height
    if ORIENTATIONS[orientation][0]:
        width, height = height, width
    streamable = (image.format == "uchar" and image.coding == "none"
                  and (image.interpretation, image.bands) in STREAMABLE)
    kind = f"{image.interpretation} {image.format}, {image.bands} bands"
    return Header(width, height, orientation, streamable, kind)


def _open(path: str | os.PathLike, name: str) -> pyvips.Image:
    """The image at a local path, opened for one top-to-bottom read; truncation is an error."""
    try:
        return pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error")
    except pyvips.Error as e:
        raise ImageError(f"{name}: not a readable image ({_one_line(e).split(':')[0]})") from None


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
            return _header(_open(storage.local_path(uri), uri))
        except ImageError:
            return None
    head = head or storage.read_head(uri, HEAD_BYTES)
    try:
        return _header(pyvips.Image.new_from_buffer(head.data, "", access="sequential"))
    except pyvips.Error:
        return None


def streams(content: str, output: str, recipe: Recipe,
            runs_whole: Callable[[int, int], bool] | None = None, head: storage.Head | None = None) -> bool:
    """Whether `Stylist.stylize_file` takes this path: for DeepZoom output, and for wct and adain
    on 8-bit grey or RGB contents with more than STREAM_PIXELS before or after `--content-size`,
    unless `runs_whole(height, width)` says the device runs the result's size whole (a GPU with
    room: there the in-memory path is some 14x faster than tiles, RESULTS.md issue 11). An object
    on S3 is judged by its `head` (`peek`), fetched when not given."""
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


# ---------------------------------------------------------------------------------------- reading

class RegionReader(tiling.ImageBuffer):
    """An image file as an (H, W, 3) uint8 ImageBuffer in its displayed orientation, decoded on
    demand into spool files in `directory` (3 bytes per pixel, one more for alpha).

    `read` (the colour), `read_alpha` and `alpha_image` take windows in displayed coordinates,
    from any thread. Grey images are repeated into three channels, as Pillow's convert("RGB") does.

    libvips regions must be made, used and freed on one thread (they use its buffer cache), and
    the engine reads windows from a helper thread (`tiling.overlap`), a new one each pass: so the
    region lives on the reader's own decoding thread, which also serializes decoding.
    """

    def __init__(self, path: str | os.PathLike, name: str, directory: str):
        image = _open(path, name)
        header = _header(image)
        if not header.streamable:
            raise ImageError(f"{name}: streamed reading takes 8-bit grey or RGB images, with or without "
                             f"alpha (got {header.kind})")
        super().__init__(shape=(header.height, header.width, 3), dtype=np.uint8)
        self.name, self.orientation = name, header.orientation
        self._image, self._region, self._bands = image, None, image.bands
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="cdcore-decode")
        stored = (image.height, image.width)
        self.pixels = tiling.ImageBuffer.on_disk(directory, (*stored, 3), np.uint8)
        self.alpha = tiling.ImageBuffer.on_disk(directory, (*stored, 1), np.uint8) if image.bands in (2, 4) else None
        self.decoded = 0  # stored rows in the spool so far

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self._window(self.pixels, rows, cols)

    def read_alpha(self, rows: slice, cols: slice) -> np.ndarray:
        """(h, w) uint8 alpha of a window (the image must have alpha)."""
        return self._window(self.alpha, rows, cols)[..., 0]

    def alpha_image(self) -> "tiling.ImageBuffer":
        """The alpha as an (H, W, 1) uint8 ImageBuffer (the image must have alpha)."""
        return _AlphaView(self)

    def write(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        raise TypeError(f"{self.name}: an image being read is not written")

    def _window(self, spool: tiling.ImageBuffer, rows: slice, cols: slice) -> np.ndarray:
        (y0, y1), (x0, x1) = self._span(rows, 0), self._span(cols, 1)
        transpose, flip_rows, flip_cols = ORIENTATIONS[self.orientation]
        height, width = self.shape[:2]
        if flip_rows:
            y0, y1 = height - y1, height - y0
        if flip_cols:
            x0, x1 = width - x1, width - x0
        stored_rows, stored_cols = ((x0, x1), (y0, y1)) if transpose else ((y0, y1), (x0, x1))
        self._decode_until(stored_rows[1])
        block = spool.read(slice(*stored_rows), slice(*stored_cols))
        if transpose:
            block = block.transpose(1, 0, 2)
        return np.ascontiguousarray(block[::-1 if flip_rows else 1, ::-1 if flip_cols else 1])

    def _decode_until(self, stop: int) -> None:
        """Decode stored rows into the spool until `stop` of them are there."""
        if self.decoded < stop:
            self._decoder.submit(self._decode, stop).result()

    def _decode(self, stop: int) -> None:
        """On the decoding thread: `_decode_until`."""
        if self.decoded >= stop:  # decoded meanwhile, for another thread's read
            return
        if self._region is None:
            self._region = pyvips.Region.new(self._image)
        width, height, bands = self._image.width, self._image.height, self._bands
        strip = max(1, STRIP_BYTES // (width * bands))
        while self.decoded < stop:
            y, h = self.decoded, min(strip, height - self.decoded)
            try:
                data = self._region.fetch(0, y, width, h)
            except pyvips.Error as e:
                raise ImageError(f"{self.name}: truncated or corrupt image data ({_one_line(e)})") from None
            pixels = np.frombuffer(data, np.uint8).reshape(h, width, bands)
            rgb = np.repeat(pixels[..., :1], 3, axis=2) if bands < 3 else pixels[..., :3]
            self.pixels.write(slice(y, y + h), slice(None), rgb)
            if self.alpha is not None:
                self.alpha.write(slice(y, y + h), slice(None), pixels[..., -1:])
            self.decoded += h
        if self.decoded == height:  # all in the spool: let the decoder and its file go
            self._let_go()

    def _let_go(self) -> None:
        """On the decoding thread: free the region (there) and the image."""
        self._region = self._image = None

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.submit(self._let_go).result()
            self._decoder.shutdown()
            self._decoder = None
        for spool in (self.pixels, self.alpha):
            if spool is not None:
                spool.close()


class _AlphaView(tiling.ImageBuffer):
    """A RegionReader's alpha, (H, W, 1), read by window like its colour."""

    def __init__(self, reader: RegionReader):
        super().__init__(shape=(*reader.shape[:2], 1), dtype=np.uint8)
        self.reader = reader

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self.reader._window(self.reader.alpha, rows, cols)

    def write(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        raise TypeError(f"{self.reader.name}: an image being read is not written")


# ---------------------------------------------------------------------------------------- writing

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_stream(rgb: tiling.ImageBuffer, alpha: Callable[[slice], np.ndarray] | None = None) -> Iterator[bytes]:
    """An uncompressed PNG of an (H, W, 3) uint8 buffer (and `alpha(rows)`, (h, W) uint8), made a
    strip at a time: the one streamed raw format that every libvips build can load from a source
    without mapping a file (whose pages would count in the resident set)."""
    height, width = rgb.shape[:2]
    channels = 4 if alpha else 3
    yield b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                               6 if alpha else 2, 0, 0, 0))
    deflate = zlib.compressobj(0)  # stored blocks: the encoder downstream compresses
    strip = max(1, STRIP_BYTES // (width * channels))
    for y in range(0, height, strip):
        rows = slice(y, min(y + strip, height))
        lines = np.zeros((rows.stop - y, 1 + width * channels), np.uint8)  # filter byte 0: none
        pixels = lines[:, 1:].reshape(rows.stop - y, width, channels)
        pixels[..., :3] = rgb.read(rows, slice(None))
        if alpha:
            pixels[..., 3] = alpha(rows)
        yield _chunk(b"IDAT", deflate.compress(lines))
    yield _chunk(b"IDAT", deflate.flush()) + _chunk(b"IEND", b"")


class _Chunks:
    """A libvips source that reads `chunks` in order. An exception in making them cannot cross
    libvips (which would only see the stream end early): it is kept in `error` for the caller."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.pending, self.error = chunks, bytearray(), None
        self.source = pyvips.SourceCustom()
        self.source.on_read(self._read)

    def _read(self, size: int) -> bytes:
        try:
            while len(self.pending) < size:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.pending.extend(chunk)
        except Exception as e:
            self.error = self.error or e
            return b""
        data = bytes(self.pending[:size])
        del self.pending[:size]
        return data


def _encode(image: pyvips.Image, path: Path, ext: str) -> None:
    """Write `image` at `path` (whatever its name ends in) in the format of `ext`."""
    if ext in (".jpg", ".jpeg"):
        image.jpegsave(str(path), Q=95, subsample_mode="off")  # images.FORMATS' JPEG settings
    elif ext == ".png":
        image.pngsave(str(path), compression=3)
    elif ext in (".tif", ".tiff"):
        # Tiled and pyramidal, as slide viewers (QuPath, OpenSlide) and most GIS tools read it;
        # page 0 is the full image, as other readers expect. BigTIFF where 4 GB may not do.
        big = image.width * image.height * image.bands * 4 / 3 >= 3.5e9
        image.tiffsave(str(path), compression="deflate", tile=True, tile_width=256, tile_height=256,
                       pyramid=True, bigtiff=big)
    elif ext == ".webp":
        image.webpsave(str(path), Q=95)
    elif ext == ".dzi":  # path is the base name: path.dzi and path_files/
        image.dzsave(str(path), suffix=".jpg[Q=90]", tile_size=254, overlap=1)
    else:
        raise ImageError(f"{path}: unsupported output format {ext}")


def save(result: tiling.ImageBuffer, output: str, scratch: "Scratch",
         alpha: Callable[[slice], np.ndarray] | None = None) -> None:
    """Encode an (H, W, 3) uint8 buffer (and `alpha(rows)`) in the format of `output`'s extension
    and write it atomically: locally through a hidden file (or folder) renamed when complete, on
    S3 from a scratch file uploaded in parts. DeepZoom's .dzi descriptor comes last, so a viewer
    that finds it finds every tile."""
    ext = check_output(output)
    height, width = result.shape[:2]
    if ext == ".webp" and max(height, width) > WEBP_MAX_SIDE:
        raise ImageError(f"{output}: WebP holds at most {WEBP_MAX_SIDE} px a side (the image is "
                         f"{width}x{height}): use .jpg, .png, .tif or .dzi")
    pixels = _Chunks(png_stream(result, alpha if KEEPS_ALPHA[ext] else None))
    try:
        image = pyvips.Image.new_from_source(pixels.source, "", access="sequential")
        if ext == ".dzi":
            _save_deepzoom(image, output, scratch)
        elif storage.is_local(output):
            with storage.atomic_local(storage.local_path(output)) as tmp:
                _encode(image, tmp, ext)
        else:
            tmp = Path(scratch.directory, f"output{ext}")
            _encode(image, tmp, ext)
            storage.upload(tmp, output)
    except pyvips.Error as e:
        if pixels.error is not None:
            raise pixels.error
        raise ImageError(f"{output}: could not be written ({_one_line(e)})") from None


def _save_deepzoom(image: pyvips.Image, output: str, scratch: "Scratch") -> None:
    name = Path(storage.local_path(output) if storage.is_local(output) else output.rsplit("/", 1)[-1])
    if storage.is_local(output):
        final = storage.local_path(output)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.part"
    else:
        work = Path(scratch.directory, "deepzoom")
    work.mkdir()
    try:
        _encode(image, work / name.stem, ".dzi")
        tiles = work / f"{name.stem}_files"
        if storage.is_local(output):
            target = final.with_name(f"{final.stem}_files")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tiles, target)
            os.replace(work / f"{name.stem}.dzi", final)
        else:
            base = output.rsplit("/", 1)[0]
            for path in sorted(tiles.rglob("*")):
                if path.is_file():
                    storage.upload(path, f"{base}/{path.relative_to(work).as_posix()}")
            storage.upload(work / f"{name.stem}.dzi", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------- scratch

class Scratch:
    """A run's temporary directory, made by `scratch_space`."""

    def __init__(self, directory: str):
        self.directory = directory

    def require(self, need: int, what: str, directory: str | None = None) -> None:
        """Raise an ImageError naming the path and the bytes when `directory` (default this one) has
        less than `need` bytes free."""
        require_space(directory or self.directory, need, what)

    def local_input(self, uri: str) -> Path:
        """A local path of `uri`: the file itself, or a download of the object into this directory
        (after checking that it fits)."""
        if storage.is_local(uri):
            path = storage.local_path(uri)
            if not path.exists():
                raise ImageError(f"{uri}: no such file or object")
            return path
        size = storage.read_head(uri, 1).size
        self.require(size, f"downloading {uri}")
        path = Path(self.directory, "input" + extension(uri))
        storage.download(uri, path)
        return path


def free_bytes(directory: str) -> int:
    return shutil.disk_usage(directory).free


def require_space(directory: str, need: int, what: str) -> None:
    free = free_bytes(directory)
    if free < need:
        raise ImageError(f"not enough space in {directory} for {what}: it needs about {need / 1e9:.2f} GB "
                         f"({need} bytes), {free} bytes are free (point TMPDIR at a larger disk)")


@contextmanager
def scratch_space(parent: str | None = None) -> Iterator[Scratch]:
    """A run's scratch under `parent` (default the system's: $TMPDIR), removed when the run ends,
    also on failure; making it removes the scratch of runs that were killed (`tempdirs`)."""
    with tempdirs.run_directory(tempdirs.STREAM, parent) as directory:
        yield Scratch(directory)


def _stream_tile_size(stylist: "Stylist", levels, height: int, width: int) -> int:
    """The stylist's tile size; where that is the whole image (0, or None on a roomy device), the
    largest tile for the device instead: a streamed image is never held whole."""
    tile = tiling.resolve_tile_size(stylist.models, levels, height, width, stylist.tile_size)
    if tile:
        return tile
    return tiling.MAX_CUDA_TILE if stylist.device.type == "cuda" else tiling.MAX_CPU_TILE


# ---------------------------------------------------------------------------------------- the flow

def stylize_file(stylist: "Stylist", content: str, style: str, output: str, recipe: Recipe,
                 progress=None, temp_dir: str | None = None) -> "Stylized":
    """`Stylist.stylize_file` for a streamed content (see `streams`): read region-wise, resize
    band by band (`--content-size`), stylize with the tiled engine into a disk buffer, encode by
    strips. Every temporary file lives in one scratch directory under `temp_dir` ($TMPDIR by
    default), checked for space first and removed afterwards."""
    from ..pipeline import Stylized, StylizeError, _naming  # the pipeline imports this module
    from ..models.precision import networks
    from ..timings import Timings

    with _naming(output):
        ext = check_output(output)
    if recipe.method == "gatys":
        raise StylizeError(f"{output}: DeepZoom output is streamed, which takes wct or adain (gatys "
                           f"optimizes the whole image at once)")
    timings = Timings()
    with timings.phase("style_s"):
        prepared = stylist.styles.get_or_make((style, recipe.style_key),
                                              lambda: stylist._prepare_file(style, recipe, progress))
    with scratch_space(temp_dir) as scratch:
        with _naming(content):
            with timings.phase("read_s"):
                path = scratch.local_input(content)
            header = probe(str(path))
            if header is None:
                _open(path, content)  # raises the reason
            images.check_pixels(content, header.width, header.height, path.stat().st_size, stylist.max_pixels)
            width, height = images.scaled_size(header.width, header.height, recipe.content_size)
            if width * height > stylist.max_pixels:
                raise ImageError(f"{content}: --content-size {recipe.content_size} makes it {width}x{height} = "
                                 f"{width * height / 1e6:.1f} MP, more than the limit of "
                                 f"{stylist.max_pixels / 1e6:.1f} MP (--max-pixels)")
            tile = _stream_tile_size(stylist, recipe.stages, height, width)
            recompute = _check_space(stylist, scratch, header, (height, width), recipe, tile, output, ext)
            reader = RegionReader(path, content, scratch.directory)
        colour, alpha = reader, (reader.alpha_image() if reader.has_alpha else None)
        result = tiling.ImageBuffer.on_disk(scratch.directory, (height, width, 3), np.uint8)
        try:
            if (width, height) != (header.width, header.height):
                # Resizing reads the whole content, so decoding is timed here.
                with _naming(content), timings.phase("decode_s"):
                    colour = _resized(reader, height, width, scratch.directory)
                    alpha = alpha and _resized(alpha, height, width, scratch.directory)
            # Otherwise decoding happens on demand inside the engine's first pass, in stylize_s.
            with _naming(content), timings.phase("stylize_s"), networks(stylist.device, stylist.precision):
                engine = tiling.TiledEngine(stylist.models, tile, disk_buffer=True, temp_dir=scratch.directory,
                                            progress=progress, recompute=recompute)
                engine.stylize(colour, prepared.stats, recipe.alpha, recipe.stages, recipe.stroke_scale, out=result)
            with _naming(output), timings.phase("encode_s"):  # encoding and writing are one stream
                rows_of_alpha = (lambda rows: alpha.read(rows, slice(None))[..., 0]) if alpha else None
                save(result, output, scratch, rows_of_alpha)
        finally:
            for buffer in {id(b): b for b in (reader, colour, alpha, result) if b is not None}.values():
                buffer.close()
    return Stylized(width, height, timings)


def _resized(image: tiling.ImageBuffer, height: int, width: int, directory: str) -> tiling.ImageBuffer:
    """`image` (uint8) resized as `images.resize_to` resizes, into a raw file in `directory`."""
    def new(shape, dtype) -> tiling.ImageBuffer:
        return tiling.ImageBuffer.on_disk(directory, shape, dtype)

    out = new((height, width, image.shape[2]), np.uint8)
    lanczos(image, out, new)
    return out


def _check_space(stylist: "Stylist", scratch: Scratch, header: Header, size: tuple[int, int], recipe: Recipe,
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
    models, levels, scale = stylist.models, recipe.stages, recipe.stroke_scale
    budget = free_bytes(scratch.directory) - files
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
