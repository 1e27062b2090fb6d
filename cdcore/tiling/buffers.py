"""Images between the stages of a tiled run, read and written by window.

An intermediate image or a stage's stored features live in an `ImageBuffer`, placed where the run's
plan puts them (`placement`, one of PLACEMENTS):

    device   a torch tensor on the networks' device: windows are views, results are copied in
             place on the device's queue, no helper thread and no host copy (`TensorBuffer`)
    pinned   a torch tensor in host memory, pinned where a GPU computes, so that windows and
             results cross on a side stream while the device computes (`devices`)
    ram      a numpy array
    disk     a raw file in a temporary directory that is removed afterwards

Every kind reads `window`s and takes `store`d network results; the passes never convert through
numpy where the buffer is a tensor. `PaddedImage` reads windows of a buffer as if it were
reflect-padded at the bottom and right, as the whole-image path pads the content.
"""
from __future__ import annotations

import ctypes
import math
import os
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..io import tempdirs
from ..transfer.stylize import uint8_image
from .devices import as_input, host_array, to_host

PLACEMENTS = ("device", "pinned", "ram", "disk")
TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}

# An intermediate image larger than this goes to disk when `disk_buffer` is left to choose (about
# 5.6 MP of float32 RGB): reading a tile window from the page cache costs far less than encoding it.
DISK_BUFFER_BYTES = 64 << 20


_LIBC = ctypes.CDLL(None, use_errno=True)
_FALLOCATE = getattr(_LIBC, "fallocate", None)  # Linux: frees a file's blocks in place
if _FALLOCATE is not None:
    _FALLOCATE.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, linux/falloc.h


