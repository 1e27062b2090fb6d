"""Paths to ../shared (read-only reference material) and small helpers the tests share."""
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models" / "cd16x"
BASE_MODELS = SHARED / "models" / "cd16x_base"
CONTENT = SHARED / "images" / "content"
STYLE = SHARED / "images" / "style"
TRAIN = SHARED / "images" / "train"
GOLDEN = SHARED / "golden"


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two arrays of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))
