"""Optimization-based stylization (Gatys et al. 2016) with encoder 5 of a model set as loss network.

The pixels are optimized with L-BFGS, starting from the content image, to match the style's Gram
matrices at relu1_1..relu5_1 and the content's relu4_1 feature. Slow, but no decoder is involved:
a baseline for the feed-forward methods.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .modelset import ModelSet
from .architecture import stage_multiple

CONTENT_LAYER = 4  # relu4_1
STYLE_LAYERS = (1, 2, 3, 4, 5)


def gram(feature: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (C, C) Gram matrix normalised by the number of entries C * H * W."""
    _, c, h, w = feature.shape
    f = feature.reshape(c, h * w)
    return (f @ f.T) / (c * h * w)


def style_loss(features: list[torch.Tensor], style_grams: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.mean((gram(f) - g) ** 2) for f, g in zip(features, style_grams))


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


def gatys(models: ModelSet, content: torch.Tensor, style: torch.Tensor, iterations: int = 200,
          style_weight: float = 1e3, content_weight: float = 1.0,
          progress: Callable[[IterationProgress], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Stylize (1, 3, H, W) `content` towards `style`; returns the image and the loss per iteration."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (got {iterations})")
    for name, image in (("content", content), ("style", style)):
        # Encoder 5 pools four times, unpadded, and needs 2 x 2 features at relu5_1.
        need = 2 * stage_multiple(5)
        if min(image.shape[-2:]) < need:
            raise ValueError(f"{name} image too small for gatys: {min(image.shape[-2:])} px on its short "
                             f"side, the loss network needs at least {need}")
    net = models.encoder(5)
    device = next(net.parameters()).device
    content, style = content.to(device), style.to(device)
    # The loss network's activations are on the 0..255 scale of conv0; a per-layer scale
    # from the style keeps the five Gram terms and the content term comparable.
    with torch.no_grad():
        style_feats = net.features(style)
        scales = [f.pow(2).mean().clamp_min(1e-8) for f in style_feats]
        style_grams = [gram(f / s.sqrt()) for f, s in zip(style_feats, scales)]
        target = net.features(content)[CONTENT_LAYER - 1]
        content_scale = target.pow(2).mean().clamp_min(1e-8)
    image = content.clone(memory_format=torch.contiguous_format).requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0)
    losses: list[float] = []
    started = time.monotonic()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        feats = net.features(image)
        normed = [f / s.sqrt() for f, s in zip(feats, scales)]
        loss = (style_weight * style_loss(normed, style_grams)
                + content_weight * torch.mean((feats[CONTENT_LAYER - 1] - target) ** 2) / content_scale)
        loss.backward()
        losses.append(float(loss.detach()))
        if progress:
            rate = len(losses) / max(time.monotonic() - started, 1e-9)
            progress(IterationProgress(min(len(losses), iterations), iterations, losses[-1], rate))
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return image.detach().clamp(0, 1), losses[:iterations]
