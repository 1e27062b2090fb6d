"""Numeric precision of the networks: fp32 (the reference) or fp16 under autocast.

Only the convolutions run in reduced precision. Everything that decides the colours stays in
float64 whatever the mode: feature moments (`transforms.moments` converts each band), the
eigendecompositions and the affine map, and the map folded into the decoder's first conv
(autocast leaves float64 tensors alone). The decoded image is widened to float32 before it is
rounded to 8 bits.

fp32 on CUDA means IEEE fp32: cuDNN's TF32 shortcut, on by default in PyTorch, is switched off
while we run, so the GPU reproduces the CPU reference (79 dB on an H100). fp16 pays on a GPU's
tensor cores; a CPU would emulate it, slower than fp32, so there we fall back and say so. bf16 is
not offered at all (`options.NOT_OFFERED` says why).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..options import precision as check_precision

DTYPES = {"fp16": torch.float16}


def resolve(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision that runs on `device` for the one asked, and a note when they differ."""
    check_precision(precision)
    if precision == "fp32" or device.type == "cuda":
        return precision, None
    return "fp32", f"--precision {precision}: reduced precision is fast on CUDA only; running fp32 on the CPU"


@contextlib.contextmanager
def networks(device: torch.device, precision: str) -> Iterator[None]:
    """Run the network calls inside in `precision` (one `resolve` has already settled)."""
    if precision in DTYPES:
        with torch.autocast(device.type, dtype=DTYPES[precision]):
            yield
    elif device.type == "cuda":
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = before
    else:
        yield
