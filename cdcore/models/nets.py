"""VGG-19 style encoders and mirrored decoders, built from one width table.

Encoder k maps an RGB image in [0, 1] (B, 3, H, W) to its relu{k}_1 feature; decoder k maps that
feature back to an image. Every model family (the VGG-19 teacher, the published 16x students, any
student made by dividing widths) is a `Widths` value of `architecture`, re-exported here.
State-dict keys are the layer names (`conv11.weight`, `conv41_aux.bias`), so published weights load
into models built here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import (CD16X, LAYERS, STAGES, TEACHER, TEACHER_WIDTHS, Widths, check_stage, stage_convs,
                           stage_layers, stage_multiple, student_widths)

__all__ = ["CD16X", "LAYERS", "STAGES", "TEACHER", "TEACHER_WIDTHS", "Decoder", "Encoder", "Widths", "check_stage",
           "PAD_COPY_LIMIT", "conv3x3_reflect", "fold_affine", "stage_convs", "stage_layers", "stage_multiple", "student_widths"]


# Feature maps of at most this many values (8 MB in fp32) take a reflect-padded copy and one
# convolution; larger ones the zero-padded convolution with its border recomputed (`_border`).
# Measured on a 2-core EPYC (1 thread, channels-last, benchmarks/history/2026-12-06-dataset-rate.md):
# the copy is 2-3x faster on the deep stages' small maps (128 ch, 3x4 to 12x16) and within 7% of
# the border up to ~2 M values; above that, at 16-24 channels, the border is 1.3-1.7x faster
# (25 M values at 16 ch: 141 against 188 ms). On a GPU small maps are launch-bound, where three
# kernels beat a dozen, and large ones compute-bound, where the dozen cost nothing and a copy
# would cost memory that tile planning (`tiling.planning`) does not count. Both are exact: the
# choice changes float rounding only.
PAD_COPY_LIMIT = 1 << 21


def conv3x3_reflect(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, *, copy: bool | None = None) -> torch.Tensor:
    """ReLU(conv(ReflectionPad2d(1)(x))) for x (B, C, H, W), in three kernels on small maps.

    `copy` (default: x has at most PAD_COPY_LIMIT values) pads a copy of x and convolves it.
    Otherwise the convolution runs with zero padding (which oneDNN/cuDNN handle without a copy)
    and only the one-pixel output border, the sole place where reflect and zero padding differ,
    is recomputed (`_border`): that saves a full read and write of every activation. Needs
    H, W >= 2, as reflection does. `weight` and `bias` replace the conv's own (see
    `Decoder.forward`).
    """
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"reflection padding needs a feature map of at least 2x2 (got {h}x{w})")
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    if x.numel() <= PAD_COPY_LIMIT if copy is None else copy:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, bias).relu_()
    y = F.conv2d(x, weight, bias, padding=1)
    _border(y, x, weight, bias)
    return y.relu_()


def _border(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Overwrite y's outer rows and columns with the reflect-padded convolution's.

    The rows come from one convolution of a six-row block, [1, 0, 1] over [-2, -1, -2] of x
    (reflected rows around the top and the bottom edge) padded in width, taken with a vertical
    stride of 3 so it yields exactly the two rows wanted; the columns likewise (they include the
    corners). Two strips rather than four also give oneDNN inputs large enough for its fast
    path, which torch's heuristic denies single thin strips of a batch of one.
    """
    rows = torch.cat([x[..., 1:2, :], x[..., :2, :], x[..., -2:, :], x[..., -2:-1, :]], dim=-2)
    rows = F.conv2d(F.pad(rows, (1, 1, 0, 0), mode="reflect"), weight, bias, stride=(3, 1))
    y[..., :1, :], y[..., -1:, :] = rows[..., :1, :], rows[..., 1:, :]
    cols = torch.cat([x[..., 1:2], x[..., :2], x[..., -2:], x[..., -2:-1]], dim=-1)
    cols = F.conv2d(F.pad(cols, (0, 0, 1, 1), mode="reflect"), weight, bias, stride=(1, 3))
    y[..., :1], y[..., -1:] = cols[..., :1], cols[..., 1:]


