"""The cascade's settings tried against each other on one device (`gpu_check.py --sections variants`;
issue 28's "the cascade at the device's pace").

Which memory layout (channels-last or NCHW, models and input alike), whether cuDNN's autotuner
(`torch.backends.cudnn.benchmark`) picks the algorithms per shape, up to what size a 3x3
reflect-padded convolution pads a copy (`nets.PAD_COPY_LIMIT`; above it, the zero-padded
convolution with its one-pixel border redone), and where a batch's eigendecompositions run
(`transforms.BATCHED_EIGH_ON_HOST`) pay on this device, for the two workloads: one
large whole image, and a batch of dataset-size images. Each variant is timed as the best of a few
runs after a warm-up (the autotuner's search falls in the warm-up) and compared with the
settings the library uses today (the first row of each workload), with its result's PSNR against
that row's, so a variant that changes the numbers shows it.

`check_eigh` times the batched float64 eigendecompositions a batch of images needs per stage, on
the device against the host: a GPU's eigh solves matrices above 32 x 32 one at a time, which at
dataset rates may cost more than the networks.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from cdcore.models import nets, precision as precisions
from cdcore.models.modelset import load_model_set
from cdcore.transfer import stylize as cascade, transforms

# name: (channels-last, cudnn.benchmark, PAD_COPY_LIMIT, a batch's eigh on the host); "today"
# first: the library's settings (channels-last on the CPU and in reduced precision, NCHW in fp32
# on a GPU: `Stylist`).
LIMIT, ON_HOST = nets.PAD_COPY_LIMIT, transforms.BATCHED_EIGH_ON_HOST
VARIANTS = {
    "today": (None, False, LIMIT, ON_HOST),
    "channels-last": (True, False, LIMIT, ON_HOST),
    "NCHW": (False, False, LIMIT, ON_HOST),
    "autotuned": (None, True, LIMIT, ON_HOST),
    "pad copies always": (None, False, 1 << 62, ON_HOST),
    "borders always": (None, False, 0, ON_HOST),
    "batched eigh on the host": (None, False, LIMIT, not ON_HOST),
    "channels-last, autotuned, pad copies": (True, True, 1 << 62, ON_HOST),
}


@contextlib.contextmanager
def settings(autotune: bool, pad_copy_limit: int, eigh_on_host: bool):
    before = torch.backends.cudnn.benchmark, nets.PAD_COPY_LIMIT, transforms.BATCHED_EIGH_ON_HOST
    torch.backends.cudnn.benchmark, nets.PAD_COPY_LIMIT, transforms.BATCHED_EIGH_ON_HOST = \
        autotune, pad_copy_limit, eigh_on_host
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, nets.PAD_COPY_LIMIT, transforms.BATCHED_EIGH_ON_HOST = before


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(models_dir: str, device: torch.device, precision: str, rgbs: list[np.ndarray],
                 style_rgb: np.ndarray, variant: tuple, repeats: int) -> tuple[float, np.ndarray]:
    """Best seconds of `repeats` runs of the cascade on `rgbs` (one whole image, or one batch),
    and the first image's uint8 result."""
    channels_last, autotune, limit, eigh_on_host = variant
    if channels_last is None:
        channels_last = device.type == "cpu" or precision != "fp32"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    models = load_model_set(models_dir).to(device, channels_last=channels_last)
    with settings(autotune, limit, eigh_on_host), precisions.networks(device, precision):
        style = cascade.style_statistics(models, cascade.to_tensor(style_rgb, device))
        contents = cascade.to_tensor_batch(rgbs, device).contiguous(memory_format=layout)
        best, result = float("inf"), None
        for run in range(repeats + 1):  # run 0 is the warm-up
            _synchronize(device)
            started = time.perf_counter()
            result = cascade.stylize_batch(models, contents, style)
            _synchronize(device)
            if run:
                best = min(best, time.perf_counter() - started)
    return best, cascade.to_uint8_batch(result[:1])[0]


def check_variants(models_dir: str, device: torch.device, precision_names: list[str], workloads: dict,
                   style_rgb: np.ndarray, psnr, emit=print, repeats: int = 2) -> list[dict]:
    """A table row, passed to `emit` as it is made, for each workload (name: list of same-size
    images) x precision x variant; returns the records."""
    records = []
    for workload, rgbs in workloads.items():
        mp = sum(rgb.shape[0] * rgb.shape[1] for rgb in rgbs) / 1e6
        for name in precision_names:
            base = None
            for label, variant in VARIANTS.items():
                try:
                    seconds, rgb = time_variant(models_dir, device, name, rgbs, style_rgb, variant, repeats)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    emit(f"| {workload} | {name} | {label} | out of device memory | | | |")
                    continue
                base = base or (seconds, rgb)
                quality = psnr(rgb, base[1])
                records.append({"workload": workload, "precision": name, "variant": label, "seconds": seconds,
                                "mp_per_s": mp / seconds, "vs_today": base[0] / seconds, "psnr_vs_today": quality})
                emit(f"| {workload} | {name} | {label} | {seconds:.3f} | {mp / seconds:.1f} | "
                     f"{base[0] / seconds:.2f}x | {quality:.1f} |")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return records


def check_eigh(device: torch.device, sizes=(32, 64, 128), batches=(1, 16, 64), repeats: int = 3) -> list[str]:
    """Batched float64 eigendecompositions of (B, C, C) covariances, as each stage of a batch runs
    one: milliseconds per call on `device` against the host's CPU (with its torch threads), the
    copies to and from the host included. A batch of images needs one such call per stage."""
    lines = []
    for c in sizes:
        for b in batches:
            x = torch.randn(b, c, 4 * c, dtype=torch.float64, device=device)
            cov = x @ x.mT / (4 * c)
            timings = []
            for where in (device, torch.device("cpu")):
                def once():
                    evals, evecs = torch.linalg.eigh(cov.to(where))
                    return evals.to(device), evecs.to(device)
                once()
                _synchronize(device)
                started = time.perf_counter()
                for _ in range(repeats):
                    once()
                _synchronize(device)
                timings.append((time.perf_counter() - started) / repeats * 1e3)
            lines.append(f"| eigh ({b}, {c}, {c}) float64 | {timings[0]:.2f} ms on {device.type} | "
                         f"{timings[1]:.2f} ms on the host ({torch.get_num_threads()} threads) | "
                         f"{timings[0] / b:.3f} ms per matrix there |")
    return lines
