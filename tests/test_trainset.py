"""The training crop stream: deterministic, and the same global batch for any number of workers."""
from __future__ import annotations

import pytest
import torch

from cdcore.training import trainset

TRAIN = "../shared/images/train"


@pytest.fixture(scope="module")
def stream():
    return trainset.CropStream(trainset.list_images(TRAIN), crop=64, short_side=96, seed=7)


def test_lists_images_recursively_and_refuses_an_empty_folder(tmp_path):
    assert len(trainset.list_images(TRAIN)) == 13
    with pytest.raises(ValueError, match=str(tmp_path)):
        trainset.list_images(str(tmp_path))


def test_batches_are_rgb_crops_in_unit_range(stream):
    x = stream.batch(0, 26)  # two epochs: every image, the three grey ones included
    assert x.shape == (26, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_each_epoch_visits_every_image_once(stream):
    n = len(stream.images)
    for epoch in range(2):
        assert sorted(stream.image_at(epoch * n + i) for i in range(n)) == sorted(stream.images)


@pytest.mark.parametrize("world", [2, 4])
def test_worker_shares_make_up_the_single_worker_batch(stream, world):
    whole = stream.batch(3, 8)
    shares = [stream.batch(3, 8, rank, world) for rank in range(world)]
    assert all(s.shape[0] == 8 // world for s in shares)
    # Worker r holds positions r, r + world, ...: interleave the shares back.
    rebuilt = torch.stack(shares, dim=1).reshape(whole.shape)
    torch.testing.assert_close(rebuilt, whole, rtol=0, atol=0)
    assert torch.equal(stream.batch(3, 8), whole)  # and the stream is deterministic


def test_bad_shapes_are_refused(stream):
    with pytest.raises(ValueError, match="6"):
        stream.batch(0, 6, 0, 4)
    with pytest.raises(ValueError, match="300"):
        trainset.CropStream(stream.images, crop=300, short_side=96)
