"""Model sets: the encoders and decoders of stages 1..5, loaded from a directory or URI.

Both layouts of `modelfiles` load the same way: published pickles are read with
`torch.load(..., weights_only=True)`, this project's own sets are safetensors. Widths are read
off the weight shapes, so any student loads without being declared first; each file is checked
against its partner (decoder k must invert encoder k) and every error names the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..io import storage
from .modelfiles import (FORMAT, MANIFEST, ModelError, check_directory, check_partners, default_models_dir,
                         file_layout, infer_widths, model_id, read_file)
from .nets import STAGES, Decoder, Encoder, check_stage

@dataclass
class ModelSet:
    """Encoders and decoders of some stages, all on one device, in eval mode."""

    uri: str
    family: str
    encoders: dict[int, Encoder]
    decoders: dict[int, Decoder]
    model_id: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted(self.encoders))

    def to(self, device: torch.device | str, channels_last: bool = False) -> "ModelSet":
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for m in [*self.encoders.values(), *self.decoders.values()]:
            m.to(device=device, memory_format=fmt)
        return self

    def encoder(self, k: int) -> Encoder:
        return self._get(self.encoders, k, "encoder")

    def decoder(self, k: int) -> Decoder:
        return self._get(self.decoders, k, "decoder")

    def _get(self, table: dict, k: int, kind: str):
        check_stage(k)
        if k not in table:
            raise ModelError(f"{self.uri}: model set has no {kind} for stage {k} (has {self.stages})")
        return table[k]


# ---------------------------------------------------------------- reading


def _state_dict(data: bytes, path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            sd = load_safetensors(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    except Exception as e:  # the loaders raise many types for corrupt files
        raise ModelError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return sd


def _load_module(module: torch.nn.Module, sd: dict, path: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise ModelError(f"{path}: weights do not fit the model ({reason[:300]})") from None


def load_model_set(uri: str | os.PathLike | None = None, stages=None,
                   device: torch.device | str = "cpu") -> ModelSet:
    """Load encoders and decoders of `stages` (default: all the set has) from a model directory or URI."""
    uri = str(uri or default_models_dir())
    check_directory(uri)
    ext, manifest = file_layout(uri)
    stages = stages or manifest.get("stages") or STAGES
    family = manifest.get("family", "cd16x" if ext == "pth" else "custom")
    encoders, decoders, files = {}, {}, {}
    for k in sorted(set(stages), reverse=True):
        check_stage(k)
        modules = {}
        for kind, build in (("encoder", Encoder), ("decoder", Decoder)):
            name = f"{kind}{k}.{ext}"
            path = storage.join(uri, name)
            data, files[name] = read_file(uri, name, manifest)
            sd = _state_dict(data, path)
            widths = infer_widths({n: tuple(t.shape) for n, t in sd.items()}, k, path, family, kind == "decoder")
            modules[kind] = (build(k, widths), sd, path)
        check_partners(modules["encoder"][0].widths, modules["decoder"][0].widths, k, modules["decoder"][2],
                       f"encoder{k}.{ext}")
        for module, sd, path in modules.values():
            _load_module(module, sd, path)
        encoders[k], decoders[k] = modules["encoder"][0], modules["decoder"][0]
    for m in [*encoders.values(), *decoders.values()]:
        m.eval().requires_grad_(False)
    models = ModelSet(uri, family, encoders, decoders, model_id(family, files), files)
    return models.to(device)


# ---------------------------------------------------------------- writing


def save_stage(dest: str | os.PathLike, encoder: Encoder, decoder: Decoder, family: str) -> None:
    """Write stage k's encoder and decoder as safetensors into model set `dest` and update its
    manifest, keeping stages already there (a five-stage student is five calls)."""
    dest = str(dest)
    k = encoder.stage
    if decoder.stage != k:
        raise ValueError(f"encoder is stage {k} but decoder is stage {decoder.stage}")
    try:
        _, manifest = file_layout(dest)
    except ModelError:
        manifest = {}
    manifest = manifest or {"format": FORMAT, "family": family, "stages": [], "files": {}, "widths": {}}
    for kind, module in (("encoder", encoder), ("decoder", decoder)):
        sd = {n: t.detach().cpu().contiguous() for n, t in module.state_dict().items()}
        data = save_safetensors(sd, metadata={"family": family, "stage": str(k), "kind": kind})
        name = f"{kind}{k}.safetensors"
        storage.write_bytes(storage.join(dest, name), data)
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
    manifest["family"] = family
    manifest["stages"] = sorted(set(manifest["stages"]) | {k})
    manifest["widths"][str(k)] = encoder.widths.for_stage(k)
    storage.write_bytes(storage.join(dest, MANIFEST), json.dumps(manifest, indent=2).encode())
