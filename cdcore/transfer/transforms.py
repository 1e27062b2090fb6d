"""Feature statistics and the WCT / AdaIN transforms, as functions of tensors.

Both transforms are one affine map per pixel, `f -> A f + b`, built from the content's and the
style's mean and covariance:

    A = alpha * K W + (1 - alpha) I,    b = alpha * (m_s - K W m_c)

WCT (Li et al. 2017): W = E_c D_c^-1/2 E_c^T whitens the content, K = E_s D_s^1/2 E_s^T colours it.
AdaIN (Huang & Belongie 2017): the same with diagonal W = 1/std_c, K = std_s.

Statistics are `Moments` (sums in float64) so that they can be accumulated tile by tile and
merged; the map is then applied as a 1x1 convolution in the feature dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import alpha as check_alpha

METHODS = ("wct", "adain")
# Eigenvalues below this are dropped, as in the reference WCT: a flat image has a zero covariance
# and must give a finite result (its whitened feature is zero, the output is the style mean).
EIG_FLOOR = 1e-5


@dataclass
class Moments:
    """Sum, sum of outer products and count of C-dim feature vectors, in float64."""

    total: torch.Tensor  # (C,)
    outer: torch.Tensor  # (C, C)
    count: int

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.total + other.total, self.outer + other.outer, self.count + other.count)

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (C,) and covariance (C, C) with the unbiased (N - 1) divisor."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance (got {self.count})")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, cov


def moments(feature: torch.Tensor, band_bytes: int = 16 << 20) -> Moments:
    """Moments of a feature map (C, H, W) or (1, C, H, W), accumulated in float64.

    Rows are converted to float64 a band of at most `band_bytes` at a time, so the copy stays
    small on big images and near the cache (several times faster than large chunks, see
    benchmarks/history/sessions-1-9.md, issue 3). Bands of whole rows also make cropped tiles
    cost no extra copy. The raw sum of outer products loses nothing that matters in float64:
    features are ReLU outputs of a few hundred at most, so their squares summed over 10^8 pixels
    keep ~10 of the 16 digits after the mean is taken out (`Moments.mean_cov`).
    """
    if feature.dim() == 4:
        if feature.shape[0] != 1:
            raise ValueError(f"moments expects one image, got batch shape {tuple(feature.shape)}")
        feature = feature[0]
    if feature.dim() != 3:
        raise ValueError(f"expected a (C, H, W) feature, got shape {tuple(feature.shape)}")
    c, h, w = feature.shape
    rows = feature.permute(1, 2, 0)  # (H, W, C): a view of a channels-last feature
    band = max(1, band_bytes // (w * c * 8))
    total = torch.zeros(c, dtype=torch.float64, device=feature.device)
    outer = torch.zeros(c, c, dtype=torch.float64, device=feature.device)
    for start in range(0, h, band):
        f = rows[start:start + band].to(torch.float64).reshape(-1, c)
        total += f.sum(dim=0)
        outer.addmm_(f.T, f)
    return Moments(total, outer, h * w)


def _sym_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """cov^power for a symmetric PSD matrix, over the eigenvalues above EIG_FLOOR only."""
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > EIG_FLOOR
    scaled = torch.where(keep, evals.clamp_min(EIG_FLOOR) ** power, torch.zeros_like(evals))
    return (evecs * scaled) @ evecs.T


def colour_matrix(cov: torch.Tensor, method: str = "wct") -> torch.Tensor:
    """K: cov^(1/2) for WCT, diag(std) for AdaIN. (C, C) float64."""
    _check_method(method)
    if method == "adain":
        return torch.diag(cov.diagonal().clamp_min(0).sqrt())
    return _sym_power(cov, 0.5)


def whiten_matrix(cov: torch.Tensor, method: str = "wct") -> torch.Tensor:
    """W: cov^(-1/2) for WCT, diag(1/std) for AdaIN (zero where the variance vanishes)."""
    _check_method(method)
    if method == "adain":
        var = cov.diagonal()
        return torch.diag(torch.where(var > EIG_FLOOR, var.clamp_min(EIG_FLOOR).rsqrt(), torch.zeros_like(var)))
    return _sym_power(cov, -0.5)


@dataclass
class StyleStage:
    """What one stage needs of a style: its feature mean (C,) and colour matrix K (C, C), float64."""

    mean: torch.Tensor
    colour: torch.Tensor


def style_stage(style: Moments, method: str = "wct") -> StyleStage:
    mean, cov = style.mean_cov()
    return StyleStage(mean, colour_matrix(cov, method))


def affine_map(content: Moments, style: StyleStage, alpha: float = 1.0,
               method: str = "wct") -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, C) and b (C,) in float64 such that the stylized feature is A f + b."""
    alpha = check_alpha(alpha)
    mean_c, cov_c = content.mean_cov()
    if mean_c.shape != style.mean.shape:
        raise ValueError(f"content has {mean_c.shape[0]} channels, style {style.mean.shape[0]}")
    kw = style.colour.to(cov_c.device) @ whiten_matrix(cov_c, method)
    eye = torch.eye(kw.shape[0], dtype=kw.dtype, device=kw.device)
    a = alpha * kw + (1.0 - alpha) * eye
    b = alpha * (style.mean.to(kw.device) - kw @ mean_c)
    return a, b


def apply_affine(feature: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A f + b at every pixel of a (B, C, H, W) feature, as a 1x1 convolution in its dtype."""
    weight = a.to(dtype=feature.dtype, device=feature.device)[:, :, None, None]
    return torch.nn.functional.conv2d(feature, weight, b.to(dtype=feature.dtype, device=feature.device))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
