import numpy as np
import pytest
import torch

from cdcore.transfer import transforms
from cdcore.transfer.gatys import gatys, gram
from cdcore.io.images import read_image, resize_to
from cdcore.models.modelset import load_model_set
from cdcore.options import levels as parse_levels
from cdcore.transfer.stylize import (style_statistics, stylize, stylize_batch, to_tensor, to_tensor_batch, to_uint8,
                                    to_uint8_batch)
from shared import CONTENT, GOLDEN, MODELS, STYLE, psnr


@pytest.fixture(scope="module")
def models():
    return load_model_set(MODELS)


def image(path, size=None):
    return to_tensor(resize_to(read_image(str(path)), size).rgb)


@pytest.mark.parametrize("style_name,alpha", [("style_b_512", 1.0), ("style_c_591x800", 0.6)])
def test_reproduces_golden_outputs(models, style_name, alpha):
    stats = style_statistics(models, image(STYLE / f"{style_name}.jpg"))
    out = to_uint8(stylize(models, image(CONTENT / "bridge_512.jpg"), stats, alpha))
    golden = read_image(str(GOLDEN / f"wct16x_bridge_512+{style_name}_alpha{alpha:g}.png")).rgb
    assert psnr(out, golden) >= 40.0


def float_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (peak 1) of two float images as they are written: clamped to [0, 1]."""
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(torch.log10(torch.tensor(1 / mse)))


def test_a_batch_of_the_golden_pairs_equals_each_alone(models):
    """One batch holding both shared pairs (one content, two styles, two alphas): each image is
    its single-image result (>= 70 dB, fp32) and still the golden output (>= 40 dB)."""
    content = image(CONTENT / "bridge_512.jpg")
    pairs = [("style_b_512", 1.0), ("style_c_591x800", 0.6)]
    styles = [style_statistics(models, image(STYLE / f"{name}.jpg")) for name, _ in pairs]
    batch = stylize_batch(models, content.repeat(2, 1, 1, 1), styles, [alpha for _, alpha in pairs])
    for i, ((name, alpha), style) in enumerate(zip(pairs, styles)):
        assert float_psnr(batch[i:i + 1], stylize(models, content, style, alpha)) >= 70.0
        golden = read_image(str(GOLDEN / f"wct16x_bridge_512+{name}_alpha{alpha:g}.png")).rgb
        assert psnr(to_uint8_batch(batch)[i], golden) >= 40.0


@pytest.mark.parametrize("batch,h,w", [(2, 37, 50), (3, 48, 64), (5, 33, 71)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batched_equals_single_per_image(models, batch, h, w, layout):
    """Batches of several sizes, of odd sizes (padded to 16 inside, cropped back), mixing styles
    and alphas, in both layouts: every image as `stylize` makes it alone."""
    if layout == "channels_last":
        models = load_model_set(MODELS)
        models.to("cpu", channels_last=True)
    photos = [read_image(str(CONTENT / name)).rgb for name in ("harbor_420.jpg", "bridge_512.jpg")]
    rgbs = [photos[i % 2][17 * i:17 * i + h, 29 * i:29 * i + w] for i in range(batch)]
    styles = [style_statistics(models, image(STYLE / name, 128)) for name in ("style_a_570.jpg", "style_b_512.jpg")]
    per_image = [styles[i % 2] for i in range(batch)]
    alphas = [1.0 - 0.2 * i for i in range(batch)]
    out = stylize_batch(models, to_tensor_batch(rgbs), per_image, alphas)
    assert out.shape == (batch, 3, h, w)
    for i, rgb in enumerate(rgbs):
        assert float_psnr(out[i:i + 1], stylize(models, to_tensor(rgb), per_image[i], alphas[i])) >= 70.0


def test_batch_arguments_are_checked(models):
    adain = style_statistics(models, image(STYLE / "style_a_570.jpg", 64), "adain")
    wct = style_statistics(models, image(STYLE / "style_a_570.jpg", 64))
    contents = torch.rand(2, 3, 40, 40)
    with pytest.raises(ValueError, match="one method"):
        stylize_batch(models, contents, [wct, adain])
    with pytest.raises(ValueError, match="2 styles"):
        stylize_batch(models, contents, [wct])
    with pytest.raises(ValueError, match="alpha"):
        stylize_batch(models, contents, wct, [1.0, 1.5])
    with pytest.raises(ValueError, match="one size"):
        to_tensor_batch([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="stylize_batch"):
        stylize(models, contents, wct)


@pytest.mark.parametrize("h,w", [(420, 420), (333, 517), (37, 50)])
def test_output_size_equals_input_size(models, h, w):
    content = image(CONTENT / "harbor_420.jpg")[..., :h, :w]
    if content.shape[-2:] != (h, w):  # 517 is wider than the photo: tile it
        content = content.repeat(1, 1, 1, 2)[..., :h, :w]
    stats = style_statistics(models, image(STYLE / "style_a_570.jpg", 256))
    out = stylize(models, content, stats, 1.0)
    assert out.shape[-2:] == (h, w) and torch.isfinite(out).all()


def test_style_statistics_are_reusable(models):
    stats = style_statistics(models, image(STYLE / "style_a_570.jpg", 256))
    c1, c2 = image(CONTENT / "harbor_420.jpg", 160), image(CONTENT / "bridge_512.jpg", 160)
    first = stylize(models, c1, stats)
    stylize(models, c2, stats)
    torch.testing.assert_close(stylize(models, c1, stats), first)


@pytest.mark.parametrize("method", ["wct", "adain"])
def test_flat_images_give_finite_output(models, method):
    flat = torch.full((1, 3, 96, 96), 0.5)
    real = image(STYLE / "style_b_512.jpg", 128)
    for content, style in [(flat, real), (real, flat)]:
        out = stylize(models, content, style_statistics(models, style, method), 1.0)
        assert torch.isfinite(out).all()


def test_adain_matches_style_statistics_at_relu4_1(models):
    content, style = image(CONTENT / "bridge_512.jpg", 256), image(STYLE / "style_c_591x800.jpg", 256)
    stats = style_statistics(models, style, "adain")
    enc = models.encoder(4)
    with torch.inference_mode():
        fc = enc(content)
        a, b = transforms.affine_map(transforms.moments(fc), stats.stages[4], 1.0, "adain")
        transferred = transforms.apply_affine(fc, a, b)[0].flatten(1)
        fs = enc(style)[0].flatten(1)
        # The transform itself matches exactly ...
        torch.testing.assert_close(transferred.mean(1), fs.mean(1), rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(transferred.std(1), fs.std(1), rtol=1e-3, atol=1e-2)
        # ... and after decoding (the 16x decoder is not an exact inverse) and re-encoding, the
        # output's channel statistics are clearly nearer the style's than the content's were.
        out = enc(stylize(models, content, stats))[0].flatten(1)
        fc = fc[0].flatten(1)

    def std_gap(f):
        return float((f.std(1) - fs.std(1)).abs().mean() / fs.std(1).mean())

    def corr(x, y):
        return float(torch.corrcoef(torch.stack([x, y]))[0, 1])

    assert std_gap(out) < 0.7 * std_gap(fc)
    assert corr(out.mean(1), fs.mean(1)) > corr(fc.mean(1), fs.mean(1))
    assert corr(out.std(1), fs.std(1)) > corr(fc.std(1), fs.std(1))


def test_gatys_loss_falls_and_moves_towards_the_style(models):
    torch.manual_seed(0)
    content, style = image(CONTENT / "harbor_420.jpg", 96), image(STYLE / "style_b_512.jpg", 96)
    out, losses = gatys(models, content, style, iterations=20)
    assert losses[-1] < 0.5 * losses[0]
    net = models.encoder(5)
    with torch.no_grad():
        fs, fo, fc = net.features(style), net.features(out), net.features(content)
    def dist(fa):
        return sum(float(((gram(a) - gram(b)) ** 2).sum() / (gram(b) ** 2).sum()) for a, b in zip(fa, fs))
    assert dist(fo) < dist(fc)


def test_parse_levels():
    assert parse_levels(None) is None
    assert parse_levels("3,1") == (3, 1) == parse_levels((3, 1))
    assert parse_levels(4) == (4,)
    for bad in ("6", "a,b", "2,2", ","):
        with pytest.raises(ValueError, match="levels"):
            parse_levels(bad)


def test_rounding_is_half_up():
    x = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 1.2, -1.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 1, 2, 255, 0]
