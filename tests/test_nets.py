import pytest
import torch

from cdcore.models.nets import CD16X, TEACHER, Decoder, Encoder, conv3x3_reflect, student_widths


def n_params(module, aux=False):
    return sum(p.numel() for n, p in module.named_parameters() if aux or "_aux" not in n)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("widths", [TEACHER, CD16X, student_widths(8)], ids=lambda w: w.name)
def test_encoder_decoder_shapes(k, widths):
    enc, dec = Encoder(k, widths), Decoder(k, widths)
    x = torch.rand(1, 3, 48, 64)
    f = enc(x)
    assert f.shape == (1, widths.for_stage(k)[f"conv{k}1"], 48 >> (k - 1), 64 >> (k - 1))
    assert dec(f).shape == x.shape
    feats = enc.features(x)
    assert len(feats) == k and torch.equal(feats[-1], f)


def test_parameter_counts_match_the_design():
    # DESIGN.md: encoder to relu5_1 12.9M (teacher) vs 0.81M (16x); to relu4_1 3.5M vs 0.22M.
    assert n_params(Encoder(5, TEACHER)) == pytest.approx(12.9e6, rel=0.02)
    assert n_params(Encoder(5, CD16X)) == pytest.approx(0.81e6, rel=0.02)
    assert n_params(Encoder(4, TEACHER)) == pytest.approx(3.5e6, rel=0.02)
    assert n_params(Encoder(4, CD16X)) == pytest.approx(0.22e6, rel=0.02)


def test_published_stage1_override_and_aux_layers():
    enc = Encoder(1, CD16X)
    assert enc.conv11.out_channels == 24 and enc.conv11_aux.out_channels == 64
    assert Encoder(2, CD16X).conv11.out_channels == 16
    assert not hasattr(Encoder(3, TEACHER), "conv31_aux")


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="stage"):
        Encoder(6)
    with pytest.raises(ValueError, match="divisor"):
        student_widths(3)


@pytest.mark.parametrize("copy", [True, False], ids=["padded-copy", "border"])
@pytest.mark.parametrize("n,h,w", [(2, 2, 2), (1, 5, 9), (3, 32, 17), (1, 2, 7), (2, 9, 2)])
def test_conv3x3_reflect_equals_padded_convolution(copy, n, h, w):
    """Both ways of reflect-padding (a padded copy; the zero-padded conv with its border redone)
    give the padded convolution, in either memory layout (float64: to the last digits)."""
    conv = torch.nn.Conv2d(6, 5, 3).double()
    x = torch.randn(n, 6, h, w, dtype=torch.float64)
    ref = torch.relu(conv(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")))
    torch.testing.assert_close(conv3x3_reflect(conv, x, copy=copy), ref, rtol=1e-12, atol=1e-12)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv3x3_reflect(conv, x_cl, copy=copy), ref, rtol=1e-12, atol=1e-12)


def test_conv3x3_reflect_chooses_by_size():
    """Small maps take the padded copy, large ones the border; the result is the same."""
    from torch.profiler import profile

    from cdcore.models.nets import PAD_COPY_LIMIT

    conv = torch.nn.Conv2d(4, 4, 3)
    for values, pads in ((PAD_COPY_LIMIT, 1), (PAD_COPY_LIMIT * 2, 2)):
        x = torch.rand(1, 4, 2, values // 8)
        with profile() as prof:
            conv3x3_reflect(conv, x)
        counts = {e.key: e.count for e in prof.key_averages()}
        assert counts["aten::reflection_pad2d"] == pads


def test_encoder_folds_conv0_into_conv11_at_inference():
    """Without gradients encoder k runs conv11 with conv0 folded in, cached until the weights
    change; it equals the two convolutions one after the other."""
    torch.manual_seed(0)
    enc = Encoder(2, CD16X).double()
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    with torch.enable_grad():
        ref = enc(x)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref, rtol=1e-10, atol=1e-10)
        enc.conv0.weight.mul_(2)  # bumps the version: the cached fold is made again
        with torch.enable_grad():
            ref = enc(x)
        torch.testing.assert_close(enc(x), ref, rtol=1e-10, atol=1e-10)


def test_conv3x3_reflect_gradients_match():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 7, 6, requires_grad=True)
    conv3x3_reflect(conv, x).sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.relu(conv(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))).sum().backward()
    torch.testing.assert_close(x.grad, g)


@pytest.mark.parametrize("k", [1, 3])
def test_decoder_folds_the_affine_map_into_its_first_conv(k):
    """Decoding A f + b in one go equals applying the map, then decoding (float64)."""
    torch.manual_seed(k)
    dec = Decoder(k, CD16X).double().to(memory_format=torch.channels_last)
    f = torch.rand(1, CD16X.for_stage(k)[f"conv{k}1"], 9, 14, dtype=torch.float64)
    c = f.shape[1]
    a, b = torch.randn(c, c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    moved = torch.einsum("ij,njhw->nihw", a, f) + b[:, None, None]
    torch.testing.assert_close(dec(f, affine=(a, b)), dec(moved), rtol=1e-10, atol=1e-10)


def test_decoder_folds_a_map_only_where_that_costs_less():
    """One image folds where its feature has at least 9 x C_out pixels (decoder 5: 128 outputs,
    so 1,152 pixels); smaller features and batches have the map applied first."""
    dec = Decoder(5, CD16X)
    assert not dec.fold_pays(1, 3 * 4)  # stage 5 of a 64x48 image
    assert not dec.fold_pays(1, 1151)
    assert dec.fold_pays(1, 1152)
    assert not dec.fold_pays(2, 64 * 64)  # a batch: one map per image
    assert Decoder(1, CD16X).fold_pays(1, 27)  # 3 outputs
