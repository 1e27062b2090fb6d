"""cdcore.pipeline.Stylist: the one flow behind the command, the job's actors and library users."""
import numpy as np
import pytest
from PIL import Image

from cdcore.io.images import read_image
from cdcore.options import Recipe
from cdcore.pipeline import Stylist, StylizeError
from shared import CONTENT, MODELS, STYLE

STYLE_IMG = str(STYLE / "style_a_570.jpg")


@pytest.fixture(scope="module")
def stylist():
    return Stylist(str(MODELS), "cpu")


@pytest.fixture(scope="module")
def content_path(tmp_path_factory):
    """A 90 x 67 photo with an alpha ramp (not multiples of 16)."""
    path = tmp_path_factory.mktemp("in") / "harbor.png"
    rgb = np.array(Image.open(CONTENT / "harbor_420.jpg").resize((90, 67)))
    alpha = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (67, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def small_style():
    return Image.open(STYLE_IMG).resize((128, 128))


def test_file_and_image_front_ends_give_the_same_pixels(stylist, content_path, small_style, tmp_path):
    style_path = tmp_path / "style.png"
    small_style.save(style_path)
    out = tmp_path / "out.png"
    recipe = Recipe(alpha=0.7, levels=(4, 3, 2, 1))
    done = stylist.stylize_file(str(content_path), str(style_path), str(out), recipe)
    assert (done.width, done.height) == (90, 67)
    image = stylist.stylize(Image.open(content_path), small_style, recipe)
    assert image.mode == "RGBA" and image.size == (90, 67)
    written = read_image(str(out))
    np.testing.assert_array_equal(np.asarray(image)[..., :3], written.rgb)
    np.testing.assert_array_equal(np.asarray(image)[..., 3], written.alpha)
    from_paths = stylist.stylize(str(content_path), str(style_path), recipe)
    np.testing.assert_array_equal(np.asarray(from_paths), np.asarray(image))


def test_a_prepared_style_is_reused_and_must_fit_the_recipe(stylist, content_path, small_style):
    content = np.asarray(Image.open(content_path).convert("RGB"))
    prepared = stylist.prepare_style(small_style, method="adain")
    direct = stylist.stylize(content, small_style, method="adain")
    np.testing.assert_array_equal(np.asarray(stylist.stylize(content, prepared, method="adain")), np.asarray(direct))
    with pytest.raises(StylizeError, match="prepared for"):
        stylist.stylize(content, prepared, method="wct")


def test_options_reach_the_code_that_uses_them(stylist, content_path, small_style):
    content = Image.open(content_path).convert("RGB")
    recipe = Recipe(levels=(2, 1))
    base = np.asarray(stylist.stylize(content, small_style, recipe), dtype=int)
    for change in ({"alpha": 0.3}, {"levels": (1,)}, {"style_size": 64}):
        other = np.asarray(stylist.stylize(content, small_style, recipe, **change), dtype=int)
        assert np.abs(other - base).mean() > 1.0, change
    assert stylist.stylize(content, small_style, levels=(2, 1), content_size=48).size == (64, 48)  # shorter side
    strokes = stylist.stylize(content, small_style, levels=(3, 2, 1), stroke_scale=2)
    assert strokes.size == content.size
    assert stylist.stylize(content, small_style, method="gatys", iterations=2).size == content.size


def test_gatys_options_reach_the_optimizer(stylist, content_path, small_style, monkeypatch):
    calls = []

    def record(models, content, style, iterations, style_weight, init, progress=None):
        calls.append((tuple(content.shape), tuple(style.shape), iterations, style_weight, init))
        return content, []

    monkeypatch.setattr("cdcore.pipeline.gatys", record)
    stylist.stylize(Image.open(content_path), small_style, method="gatys", iterations=7, style_weight=3.5,
                    init="noise", style_size=64, content_size=48)
    assert calls == [((1, 3, 48, 64), (1, 3, 64, 64), 7, 3.5, "noise")]


def test_gatys_start_and_weight_change_the_pixels(stylist, content_path, small_style):
    content = Image.open(content_path).convert("RGB")
    base = np.asarray(stylist.stylize(content, small_style, method="gatys", iterations=10), dtype=int)
    for change in ({"init": "noise"}, {"style_weight": 1e4}):
        other = np.asarray(stylist.stylize(content, small_style, method="gatys", iterations=10, **change), dtype=int)
        assert np.abs(other - base).mean() > 0.1, change  # few iterations: small but real
    again = np.asarray(stylist.stylize(content, small_style, method="gatys", iterations=10, init="noise"))
    np.testing.assert_array_equal(again, np.asarray(stylist.stylize(content, small_style, method="gatys",
                                                                    iterations=10, init="noise")))  # seeded


def test_style_preparations_are_cached_per_file_and_recipe(content_path, tmp_path):
    stylist = Stylist(str(MODELS), "cpu", stages=(2, 1), style_cache=2)
    for i, recipe in enumerate([Recipe(levels=(2, 1)), Recipe(levels=(2, 1), alpha=0.5), Recipe(levels=(1,))]):
        stylist.stylize_file(str(content_path), STYLE_IMG, str(tmp_path / f"{i}.jpg"), recipe)
    assert stylist.styles_prepared == 2  # alpha does not change the style's statistics; levels do


@pytest.mark.parametrize("size,levels,need", [((4000, 4), None, 17), ((1, 1), None, 17), ((30, 8), (4, 3), 9)])
def test_a_content_too_small_for_its_stages_is_refused_naming_the_file(stylist, tmp_path, size, levels, need):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size, (90, 120, 200)).save(path)
    with pytest.raises(StylizeError) as refused:
        stylist.stylize_file(str(path), STYLE_IMG, str(tmp_path / "out.png"), Recipe(levels=levels))
    message = str(refused.value)
    assert message.startswith(f"{path}: content image too small") and f"at least {need} px" in message
    assert not (tmp_path / "out.png").exists()
    # The shallow stages alone do run on it.
    shallow = Recipe(levels=(1,)) if min(size) < 3 else Recipe(levels=(2, 1))
    if min(size) >= 2:
        stylist.stylize_file(str(path), STYLE_IMG, str(tmp_path / "out.png"), shallow)
        assert read_image(str(tmp_path / "out.png")).size == size


def test_errors_name_the_input_at_fault(stylist, content_path, tmp_path):
    with pytest.raises(StylizeError, match=f"{tmp_path / 'none.jpg'}: no such file"):
        stylist.stylize_file(str(tmp_path / "none.jpg"), STYLE_IMG, str(tmp_path / "o.png"))
    with pytest.raises(StylizeError, match="style image too small"):
        stylist.stylize(Image.open(content_path), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(StylizeError, match="o.bmp: unsupported output format"):
        stylist.stylize_file(str(content_path), STYLE_IMG, str(tmp_path / "o.bmp"))
    with pytest.raises(StylizeError, match=r"content: expected a PIL image, an \(H, W, 3\) uint8 array or a path"):
        stylist.stylize(np.zeros((20, 20)), STYLE_IMG)
