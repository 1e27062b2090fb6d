"""The training crop stream: deterministic, and the same global batch for any number of workers."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from cdcore.io import s3, storage
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


# ------------------------------------------------------------------------------ the loader


def loaded(stream, steps, batch_size=8, rank=0, world=1, workers=0, prefetch=2):
    """The loader's batches as float tensors, with the skipped images of each."""
    batches = trainset.loader([stream], steps, batch_size, rank, world, workers, prefetch)
    return [(trainset.to_input(b.crops[0]), b.skipped) for b in batches]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_loader_gives_the_in_loop_batches_whatever_its_worker_count(stream, workers):
    world, steps = 2, range(2, 6)
    for rank in range(world):
        got = loaded(stream, steps, rank=rank, world=world, workers=workers, prefetch=1 if workers else 2)
        assert len(got) == len(steps)
        for step, (x, skipped) in zip(steps, got):
            assert torch.equal(x, stream.batch(step, 8, rank, world)) and skipped == ()


def test_a_resumed_loader_continues_with_the_batches_of_an_uninterrupted_one(stream):
    whole = loaded(stream, range(0, 6), workers=2)
    resumed = loaded(stream, range(4, 6), workers=1)
    for (a, _), (b, _) in zip(whole[4:], resumed):
        assert torch.equal(a, b)


def test_loader_settings_are_checked(stream):
    with pytest.raises(ValueError, match="-1"):
        trainset.loader([stream], range(3), 8, workers=-1)
    with pytest.raises(ValueError, match="prefetch"):
        trainset.loader([stream], range(3), 8, workers=1, prefetch=0)


def test_style_and_content_streams_travel_in_one_batch(stream):
    style = dataclasses.replace(stream, seed=8)
    (batch,) = trainset.loader([stream, style], range(1, 2), 4, workers=0)
    assert torch.equal(trainset.to_input(batch.crops[0]), stream.batch(1, 4))
    assert torch.equal(trainset.to_input(batch.crops[1]), style.batch(1, 4))


# ------------------------------------------------------------------------- unreadable images


@pytest.fixture
def with_bad_images(tmp_path):
    """Six small images, a file that is not an image and a truncated JPEG, as a stream."""
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a JPEG")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bad = [str(tmp_path / "garbage.jpg"), str(tmp_path / "truncated.jpg")]
    return trainset.CropStream(trainset.list_images(str(tmp_path)), crop=24, short_side=32, seed=5), bad


def test_unreadable_images_are_passed_over_for_the_next_image_of_the_epoch(with_bad_images):
    stream, bad = with_bad_images
    n = len(stream.images)
    skipped_at = {}
    for p in range(2 * n):
        sample = stream.sample(p)
        assert sample.crop.shape == (24, 24, 3)
        if sample.skipped:
            skipped_at[p] = sample.skipped
            # The stand-in is the first readable image after the bad one in the epoch's order.
            epoch, offset = divmod(p, n)
            order = [stream.images[i] for i in stream._epoch_order(epoch)]
            following = order[offset:] + order[:offset]
            standin = next(u for u in following if u not in bad)
            assert following.index(standin) == len(sample.skipped)
    # Every bad image is passed over at its own position in each epoch, named with its reason.
    assert sorted(skips[0].uri for skips in skipped_at.values()) == sorted(bad * 2)
    assert all(stream.image_at(p) == skips[0].uri for p, skips in skipped_at.items())
    reasons = {u.uri: u.reason for skips in skipped_at.values() for u in skips}
    assert all(reasons[uri].startswith(uri) for uri in bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_is_deterministic_and_reported_by_the_loader(with_bad_images, workers):
    stream, bad = with_bad_images
    got = loaded(stream, range(0, 4), batch_size=4, rank=1, world=2, workers=workers)
    for step, (x, _) in enumerate(got):
        assert torch.equal(x, stream.batch(step, 4, 1, 2))
    reported = {u.uri for _, skipped in got for u in skipped}
    # Over 16 positions, worker 1 of 2 reads every other: whatever it met is named, and only bad images.
    expected = {u.uri for p in range(1, 16, 2) for u in stream.sample(p).skipped}
    assert expected and reported == expected and reported <= set(bad)


def test_a_stream_without_a_readable_image_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"no")
    stream = trainset.CropStream((str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg")), crop=8, short_side=8)
    with pytest.raises(ValueError, match="none of the 2 images is readable"):
        stream.sample(0)


def test_storage_failures_are_raised_not_skipped(stream, monkeypatch):
    def outage(uri):
        raise storage.StorageError(f"{uri}: SlowDown: please reduce your request rate")

    monkeypatch.setattr(storage, "read_small", outage)
    fresh = dataclasses.replace(stream, short_side=97)  # not in the decoded-image cache
    with pytest.raises(storage.StorageError, match="SlowDown"):
        fresh.sample(0)


def test_images_on_s3_are_read_and_a_vanished_one_is_skipped(s3_bucket, tmp_path):
    names = []
    for i in range(3):
        names.append(f"{s3_bucket}/train/{i}.png")
        buffer = io.BytesIO()
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(buffer, "PNG")
        storage.write_bytes(names[-1], buffer.getvalue())
    assert storage.read_small(names[0]) == storage.read_bytes(names[0])
    stream = trainset.CropStream(trainset.list_images(f"{s3_bucket}/train") + (f"{s3_bucket}/train/gone.png",),
                                 crop=16, short_side=20)
    samples = [stream.sample(p) for p in range(4)]
    assert [u.uri for s in samples for u in s.skipped] == [f"{s3_bucket}/train/gone.png"]
    assert "no such file or object" in next(u.reason for s in samples for u in s.skipped)


# ------------------------------------------------------------------------------------ listings


def test_a_listing_is_kept_and_read_back(tmp_path, stream):
    uri = str(tmp_path / "run" / "images.txt")
    trainset.save_listing(uri, stream.images)
    assert trainset.load_listing(uri) == stream.images


def test_s3_listings_are_paginated(s3_bucket):
    # S3 returns at most 1,000 keys per request: more than that needs the next pages.
    client = s3.client()
    bucket = s3_bucket.removeprefix("s3://")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"coco/{i:05d}.jpg", Body=b""), range(1005)))
    found = trainset.list_images(f"{s3_bucket}/coco")
    assert len(found) == 1005 and found[-1] == f"{s3_bucket}/coco/01004.jpg"
