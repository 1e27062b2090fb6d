"""L1-norm filter pruning: which filters survive, and the shapes of the student at every stage."""
from __future__ import annotations

import pytest
import torch

from cdcore.models.nets import CD16X, TEACHER, Decoder, Encoder, Widths
from cdcore.training import pruning


def random_stage(k: int, widths: Widths = CD16X) -> tuple[Encoder, Decoder]:
    torch.manual_seed(k)
    return Encoder(k, widths).eval(), Decoder(k, widths).eval()


def l1(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().flatten(1).sum(dim=1)


def test_divided_widths_halves_every_layer_and_aims_aux_at_the_teacher():
    widths = pruning.divided_widths(CD16X, 1, 2)
    assert widths.for_stage(1) == {"conv11": 12}  # the published stage-1 encoder has 24 filters
    assert widths.aux and widths.aux_width(1) == 24
    widths = pruning.divided_widths(CD16X, 3, 4)
    assert list(widths.for_stage(3).values()) == [4, 4, 8, 8, 16]
    assert [widths.aux_width(j) for j in (1, 2, 3)] == [16, 32, 64]


@pytest.mark.parametrize("divisor", [0, 3, 32, 2.0])
def test_divided_widths_rejects_a_divisor_that_does_not_divide(divisor):
    with pytest.raises(ValueError, match=str(divisor)):
        pruning.divided_widths(CD16X, 2, divisor)


def test_l1_keep_returns_the_largest_filters_in_order():
    weight = torch.zeros(5, 1, 1, 1)
    weight[:, 0, 0, 0] = torch.tensor([3.0, -9.0, 1.0, 4.0, -2.0])
    assert pruning.l1_keep(weight, 3).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="6 of 5"):
        pruning.l1_keep(weight, 6)


def test_pruned_encoder_keeps_the_highest_l1_filters_and_matching_inputs():
    teacher, _ = random_stage(3)
    student, kept = pruning.prune_encoder(teacher, 2)
    previous = torch.arange(3)
    for name in student.widths.for_stage(3):
        full, small = getattr(teacher, name).weight, getattr(student, name).weight
        rows = kept[name]
        dropped = torch.ones(full.shape[0], dtype=torch.bool)
        dropped[rows] = False
        assert len(rows) == full.shape[0] // 2
        assert l1(full)[rows].min() >= l1(full)[dropped].max()
        torch.testing.assert_close(small, full[rows][:, previous], rtol=0, atol=0)
        torch.testing.assert_close(getattr(student, name).bias, getattr(teacher, name).bias[rows], rtol=0, atol=0)
        previous = rows


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_pruned_stage_has_the_right_shapes(k):
    teacher, teacher_decoder = random_stage(k)
    student, decoder = pruning.prune_stage(teacher, teacher_decoder, 2)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        s_feats, t_feats = student.features(x), teacher.features(x)
        assert len(s_feats) == k
        for j, (s, t) in enumerate(zip(s_feats, t_feats), start=1):
            assert s.shape == (2, t.shape[1] // 2, *t.shape[2:])
            assert student.embed(j, s).shape == t.shape
        assert decoder(s_feats[-1]).shape == x.shape


def test_divisor_one_reproduces_the_teacher_with_identity_aux():
    teacher, teacher_decoder = random_stage(4, TEACHER)
    student, decoder = pruning.prune_stage(teacher, teacher_decoder, 1)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for j, (s, t) in enumerate(zip(student.features(x), teacher.features(x)), start=1):
            torch.testing.assert_close(s, t, rtol=0, atol=0)
            torch.testing.assert_close(student.embed(j, s), t)
        torch.testing.assert_close(decoder(student(x)), teacher_decoder(teacher(x)), rtol=0, atol=0)


def test_pruning_works_from_a_loaded_model_set():
    from cdcore.models.modelset import load_model_set

    models = load_model_set("../shared/models/cd16x", stages=[1])
    student, decoder = pruning.prune_stage(models.encoder(1), models.decoder(1), 2)
    assert student.conv11.out_channels == 12 and student.conv11_aux.out_channels == 24
    assert decoder.conv11.in_channels == 12
