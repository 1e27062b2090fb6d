"""Training crops for distillation, as one deterministic stream that workers share out.

The stream is the image list in a fresh seeded permutation every epoch, repeated without end.
Global step s takes stream positions [s*B, (s+1)*B); worker r of W reads positions s*B + r,
s*B + r + W, ... (DistributedSampler's interleaving), so each image of a step is read and decoded
by one worker only, and the union over workers is the same batch whatever W is. The crop and flip
at a position come from a generator seeded by (seed, position): batches depend on the seed and the
global batch size only, not on the number of workers, and a resumed run sees the batches an
uninterrupted run would have seen.

Preprocessing follows the paper: shorter side resized to 300, a random square crop (256), a random
horizontal flip. Grey and palette images arrive as RGB from `images.decode`.

An image that cannot be decoded, or that has gone from storage since the listing, is skipped: the
position takes the next image of its epoch's order instead (and the one after, if that is bad
too), with the position's own crop and flip. Which image stands in depends on the position only,
so batches stay the same for any number of workers and loader processes. Other storage errors are
raised: an outage that outlasts the retries (skipping would make a batch depend on when the network
failed), or a refused access (which is rarely one object's: skipping would try every image).

`loader` reads a worker's batches ahead in `torch.utils.data.DataLoader` processes: a map-style
dataset over stream positions, with one worker's positions of one step as one loader batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from ..io import images, storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Generator stream tags, so the permutation of epoch n and the crop at position n differ.
_PERMUTATION, _CROP = 0, 1


def list_images(uri: str) -> tuple[str, ...]:
    """Every image under a folder or prefix, recursively, sorted (S3 listings are paginated)."""
    found = storage.list_files(uri, IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}")
    return tuple(found)


def save_listing(uri: str, found: Sequence[str]) -> None:
    """Write an image list, one URI a line: a run lists its data once and keeps the list, so
    workers, restarts and resumes read the same images in the same order, however the folder or
    bucket changes meanwhile."""
    storage.write_bytes(uri, "".join(f"{u}\n" for u in found).encode())


def load_listing(uri: str) -> tuple[str, ...]:
    """The image list `save_listing` wrote."""
    found = tuple(storage.read_bytes(uri).decode().splitlines())
    if not found:
        raise ValueError(f"{uri}: an empty image list")
    return found


def resize_shorter_side(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 scaled (antialiased bilinear) so that min(H, W) == side."""
    h, w = rgb.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


class Unreadable(NamedTuple):
    """An image the stream skipped, and why."""

    uri: str
    reason: str


# uri -> reason, for the images this process found unreadable: later epochs skip them without
# reading them again.
_unreadable: dict[str, str] = {}


@functools.lru_cache(maxsize=64)
def _load(uri: str, short_side: int) -> np.ndarray:
    # Small data sets are re-read every epoch; a bounded cache keeps them in memory without
    # letting a large one grow the process without limit.
    return resize_shorter_side(images.decode(storage.read_small(uri), uri).rgb, short_side)


def _load_or_none(uri: str, short_side: int) -> np.ndarray | None:
    """The resized image, or None when it is unreadable (remembered in `_unreadable`): bytes
    that do not decode, or an object gone since the listing. Other storage errors propagate."""
    if uri in _unreadable:
        return None
    try:
        return _load(uri, short_side)
    except storage.NotFound:
        _unreadable[uri] = f"{uri}: no such file or object"
    except images.ImageError as e:
        _unreadable[uri] = str(e)
    return None


