"""Model sets: the encoders and decoders of stages 1..5, stored in a directory or under a URI.

Two layouts load the same way:
- the published Collaborative Distillation files, `encoder{k}.pth` / `decoder{k}.pth` (PyTorch
  pickles holding `{"epoch", "model"}` or a bare state dict; read with `weights_only=True`);
- sets this project writes: `encoder{k}.safetensors` / `decoder{k}.safetensors` plus `model.json`
  (family, widths, stages present, sha256 of every file).

Widths are read off the weight shapes, so any student loads without being declared first; each
file is checked against its partner (decoder k must invert encoder k) and every error names the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import storage
from .nets import STAGES, TEACHER_WIDTHS, Decoder, Encoder, Widths, check_stage, stage_convs

MANIFEST = "model.json"
FORMAT = "cdcore-modelset/1"

UPSTREAM_REPO = "MingSun-Tse/Collaborative-Distillation"
UPSTREAM_COMMIT = "4a269dc90020721ef9b279b2926c62f5bcd6d209"
UPSTREAM_BASE = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/trained_models"
# Local name -> (path under UPSTREAM_BASE, sha256).
PUBLISHED = {
    "decoder1.pth": ("wct_se_16x_new_sd/1SD.pth", "05f26ad40044c019da0cf731372d5bd2ee4b477825c7f45508da70b1cd5a95fd"),
    "decoder2.pth": ("wct_se_16x_new_sd/2SD.pth", "94dd26f0e69857f79bf284a43a3708aa05c09c2593427c7f6e400ad12ce314e6"),
    "decoder3.pth": ("wct_se_16x_new_sd/3SD.pth", "005faba27859435762a8a9386116c00629cd8835a01617d0a71defa577c42174"),
    "decoder4.pth": ("wct_se_16x_new_sd/4SD.pth", "902f65e2c6033d803d02df552eb898e5985190a7ae67d155e384826eec6f04cb"),
    "decoder5.pth": ("wct_se_16x_new_sd/5SD.pth", "17fd0f81622f01366eb21cb4d40140ee38cf988ed6eaf266629709c397a8b485"),
    "encoder1.pth": ("wct_se_16x_new/1SE.pth", "f74755a65164a88e0db8cbb7d99d7078b9fa505df0953fac5123bfc7c84e0ea4"),
    "encoder2.pth": ("wct_se_16x_new/2SE.pth", "cb654af6bae77176f8c7721c965483e865b987f2f1612dda1ba0d0b5c3819a61"),
    "encoder3.pth": ("wct_se_16x_new/3SE.pth", "269cdd0e2634e3e1e5d3005b9e7eca0f4cc8077653fee1ac8c0cf1cbe9ab8758"),
    "encoder4.pth": ("wct_se_16x_new/4SE.pth", "d2f059cbcd6669556a43aadef58d20c8b280462c18b60a9e7424a14dd271cd6b"),
    "encoder5.pth": ("wct_se_16x_new/5SE.pth", "9417c34d0d8d621bc6af78be745f1b8d30f5f210efa01e50655c60eb3770816b"),
}


class ModelError(ValueError):
    """A model file is missing, unreadable or does not fit its stage; the message names the file."""


def default_models_dir() -> str:
    """`$CDCORE_MODELS`, else where `cdcore models fetch` writes by default."""
    if os.environ.get("CDCORE_MODELS"):
        return os.environ["CDCORE_MODELS"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "cdcore", "models", "cd16x")


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

    def describe(self) -> str:
        lines = [f"model set {self.uri}", f"  family   {self.family}", f"  id       {self.model_id}",
                 f"  stages   {','.join(map(str, self.stages))}"]
        for k in self.stages:
            enc, dec = self.encoders[k], self.decoders[k]
            widths = "-".join(str(w) for w in enc.widths.for_stage(k).values())
            n_enc = sum(p.numel() for n, p in enc.named_parameters() if "_aux" not in n)
            n_dec = sum(p.numel() for p in dec.parameters())
            aux = " +aux" if enc.widths.aux else ""
            lines.append(f"  stage {k}  widths {widths}{aux}  params enc {n_enc:,} dec {n_dec:,}")
        return "\n".join(lines)


# ---------------------------------------------------------------- reading


def _read_state_dict(uri: str, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in file `name` under `uri`, and the file's sha256."""
    path = storage.join(uri, name)
    try:
        data = storage.read_bytes(path)
    except storage.NotFound:
        raise ModelError(f"{path}: model file missing") from None
    except storage.StorageError as e:
        raise ModelError(f"cannot read model file: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        if name.endswith(".safetensors"):
            sd = load_safetensors(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    except Exception as e:  # the loaders raise many types for corrupt files
        raise ModelError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return sd, digest


def _infer_widths(sd: dict, k: int, path: str, family: str, decoder: bool) -> Widths:
    """Widths of stage k as stored in a state dict (out channels for encoders, in channels for
    decoders), after checking that exactly the stage's layers are present."""
    expected = set(stage_convs(k))
    found = {key.rsplit(".", 1)[0] for key in sd if key.startswith("conv") and "_aux" not in key}
    found.discard("conv0")
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise ModelError(f"{path}: layers do not match stage {k} (missing {missing}, unexpected {extra})")
    try:
        dim = 1 if decoder else 0
        widths = {n: int(sd[f"{n}.weight"].shape[dim]) for n in stage_convs(k)}
    except (KeyError, IndexError) as e:
        raise ModelError(f"{path}: malformed weights ({e})") from None
    full = {**TEACHER_WIDTHS, **widths}  # deeper layers are unused by this stage
    # A student's aux layers map to its teacher's widths, which need not be VGG-19's.
    aux = {key.split("_aux")[0]: int(t.shape[0]) for key, t in sd.items() if key.endswith("1_aux.weight")}
    return Widths(family, full, aux=bool(aux), aux_widths={**TEACHER_WIDTHS, **aux} if aux else None)


def _load_module(module: torch.nn.Module, sd: dict, path: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise ModelError(f"{path}: weights do not fit the model ({reason[:300]})") from None


def _file_names(uri: str) -> tuple[str, dict]:
    """('safetensors', manifest) for sets this project wrote, ('pth', {}) for published ones."""
    try:
        manifest = json.loads(storage.read_bytes(storage.join(uri, MANIFEST)))
    except storage.NotFound:
        return "pth", {}
    except (storage.StorageError, ValueError) as e:
        raise ModelError(f"{storage.join(uri, MANIFEST)}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{storage.join(uri, MANIFEST)}: unknown format {manifest.get('format')!r}")
    return "safetensors", manifest


def load_model_set(uri: str | os.PathLike | None = None, stages=STAGES,
                   device: torch.device | str = "cpu") -> ModelSet:
    """Load encoders and decoders of `stages` from a model directory or URI."""
    uri = str(uri or default_models_dir())
    if storage.is_local(uri) and not storage.local_path(uri).is_dir():
        raise ModelError(f"{uri}: model directory not found (run `cdcore models fetch` or pass --models)")
    ext, manifest = _file_names(uri)
    family = manifest.get("family", "cd16x" if ext == "pth" else "custom")
    encoders, decoders, files = {}, {}, {}
    for k in sorted(set(stages), reverse=True):
        check_stage(k)
        enc_name, dec_name = f"encoder{k}.{ext}", f"decoder{k}.{ext}"
        enc_sd, files[enc_name] = _read_state_dict(uri, enc_name)
        dec_sd, files[dec_name] = _read_state_dict(uri, dec_name)
        for name in (enc_name, dec_name):
            want = manifest.get("files", {}).get(name)
            if want and want != files[name]:
                raise ModelError(f"{storage.join(uri, name)}: sha256 {files[name]} does not match the manifest")
        enc_w = _infer_widths(enc_sd, k, storage.join(uri, enc_name), family, decoder=False)
        dec_w = _infer_widths(dec_sd, k, storage.join(uri, dec_name), family, decoder=True)
        if enc_w.for_stage(k) != dec_w.for_stage(k):
            raise ModelError(f"{storage.join(uri, dec_name)}: widths {list(dec_w.for_stage(k).values())} do not "
                             f"invert {enc_name} (widths {list(enc_w.for_stage(k).values())})")
        encoders[k], decoders[k] = Encoder(k, enc_w), Decoder(k, dec_w)
        _load_module(encoders[k], enc_sd, storage.join(uri, enc_name))
        _load_module(decoders[k], dec_sd, storage.join(uri, dec_name))
    for m in [*encoders.values(), *decoders.values()]:
        m.eval().requires_grad_(False)
    digest = hashlib.sha256("".join(files[n] for n in sorted(files)).encode()).hexdigest()
    models = ModelSet(uri, family, encoders, decoders, f"{family}-{digest[:12]}", files)
    return models.to(device)


def describe_model_set(uri: str | os.PathLike | None = None) -> str:
    """What `cdcore models info` prints: stages, widths and parameter counts of a model set."""
    return load_model_set(uri).describe()


# ---------------------------------------------------------------- writing


def save_stage(dest: str | os.PathLike, encoder: Encoder, decoder: Decoder, family: str) -> None:
    """Write stage k's encoder and decoder as safetensors into model set `dest` and update its
    manifest, keeping stages already there (a five-stage student is five calls)."""
    dest = str(dest)
    k = encoder.stage
    if decoder.stage != k:
        raise ValueError(f"encoder is stage {k} but decoder is stage {decoder.stage}")
    try:
        _, manifest = _file_names(dest)
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


# ---------------------------------------------------------------- fetching


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_published(dest: str | os.PathLike | None = None, source: str | None = None,
                    log=print) -> Path:
    """Download the ten published 16x files into `dest` and verify their sha256.

    `source` defaults to the upstream repository at the pinned commit; a local directory or a
    file:// URL with the project layout (`encoder{k}.pth`, ...) stands in for it. A file whose
    checksum does not match is not kept, and the error names it.
    """
    dest_dir = Path(dest or default_models_dir())
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name, (upstream_path, sha) in sorted(PUBLISHED.items()):
        target = dest_dir / name
        if target.exists() and _sha256_file(target) == sha:
            log(f"{name}: present, sha256 ok")
            continue
        tmp = dest_dir / f".{name}.part"
        try:
            if source is None or source.startswith(("http://", "https://")):
                url = f"{(source or UPSTREAM_BASE).rstrip('/')}/{upstream_path}"
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        f.write(block)
            else:
                tmp.write_bytes(storage.read_bytes(storage.join(source, name)))
        except (OSError, storage.StorageError) as e:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"{name}: download from {source or UPSTREAM_BASE} failed ({e})") from None
        got = _sha256_file(tmp)
        if got != sha:
            tmp.unlink()
            raise ModelError(f"{name}: sha256 mismatch (got {got}, expected {sha}); file not kept")
        os.replace(tmp, target)
        log(f"{name}: fetched, sha256 ok")
    return dest_dir
