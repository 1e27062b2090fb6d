"""Reading and writing images: EXIF orientation, mode conversion, alpha, atomic writes.

Images are read as `Picture`: an (H, W, 3) uint8 RGB array and an optional (H, W) uint8 alpha.
Results are written from a `Canvas`, which the encoders read in place. Every error is an
`ImageError` whose message names the input and the reason.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from . import codecs, storage
from ..options import DEFAULT_MAX_PIXELS

# Pillow's own decompression-bomb guard would refuse legitimate ultra-resolution inputs far below
# the limit a user chose; `decode` checks `max_pixels` itself, before decoding, instead.
Image.MAX_IMAGE_PIXELS = None
# A decompression bomb declares far more pixels than its bytes could carry of a picture: a flat
# JPEG holds about 85 pixels per byte, a PNG at most about 350 (RGB) or 1,000 (grey), while a
# 1-bit PNG of zeros holds 8,000. Above BOMB_FLOOR_PIXELS (where decoding starts to cost minutes
# and gigabytes of scratch disk) more than MAX_PIXELS_PER_BYTE is refused, whatever --max-pixels says.
MAX_PIXELS_PER_BYTE = 2000
BOMB_FLOOR_PIXELS = 64_000_000
# Extension -> (Pillow format, keeps alpha, save options).
FORMATS = {
    ".jpg": ("JPEG", False, {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", False, {"quality": 95, "subsampling": 0}),
    ".png": ("PNG", True, {"compress_level": 3}),
    ".tif": ("TIFF", True, {"compression": "tiff_deflate"}),
    ".tiff": ("TIFF", True, {"compression": "tiff_deflate"}),
    ".webp": ("WEBP", True, {"quality": 95}),
}
# Written only by the streamed path (cdcore.streaming): a DeepZoom pyramid for browser viewers.
STREAMED_FORMATS = (".dzi",)
# Modes with a faithful RGB rendering in Pillow. LAB is not among them: Pillow's convert() copies
# its channels into RGB without a colour transform, which would silently give wrong colours.
SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                   "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class ImageError(ValueError):
    """An image could not be read or written; the message names it and says why."""


@dataclass
class Picture:
    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None = None  # (H, W) uint8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports it."""
        return self.rgb.shape[1], self.rgb.shape[0]


def output_format(name: str) -> tuple[str, bool, dict]:
    ext = os.path.splitext(str(name))[1].lower()
    if ext not in FORMATS:
        raise ImageError(f"{name}: unsupported output format {ext or '(none)'} "
                         f"(use one of {', '.join(sorted([*FORMATS, *STREAMED_FORMATS]))})")
    return FORMATS[ext]


def check_output(name: str) -> str:
    """The extension of `name` when one of the paths can write it (FORMATS, STREAMED_FORMATS)."""
    ext = os.path.splitext(str(name))[1].lower()
    if ext not in STREAMED_FORMATS:
        output_format(name)
    return ext


def _to_8bit_gray(img: Image.Image) -> np.ndarray:
    """16-bit and float grey images scaled (not clipped) to 8 bits."""
    a = np.asarray(img, dtype=np.float64)
    scale = 1.0 if img.mode == "F" else 65535.0
    return np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode(data: bytes | io.IOBase, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, device=None) -> Picture:
    """Decode an image file into a Picture, honouring EXIF orientation. A plain JPEG given as bytes
    is decoded by torchvision (`codecs`), on `device` when that is a GPU and nvJPEG gives the
    same pixels: faster."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        img = Image.open(stream)
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None
    check_pixels(name, *img.size, _length(stream), max_pixels)
    if img.mode not in SUPPORTED_MODES:
        raise ImageError(f"{name}: unsupported image mode {img.mode}")
    if isinstance(data, (bytes, bytearray)) and codecs.is_plain_jpeg(img, device):
        try:
            return Picture(codecs.decode_jpeg(data, device))
        except RuntimeError:
            pass  # what torchvision refuses (some progressive or odd files), Pillow decodes below
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as e:
        raise ImageError(f"{name}: truncated or corrupt image data ({e})") from None
    return _picture(img)


def pixel_count(data: bytes) -> int:
    """Width x height from the file's header alone (0 when it has none: `decode` says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except Exception:
        return 0


def check_pixels(name: str, width: int, height: int, file_bytes: int, max_pixels: int) -> None:
    """Refuse, before decoding, an image above `max_pixels` or a likely decompression bomb."""
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {pixels / 1e6:.1f} MP is more than the limit of "
                         f"{max_pixels / 1e6:.1f} MP (--max-pixels)")
    if pixels > BOMB_FLOOR_PIXELS and pixels > MAX_PIXELS_PER_BYTE * file_bytes:
        raise ImageError(f"{name}: {width}x{height} = {pixels / 1e6:.1f} MP from a file of only {file_bytes} "
                         f"bytes (more than {MAX_PIXELS_PER_BYTE} pixels per byte): refused as a likely "
                         f"decompression bomb")


def _length(stream) -> int:
    """Bytes in a seekable stream."""
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end


def _picture(img: Image.Image) -> Picture:
    """RGB (and alpha, where the image has it) of a loaded Pillow image of a supported mode."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    alpha = None
    if img.mode in ("LA", "PA", "RGBA"):
        alpha = np.array(img.getchannel("A"))
    if img.mode.startswith("I") or img.mode == "F":
        grey = _to_8bit_gray(img)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    else:
        rgb = np.array(img.convert("RGB"))
    return Picture(np.ascontiguousarray(rgb), alpha)


def read_bytes(uri: str, head: storage.Head | None = None) -> bytes:
    """The bytes of a local path, file:// or s3:// image file (going on from `head`, when given)."""
    try:
        return storage.read_bytes(uri, head)
    except storage.NotFound:
        raise ImageError(f"{uri}: no such file or object") from None
    except storage.StorageError as e:
        raise ImageError(str(e)) from e  # the cause tells a passing outage from a bad file


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Read a local path, file:// or s3:// image."""
    return decode(read_bytes(uri), uri, max_pixels)


