"""Numeric precision of the networks: fp32 (the reference), bf16 or fp16 under autocast.

Only the convolutions run in reduced precision. Everything that decides the colours stays in
float64 whatever the mode: feature moments (`transforms.moments` converts each band), the
eigendecompositions and the affine map, and the map folded into the decoder's first conv
(autocast leaves float64 tensors alone). The decoded image is widened to float32 before it is
rounded to 8 bits.

fp32 on CUDA means IEEE fp32: cuDNN's TF32 shortcut, on by default in PyTorch, is switched off
while we run, so the GPU reproduces the CPU reference. Reduced precision pays where the hardware
has it: tensor cores on CUDA (bf16 and fp16), and on the CPU only with native bf16 instructions
(AVX512-BF16 or AMX); elsewhere it would be emulated, slower than fp32, so we fall back and say so.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch

from .options import precision as check_precision

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: read off /proc/cpuinfo's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision that runs on `device` for the one asked, and a note when they differ."""
    check_precision(precision)
    if device.type == "cuda" or precision == "fp32":
        return precision, None
    if precision == "bf16" and cpu_has_native_bf16():
        return precision, None
    why = "this CPU has no native bf16 (AVX512-BF16 or AMX)" if precision == "bf16" else \
        "fp16 convolutions are fast on CUDA only"
    return "fp32", f"--precision {precision}: {why}; running fp32 instead"


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
