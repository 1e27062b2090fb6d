"""Feature statistics and the WCT / AdaIN transforms, as functions of tensors.

Both transforms are one affine map per pixel, `f -> A f + b`, built from the content's and the
style's mean and covariance:

    A = alpha * K W + (1 - alpha) I,    b = alpha * (m_s - K W m_c)

WCT (Li et al. 2017): W = E_c D_c^-1/2 E_c^T whitens the content, K = E_s D_s^1/2 E_s^T colours it.
AdaIN (Huang & Belongie 2017): the same with diagonal W = 1/std_c, K = std_s.

Statistics are `Moments` (sums in float64) so that they can be accumulated tile by tile and
merged; the map is then applied as a 1x1 convolution in the feature dtype.

Every function also takes a batch: `moments_per_image` gives Moments with a leading image axis
((B, C) sums, (B, C, C) outer products), and the matrices, eigendecompositions and maps that follow
from them are (B, C, C), one per image, computed by the same code in one batched call each. A
single image is the batch-less case of the same formulas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import alpha as check_alpha

METHODS = ("wct", "adain")
# Eigenvalues below this are dropped, as in the reference WCT: a flat image has a zero covariance
# and must give a finite result (its whitened feature is zero, the output is the style mean).
EIG_FLOOR = 1e-5
# Where a GPU's batches of eigendecompositions run: on the device (False), or copied to the host
# CPU and back (True). A GPU's eigh solves matrices above 32 x 32 one by one, so a batch's may
# cost more there than the host's; `benchmarks/gpu_check.py --sections variants` times both.
# Not yet measured on a GPU: until it is, they stay where the features are.
BATCHED_EIGH_ON_HOST = False


@dataclass
class Moments:
    """Sum, sum of outer products and count of C-dim feature vectors, in float64; and, where there
    are fewer vectors than channels, the vectors themselves, from which `affine_map` takes the
    covariance's eigenvectors at a fraction of the cost."""

    total: torch.Tensor  # (C,), or (B, C): one row per image
    outer: torch.Tensor  # (C, C), or (B, C, C)
    count: int  # vectors per image
    samples: torch.Tensor | None = None  # (N, C), or (B, N, C): the vectors, kept only when N < C

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.total + other.total, self.outer + other.outer, self.count + other.count)

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (..., C) and covariance (..., C, C) with the unbiased (N - 1) divisor."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance (got {self.count})")
        mean = self.total / self.count
        cov = (self.outer - self.count * mean[..., :, None] * mean[..., None, :]) / (self.count - 1)
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
            raise ValueError(f"moments expects one image, got batch shape {tuple(feature.shape)} "
                             f"(moments_per_image takes a batch)")
        feature = feature[0]
    if feature.dim() != 3:
        raise ValueError(f"expected a (C, H, W) feature, got shape {tuple(feature.shape)}")
    m = moments_per_image(feature[None], band_bytes)
    return Moments(m.total[0], m.outer[0], m.count, None if m.samples is None else m.samples[0])


