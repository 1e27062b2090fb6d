"""An (H, W, 3) uint8 buffer encoded strip by strip by libvips, written atomically (locally or to S3)."""
from __future__ import annotations

import os
import shutil
import struct
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyvips

from .. import tiling
from ..io import storage
from ..io.images import ImageError
from .headers import STRIP_BYTES, check_output, one_line

if TYPE_CHECKING:
    from .scratch import Scratch

# Output bytes per pixel budgeted for the space check (about; a noisy photo at JPEG quality 95
# 4:4:4 takes about 1.2, a deflated PNG or TIFF up to 3 or 4, a pyramid a third more).
OUTPUT_BYTES_PER_PIXEL = {".jpg": 1.5, ".jpeg": 1.5, ".png": 4, ".tif": 5.4, ".tiff": 5.4, ".webp": 1.5,
                          ".dzi": 2}
KEEPS_ALPHA = {".jpg": False, ".jpeg": False, ".png": True, ".tif": True, ".tiff": True, ".webp": True,
               ".dzi": False}
WEBP_MAX_SIDE = 16383


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
        raise ImageError(f"{output}: could not be written ({one_line(e)})") from None


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
