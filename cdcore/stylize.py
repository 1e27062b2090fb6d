"""Whole-image universal style transfer: the multi-level WCT / AdaIN cascade.

A stage k encodes the current image with encoder k, moves its features onto the style's
statistics with one affine map (`transforms.affine_map`), and decodes with decoder k; stages run
coarse to fine (5, 4, 3, 2, 1 by default), each feeding its decoded image, unclamped, to the next.

Style statistics depend only on the style image and the model set, so `style_statistics` computes
them once and `stylize` reuses them for any number of contents.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import transforms
from .modelset import ModelSet

DEFAULT_LEVELS = {"wct": (5, 4, 3, 2, 1), "adain": (4,)}


def parse_levels(text: str | None, method: str) -> tuple[int, ...]:
    """'5,4,3' -> (5, 4, 3); None -> the method's default."""
    if not text:
        return DEFAULT_LEVELS[method]
    try:
        levels = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"levels must be comma-separated stage numbers such as 5,4,3,2,1 (got {text!r})") from None
    if not levels or any(k not in range(1, 6) for k in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"levels must be distinct stages 1..5 (got {text!r})")
    return levels


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    # Permuting after adding the batch dimension gives true channels-last strides; the other
    # order leaves a batch stride oneDNN does not recognise and sends it down a slow path.
    return t[None].permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8: clamped to [0, 1], rounded half up."""
    x = image[0].clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().cpu().numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of (B, C, H, W) up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def stage_multiple(k: int) -> int:
    """Encoder k pools k - 1 times: inputs that are multiples of 2^(k-1) pool without flooring."""
    return 2 ** (k - 1)


@dataclass
class StyleStats:
    """A style's per-stage statistics for one model set and method (float64, on the CPU)."""

    method: str
    model_id: str
    stages: dict[int, transforms.StyleStage]


@torch.inference_mode()
def style_statistics(models: ModelSet, style: torch.Tensor, method: str = "wct",
                     levels=None) -> StyleStats:
    """Encode the style (as it is: no padding, pooling floors odd sizes) once per stage."""
    levels = levels or DEFAULT_LEVELS[method]
    min_side = min(style.shape[-2:])
    need = 2 * stage_multiple(max(levels))
    if min_side < need:
        raise ValueError(f"style image too small: {min_side} px on its short side, stage "
                         f"{max(levels)} needs at least {need}")
    device = next(models.encoder(levels[0]).parameters()).device
    x = style.to(device)
    stages = {}
    for k in levels:
        feature = models.encoder(k)(x)
        stages[k] = transforms.style_stage(transforms.moments(feature), method)
    return StyleStats(method, models.model_id, stages)


@torch.inference_mode()
def run_stage(models: ModelSet, image: torch.Tensor, k: int, style: StyleStats, alpha: float) -> torch.Tensor:
    """One stage on a whole image (1, 3, H, W) -> (1, 3, H, W).

    The image is reflect-padded to a multiple of 2^(k-1); content statistics come from the
    feature pixels that cover the unpadded image only, so padding does not bias them.
    """
    h, w = image.shape[-2:]
    step = stage_multiple(k)
    feature = models.encoder(k)(pad_to_multiple(image, step))
    valid = feature[..., : -(-h // step), : -(-w // step)]
    a, b = transforms.affine_map(transforms.moments(valid), style.stages[k], alpha, style.method)
    out = models.decoder(k)(feature, affine=(a, b))
    return out[..., :h, :w]


def check_style(models: ModelSet, style: StyleStats, levels=None) -> tuple[int, ...]:
    """The levels to run (default: all the style has), after checking that `style` was made with
    `models` and holds every one of them."""
    if style.model_id != models.model_id:
        raise ValueError(f"style statistics were made with {style.model_id}, not {models.model_id}")
    levels = tuple(levels or style.stages)
    missing = [k for k in levels if k not in style.stages]
    if missing:
        raise ValueError(f"style statistics lack stages {missing}")
    return levels


@torch.inference_mode()
def stylize(models: ModelSet, content: torch.Tensor, style: StyleStats, alpha: float = 1.0,
            levels=None) -> torch.Tensor:
    """Stylize a whole image (1, 3, H, W) in [0, 1]; the result has the same size, unclamped."""
    levels = check_style(models, style, levels)
    device = next(models.encoder(levels[0]).parameters()).device
    x = content.to(device)
    for k in levels:
        x = run_stage(models, x, k, style, alpha)
    return x