class ImageBuffer:
    """An (H, W, C) array read and written by window: in RAM, or a raw file read and written with
    pread/pwrite.

    A file-backed buffer is never mapped: pages of a mapped file count in the resident set while
    they are mapped, and the kernel keeps what a mapping touched for as long as it stays, so a
    gigapixel run's 12 GB float buffers would show up as memory. Explicit reads and writes copy
    one window through the page cache, which the kernel reclaims as it needs, and the resident set
    holds only the window (benchmarks/history/sessions-1-9.md, issue 15).

    `overlapped`: the passes read its windows and write results on helper threads (`overlap`),
    since reads and writes wait on memory copies or the disk.
    """

    overlapped = True

    def __init__(self, array: np.ndarray | None = None, path: str | None = None,
                 shape: tuple[int, ...] | None = None, dtype=np.float32):
        self._array, self.path = array, path
        self.shape = tuple(array.shape) if array is not None else tuple(shape)
        self.dtype = np.dtype(array.dtype if array is not None else dtype)
        self._fd = os.open(path, os.O_RDWR) if path else None

    @classmethod
    def in_memory(cls, shape: tuple[int, ...], dtype=np.float32) -> "ImageBuffer":
        return cls(np.empty(shape, dtype))

    @classmethod
    def on_disk(cls, directory: str, shape: tuple[int, ...], dtype=np.float32) -> "ImageBuffer":
        path = os.path.join(directory, f"{uuid.uuid4().hex}.raw")
        with open(path, "wb") as f:
            f.truncate(math.prod(shape) * np.dtype(dtype).itemsize)  # sparse until written
        return cls(path=path, shape=shape, dtype=dtype)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """A copy of [rows, cols]: (h, w, C)."""
        if self._array is not None:
            return np.array(self._array[rows, cols])
        (y0, y1), (x0, x1) = self._span(rows, 0), self._span(cols, 1)
        block = np.empty((y1 - y0, x1 - x0, *self.shape[2:]), self.dtype)
        for i, offset in enumerate(self._offsets(y0, y1, x0)):
            _read_exactly(self._fd, block[i], offset)
        return block

    def window(self, rows: slice, cols: slice):
        """What the passes read a window as: here a copy (`read`); a view for a `TensorBuffer`."""
        return self.read(rows, cols)

    def write(self, rows: slice, cols: slice, block) -> None:
        """Write (h, w, C) `block`: an array, or what `block_of` made (waited for here)."""
        block = host_array(block)
        if self._array is not None:
            self._array[rows, cols] = block
            return
        (y0, y1), (x0, x1) = self._span(rows, 0), self._span(cols, 1)
        # A cropped tile is not contiguous but its rows are: write them as they are rather than
        # copy the whole window first.
        block = np.broadcast_to(np.asarray(block, self.dtype), (y1 - y0, x1 - x0, *self.shape[2:]))
        if x0 == 0 and x1 == self.shape[1] and block.flags.c_contiguous:  # one run of the file
            os.pwrite(self._fd, memoryview(block).cast("B"), next(self._offsets(y0, y1, x0)))
            return
        for i, offset in enumerate(self._offsets(y0, y1, x0)):
            os.pwrite(self._fd, memoryview(np.ascontiguousarray(block[i])).cast("B"), offset)

    def discard(self, rows: slice) -> None:
        """Rows that will not be read again: a file gives their disk blocks and page cache back at
        once (they read as zeros after), so that a gigapixel pass leaves the page cache to what is
        still to come instead of making the kernel evict for every page it writes."""
        (y0, y1), row = self._span(rows, 0), self.dtype.itemsize * math.prod(self.shape[1:])
        if self._fd is None or y1 <= y0:
            return
        if _FALLOCATE is None or _FALLOCATE(self._fd, _PUNCH_HOLE, y0 * row, (y1 - y0) * row) != 0:
            os.posix_fadvise(self._fd, y0 * row, (y1 - y0) * row, os.POSIX_FADV_DONTNEED)  # the cache, at least

    def _span(self, span: slice, axis: int) -> tuple[int, int]:
        start, stop, step = span.indices(self.shape[axis])
        if step != 1:
            raise ValueError(f"windows are contiguous (got step {step})")
        return start, max(start, stop)

    def _offsets(self, y0: int, y1: int, x0: int):
        """File offsets of rows y0..y1 of a window starting at column x0."""
        pixel = self.dtype.itemsize * math.prod(self.shape[2:])
        row = pixel * self.shape[1]
        return (y * row + x0 * pixel for y in range(y0, y1))

    def store(self, rows: slice, cols: slice, image: torch.Tensor) -> None:
        """Write (1, C, h, w): as is into float buffers, rounded as `to_uint8` rounds into uint8."""
        self.write(rows, cols, self.block_of(image))

    def block_of(self, image: torch.Tensor):
        """What `store` writes for (1, C, h, w) `image`: (h, w, C) of this buffer's dtype, on its way
        to the host (`devices.to_host`: the host does not wait for the device here)."""
        return to_host(hwc(image, self.dtype))

    def __del__(self):
        # A buffer dropped by an error, unclosed, must not keep its deleted file's space.
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def close(self) -> None:
        """Free the memory or delete the file (a wrapped caller's array is only let go)."""
        self._array = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path:
            os.unlink(self.path)
            self.path = None


class RowRing(ImageBuffer):
    """The last `capacity` rows written of an (H, W, C) image, kept in a buffer of that many rows.

    What flows from a stage's render to a next stage that stores its features: that stage's
    statistics pass reads each band a window's height behind the render (`passes.Cascade`) and
    never again, so the 12 GB float image of a gigapixel cascade needs only a band of rows
    (`planning.ring_rows`). Rows are written in order, a band at a time; reading rows no longer
    (or not yet) held is an error, never stale pixels.
    """

    def __init__(self, backing: ImageBuffer, height: int):
        super().__init__(shape=(height, *backing.shape[1:]), dtype=backing.dtype)
        self.backing, self.capacity, self.written = backing, backing.shape[0], 0
        self.overlapped = backing.overlapped

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self._gather(rows, cols, self.backing.read)

    def window(self, rows: slice, cols: slice):
        return self._gather(rows, cols, self.backing.window)

    def _gather(self, rows: slice, cols: slice, read):
        y0, y1 = self._span(rows, 0)
        if y0 < self.written - self.capacity or y1 > self.written:
            raise RuntimeError(f"rows {y0}-{y1} are not in the ring, which holds rows "
                               f"{max(0, self.written - self.capacity)}-{self.written}")
        parts = [read(ring, cols) for ring, _ in self._pieces(y0, y1)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)

    def block_of(self, image: torch.Tensor):
        return self.backing.block_of(image)

    def write(self, rows: slice, cols: slice, block) -> None:
        block = block if isinstance(block, torch.Tensor) else host_array(block)
        y0, y1 = self._span(rows, 0)
        if y1 - y0 > self.capacity:
            raise ValueError(f"{y1 - y0} rows do not fit a ring of {self.capacity}")
        for ring, part in self._pieces(y0, y1):
            self.backing.write(ring, cols, block[part])
        self.written = max(self.written, y1)

    def discard(self, rows: slice) -> None:
        """Nothing: the ring's rows are written over."""

    def _pieces(self, y0: int, y1: int):
        """(ring rows, block rows) of image rows y0..y1: one piece, or two where they wrap."""
        start = y0 % self.capacity
        first = min(y1 - y0, self.capacity - start)
        yield slice(start, start + first), slice(0, first)
        if first < y1 - y0:
            yield slice(0, y1 - y0 - first), slice(first, y1 - y0)

    def close(self) -> None:
        self.backing.close()


