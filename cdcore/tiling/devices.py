"""Windows and results crossing between host and device without the host waiting for the device.

A GPU computes on a queue: a host that copies a result into a numpy array per tile (`.cpu()`)
waits for every kernel queued before it, and the device idles while the host does its share;
issue 11 measured 3-4 MP/s for tiles against 43 MP/s for the whole image that way. Here copies
go through pinned host memory on a side stream of their own (`copy_stream`), ordered against the
compute stream by events, so a tile's transfers overlap the next tile's kernels:

    to_device(block, device)   a host window on its way to the device: `Staged`, `ready()` on use
    to_host(image)             a device result on its way to the host: `Pending`, `host_array()`

On the CPU both are the block itself (no copy), so the same code runs in the CPU test suite.
Pinned blocks come from torch's caching host allocator, which keeps a block from reuse until the
copy that reads it has completed; a device tensor used on another stream than the one it was
made on is recorded there (`record_stream`) for the same reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_STREAMS: dict[int, torch.cuda.Stream] = {}


def copy_stream(device: torch.device) -> "torch.cuda.Stream":
    """The side stream of `device` that window and result copies run on (one per device)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _STREAMS:
        _STREAMS[index] = torch.cuda.Stream(index)
    return _STREAMS[index]


@dataclass
class Staged:
    """A window being copied to the device on the copy stream."""

    tensor: torch.Tensor
    event: "torch.cuda.Event"

    def ready(self) -> torch.Tensor:
        """The tensor, once the compute stream has been told to wait for its copy (the host does not)."""
        stream = torch.cuda.current_stream(self.tensor.device)
        stream.wait_event(self.event)
        self.tensor.record_stream(stream)
        return self.tensor


@dataclass
class Pending:
    """A result being copied to pinned host memory on the copy stream."""

    host: torch.Tensor
    event: "torch.cuda.Event"

    @property
    def nbytes(self) -> int:
        return self.host.nbytes

    def numpy(self) -> np.ndarray:
        self.event.synchronize()  # this copy only; a writer thread waits here, not the compute loop
        return self.host.numpy()


def to_device(block, device: torch.device):
    """Start moving a host block (a numpy array or CPU tensor) to `device`: on a GPU a `Staged`
    copy through pinned memory (the host copy into it runs where this is called: a reader thread);
    elsewhere the block itself."""
    if device.type != "cuda" or (isinstance(block, torch.Tensor) and block.device.type == "cuda"):
        return block
    host = torch.from_numpy(np.ascontiguousarray(block)) if isinstance(block, np.ndarray) else block
    if not (host.is_pinned() and host.is_contiguous()):  # else torch would stage it in pageable memory
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        host = pinned.copy_(host)
    stream = copy_stream(device)
    with torch.cuda.stream(stream):
        tensor = host.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    return Staged(tensor, event)


def to_host(image: torch.Tensor):
    """Start moving (h, w, C) `image` to host memory: on a GPU a `Pending` copy into pinned memory,
    queued after what the compute stream has queued so far; on the CPU the array itself."""
    if image.device.type != "cuda":
        return image.numpy()
    compute, stream = torch.cuda.current_stream(image.device), copy_stream(image.device)
    stream.wait_stream(compute)
    with torch.cuda.stream(stream):
        host = torch.empty(image.shape, dtype=image.dtype, pin_memory=True)
        host.copy_(image, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    image.record_stream(stream)
    return Pending(host, event)


def host_array(block) -> np.ndarray:
    """What `to_host` started, as a numpy array (waiting for that copy alone); arrays pass through."""
    if isinstance(block, Pending):
        return block.numpy()
    if isinstance(block, torch.Tensor):
        return block.cpu().numpy()
    return block


def as_input(block, device: torch.device) -> torch.Tensor:
    """A window (h, w, C) uint8 or float32 -- numpy, tensor or `Staged` -- as the (1, C, h, w)
    float32 input of a network on `device`, uint8 scaled to [0, 1] as `stylize.to_tensor` scales
    it. The memory stays in (h, w, C) order: dense channels-last, the layout oneDNN and cuDNN
    convolve fastest."""
    if isinstance(block, Staged):
        block = block.ready()
    elif isinstance(block, np.ndarray):
        block = torch.from_numpy(block)
    t = block.to(device)[None].permute(0, 3, 1, 2)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t
