"""Whole-image universal style transfer: the multi-level WCT / AdaIN cascade.

A stage k encodes the current image with encoder k, moves its features onto the style's
statistics with one affine map (`transforms.affine_map`), and decodes with decoder k; stages run
coarse to fine (5, 4, 3, 2, 1 by default), each feeding its decoded image, unclamped, to the next.

Style statistics depend only on the style image and the model set, so `style_statistics` computes
them once and `stylize` reuses them for any number of contents.

`stylize_batch` runs same-size contents (B, 3, H, W) together: one network call per stage for the
batch, each image's moments, maps and eigendecompositions as one batched float64 call, each map
applied to its own image (`transforms.apply_affine`). Batching is a schedule, not an
approximation: every image comes out as `stylize` makes it alone, up to float rounding. A batch may
mix styles and alphas: the style enters only through each image's own map (its mean and colour
matrix, stacked per image), and nothing couples one image's statistics to another's. Method and
levels are the batch's: they choose the networks that every image passes through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import transforms
from ..models.modelset import ModelSet
from ..models.nets import Decoder
from ..models.architecture import stage_multiple
from ..options import DEFAULT_LEVELS
from ..options import alpha as alpha_value


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


def to_tensor_batch(rgbs: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """Same-size (H, W, 3) uint8 images -> (B, 3, H, W) float32 in [0, 1], channels-last."""
    if len({rgb.shape for rgb in rgbs}) != 1:
        raise ValueError(f"a batch takes images of one size (got {sorted({rgb.shape[:2] for rgb in rgbs})})")
    t = torch.from_numpy(np.stack(rgbs)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8: clamped to [0, 1], rounded half up (in float32 at
    least: a bf16 result has too few digits to round to 8 bits)."""
    return to_uint8_batch(image[:1])[0]


def to_uint8_batch(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float -> (B, H, W, 3) uint8, rounded as `to_uint8` rounds."""
    x = images.float().clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


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
    """One stage on a whole image (1, 3, H, W) -> (1, 3, H, W)."""
    return _stage(models, image, k, style.stages[k], alpha, style.method)


def _stage(models: ModelSet, images: torch.Tensor, k: int, style: transforms.StyleStage, alpha,
           method: str) -> torch.Tensor:
    """Stage k on a batch (B, 3, H, W) -> (B, 3, H, W); `style` and `alpha` are the batch's or one
    per image (`stylize_batch`).

    The images are reflect-padded to a multiple of 2^(k-1); content statistics come from the
    feature pixels that cover the unpadded image only, so padding does not bias them. The maps,
    one per image, are applied as one batched matrix product; one image whose feature has more
    pixels than folding costs (`Decoder.fold_pays`) has its map folded into the decoder's first
    conv instead.
    """
    h, w = images.shape[-2:]
    step = stage_multiple(k)
    feature = models.encoder(k)(pad_to_multiple(images, step))
    valid = feature[..., : -(-h // step), : -(-w // step)]
    a, b = transforms.affine_map(transforms.moments_per_image(valid), style, alpha, method)
    decoder = models.decoder(k)
    fold = decoder.fold_pays(feature.shape[0], feature.shape[-2] * feature.shape[-1])
    return decode_moved(decoder, feature, a, b, fold)[..., :h, :w]


def decode_moved(decoder: Decoder, feature: torch.Tensor, a: torch.Tensor, b: torch.Tensor, fold: bool) -> torch.Tensor:
    """The decoded image of A f + b, for features (B, C, H, W) and one map for all ((C, C), (C,))
    or one per image ((B, C, C), (B, C)): folded into the decoder's first conv where `fold` (one
    image only: `Decoder.fold_pays`), else applied first as one batched matrix product. The tiles
    of an image take the whole image's choice, so that they round as it does in fp16 too."""
    if a.dim() == 2:
        a, b = a[None], b[None]
    if fold:
        return decoder(feature, affine=(a[0], b[0]))
    return decoder(transforms.apply_affine(feature, a, b))


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
    if content.dim() != 4 or content.shape[0] != 1:
        raise ValueError(f"stylize takes one image (1, 3, H, W), got {tuple(content.shape)} (stylize_batch takes more)")
    return stylize_batch(models, content, style, alpha, levels)


@torch.inference_mode()
def stylize_batch(models: ModelSet, contents: torch.Tensor, styles: StyleStats | Sequence[StyleStats],
                  alphas: float | Sequence[float] = 1.0, levels=None) -> torch.Tensor:
    """Stylize same-size images (B, 3, H, W) in [0, 1] together: each with `styles` (one for all,
    or one per image, all of one method) and `alphas` (likewise); the result (B, 3, H, W) equals
    each image stylized alone, up to float rounding.

    Everything a stage needs of the styles moves to the device once, before the first stage, so
    the stages run without host transfers between them.
    """
    n = contents.shape[0]
    styles = [styles] * n if isinstance(styles, StyleStats) else list(styles)
    alphas = [alphas] * n if isinstance(alphas, (int, float)) else [alpha_value(a) for a in alphas]
    if len(styles) != n or len(alphas) != n:
        raise ValueError(f"{n} contents need {n} styles and alphas (got {len(styles)} and {len(alphas)})")
    levels = check_style(models, styles[0], levels)
    for other in styles[1:]:
        check_style(models, other, levels)
        if other.method != styles[0].method:
            raise ValueError(f"a batch runs one method (got {styles[0].method} and {other.method})")
    check_content_size(*contents.shape[-2:], levels)
    device = next(models.encoder(levels[0]).parameters()).device
    shared = all(s is styles[0] for s in styles)
    stages = {k: styles[0].stages[k].to(device) if shared else
              transforms.stack_styles([s.stages[k] for s in styles], device) for k in levels}
    alpha = alphas[0] if len(set(alphas)) == 1 else torch.tensor(alphas, dtype=torch.float64).to(device)
    x = contents.to(device)
    for k in levels:
        x = _stage(models, x, k, stages[k], alpha, styles[0].method)
    return x