def _read_exactly(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill contiguous `out` from the file at `offset` (a sparse part reads as zeros)."""
    view, done = memoryview(out).cast("B"), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise EOFError(f"buffer file ends at {offset + done} bytes")
        done += got


def as_buffer(image) -> ImageBuffer:
    """Wrap an (H, W, 3) uint8 or float32 array (a numpy.memmap too) or pass an ImageBuffer on."""
    buffer = image if isinstance(image, ImageBuffer) else ImageBuffer(image)
    if len(buffer.shape) != 3 or buffer.shape[2] != 3 or buffer.dtype not in (np.uint8, np.float32):
        raise ValueError(f"expected an (H, W, 3) uint8 or float32 image, got shape {buffer.shape} "
                         f"dtype {buffer.dtype}")
    return buffer


class TensorBuffer(ImageBuffer):
    """An (H, W, C) image held as a torch tensor: on `device` ("device" placement), or in host
    memory ("pinned"; pinned where `device` is a GPU, so that its copies run asynchronously).

    On the device a window is a view, valid until its rows are written again (the passes read a
    window before they write over it), and a result is copied in on the device's queue: nothing
    waits for the device, and no helper thread is needed. In host memory, windows and results
    cross to the device on the copy stream (`devices`), through the passes' helper threads.
    Open buffers are counted (`live_tensor_bytes`), so that tests can check each is freed.
    """

    def __init__(self, shape: tuple[int, ...], dtype, device: torch.device | str, pinned: bool = False):
        super().__init__(shape=shape, dtype=dtype)
        self.device = torch.device(device)
        self.overlapped = pinned
        home = torch.device("cpu") if pinned else self.device
        self.tensor = torch.empty(self.shape, dtype=TORCH_DTYPES[self.dtype], device=home,
                                  pin_memory=pinned and self.device.type == "cuda")
        _LIVE.add(self)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self.tensor[rows, cols].cpu().numpy().copy()

    def window(self, rows: slice, cols: slice) -> torch.Tensor:
        return self.tensor[rows, cols]

    def write(self, rows: slice, cols: slice, block) -> None:
        if not isinstance(block, torch.Tensor):
            block = torch.from_numpy(np.asarray(host_array(block)))
        # Made under the engine's inference mode, the tensor takes in-place writes only there, and
        # the mode is per thread: a writer thread enters it too.
        with torch.inference_mode():
            self.tensor[rows, cols] = block

    def block_of(self, image: torch.Tensor):
        """On the device: (h, w, C) there, to copy in at once; in host memory: on its way there."""
        block = hwc(image, self.dtype)
        return block if self.tensor.device == block.device else to_host(block)

    def discard(self, rows: slice) -> None:
        """Nothing: a tensor gives its memory back as a whole, when closed."""

    def close(self) -> None:
        self.tensor = None
        _LIVE.discard(self)


_LIVE: "weakref.WeakSet[TensorBuffer]" = weakref.WeakSet()


def live_tensor_bytes() -> int:
    """Bytes held by TensorBuffers not yet closed."""
    return sum(b.tensor.nbytes for b in list(_LIVE) if b.tensor is not None)


class Buffers:
    """Makes a run's ImageBuffers where the run's plan places them (one of PLACEMENTS; disk ones in
    one temporary directory), and closes every one it made when the run ends, however it ends:
    an error or an interrupt must not leave gigabytes of device or pinned memory to whoever holds
    the traceback."""

    def __init__(self, directory: str | None = None, placement: str | None = None,
                 device: torch.device | str = "cpu"):
        self.placement = placement or ("disk" if directory else "ram")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS} (got {self.placement!r})")
        self.directory, self.device = directory, torch.device(device)
        self._made: "weakref.WeakSet[ImageBuffer]" = weakref.WeakSet()

    def new(self, shape: tuple[int, ...], dtype=np.float32) -> ImageBuffer:
        if self.placement == "disk":
            buffer = ImageBuffer.on_disk(self.directory, shape, dtype)
        elif self.placement == "ram":
            buffer = ImageBuffer.in_memory(shape, dtype)
        else:
            buffer = TensorBuffer(shape, dtype, self.device, pinned=self.placement == "pinned")
        self._made.add(buffer)
        return buffer

    def rows(self, height: int, capacity: int, shape: tuple[int, ...], dtype=np.float32) -> ImageBuffer:
        """A buffer for an image of `height` rows of which only the last `capacity` written are
        ever read (a `RowRing`), or a whole one where the ring would be no smaller."""
        if capacity >= height:
            return self.new((height, *shape), dtype)
        return RowRing(self.new((capacity, *shape), dtype), height)

    def close(self) -> None:
        for buffer in list(self._made):
            buffer.close()

    @staticmethod
    @contextmanager
    def placed(placement: str, temp_dir: str | None = None,
               device: torch.device | str = "cpu") -> Iterator["Buffers"]:
        """Buffers of a run with this placement (`placement.choose`); the directory of disk buffers
        and every buffer made go afterwards."""
        if placement != "disk":
            buffers = Buffers(None, placement, device)
            try:
                yield buffers
            finally:
                buffers.close()
            return
        with tempdirs.run_directory(tempdirs.TILES, temp_dir) as directory:
            buffers = Buffers(directory, placement, device)
            try:
                yield buffers
            finally:
                buffers.close()


@dataclass
class PaddedImage:
    """An image buffer seen through reflect padding at the bottom and right up to `height` x
    `width`: the padding `stylize.pad_to_multiple` gives the whole image (replicate where an image
    is too small to reflect)."""

    image: ImageBuffer
    height: int
    width: int

    def read(self, rows: slice, cols: slice):
        """(h, w, 3) of the image's dtype, as the image's `window`s are (an array or a tensor);
        rows, cols in padded coordinates."""
        h, w = self.image.shape[:2]
        reflect = self.height - h < h and self.width - w < w
        ri, ci = _padded_index(rows, h, reflect), _padded_index(cols, w, reflect)
        block = self.image.window(slice(ri.min(), ri.max() + 1), slice(ci.min(), ci.max() + 1))
        if rows.stop <= h and cols.stop <= w:
            return block
        # the window reaches into the padding
        ri, ci = ri - ri.min(), ci - ci.min()
        if isinstance(block, np.ndarray):
            return block[np.ix_(ri, ci)]
        pin = block.device.type == "cuda"  # a blocking copy to the device would wait for its queue
        index = [torch.from_numpy(i).pin_memory().to(block.device, non_blocking=True) if pin else torch.from_numpy(i)
                 for i in (ri, ci)]
        return block.index_select(0, index[0]).index_select(1, index[1])


def _padded_index(span: slice, size: int, reflect: bool) -> np.ndarray:
    """Indices into an axis of length `size` for positions `span` of its bottom/right padding."""
    i = np.arange(span.start, span.stop)
    return np.where(i < size, i, 2 * (size - 1) - i) if reflect else np.minimum(i, size - 1)


def hwc(image: torch.Tensor, dtype=np.float32) -> torch.Tensor:
    """(1, C, h, w) -> (h, w, C) on its device: float32 (reduced-precision results are widened), or
    uint8 rounded as `stylize.to_uint8` rounds."""
    return uint8_image(image) if np.dtype(dtype) == np.uint8 else image[0].permute(1, 2, 0).float()


def to_tensor(block, device: torch.device) -> torch.Tensor:
    """(h, w, C) uint8 or float32 -> (1, C, h, w) float32 on `device` (`devices.as_input`)."""
    return as_input(block, device)


def read_whole(image: ImageBuffer) -> torch.Tensor:
    """The whole buffer as a (1, C, H, W) tensor on the CPU."""
    return to_tensor(image.read(slice(None), slice(None)), torch.device("cpu"))
