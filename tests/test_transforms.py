import pytest
import torch

from cdcore.transfer import transforms as T


def reference_wct(fc, fs, alpha):
    """Textbook WCT in float64 on (C, N) matrices, written independently of the module."""
    def centre(f):
        m = f.mean(1, keepdim=True)
        return f - m, m

    def power(f, p):
        cov = f @ f.T / (f.shape[1] - 1)
        e, v = torch.linalg.eigh(cov)
        return v @ torch.diag(e**p) @ v.T

    cc, mc = centre(fc)
    cs, ms = centre(fs)
    out = power(cs, 0.5) @ power(cc, -0.5) @ cc + ms
    return alpha * out + (1 - alpha) * fc


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_affine_map_equals_textbook_wct(alpha):
    g = torch.Generator().manual_seed(0)
    fc = torch.randn(8, 500, generator=g, dtype=torch.float64) * 3 + 5
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64)
    fs = mix @ torch.randn(8, 700, generator=g, dtype=torch.float64) - 2
    style = T.style_stage(T.moments(fs.reshape(8, 700, 1)))
    a, b = T.affine_map(T.moments(fc.reshape(8, 500, 1)), style, alpha)
    ours = a @ fc + b[:, None]
    torch.testing.assert_close(ours, reference_wct(fc, fs, alpha), rtol=1e-9, atol=1e-9)


def test_moments_accumulate_to_the_whole():
    f = torch.randn(1, 16, 30, 20) * 10 + 100
    whole = T.moments(f)
    parts = T.moments(f[..., :13, :]) + T.moments(f[..., 13:, :])
    for x, y in zip(whole.mean_cov(), parts.mean_cov()):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-7)
    assert parts.count == 600


def test_adain_matches_style_mean_and_std():
    fc = torch.randn(1, 4, 20, 20) * 2 + 1
    fs = torch.randn(1, 4, 20, 20) * torch.tensor([0.5, 1, 2, 4])[:, None, None] - 3
    a, b = T.affine_map(T.moments(fc), T.style_stage(T.moments(fs), "adain"), 1.0, "adain")
    out = T.apply_affine(fc.double(), a, b)[0].reshape(4, -1)
    ref = fs[0].reshape(4, -1).double()
    torch.testing.assert_close(out.mean(1), ref.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.std(1), ref.std(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", T.METHODS)
def test_flat_content_or_style_stays_finite(method):
    flat = torch.full((1, 8, 10, 10), 3.0)
    noisy = torch.randn(1, 8, 10, 10)
    for c, s in [(flat, noisy), (noisy, flat), (flat, flat)]:
        a, b = T.affine_map(T.moments(c), T.style_stage(T.moments(s), method), 1.0, method)
        assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_bad_arguments():
    m = T.moments(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="alpha"):
        T.affine_map(m, T.style_stage(m), 1.5)
    with pytest.raises(ValueError, match="method"):
        T.style_stage(m, "cyclegan")
    with pytest.raises(ValueError, match="channels"):
        T.affine_map(m, T.style_stage(T.moments(torch.randn(3, 5, 5))))


@pytest.mark.parametrize("method", T.METHODS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_batch_gets_each_images_own_map(method, channels_last):
    """moments_per_image, affine_map and apply_affine on a batch equal them image by image, with
    one style for all or one per image, one alpha or one per image."""
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(3, 6, 9, 7, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3])[:, None, None, None]
    styles = [T.style_stage(T.moments(torch.randn(6, 8, 8, generator=g, dtype=torch.float64) + i), method)
              for i in range(3)]
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    batch = T.moments_per_image(feats)
    for style, alphas in ((styles[0], 0.7), (T.stack_styles(styles), [1.0, 0.5, 0.0])):
        a, b = T.affine_map(batch, style, alphas, method)
        out = T.apply_affine(feats, a, b)
        for i in range(3):
            alone = T.moments(feats[i])
            torch.testing.assert_close(batch.total[i], alone.total)
            torch.testing.assert_close(batch.outer[i], alone.outer)
            own = styles[0] if isinstance(alphas, float) else styles[i]
            ai, bi = T.affine_map(alone, own, alphas if isinstance(alphas, float) else alphas[i], method)
            torch.testing.assert_close(a[i], ai, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(out[i:i + 1], T.apply_affine(feats[i:i + 1], ai, bi), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("flat", [False, True])
def test_fewer_pixels_than_channels_whiten_from_their_gram_matrix(flat):
    """Moments of fewer vectors than channels keep them, and the map made from their N x N Gram
    matrix equals the one from the C x C covariance, alone and in a batch (the rank-deficient case
    of a deep stage of a small image)."""
    g = torch.Generator().manual_seed(2)
    feats = torch.rand(3, 24, 3, 4, generator=g, dtype=torch.float64) * 5  # 12 pixels, 24 channels
    if flat:
        feats[1] = 2.0  # a flat image: zero covariance, the map sends it to the style mean
    style = T.style_stage(T.moments(torch.rand(24, 10, 10, generator=g, dtype=torch.float64)))
    batch = T.moments_per_image(feats)
    assert batch.samples.shape == (3, 12, 24)
    assert T.moments(torch.rand(1, 24, 5, 5)).samples is None  # 25 vectors: no samples
    from_covariance = T.Moments(batch.total, batch.outer, batch.count)
    for ours, ref in zip(T.affine_map(batch, style, 0.8), T.affine_map(from_covariance, style, 0.8)):
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)
    for i in range(3):
        alone = T.moments(feats[i])
        torch.testing.assert_close(alone.samples, batch.samples[i])
        a, _ = T.affine_map(alone, style, 0.8)
        torch.testing.assert_close(a, T.affine_map(batch, style, 0.8)[0][i], rtol=1e-10, atol=1e-10)
    assert (batch + batch).samples is None  # merged moments (tiles) fall back on the covariance


def test_moments_refuses_a_batch():
    with pytest.raises(ValueError, match="moments_per_image"):
        T.moments(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        T.affine_map(T.moments_per_image(torch.randn(2, 3, 4, 4)), T.style_stage(T.moments(torch.randn(3, 4, 4))),
                     [1.0, 2.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_eigh_on_the_host_gives_the_devices_maps(monkeypatch):
    """A GPU batch's eigendecompositions copied to the host and back give the same maps."""
    torch.manual_seed(0)
    x = torch.rand(4, 16, 300, dtype=torch.float64, device="cuda")
    content = T.Moments(x.sum(-1), x @ x.mT, 300)
    style = T.style_stage(T.Moments(x[0].sum(-1), x[0] @ x[0].mT, 300))
    on_device = T.affine_map(content, style)
    monkeypatch.setattr(T, "BATCHED_EIGH_ON_HOST", True)
    on_host = T.affine_map(content, style)
    for a, b in zip(on_device, on_host):
        assert a.is_cuda and b.is_cuda
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
