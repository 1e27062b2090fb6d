"""Reading and writing images: EXIF orientation, mode conversion, alpha, atomic writes.

Images travel as `Picture`: an (H, W, 3) uint8 RGB array and an optional (H, W) uint8 alpha.
Every error is an `ImageError` whose message names the input and the reason.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from . import storage

DEFAULT_MAX_PIXELS = 300_000_000
# Extension -> (Pillow format, keeps alpha, save options).
FORMATS = {
    ".jpg": ("JPEG", False, {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", False, {"quality": 95, "subsampling": 0}),
    ".png": ("PNG", True, {"compress_level": 3}),
    ".tif": ("TIFF", True, {"compression": "tiff_deflate"}),
    ".tiff": ("TIFF", True, {"compression": "tiff_deflate"}),
    ".webp": ("WEBP", True, {"quality": 95}),
}
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
                         f"(use one of {', '.join(sorted(FORMATS))})")
    return FORMATS[ext]


def _to_8bit_gray(img: Image.Image) -> np.ndarray:
    """16-bit and float grey images scaled (not clipped) to 8 bits."""
    a = np.asarray(img, dtype=np.float64)
    scale = 1.0 if img.mode == "F" else 65535.0
    return np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode(data: bytes | io.IOBase, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file into a Picture, honouring EXIF orientation."""
    # Our own max_pixels check replaces Pillow's decompression-bomb guard, which would otherwise
    # refuse legitimate ultra-resolution inputs far below the limit the user chose.
    Image.MAX_IMAGE_PIXELS = None
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        img = Image.open(stream)
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP is more than the limit of "
                         f"{max_pixels / 1e6:.1f} MP (--max-pixels)")
    if img.mode not in SUPPORTED_MODES:
        raise ImageError(f"{name}: unsupported image mode {img.mode}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as e:
        raise ImageError(f"{name}: truncated or corrupt image data ({e})") from None
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


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Read a local path, file:// or s3:// image."""
    try:
        data = storage.read_bytes(uri)
    except storage.NotFound:
        raise ImageError(f"{uri}: no such file or object") from None
    except storage.StorageError as e:
        raise ImageError(str(e)) from None
    return decode(data, uri, max_pixels)


def encode(picture: Picture, name: str) -> bytes:
    """The bytes of `picture` in the format that `name`'s extension asks for."""
    fmt, keeps_alpha, options = output_format(name)
    img = Image.fromarray(picture.rgb, "RGB")
    if picture.alpha is not None and keeps_alpha:
        img.putalpha(Image.fromarray(picture.alpha, "L"))
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def write_image(uri: str, picture: Picture) -> None:
    """Encode and write atomically: a reader never sees a half-written file."""
    data = encode(picture, str(uri))
    storage.write_bytes(str(uri), data)


def resize_to(picture: Picture, longest_side: int | None) -> Picture:
    """Scale so the longer side is `longest_side` (None or 0: unchanged)."""
    if not longest_side:
        return picture
    w, h = picture.size
    scale = longest_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.array(Image.fromarray(picture.rgb).resize(size, Image.Resampling.LANCZOS))
    alpha = None
    if picture.alpha is not None:
        alpha = np.array(Image.fromarray(picture.alpha).resize(size, Image.Resampling.LANCZOS))
    return Picture(rgb, alpha)

