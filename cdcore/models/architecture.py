"""The VGG-19 layer table and the width tables of every model family, without torch.

Encoder k runs LAYERS up to conv{k}1; decoder k mirrors it. A model family (the VGG-19 teacher,
the published 16x students, any student made by dividing widths) is a `Widths` value. `nets`
builds the modules from these tables; `modelfiles` reads them off weight files without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

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