def write_bytes(uri: str, data: bytes) -> None:
    """Write an encoded image atomically: a local file through a temporary file in the same
    directory, renamed when complete; an object in one piece."""
    storage.write_bytes(uri, data)


def from_pil(img: Image.Image, name: str = "image") -> Picture:
    """A Picture of a Pillow image already in memory, converted as `decode` converts files."""
    if img.mode not in SUPPORTED_MODES:
        raise ImageError(f"{name}: unsupported image mode {img.mode}")
    return _picture(ImageOps.exif_transpose(img))


def scaled_size(width: int, height: int, shorter_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `shorter_side` (None or 0: unchanged)."""
    if not shorter_side:
        return width, height
    scale = shorter_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_to(picture: Picture, shorter_side: int | None) -> Picture:
    """Scale (Lanczos) so the shorter side is `shorter_side` pixels (None or 0: unchanged), band
    by band as the streamed path resizes (`tiling.resample`), so both give the same pixels."""
    from ..tiling.buffers import ImageBuffer  # torch comes with the buffers: import it only to resize
    from ..tiling.resample import lanczos

    w, h = picture.size
    size = scaled_size(w, h, shorter_side)
    if size == (w, h):
        return picture

    def resized(array: np.ndarray) -> np.ndarray:
        out = np.empty((size[1], size[0], array.shape[2]), np.uint8)
        lanczos(ImageBuffer(array), ImageBuffer(out), ImageBuffer.in_memory)
        return out

    alpha = None if picture.alpha is None else resized(picture.alpha[..., None])[..., 0]
    return Picture(resized(picture.rgb), alpha)


def crop_centre(picture: Picture, size: tuple[int, int] | None) -> Picture:
    """The centre (width, height) of `picture` (None: unchanged), as dataset pipelines crop after
    resizing (torchvision's CenterCrop: offsets rounded to the nearest pixel). A crop larger than
    the picture raises ValueError: padding would invent pixels."""
    if not size:
        return picture
    (w, h), (cw, ch) = picture.size, size
    if cw > w or ch > h:
        raise ValueError(f"--crop {cw}x{ch} is larger than the image ({w}x{h} after any --content-size)")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))

    def cut(array: np.ndarray) -> np.ndarray:  # a copy: the rest of the decoded image is freed
        return np.ascontiguousarray(array[top:top + ch, left:left + cw])

    return Picture(cut(picture.rgb), None if picture.alpha is None else cut(picture.alpha))


class Canvas:
    """The 8-bit result in Pillow's own 4-byte pixel layout, (H, W, 4) uint8: RGBX, or RGBA when
    an alpha channel is carried through.

    `Image.frombuffer` wraps it without a copy, so JPEG, TIFF and WebP encoders read its rows in
    place: the result exists once, 4 bytes per pixel, while it is encoded. (Pillow cannot write
    RGBX as PNG, so an opaque PNG costs one conversion copy.) Write the result into `rgb`.
    """

    def __init__(self, height: int, width: int, alpha: np.ndarray | None = None):
        if height < 1 or width < 1:
            raise ValueError(f"canvas size must be positive (got {height}x{width})")
        if alpha is not None and alpha.shape != (height, width):
            raise ValueError(f"alpha must be ({height}, {width}) (got {alpha.shape})")
        self.pixels = np.empty((height, width, 4), np.uint8)
        self.pixels[..., 3] = 255 if alpha is None else alpha
        self.has_alpha = alpha is not None

    @property
    def rgb(self) -> np.ndarray:
        """The (H, W, 3) colour view to write into (`TiledEngine.stylize(..., out=canvas.rgb)`)."""
        return self.pixels[..., :3]

    def image(self, keep_alpha: bool = True) -> Image.Image:
        """A Pillow image sharing the canvas memory (RGBA when it has alpha and `keep_alpha`)."""
        mode = "RGBA" if self.has_alpha and keep_alpha else "RGBX"
        height, width = self.pixels.shape[:2]
        return Image.frombuffer(mode, (width, height), self.pixels, "raw", mode, 0, 1)

    def encode(self, uri: str, device=None) -> bytes:
        """The file's bytes in the format of `uri`'s extension (`FORMATS`); a JPEG is encoded by
        nvJPEG when `device` is a GPU."""
        fmt, keeps_alpha, options = output_format(uri)
        if fmt == "JPEG" and device is not None and device.type == "cuda":
            return codecs.encode_jpeg(self.rgb, options["quality"], device)
        img = self.image(keeps_alpha)
        if fmt == "PNG" and img.mode == "RGBX":
            img = img.convert("RGB")
        data = io.BytesIO()
        img.save(data, fmt, **options)
        return data.getvalue()

    def save(self, uri: str) -> None:
        """Encode in the format of `uri`'s extension and write it atomically (`write_bytes`)."""
        write_bytes(uri, self.encode(uri))


def write_image(uri: str, picture: Picture) -> None:
    """Encode `picture` in the format of `uri`'s extension and write it atomically."""
    canvas = Canvas(picture.rgb.shape[0], picture.rgb.shape[1], picture.alpha)
    canvas.rgb[...] = picture.rgb
    canvas.save(str(uri))
