"""L1-norm filter pruning (Li et al., ICLR 2017): the starting point of a distilled student.

A teacher's stage-k encoder and decoder (any model set: VGG-19, the 16x students, ...) become a
student whose every width is the teacher's divided by a divisor. Each conv keeps the filters
(output channels) with the largest L1 norms, in their original order, and the conv after it keeps
the matching input channels, so the student computes a sub-network of the teacher.

The decoder is pruned the same way, front to back: its first conv keeps the input channels that
the student encoder's last conv kept, and every conv keeps its own largest-L1 filters (decoder
channels do not correspond to encoder channels, so there is nothing else to match). The last conv
keeps all three RGB filters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.nets import Decoder, Encoder, Widths


def divided_widths(teacher: Widths, stage: int, divisor: int) -> Widths:
    """Widths of the stage-k student: the teacher's encoder-k widths divided by `divisor`.

    The student carries aux layers back to the teacher's conv{j}1 widths (the linear embedding of
    the distillation loss). Only the layers of stages 1..k are defined.
    """
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"width divisor must be a positive integer (got {divisor!r})")
    convs = teacher.for_stage(stage)
    uneven = {name: w for name, w in convs.items() if w % divisor}
    if uneven:
        raise ValueError(f"width divisor {divisor} does not divide the widths of the teacher's stage-{stage} "
                         f"layers {uneven}")
    return Widths(
        f"{teacher.name}-div{divisor}",
        {name: w // divisor for name, w in convs.items()},
        aux=True,
        aux_widths={name: w for name, w in convs.items() if name.endswith("1")},
    )


def l1_keep(weight: torch.Tensor, n: int) -> torch.Tensor:
    """Indices, ascending, of the `n` filters of a conv weight (C_out, C_in, kh, kw) with the
    largest L1 norms (ties go to the lower index)."""
    if not 1 <= n <= weight.shape[0]:
        raise ValueError(f"cannot keep {n} of {weight.shape[0]} filters")
    norms = weight.detach().abs().flatten(1).sum(dim=1)
    # A stable sort makes ties deterministic, so every worker prunes identically.
    order = torch.sort(norms, descending=True, stable=True).indices
    return order[:n].sort().values


@torch.no_grad()
def _prune_chain(source: nn.Module, target: nn.Module, names: list[str],
                 keep_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """Copy the convs `names` (in forward order) of `source` into the narrower ones of `target`,
    each keeping its largest-L1 filters and the input channels its predecessor kept.
    Returns the kept output channels of every conv."""
    kept = {}
    for name in names:
        src, dst = getattr(source, name), getattr(target, name)
        rows = l1_keep(src.weight, dst.out_channels)
        dst.weight.copy_(src.weight[rows][:, keep_in])
        dst.bias.copy_(src.bias[rows])
        kept[name] = keep_in = rows
    return kept


def prune_encoder(teacher: Encoder, divisor: int) -> tuple[Encoder, dict[str, torch.Tensor]]:
    """The student encoder of `teacher`'s stage, and the teacher channels each of its convs kept.

    Its aux layers start as the selection that puts every kept channel back at its teacher
    position (zeros elsewhere): at step 0 the embedding of relu{j}_1 is the teacher's feature with
    the pruned channels zeroed, a better start than a random map for the embedding loss.
    """
    k = teacher.stage
    student = Encoder(k, divided_widths(teacher.widths, k, divisor)).to(teacher.conv0.weight.device)
    with torch.no_grad():
        student.conv0.load_state_dict(teacher.conv0.state_dict())
    names = list(student.widths.for_stage(k))
    kept = _prune_chain(teacher, student, names, torch.arange(3, device=teacher.conv0.weight.device))
    with torch.no_grad():
        for j in range(1, k + 1):
            aux = getattr(student, f"conv{j}1_aux")
            rows = kept[f"conv{j}1"]
            aux.weight.zero_()
            aux.weight[rows, torch.arange(len(rows)), 0, 0] = 1.0
            aux.bias.zero_()
    return student, kept


def prune_decoder(teacher: Decoder, widths: Widths, keep_in: torch.Tensor) -> Decoder:
    """The student decoder with `widths`, cut from `teacher`; `keep_in` (C_k,) are the teacher
    channels of relu{k}_1 that the student encoder kept (its input)."""
    k = teacher.stage
    student = Decoder(k, widths).to(keep_in.device)
    names = list(reversed(widths.for_stage(k)))  # a decoder runs conv{k}1 first, conv11 last
    _prune_chain(teacher, student, names, keep_in)
    return student


def prune_stage(encoder: Encoder, decoder: Decoder, divisor: int) -> tuple[Encoder, Decoder]:
    """Student encoder and decoder of one stage: widths / `divisor`, largest-L1 filters kept."""
    if encoder.stage != decoder.stage:
        raise ValueError(f"encoder is stage {encoder.stage} but decoder is stage {decoder.stage}")
    student, kept = prune_encoder(encoder, divisor)
    return student, prune_decoder(decoder, student.widths, kept[f"conv{encoder.stage}1"])
