"""Collaborative distillation losses (Wang et al., CVPR 2020), as functions of tensors and models.

For one stage k, a student encoder S (with 1x1 aux layers to teacher width) learns from a teacher
encoder T and the teacher's decoder D_T, its collaborator:

    embed      = sum_j MSE(aux_j(S_j(x)), T_j(x))          j = 1..k, relu{j}_1 features
    y          = D_T(aux_k(S_k(x)))                        collaborative reconstruction
    pixel      = MSE(y, x)
    perceptual = sum_j MSE(T_j(y), T_j(x))
    total      = 10 embed + 1 pixel + 1 perceptual          (the published weights)

The student's decoder D_S is then trained to invert S with the same pixel and perceptual terms
(`reconstruction_loss`, which also trains an encoder-decoder pair jointly when both have
gradients). In AdaIN mode the collaborator decodes AdaIN-stylized embeddings and the
reconstruction terms are replaced by AdaIN's content and style losses.

Every loss returns a dict of its unweighted terms plus "total", so all terms can be logged. The
thin `nn.Module` wrappers exist for DistributedDataParallel, which synchronises gradients only
for computations that run through a module's `forward`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..transfer import transforms
from ..models.nets import Decoder, Encoder


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; the defaults are the published ones (AdaIN's style weight is the
    AdaIN paper's 10). A zero weight keeps the term in the logs but out of the gradient."""

    embed: float = 10.0
    pixel: float = 1.0
    perceptual: float = 1.0
    content: float = 1.0
    style: float = 10.0

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) >= 0:  # also rejects NaN
                raise ValueError(f"loss weight {f.name} must be >= 0 (got {getattr(self, f.name)})")

    def total(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`terms` plus their weighted sum as "total"."""
        total = sum(getattr(self, name) * value for name, value in terms.items())
        return {**terms, "total": total}


def feature_loss(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of the MSE between matching feature maps (B, C_j, H_j, W_j)."""
    if len(a) != len(b):
        raise ValueError(f"feature lists differ in length ({len(a)} vs {len(b)})")
    return sum(F.mse_loss(fa, fb) for fa, fb in zip(a, b))


def embedding_loss(student: Encoder, student_features: Sequence[torch.Tensor],
                   teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_j MSE(aux_j(S_j), T_j): the student's relu{j}_1 features (B, c_j, H_j, W_j), embedded to
    teacher width C_j by its aux layers, against the teacher's (B, C_j, H_j, W_j)."""
    embedded = [student.embed(j, f) for j, f in enumerate(student_features, start=1)]
    return feature_loss(embedded, teacher_features)


def perceptual_loss(teacher: Encoder, image: torch.Tensor, target_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_j MSE(T_j(image), target_j) for an image (B, 3, H, W) and the teacher's features of the
    image it should look like."""
    return feature_loss(teacher.features(image), target_features)


def collaborative_loss(student: Encoder, teacher: Encoder, collaborator: Decoder, x: torch.Tensor,
                       weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Terms "embed", "pixel", "perceptual" and "total" for a batch of images x (B, 3, H, W) in [0, 1].

    The teacher and its decoder only pass gradients through; train the student's parameters.
    """
    _check_stages(student, teacher, collaborator)
    with torch.no_grad():
        target = teacher.features(x)
    features = student.features(x)
    y = collaborator(student.embed(student.stage, features[-1]))
    return weights.total({
        "embed": embedding_loss(student, features, target),
        "pixel": F.mse_loss(y, x),
        "perceptual": perceptual_loss(teacher, y, target),
    })


def reconstruction_loss(encoder: Encoder, decoder: Decoder, teacher: Encoder, x: torch.Tensor,
                        weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Terms "pixel", "perceptual" and "total" of y = decoder(encoder(x)) against x (B, 3, H, W),
    perceptual through the teacher encoder. Trains a decoder for a frozen encoder, or both."""
    _check_stages(encoder, teacher, decoder)
    with torch.no_grad():
        target = teacher.features(x)
    y = decoder(encoder(x))
    return weights.total({"pixel": F.mse_loss(y, x), "perceptual": perceptual_loss(teacher, y, target)})


def channel_mean_std(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation (unbiased, as in `transforms`) of
    (B, C, H, W), each (B, C). Batched and in the feature's dtype, for losses."""
    flat = feature.flatten(2)
    return flat.mean(dim=2), flat.var(dim=2).clamp_min(transforms.EIG_FLOOR).sqrt()


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Content features (B, C, H, W) moved to the channel statistics of style features
    (B, C, H', W'), image by image, with the inference transform (`transforms.affine_map`), so a
    decoder trained on it sees what it will decode at inference. Differentiable."""
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(f"content {tuple(content.shape)} and style {tuple(style.shape)} differ in batch or channels")
    out = []
    for c, s in zip(content, style):
        style_stage = transforms.style_stage(transforms.moments(s), "adain")
        a, b = transforms.affine_map(transforms.moments(c), style_stage, method="adain")
        out.append(transforms.apply_affine(c[None], a, b))
    return torch.cat(out)


def adain_distill_loss(student: Encoder, teacher: Encoder, collaborator: Decoder, content: torch.Tensor,
                       style: torch.Tensor, weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Terms "embed", "content", "style" and "total" of AdaIN-mode distillation for content and
    style batches (B, 3, H, W).

    The student's embedded relu{k}_1 features of content and style are combined by AdaIN and
    decoded by the collaborator (the teacher's AdaIN decoder). As in AdaIN's training, the content
    loss compares the result's teacher feature with the AdaIN target (a fixed target, no gradient
    through it), and the style loss matches channel means and deviations of the teacher's
    relu{j}_1 features of result and style. The embedding loss covers both batches.
    """
    _check_stages(student, teacher, collaborator)
    with torch.no_grad():
        target_c, target_s = teacher.features(content), teacher.features(style)
    feats_c, feats_s = student.features(content), student.features(style)
    k = student.stage
    stylized = adain(student.embed(k, feats_c[-1]), student.embed(k, feats_s[-1]))
    result = teacher.features(collaborator(stylized))
    style_terms = [F.mse_loss(a, b) for r, s in zip(result, target_s)
                   for a, b in zip(channel_mean_std(r), channel_mean_std(s))]
    return weights.total({
        "embed": embedding_loss(student, feats_c, target_c) + embedding_loss(student, feats_s, target_s),
        "content": F.mse_loss(result[-1], stylized.detach()),
        "style": sum(style_terms),
    })


def _check_stages(*models: nn.Module) -> None:
    stages = [m.stage for m in models]
    if len(set(stages)) != 1:
        raise ValueError(f"models must share one stage (got stages {stages})")


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


class CollaborativeLoss(nn.Module):
    """`collaborative_loss` as a module: forward(x) -> terms. Teacher and collaborator are frozen."""

    def __init__(self, student: Encoder, teacher: Encoder, collaborator: Decoder,
                 weights: LossWeights = LossWeights()):
        super().__init__()
        self.student, self.teacher, self.collaborator = student, _frozen(teacher), _frozen(collaborator)
        self.weights = weights

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return collaborative_loss(self.student, self.teacher, self.collaborator, x, self.weights)


class ReconstructionLoss(nn.Module):
    """`reconstruction_loss` as a module: forward(x) -> terms. The teacher is frozen; the encoder
    and decoder train as their `requires_grad` flags say."""

    def __init__(self, encoder: Encoder, decoder: Decoder, teacher: Encoder, weights: LossWeights = LossWeights()):
        super().__init__()
        self.encoder, self.decoder, self.teacher = encoder, decoder, _frozen(teacher)
        self.weights = weights

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return reconstruction_loss(self.encoder, self.decoder, self.teacher, x, self.weights)


class AdaINDistillLoss(nn.Module):
    """`adain_distill_loss` as a module: forward(content, style) -> terms."""

    def __init__(self, student: Encoder, teacher: Encoder, collaborator: Decoder,
                 weights: LossWeights = LossWeights()):
        super().__init__()
        self.student, self.teacher, self.collaborator = student, _frozen(teacher), _frozen(collaborator)
        self.weights = weights

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        return adain_distill_loss(self.student, self.teacher, self.collaborator, content, style, self.weights)