def fold_affine(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of `conv` composed with the per-pixel map x -> A x + b: a 3x3 conv of
    A x + b is a 3x3 conv of x with weights W A and bias c + W b summed over the taps, and
    reflection padding commutes with a per-pixel map. Computed in float64, then cast to the
    conv's own dtype, device and memory format."""
    w = conv.weight.double()
    a, b = a.to(w), b.to(w)
    weight = torch.einsum("oikl,ij->ojkl", w, a)
    bias = conv.bias.double() + torch.einsum("oikl,i->o", w, b)
    return torch.empty_like(conv.weight).copy_(weight), bias.to(conv.bias)


class Encoder(nn.Module):
    """Encoder k: image (B, 3, H, W) in [0, 1] -> relu{k}_1 feature (B, C_k, H/2^(k-1), W/2^(k-1))."""

    def __init__(self, stage: int, widths: Widths = CD16X):
        super().__init__()
        self.stage = stage
        self.widths = widths
        convs = widths.for_stage(stage)
        # conv0 absorbs RGB -> BGR * 255 - ImageNet mean; no ReLU after it.
        self.conv0 = nn.Conv2d(3, 3, 1)
        c_in = 3
        for name, c_out in convs.items():
            self.add_module(name, nn.Conv2d(c_in, c_out, 3))
            c_in = c_out
        if widths.aux:
            for j in range(1, stage + 1):
                self.add_module(f"conv{j}1_aux", nn.Conv2d(convs[f"conv{j}1"], widths.aux_width(j), 1))
        self._plan = stage_layers(stage)
        self._first: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def out_channels(self) -> int:
        return getattr(self, f"conv{self.stage}1").out_channels

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu{j}_1 features for j = 1..stage, in order."""
        out = []
        x = self.conv0(x)
        for name in self._plan:
            if name == "pool":
                x = F.max_pool2d(x, 2, 2)
                continue
            x = conv3x3_reflect(getattr(self, name), x)
            if name.endswith("1"):
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training: gradients reach conv0 and conv11 as they are
            x = self.conv0(x)
            weight = bias = None
        else:
            weight, bias = self._conv11_after_conv0()
        for name in self._plan:
            if name == "pool":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = conv3x3_reflect(getattr(self, name), x, weight, bias)
                weight = bias = None
        return x

    def _conv11_after_conv0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """conv11 with conv0 (a per-pixel map) folded in (`fold_affine`), made once for the
        weights as they are: a full-resolution pass and a slow 1x1 convolution fewer per call
        (torch sends a single-threaded 1x1 conv of a small batch down its slow path)."""
        conv0, conv11 = self.conv0, self.conv11
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in (conv0.weight, conv0.bias, conv11.weight, conv11.bias))
        if self._first is None or self._first[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                folded = fold_affine(conv11, conv0.weight[:, :, 0, 0], conv0.bias)
            self._first = key, folded
        return self._first[1]

    def embed(self, j: int, feature: torch.Tensor) -> torch.Tensor:
        """The 1x1 linear embedding of the student's relu{j}_1 feature to teacher width."""
        return getattr(self, f"conv{j}1_aux")(feature)


class Decoder(nn.Module):
    """Decoder k: relu{k}_1 feature -> image (B, 3, H, W); mirrors encoder k (nearest 2x upsampling
    where the encoder pooled, ReLU after every conv including the last)."""

    def __init__(self, stage: int, widths: Widths = CD16X):
        super().__init__()
        self.stage = stage
        self.widths = widths
        convs = widths.for_stage(stage)
        names = list(convs)
        for i, name in enumerate(names):
            c_in_encoder = 3 if i == 0 else convs[names[i - 1]]
            self.add_module(name, nn.Conv2d(convs[name], c_in_encoder, 3))
        self._plan = tuple(reversed(stage_layers(stage)))

    def fold_pays(self, images: int, pixels: int) -> bool:
        """Whether `forward(x, affine=...)` costs less than applying the map to x first, for x of
        `images` images of `pixels` feature pixels: one image with at least 9 x the first conv's
        output channels. Folding takes 9 C_out multiply-adds per entry of the C x C map, applying
        it one per pixel; so the deep stages of small images apply (stage 5 of 64x48 px: 12
        pixels, against 1,152), the rest fold and save a pass over the feature."""
        first = getattr(self, self._plan[0])
        return images == 1 and pixels >= 9 * first.out_channels

    def forward(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Decode x, or A x + b at every pixel when `affine` = (A (C, C), b (C,)) is given.

        The map is folded into the first conv rather than applied to x: a 3x3 conv of A x + b is
        a 3x3 conv of x with weights W A and bias c + W b summed over the taps, and reflection
        padding commutes with a per-pixel map. That saves writing and reading a second feature
        map as large as x (24 channels at full resolution for stage 1).
        """
        weight = bias = None
        if affine is not None:
            weight, bias = fold_affine(getattr(self, self._plan[0]), *affine)
        for name in self._plan:
            if name == "pool":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            else:
                x = conv3x3_reflect(getattr(self, name), x, weight, bias)
                weight = bias = None
        return x
