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
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .. import images, storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Generator stream tags, so the permutation of epoch n and the crop at position n differ.
_PERMUTATION, _CROP = 0, 1


def list_images(uri: str) -> tuple[str, ...]:
    """Every image under a folder or prefix, recursively, sorted."""
    found = storage.list_files(uri, IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}")
    return tuple(found)


def resize_shorter_side(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 scaled (antialiased bilinear) so that min(H, W) == side."""
    h, w = rgb.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


@functools.lru_cache(maxsize=64)
def _load(uri: str, short_side: int) -> np.ndarray:
    # Small data sets are re-read every epoch; a bounded cache keeps them in memory without
    # letting a large one grow the worker without limit.
    return resize_shorter_side(images.read_image(uri).rgb, short_side)


def to_batch(crops: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 arrays -> (B, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)


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

    def image_at(self, position: int) -> str:
        """The image at a stream position: epoch position // N, shuffled with the epoch's seed."""
        epoch, offset = divmod(position, len(self.images))
        order = np.random.default_rng((self.seed, _PERMUTATION, epoch)).permutation(len(self.images))
        return self.images[order[offset]]

    def sample(self, position: int) -> np.ndarray:
        """The (crop, crop, 3) uint8 crop at a stream position."""
        rgb = _load(self.image_at(position), self.short_side)
        rng = np.random.default_rng((self.seed, _CROP, position))
        top = rng.integers(0, rgb.shape[0] - self.crop + 1)
        left = rng.integers(0, rgb.shape[1] - self.crop + 1)
        crop = rgb[top: top + self.crop, left: left + self.crop]
        return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Worker `rank`'s share (batch_size / world, 3, crop, crop) of global batch `step`."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world} workers")
        if batch_size % world:
            raise ValueError(f"global batch size {batch_size} does not split over {world} workers")
        start = step * batch_size
        return to_batch([self.sample(p) for p in range(start + rank, start + batch_size, world)])
