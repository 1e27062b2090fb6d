"""A content read by window for the tiled engine, decoded by libvips a strip at a time into a spool."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyvips

from .. import tiling
from ..io.images import ImageError
from .headers import ORIENTATIONS, STRIP_BYTES, header_of, one_line, open_image


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
        image = open_image(path, name)
        header = header_of(image)
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
                raise ImageError(f"{self.name}: truncated or corrupt image data ({one_line(e)})") from None
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
