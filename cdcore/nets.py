"""VGG-19 style encoders and mirrored decoders, built from one width table.

Encoder k maps an RGB image in [0, 1] (B, 3, H, W) to its relu{k}_1 feature; decoder k maps that
feature back to an image. Every model family (the VGG-19 teacher, the published 16x students, any
student made by dividing widths) is a `Widths` value; the layer order below is shared by all.
State-dict keys are the layer names (`conv11.weight`, `conv41_aux.bias`), so published weights load
into models built here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# VGG-19 up to conv51: 3x3 conv names in order, "pool" where a 2x2 max-pool (floor) follows.
LAYERS: tuple[str, ...] = (
    "conv11", "conv12", "pool",
    "conv21", "conv22", "pool",
    "conv31", "conv32", "conv33", "conv34", "pool",
    "conv41", "conv42", "conv43", "conv44", "pool",
    "conv51",
)
STAGES = (1, 2, 3, 4, 5)
TEACHER_WIDTHS: Mapping[str, int] = {
    "conv11": 64, "conv12": 64, "conv21": 128, "conv22": 128,
    "conv31": 256, "conv32": 256, "conv33": 256, "conv34": 256,
    "conv41": 512, "conv42": 512, "conv43": 512, "conv44": 512, "conv51": 512,
}


@dataclass(frozen=True)
class Widths:
    """Output channels of every conv, plus per-stage exceptions.

    `stage_overrides[k]` replaces widths in encoder/decoder k only (the published stage-1 16x
    encoder has a 24-wide conv11). `aux` says whether encoders carry the 1x1 `conv{j}1_aux`
    embeddings to teacher width used by distillation; `aux_widths` gives that teacher's widths of
    the conv{j}1 layers (None: VGG-19's, as for the published students).
    """

    name: str
    widths: Mapping[str, int]
    stage_overrides: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    aux: bool = False
    aux_widths: Mapping[str, int] | None = None

    def for_stage(self, k: int) -> dict[str, int]:
        """Widths of the convs in encoder k, in layer order."""
        names = stage_convs(k)
        merged = {**self.widths, **self.stage_overrides.get(k, {})}
        return {n: merged[n] for n in names}

    def aux_width(self, j: int) -> int:
        """Output channels of `conv{j}1_aux`: the teacher's width of conv{j}1."""
        return (self.aux_widths or TEACHER_WIDTHS)[f"conv{j}1"]

    def to_dict(self) -> dict:
        d = {"name": self.name, "widths": dict(self.widths), "aux": self.aux,
             "stage_overrides": {str(k): dict(v) for k, v in self.stage_overrides.items()}}
        if self.aux_widths is not None:
            d["aux_widths"] = dict(self.aux_widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Widths":
        aux_widths = d.get("aux_widths")
        return cls(d["name"], dict(d["widths"]),
                   {int(k): dict(v) for k, v in d.get("stage_overrides", {}).items()},
                   bool(d.get("aux", False)), dict(aux_widths) if aux_widths is not None else None)


def student_widths(divisor: int, name: str | None = None) -> Widths:
    """A student whose every width is the teacher's divided by `divisor` (with aux layers)."""
    if divisor < 1 or any(w % divisor for w in TEACHER_WIDTHS.values()):
        raise ValueError(f"width divisor must divide 64 (got {divisor})")
    widths = {n: w // divisor for n, w in TEACHER_WIDTHS.items()}
    return Widths(name or f"student_div{divisor}", widths, aux=True)


TEACHER = Widths("vgg19", TEACHER_WIDTHS)
# The published Collaborative Distillation 16x set: a quarter of the channels (1/16 of the
# parameters), except that the stage-1 encoder keeps 24 filters in conv11.
CD16X = Widths("cd16x", student_widths(4).widths, {1: {"conv11": 24}}, aux=True)


def check_stage(k: int) -> None:
    if k not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} (got {k!r})")


def stage_layers(k: int) -> tuple[str, ...]:
    """The layers of encoder k in order, "pool" included: LAYERS up to conv{k}1."""
    check_stage(k)
    return LAYERS[: LAYERS.index(f"conv{k}1") + 1]


def stage_convs(k: int) -> tuple[str, ...]:
    """The 3x3 convs of encoder k in order."""
    return tuple(n for n in stage_layers(k) if n != "pool")


def stage_multiple(k: int) -> int:
    """Image pixels per feature pixel of stage k: encoder k pools k - 1 times, so an input whose
    sides are multiples of 2^(k-1) pools without flooring."""
    check_stage(k)
    return 2 ** (k - 1)


def conv3x3_reflect(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """ReLU(conv(ReflectionPad2d(1)(x))) without materialising the padded copy of x.

    The convolution runs with zero padding (which oneDNN/cuDNN handle without a copy) and only
    the one-pixel output border, the sole place where reflect and zero padding differ, is
    recomputed from thin reflect-padded strips. On CPU this saves a full read and write of every
    activation, about a quarter of the time of a stage. Needs H, W >= 2, as reflection does.
    `weight` and `bias` replace the conv's own (see `Decoder.forward`).
    """
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"reflection padding needs a feature map of at least 2x2 (got {h}x{w})")
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    y = F.conv2d(x, weight, bias, padding=1)
    y[..., :1, :] = F.conv2d(F.pad(x[..., :2, :], (1, 1, 1, 0), mode="reflect"), weight, bias)
    y[..., -1:, :] = F.conv2d(F.pad(x[..., -2:, :], (1, 1, 0, 1), mode="reflect"), weight, bias)
    y[..., :, :1] = F.conv2d(F.pad(x[..., :, :2], (1, 0, 1, 1), mode="reflect"), weight, bias)
    y[..., :, -1:] = F.conv2d(F.pad(x[..., :, -2:], (0, 1, 1, 1), mode="reflect"), weight, bias)
    return y.relu_()


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
        x = self.conv0(x)
        for name in self._plan:
            x = F.max_pool2d(x, 2, 2) if name == "pool" else conv3x3_reflect(getattr(self, name), x)
        return x

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

    def forward(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Decode x, or A x + b at every pixel when `affine` = (A (C, C), b (C,)) is given.

        The map is folded into the first conv rather than applied to x: a 3x3 conv of A x + b is
        a 3x3 conv of x with weights W A and bias c + W b summed over the taps, and reflection
        padding commutes with a per-pixel map. That saves writing and reading a second feature
        map as large as x (24 channels at full resolution for stage 1).
        """
        weight = bias = None
        if affine is not None:
            weight, bias = self._folded(*affine)
        for name in self._plan:
            if name == "pool":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            else:
                x = conv3x3_reflect(getattr(self, name), x, weight, bias)
                weight = bias = None
        return x

    def _folded(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and bias of the first conv composed with x -> A x + b: computed in float64, then
        cast to the conv's own dtype, device and memory format."""
        conv = getattr(self, self._plan[0])
        w = conv.weight.double()
        a, b = a.to(w), b.to(w)
        weight = torch.einsum("oikl,ij->ojkl", w, a)
        bias = conv.bias.double() + torch.einsum("oikl,i->o", w, b)
        return torch.empty_like(conv.weight).copy_(weight), bias.to(conv.bias)
