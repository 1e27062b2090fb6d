"""Batched JPEG decoding (cdcore.io.jpegbatch): what threads decode at the same time goes out in
one torchvision call, each JPEG gets its own pixels, and a JPEG that fails fails alone.

The batcher runs on the CPU here (torchvision decodes a list there too); on a GPU the same code
sends the list to nvJPEG (the last test, skipped without CUDA)."""
from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from cdcore.io import images
from cdcore.io.jpegbatch import JpegBatcher
from tests.shared import SHARED


def jpegs(count: int) -> list[bytes]:
    """`count` distinct 4:4:4 JPEGs of several sizes: crops of a shared photo."""
    photo = Image.open(SHARED / "images" / "content" / "bridge_512.jpg").convert("RGB")
    out = []
    for i in range(count):
        crop = photo.crop((3 * i, 2 * i, 3 * i + 40 + 8 * (i % 3), 2 * i + 30 + 4 * (i % 2)))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90, subsampling=0)
        out.append(buffer.getvalue())
    return out


def pillow_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class GatedBatcher(JpegBatcher):
    """Its first decode call waits at a gate, so that the test decides what queues behind it."""

    def __init__(self, *args, **kwargs):
        self.gate, self.entered = threading.Event(), threading.Event()
        super().__init__(*args, **kwargs)

    def _call(self, encoded):
        self.entered.set()
        self.gate.wait(30)
        return super()._call(encoded)


def decode_all(batcher: GatedBatcher, data: list[bytes]) -> list:
    """Decode `data` from one thread per JPEG: the first alone, the others queued behind it while
    it waits at the gate; each outcome is pixels or the exception raised."""
    def one(item: bytes):
        try:
            return batcher.decode(item)
        except RuntimeError as e:
            return e

    with ThreadPoolExecutor(len(data)) as pool:
        first = pool.submit(one, data[0])
        assert batcher.entered.wait(30)  # the first JPEG is in the decoder, at the gate
        rest = [pool.submit(one, item) for item in data[1:]]
        while batcher._queue.qsize() < len(data) - 1:
            threading.Event().wait(0.01)
        batcher.gate.set()
        return [first.result()] + [future.result() for future in rest]


def test_concurrent_decodes_share_one_call_and_keep_their_pixels():
    data = jpegs(12)
    batcher = GatedBatcher("cpu")
    decoded = decode_all(batcher, data)
    assert (batcher.calls, batcher.images) == (2, 12)  # the first alone, then the eleven queued behind it
    for item, rgb in zip(data, decoded):
        assert rgb.dtype == np.uint8 and np.array_equal(rgb, pillow_rgb(item))


def test_a_corrupt_jpeg_fails_alone():
    """The batch holding it fails as a whole in torchvision; the batcher decodes its JPEGs again
    one by one, so the others keep their pixels and only the corrupt one raises."""
    data = jpegs(6)
    data.insert(3, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # a JPEG header, then garbage
    batcher = GatedBatcher("cpu")
    decoded = decode_all(batcher, data)
    assert isinstance(decoded[3], RuntimeError)
    for i, (item, rgb) in enumerate(zip(data, decoded)):
        if i != 3:
            assert np.array_equal(rgb, pillow_rgb(item))
    assert batcher.calls == 2 + 6  # the failed batch of six, then each of them again


def test_a_lone_decode_does_not_wait():
    batcher = JpegBatcher("cpu")
    item = jpegs(1)[0]
    assert np.array_equal(batcher.decode(item), pillow_rgb(item))
    with pytest.raises(RuntimeError):
        batcher.decode(b"\xff\xd8\xff\xe0 not a jpeg")
    assert batcher.calls == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_chroma_jpegs_decode_on_the_gpu_in_batches_to_the_cpus_pixels():
    """images.decode on a GPU sends 4:4:4 JPEGs through the device's batcher: Pillow's pixels."""
    from cdcore.io.jpegbatch import batcher

    device = torch.device("cuda")
    data = jpegs(16)
    before = batcher(device).images
    with ThreadPoolExecutor(8) as pool:
        pictures = list(pool.map(lambda item: images.decode(item, "row.jpg", device=device), data))
    assert batcher(device).images - before == len(data)
    for item, picture in zip(data, pictures):
        assert np.array_equal(picture.rgb, pillow_rgb(item))
