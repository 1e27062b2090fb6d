"""Optimization-based stylization (Gatys et al. 2016) with encoder 5 of a model set as loss network.

The pixels are optimized with L-BFGS to match the style's Gram matrices at relu1_1..relu5_1 and
the content's relu4_1 feature. Slow, but no decoder is involved: a baseline for the feed-forward
methods.

Both terms are relative, so that their weights mean something whatever the layer widths, the
activation scale or the image size:

    style   = mean over layers l of ||G_l(x) - G_l(style)||^2 / ||G_l(style)||^2
    content = ||F_4(x) - F_4(content)||^2 / ||F_4(content)||^2
    loss    = style_weight * style + content

These are the style and content distances that `benchmarks/quality.py` reports (`cdcore.transfer.quality`),
so `style_weight` says directly how much style distance a unit of content distance may buy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.architecture import stage_multiple
from ..models.modelset import ModelSet
from ..options import DEFAULT_ITERATIONS, DEFAULT_STYLE_WEIGHT, INITS

CONTENT_LAYER = 4  # relu4_1; the style term uses every layer encoder 5 has, relu1_1..relu5_1
NOISE_SEED = 0  # a fixed seed: the same inputs always give the same pixels, as for wct and adain


def gram(feature: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (C, C) Gram matrix normalised by the number of entries C * H * W, so that
    images of different sizes compare."""
    _, c, h, w = feature.shape
    f = feature.reshape(c, h * w)
    return (f @ f.T) / (c * h * w)


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||x - target||^2 / ||target||^2 (a scalar tensor; the target's norm is floored)."""
    return (x - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def style_loss(features: list[torch.Tensor], style_grams: list[torch.Tensor]) -> torch.Tensor:
    """Mean relative Gram error over the layers."""
    return sum(relative_error(gram(f), g) for f, g in zip(features, style_grams)) / len(style_grams)


@dataclass
class IterationProgress:
    """One report per L-BFGS iteration."""

    iteration: int  # 1-based
    iterations: int
    loss: float
    per_s: float  # iterations per second so far

    @property
    def eta_s(self) -> float:
        return (self.iterations - self.iteration) / self.per_s if self.per_s else float("inf")

    def __str__(self) -> str:
        return (f"gatys: iteration {self.iteration}/{self.iterations}, loss {self.loss:.4g}, "
                f"{self.per_s:.2f} it/s, ETA {self.eta_s:.0f} s")


def start_image(content: torch.Tensor, init: str) -> torch.Tensor:
    """The image L-BFGS starts from: a copy of the content, or uniform noise in [0, 1] of its size
    (seeded, so the result is reproducible). Noise lets the style's colours and textures take the
    whole canvas; the content then survives only as far as the content term pulls it back."""
    if init == "content":
        return content.clone(memory_format=torch.contiguous_format)
    if init == "noise":
        generator = torch.Generator().manual_seed(NOISE_SEED)
        return torch.rand(content.shape, generator=generator).to(content.device)
    raise ValueError(f"init must be one of {', '.join(INITS)} (got {init!r})")


def _check_size(name: str, image: torch.Tensor) -> None:
    # Encoder 5 pools four times, unpadded, and needs 2 x 2 features at relu5_1.
    need = 2 * stage_multiple(5)
    if min(image.shape[-2:]) < need:
        raise ValueError(f"{name} image too small for gatys: {min(image.shape[-2:])} px on its short "
                         f"side, the loss network needs at least {need}")


def gatys(models: ModelSet, content: torch.Tensor, style: torch.Tensor, iterations: int = DEFAULT_ITERATIONS,
          style_weight: float = DEFAULT_STYLE_WEIGHT, init: str = "content",
          progress: Callable[[IterationProgress], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Stylize (1, 3, H, W) `content` towards `style`; returns the image (clamped to [0, 1]) and
    the loss per iteration."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (got {iterations})")
    if not style_weight > 0:
        raise ValueError(f"style weight must be > 0 (got {style_weight})")
    for name, image in (("content", content), ("style", style)):
        _check_size(name, image)
    net = models.encoder(5)
    device = next(net.parameters()).device
    content, style = content.to(device), style.to(device)
    with torch.no_grad():
        style_grams = [gram(f) for f in net.features(style)]
        target = net.features(content)[CONTENT_LAYER - 1]
    image = start_image(content, init).requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0)
    losses: list[float] = []
    started = time.monotonic()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        feats = net.features(image)
        loss = style_weight * style_loss(feats, style_grams) + relative_error(feats[CONTENT_LAYER - 1], target)
        loss.backward()
        losses.append(float(loss.detach()))
        if progress:
            rate = len(losses) / max(time.monotonic() - started, 1e-9)
            progress(IterationProgress(min(len(losses), iterations), iterations, losses[-1], rate))
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return image.detach().clamp(0, 1), losses[:iterations]
