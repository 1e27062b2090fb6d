"""JPEG through torchvision.io where it is faster than Pillow and gives the same image.

Measured here (benchmarks/actor_overlap.py; benchmarks/history/sessions-1-9.md, issue 11): on the
CPU torchvision decodes a plain JPEG straight to RGB about twice as fast as Pillow, to identical
pixels (both are libjpeg-turbo with the same settings), while Pillow encodes faster and keeps our
4:4:4 chroma. So:

- decode: torchvision for a plain JPEG (8-bit RGB or grey, no EXIF rotation), on the GPU (nvJPEG,
  in batches: `jpegbatch`) when the caller holds one and the JPEG has full-resolution chroma;
  Pillow for everything else (`images.decode`): CMYK, EXIF orientation, 16-bit, alpha and every other format keep exactly
  today's behaviour. nvJPEG upsamples subsampled chroma (4:2:0 and 4:2:2, what most cameras
  write) otherwise than libjpeg-turbo: up to 16 levels apart on an H200, and the stylized result
  35.5 dB from the CPU's (benchmarks/history/sessions-1-9.md, issue 15);
- encode: nvJPEG on a GPU; Pillow on the CPU.

torchvision is imported on first use, so commands that never decode stay quick to start.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, which we do not
# depend on; they work and are what the GPU image ships, so the notice is kept out of every log.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
EXIF_ORIENTATION = 0x0112
PLAIN_MODES = ("RGB", "L")


def load() -> None:
    """Import torchvision's codecs (a second or more, once per process)."""
    import torchvision.io  # noqa: F401


def is_plain_jpeg(img: Image.Image, device=None) -> bool:
    """A JPEG that torchvision decodes on `device` (None: the CPU) to exactly what `images.decode`
    makes of it with Pillow."""
    if img.format != "JPEG" or img.mode not in PLAIN_MODES:
        return False
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return False
    if device is None:
        return True
    import torch

    return torch.device(device).type == "cpu" or full_chroma(img)


def full_chroma(img: Image.Image) -> bool:
    """Whether every component of a JPEG has the same sampling factors (4:4:4, or grey)."""
    layers = getattr(img, "layer", None)  # Pillow's (id, h, v, table) per component
    return bool(layers) and len({(h, v) for _, h, v, _ in layers}) == 1


def decode_jpeg(data: bytes, device=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a plain JPEG, decoded on `device` (None: the CPU); on a GPU in
    batches with the other threads' JPEGs (`jpegbatch`)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode

    if device is not None and torch.device(device).type == "cuda":
        from .jpegbatch import batcher

        return batcher(device).decode(data)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rgb = tv_decode(encoded, mode=ImageReadMode.RGB, device=device or "cpu")
    return rgb.permute(1, 2, 0).contiguous().cpu().numpy()


def encode_jpeg(rgb: np.ndarray, quality: int, device) -> bytes:
    """JPEG bytes of (H, W, 3) uint8 `rgb` (any strides), encoded with nvJPEG on CUDA `device`."""
    import torch
    from torchvision.io import encode_jpeg as tv_encode

    image = torch.from_numpy(rgb).to(device).permute(2, 0, 1).contiguous()
    return tv_encode(image, quality=quality).cpu().numpy().tobytes()