def to_batch(crops: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 arrays -> (B, 3, H, W) float32 in [0, 1]."""
    return to_input(torch.from_numpy(np.stack(crops)))


def to_input(crops: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1] on `device`; the copy moves bytes,
    a quarter of the floats, and the conversion runs where the model does."""
    return crops.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


class Sample(NamedTuple):
    crop: np.ndarray  # (crop, crop, 3) uint8
    skipped: tuple[Unreadable, ...]  # images passed over to reach the one cropped


@dataclass(frozen=True)
class CropStream:
    """The seeded stream of training crops over `images` (URIs)."""

    images: tuple[str, ...]
    crop: int = 256
    short_side: int = 300
    seed: int = 0

    def __post_init__(self):
        if not self.images:
            raise ValueError("a crop stream needs at least one image")
        if not 1 <= self.crop <= self.short_side:
            raise ValueError(f"crop must be between 1 and the shorter side {self.short_side} (got {self.crop})")

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, _PERMUTATION, epoch)).permutation(len(self.images))

    def image_at(self, position: int) -> str:
        """The image at a stream position: epoch position // N, shuffled with the epoch's seed."""
        return next(self._candidates(position))

    def _candidates(self, position: int) -> Iterator[str]:
        """The image at `position`, then its stand-ins: the images after it in the epoch's order."""
        epoch, offset = divmod(position, len(self.images))
        order = self._epoch_order(epoch)
        for i in range(len(order)):
            yield self.images[order[(offset + i) % len(order)]]

    def sample(self, position: int) -> Sample:
        """The crop at a stream position, from its image or, if that is unreadable, its stand-in."""
        skipped = []
        for uri in self._candidates(position):
            rgb = _load_or_none(uri, self.short_side)
            if rgb is not None:
                return Sample(self._crop(rgb, position), tuple(skipped))
            skipped.append(Unreadable(uri, _unreadable[uri]))
        raise ValueError(f"none of the {len(self.images)} images is readable: "
                         + "; ".join(reason for _, reason in skipped[:3]))

    def _crop(self, rgb: np.ndarray, position: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, _CROP, position))
        top = rng.integers(0, rgb.shape[0] - self.crop + 1)
        left = rng.integers(0, rgb.shape[1] - self.crop + 1)
        crop = rgb[top: top + self.crop, left: left + self.crop]
        return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Worker `rank`'s share (batch_size / world, 3, crop, crop) of global batch `step`, read
        here and now, one image after another."""
        positions = step_positions(step, batch_size, rank, world)
        return to_batch([self.sample(p).crop for p in positions])


def step_positions(step: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """The stream positions worker `rank` of `world` reads for global step `step`."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} workers")
    if batch_size % world:
        raise ValueError(f"global batch size {batch_size} does not split over {world} workers")
    start = step * batch_size
    return range(start + rank, start + batch_size, world)


# -------------------------------------------------------------------------------- the loader


class Batch(NamedTuple):
    """One worker's share of a step: a (B, crop, crop, 3) uint8 tensor per stream (content, and
    style for AdaIN), and the unreadable images the step passed over."""

    crops: tuple[torch.Tensor, ...]
    skipped: tuple[Unreadable, ...]


class _Positions(torch.utils.data.Dataset):
    """Map-style dataset over stream positions: item p is every stream's sample at p. It has no
    length: the stream never ends, and the sampler says which positions to read."""

    def __init__(self, streams: Sequence[CropStream]):
        self.streams = tuple(streams)

    def __getitem__(self, position: int) -> tuple[Sample, ...]:
        return tuple(stream.sample(position) for stream in self.streams)


class _StepSampler(torch.utils.data.Sampler):
    """Yields, for each step of `steps`, the positions one worker reads (a loader batch)."""

    def __init__(self, steps: range, batch_size: int, rank: int, world: int):
        step_positions(0, batch_size, rank, world)  # check the shape once, here
        self.steps, self.batch_size, self.rank, self.world = steps, batch_size, rank, world

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            yield list(step_positions(step, self.batch_size, self.rank, self.world))


def _collate(items: list[tuple[Sample, ...]]) -> Batch:
    crops = tuple(torch.from_numpy(np.stack([item[i].crop for item in items])) for i in range(len(items[0])))
    skipped = tuple(u for item in items for sample in item for u in sample.skipped)
    return Batch(crops, skipped)


def loader(streams: Sequence[CropStream], steps: range, batch_size: int, rank: int = 0, world: int = 1,
           workers: int = 0, prefetch: int = 2, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Worker `rank`'s batches of global steps `steps`, in order, one `Batch` per step.

    workers: loader processes; each prepares whole steps, `prefetch` steps ahead of the training
        loop, so up to workers x prefetch steps are read, decoded and cropped while it computes.
        0 reads each step in the calling process when it is asked for (no overlap).
    pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """
    if workers < 0 or prefetch < 1:
        raise ValueError(f"loader workers must be >= 0 and prefetch >= 1 (got {workers}, {prefetch})")
    return torch.utils.data.DataLoader(
        _Positions(streams),
        batch_sampler=_StepSampler(steps, batch_size, rank, world),
        collate_fn=_collate,
        num_workers=workers,
        prefetch_factor=prefetch if workers else None,
        pin_memory=pin_memory,
    )
