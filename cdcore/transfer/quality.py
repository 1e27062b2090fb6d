"""How stylized an output is, and how much of its content it kept: the two numbers that
`benchmarks/quality.py` reports and the tests pin.

A judge is a model set's encoder 5 (relu1_1..relu5_1 features):

    style distance   = mean over the five layers of ||G(out) - G(style)||^2 / ||G(style)||^2
    content distance = ||F_4(out) - F_4(content)||^2 / ||F_4(content)||^2   (relu4_1)

with G the size-normalised Gram matrix (`gatys.gram`), so images of different sizes compare.
Lower style distance is more stylized; the content photo's own style distance is the yardstick
(an output further from the style than the unstylized photo has not been stylized).

Gatys optimizes exactly these terms through the judge it runs on, so that judge flatters it; a
second judge (another model set, such as the unrefined pruned models) gives a less partial view.
"""
from __future__ import annotations

import torch

from .gatys import CONTENT_LAYER, gram, relative_error
from ..models.modelset import ModelSet


@torch.no_grad()
def style_distances(judge: ModelSet, image: torch.Tensor, style: torch.Tensor) -> list[float]:
    """Relative Gram error of (1, 3, H, W) `image` against `style` at relu1_1..relu5_1."""
    net = judge.encoder(5)
    device = next(net.parameters()).device
    ours, theirs = net.features(image.to(device)), net.features(style.to(device))
    return [float(relative_error(gram(a), gram(b))) for a, b in zip(ours, theirs)]


def style_distance(judge: ModelSet, image: torch.Tensor, style: torch.Tensor) -> float:
    """The mean of `style_distances`: 0 when the Gram matrices match."""
    distances = style_distances(judge, image, style)
    return sum(distances) / len(distances)


@torch.no_grad()
def content_distance(judge: ModelSet, image: torch.Tensor, content: torch.Tensor) -> float:
    """Relative error of the relu4_1 feature of `image` against `content`'s (same size)."""
    if image.shape[-2:] != content.shape[-2:]:
        raise ValueError(f"image and content differ in size: {tuple(image.shape[-2:])} vs {tuple(content.shape[-2:])}")
    net = judge.encoder(5)
    device = next(net.parameters()).device
    ours, theirs = net.features(image.to(device)), net.features(content.to(device))
    return float(relative_error(ours[CONTENT_LAYER - 1], theirs[CONTENT_LAYER - 1]))
