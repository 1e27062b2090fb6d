"""A teacher encoder from torchvision's VGG-19 ImageNet weights.

torchvision's `vgg19` expects RGB in [0, 1] normalised by the ImageNet mean and std, where the
published WCT encoders expect Caffe's BGR * 255 - mean. Our encoders absorb input normalisation in
their 1x1 `conv0`, so the converted teacher keeps torchvision's conv weights unchanged and its
conv0 computes (x - mean) / std per RGB channel.

One difference stays: torchvision's convs pad with zeros, ours reflect (as the WCT models do), so
features agree with torchvision's except within a few pixels of the border.
"""
from __future__ import annotations

import io

import torch

from ..io import storage
from ..models.nets import LAYERS, TEACHER, Encoder, check_stage

# torchvision.transforms.Normalize values that VGG-19's ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_index() -> dict[str, int]:
    """Our conv name -> its index in torchvision's `vgg19().features`, where every conv is
    followed by its own ReLU module and every pool is one module (relu{k}_1 is index + 1)."""
    index, position = {}, 0
    for name in LAYERS:
        if name != "pool":
            index[name] = position
        position += 1 if name == "pool" else 2
    return index


def normalising_conv0(encoder: Encoder) -> None:
    """Set the encoder's conv0 to (x - IMAGENET_MEAN) / IMAGENET_STD on RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    with torch.no_grad():
        encoder.conv0.weight.copy_(torch.diag(1.0 / std)[:, :, None, None])
        encoder.conv0.bias.copy_(-mean / std)


def encoder_from_torchvision(state_dict: dict[str, torch.Tensor], stage: int) -> Encoder:
    """The VGG-19 teacher encoder of `stage` from a `torchvision.models.vgg19` state dict
    (`features.{i}.weight` / `.bias`; the classifier is ignored)."""
    check_stage(stage)
    encoder = Encoder(stage, TEACHER)
    normalising_conv0(encoder)
    index = torchvision_index()
    with torch.no_grad():
        for name in TEACHER.for_stage(stage):
            conv = getattr(encoder, name)
            for part in ("weight", "bias"):
                key = f"features.{index[name]}.{part}"
                if key not in state_dict:
                    raise ValueError(f"not a torchvision vgg19 state dict: {key} missing")
                tensor = state_dict[key]
                if tensor.shape != getattr(conv, part).shape:
                    raise ValueError(f"{key} has shape {tuple(tensor.shape)}, VGG-19's {name} needs "
                                     f"{tuple(getattr(conv, part).shape)}")
                getattr(conv, part).copy_(tensor)
    return encoder.eval().requires_grad_(False)


def load_torchvision_weights(uri: str) -> dict[str, torch.Tensor]:
    """A torchvision VGG-19 weights file (e.g. vgg19-dcbb9e9d.pth) read from a path or URI, with
    `weights_only=True` (it is an untrusted pickle)."""
    data = storage.read_bytes(uri)
    state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{uri}: expected a state dict, got {type(state_dict).__name__}")
    return state_dict
