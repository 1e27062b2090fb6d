"""Collaborative distillation losses (cdcore.training.losses)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cdcore.transfer import transforms
from cdcore.models.nets import CD16X, Decoder, Encoder
from cdcore.training import losses, pruning


def stage(k: int, seed: int = 0) -> tuple[Encoder, Decoder]:
    torch.manual_seed(seed)
    return Encoder(k, CD16X).eval(), Decoder(k, CD16X).eval()


def identity_aux_copy(teacher: Encoder) -> Encoder:
    """The teacher itself, with 1x1 aux layers that are the identity."""
    k = teacher.stage
    widths = teacher.widths.for_stage(k)
    aux = dataclasses.replace(teacher.widths, aux=True, aux_widths={n: w for n, w in widths.items() if n.endswith("1")})
    student = Encoder(k, aux)
    state = {n: t for n, t in teacher.state_dict().items() if "_aux" not in n}
    for j in range(1, k + 1):
        c = widths[f"conv{j}1"]
        state[f"conv{j}1_aux.weight"] = torch.eye(c)[:, :, None, None]
        state[f"conv{j}1_aux.bias"] = torch.zeros(c)
    student.load_state_dict(state)
    return student


@pytest.mark.parametrize("k", [1, 3, 5])
def test_embedding_loss_is_zero_for_the_teacher_with_identity_aux(k):
    teacher, _ = stage(k)
    student = identity_aux_copy(teacher)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        loss = losses.embedding_loss(student, student.features(x), teacher.features(x))
    assert loss.item() == 0.0


def test_collaborative_loss_terms_and_weights():
    teacher, collaborator = stage(2)
    student = identity_aux_copy(teacher)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        terms = losses.collaborative_loss(student, teacher, collaborator, x)
        y = collaborator(teacher(x))
        assert terms["embed"].item() == 0.0
        torch.testing.assert_close(terms["pixel"], F.mse_loss(y, x))
        perceptual = sum(F.mse_loss(a, b) for a, b in zip(teacher.features(y), teacher.features(x)))
        torch.testing.assert_close(terms["perceptual"], perceptual)
        torch.testing.assert_close(terms["total"], 10 * terms["embed"] + terms["pixel"] + terms["perceptual"])


def test_collaborative_module_trains_the_student_only():
    teacher, collaborator = stage(2)
    student, _ = pruning.prune_encoder(teacher, 2)
    loss = losses.CollaborativeLoss(student, teacher, collaborator)
    loss(torch.rand(2, 3, 32, 32))["total"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in [*teacher.parameters(), *collaborator.parameters()])


def test_reconstruction_loss_trains_the_decoder_of_a_frozen_encoder():
    teacher, teacher_decoder = stage(2)
    student, decoder = pruning.prune_stage(teacher, teacher_decoder, 2)
    student.requires_grad_(False)
    terms = losses.ReconstructionLoss(student, decoder, teacher)(torch.rand(2, 3, 32, 32))
    assert set(terms) == {"pixel", "perceptual", "total"}
    terms["total"].backward()
    assert all(p.grad is not None for p in decoder.parameters())
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])


def test_adain_matches_the_inference_transform_statistics():
    torch.manual_seed(0)
    content, style = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 5, 7) * 3 + 1
    out = losses.adain(content, style)
    for i in range(2):
        mean_o, std_o = losses.channel_mean_std(out[i: i + 1])
        mean_s, std_s = losses.channel_mean_std(style[i: i + 1])
        torch.testing.assert_close(mean_o, mean_s, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(std_o, std_s, rtol=1e-4, atol=1e-4)
        moments = transforms.moments(style[i])
        a, b = transforms.affine_map(transforms.moments(content[i]), transforms.style_stage(moments, "adain"),
                                     method="adain")
        torch.testing.assert_close(out[i: i + 1], transforms.apply_affine(content[i: i + 1], a, b))


def test_adain_distill_loss_backpropagates_to_the_student():
    teacher, collaborator = stage(4)
    student, _ = pruning.prune_encoder(teacher, 2)
    loss = losses.AdaINDistillLoss(student, teacher, collaborator)
    terms = loss(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert set(terms) == {"embed", "content", "style", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert all(p.grad is not None for p in student.parameters())


def test_models_of_different_stages_are_refused():
    teacher, collaborator = stage(2)
    student, _ = pruning.prune_encoder(stage(3)[0], 2)
    with pytest.raises(ValueError, match=r"\[3, 2, 2\]"):
        losses.collaborative_loss(student, teacher, collaborator, torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_loss_weights_must_be_non_negative(bad):
    with pytest.raises(ValueError, match="pixel"):
        losses.LossWeights(pixel=bad)
