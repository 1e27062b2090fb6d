import io

import numpy as np
import pytest
from PIL import Image

from cdcore.io import images


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w=40, h=30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=2).astype(np.uint8)


def test_exif_orientation_is_applied():
    rgb = gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pic = images.decode(encoded(Image.fromarray(rgb), "PNG", exif=exif), "rotated.png")
    assert pic.size == (30, 40)
    np.testing.assert_array_equal(pic.rgb, np.rot90(rgb, k=-1))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "F"])
def test_modes_convert_to_rgb(mode):
    rgb = gradient()
    img = Image.fromarray(rgb).convert("L" if mode in ("I;16", "F") else mode)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255)
    pic = images.decode(encoded(img, "TIFF"), f"{mode}.tif")
    assert pic.rgb.shape == (30, 40, 3) and pic.rgb.dtype == np.uint8
    assert (pic.alpha is not None) == (mode in ("LA", "RGBA"))
    if mode in ("L", "I;16", "F"):  # 16-bit and float grey are scaled, not clipped, to 8 bits
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        assert np.abs(pic.rgb[..., 0].astype(int) - grey).max() <= 1


def test_alpha_travels_to_formats_that_keep_it(tmp_path):
    alpha = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    pic = images.Picture(gradient(), alpha)
    for ext, keeps in [(".png", True), (".tif", True), (".webp", True), (".jpg", False)]:
        path = tmp_path / f"out{ext}"
        images.write_image(str(path), pic)
        back = images.read_image(str(path))
        assert (back.alpha is not None) == keeps
        if ext in (".png", ".tif"):
            np.testing.assert_array_equal(back.alpha, alpha)
            np.testing.assert_array_equal(back.rgb, pic.rgb)


@pytest.mark.parametrize("data,reason", [
    (b"hello, not an image", "not a readable image"),
    (encoded(Image.fromarray(gradient(200, 200)), "JPEG")[:3000], "truncated"),
    (encoded(Image.new("LAB", (8, 8)), "TIFF"), "unsupported image mode LAB"),
])
def test_bad_images_name_the_input_and_reason(data, reason):
    with pytest.raises(images.ImageError, match=reason) as e:
        images.decode(data, "s3://bucket/bad.jpg")
    assert str(e.value).startswith("s3://bucket/bad.jpg: ")


def test_pixel_limit_checked_before_decoding():
    data = encoded(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(images.ImageError, match="more than the limit"):
        images.decode(data, "big.png", max_pixels=50_000)
    assert images.decode(data, "big.png", max_pixels=60_000).size == (300, 200)


def test_unknown_output_extension():
    with pytest.raises(images.ImageError, match="unsupported output format .gif"):
        images.output_format("x.gif")