def moments_per_image(feature: torch.Tensor, band_bytes: int = 16 << 20) -> Moments:
    """Each image's moments of a feature batch (B, C, H, W): (B, C) sums and (B, C, C) outer
    products in float64, banded over rows of all images at once as `moments` is."""
    if feature.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature batch, got shape {tuple(feature.shape)}")
    n, c, h, w = feature.shape
    rows = feature.permute(0, 2, 3, 1)  # (B, H, W, C): a view of a channels-last feature
    band = max(1, band_bytes // (n * w * c * 8))
    total = torch.zeros(n, c, dtype=torch.float64, device=feature.device)
    outer = torch.zeros(n, c, c, dtype=torch.float64, device=feature.device)
    for start in range(0, h, band):
        f = rows[:, start:start + band].to(torch.float64).reshape(n, -1, c)
        total += f.sum(dim=1)
        outer.baddbmm_(f.mT, f)
    few = h * w < c and band >= h  # then `f` is every vector of every image
    return Moments(total, outer, h * w, f if few else None)


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of symmetric matrices (..., C, C): one batched call."""
    if BATCHED_EIGH_ON_HOST and matrix.is_cuda and matrix.dim() == 3 and matrix.shape[0] > 1:
        return tuple(t.to(matrix.device) for t in torch.linalg.eigh(matrix.cpu()))
    return torch.linalg.eigh(matrix)


def _powers(evals: torch.Tensor, power: float) -> torch.Tensor:
    """evals^power where evals > EIG_FLOOR, else 0."""
    return torch.where(evals > EIG_FLOOR, evals.clamp_min(EIG_FLOOR) ** power, torch.zeros_like(evals))


def _sym_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """cov^power for symmetric PSD matrices (..., C, C), over the eigenvalues above EIG_FLOOR only:
    one batched eigendecomposition for a batch."""
    evals, evecs = _eigh(cov)
    return (evecs * _powers(evals, power)[..., None, :]) @ evecs.mT


def _whiten_from_samples(samples: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """cov^(-1/2) over the eigenvalues above EIG_FLOOR, as `_sym_power` gives it, of N < C samples
    (..., N, C) with their mean (..., C), from the N x N Gram matrix instead of the C x C covariance.

    With X the centred samples (N, C), cov = X^T X / (N - 1) and G = X X^T / (N - 1) have the same
    non-zero eigenvalues l_i, and G's eigenvectors v_i give cov's as u_i = X^T v_i / sqrt((N-1) l_i).
    So cov^(-1/2) = sum_i l_i^(-1/2) u_i u_i^T = P P^T with columns p_i = X^T v_i l_i^(-3/4) / sqrt(N-1).
    A deep stage of a small image has fewer feature pixels than channels (12 and 48 against 128 at
    stages 5 and 4 of 64x48 px): its eigendecompositions shrink from 128 x 128 to 12 x 12 and 48 x 48.
    """
    x = samples - mean[..., None, :]
    n = x.shape[-2]
    evals, evecs = _eigh(x @ x.mT / (n - 1))
    p = x.mT @ (evecs * (_powers(evals, -0.75) / (n - 1) ** 0.5)[..., None, :])
    return p @ p.mT


def colour_matrix(cov: torch.Tensor, method: str = "wct") -> torch.Tensor:
    """K: cov^(1/2) for WCT, diag(std) for AdaIN. (..., C, C) float64."""
    _check_method(method)
    if method == "adain":
        return torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt())
    return _sym_power(cov, 0.5)


def whiten_matrix(cov: torch.Tensor, method: str = "wct") -> torch.Tensor:
    """W: cov^(-1/2) for WCT, diag(1/std) for AdaIN (zero where the variance vanishes)."""
    _check_method(method)
    if method == "adain":
        var = cov.diagonal(dim1=-2, dim2=-1)
        return torch.diag_embed(torch.where(var > EIG_FLOOR, var.clamp_min(EIG_FLOOR).rsqrt(), torch.zeros_like(var)))
    return _sym_power(cov, -0.5)


@dataclass
class StyleStage:
    """What one stage needs of a style: its feature mean (C,) and colour matrix K (C, C), float64;
    or, stacked by `stack_styles`, (B, C) and (B, C, C): one style per image of a batch."""

    mean: torch.Tensor
    colour: torch.Tensor

    def to(self, device: torch.device | str) -> "StyleStage":
        return StyleStage(self.mean.to(device), self.colour.to(device))


def stack_styles(stages: list[StyleStage], device: torch.device | str = "cpu") -> StyleStage:
    """One StyleStage (B, C), (B, C, C) on `device` of a style per image, for `affine_map` on a batch."""
    return StyleStage(torch.stack([s.mean for s in stages]).to(device), torch.stack([s.colour for s in stages]).to(device))


def style_stage(style: Moments, method: str = "wct") -> StyleStage:
    mean, cov = style.mean_cov()
    return StyleStage(mean, colour_matrix(cov, method))


def affine_map(content: Moments, style: StyleStage, alpha=1.0,
               method: str = "wct") -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, C) and b (C,) in float64 such that the stylized feature is A f + b; for a batch's
    moments (`moments_per_image`), (B, C, C) and (B, C), each image's own map. The style may be one
    for the whole batch or one per image (`stack_styles`), and `alpha` a number or one per image."""
    mean_c, cov_c = content.mean_cov()
    if mean_c.shape[-1] != style.mean.shape[-1]:
        raise ValueError(f"content has {mean_c.shape[-1]} channels, style {style.mean.shape[-1]}")
    if isinstance(alpha, (int, float)):
        alpha = scale = check_alpha(alpha)
    else:  # one per image: a (B,) tensor is used as it is (made once per batch, on the device)
        if not isinstance(alpha, torch.Tensor):
            alpha = torch.tensor([check_alpha(x) for x in alpha], dtype=torch.float64)
        alpha = alpha.to(cov_c.device, torch.float64)[:, None]  # (B, 1), and (B, 1, 1) to scale A
        scale = alpha[..., None]
    if method == "wct" and content.samples is not None:
        whiten = _whiten_from_samples(content.samples, mean_c)
    else:
        whiten = whiten_matrix(cov_c, method)
    kw = style.colour.to(cov_c.device) @ whiten
    eye = torch.eye(kw.shape[-1], dtype=kw.dtype, device=kw.device)
    a = scale * kw + (1.0 - scale) * eye
    b = alpha * (style.mean.to(kw.device) - (kw @ mean_c[..., None])[..., 0])
    return a, b


def apply_affine(feature: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A f + b at every pixel of a (B, C, H, W) feature, in its dtype: one map (C, C), (C,) for
    every image as a 1x1 convolution, or one per image (B, C, C), (B, C) as one batched matrix
    product in the feature's memory layout."""
    a = a.to(dtype=feature.dtype, device=feature.device)
    b = b.to(dtype=feature.dtype, device=feature.device)
    if a.dim() == 2:
        return torch.nn.functional.conv2d(feature, a[:, :, None, None], b)
    n, c, h, w = feature.shape
    if feature.is_contiguous(memory_format=torch.channels_last) and not feature.is_contiguous():
        rows = feature.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: (B, HW, C)
        return torch.baddbmm(b[:, None, :], rows, a.mT).view(n, h, w, c).permute(0, 3, 1, 2)
    return torch.baddbmm(b[:, :, None], a, feature.reshape(n, c, h * w)).view(n, c, h, w)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
