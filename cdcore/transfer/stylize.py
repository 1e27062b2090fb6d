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
from ..models.modelset import ModelSet
from ..models.architecture import stage_multiple
from ..options import DEFAULT_LEVELS


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
    """(1, 3, H, W) float -> (H, W, 3) uint8: clamped to [0, 1], rounded half up (in float32 at
    least: a bf16 result has too few digits to round to 8 bits)."""
    return uint8_image(image).contiguous().cpu().numpy()


def uint8_image(image: torch.Tensor) -> torch.Tensor:
    """What `to_uint8` gives, as an (H, W, 3) uint8 tensor left on the image's device."""
    return image[0].float().clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of (B, C, H, W) up to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def check_content_size(height: int, width: int, levels) -> None:
    """The cascade pads the content to a multiple of 2^(k-1) at stage k and needs a feature map of
    at least 2 x 2 there (reflection padding): a short side of 2^(k-1) + 1 pixels for the deepest
    stage k. Smaller contents raise ValueError saying so, rather than failing deep in a network."""
    deepest = max(levels)
    need = stage_multiple(deepest) + 1
    if min(height, width) < need:
        raise ValueError(f"content image too small: {height}x{width} px, stage {deepest} needs at least "
                         f"{need} px on the short side (run only shallower --levels, or enlarge it)")


def check_style_size(height: int, width: int, levels) -> None:
    """A style is encoded unpadded (pooling floors odd sizes), so stage k needs 2 x 2^(k-1) px."""
    deepest = max(levels)
    need = 2 * stage_multiple(deepest)
    if min(height, width) < need:
        raise ValueError(f"style image too small: {min(height, width)} px on its short side, stage "
                         f"{deepest} needs at least {need}")


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
    check_style_size(*style.shape[-2:], levels)
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
    check_content_size(*content.shape[-2:], levels)
    device = next(models.encoder(levels[0]).parameters()).device
    x = content.to(device)
    for k in levels:
        x = run_stage(models, x, k, style, alpha)
    return x
