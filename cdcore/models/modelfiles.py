"""The files of a model set, read without torch: names, checksums, tensor shapes, widths.

Two layouts exist:
- the published Collaborative Distillation files, `encoder{k}.pth` / `decoder{k}.pth` (PyTorch
  pickles holding `{"epoch", "model"}` or a bare state dict);
- sets this project writes: `encoder{k}.safetensors` / `decoder{k}.safetensors` plus `model.json`
  (family, widths, stages present, sha256 of every file).

`modelset` loads the weights (torch); this module answers what can be known from the files alone,
fast: `cdcore models info` and `fetch_published` need no torch. Shapes of a safetensors file come
from its JSON header. Shapes of a PyTorch pickle come from `_ShapeUnpickler`, which knows the
handful of names a state dict is made of and builds a shape where torch would build a tensor; any
other name in the file is refused, so, as with `torch.load(weights_only=True)`, nothing in a
model file can run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import urllib.request
import zipfile
from pathlib import Path

from ..io import storage
from .architecture import STAGES, TEACHER_WIDTHS, Widths, stage_convs

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

Shapes = dict[str, tuple[int, ...]]


class ModelError(ValueError):
    """A model file is missing, unreadable or does not fit its stage; the message names the file."""


def default_models_dir() -> str:
    """`$CDCORE_MODELS`, else where `cdcore models fetch` writes by default."""
    if os.environ.get("CDCORE_MODELS"):
        return os.environ["CDCORE_MODELS"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "cdcore", "models", "cd16x")


# ---------------------------------------------------------------- the set's files


def file_layout(uri: str) -> tuple[str, dict]:
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


def check_directory(uri: str) -> None:
    if storage.is_local(uri) and not storage.local_path(uri).is_dir():
        raise ModelError(f"{uri}: model directory not found (run `cdcore models fetch` or pass --models)")


def read_file(uri: str, name: str, manifest: dict) -> tuple[bytes, str]:
    """The bytes of file `name` under `uri` and their sha256, checked against the manifest's."""
    path = storage.join(uri, name)
    try:
        data = storage.read_bytes(path)
    except storage.NotFound:
        raise ModelError(f"{path}: model file missing") from None
    except storage.StorageError as e:
        raise ModelError(f"cannot read model file: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    want = manifest.get("files", {}).get(name)
    if want and want != digest:
        raise ModelError(f"{path}: sha256 {digest} does not match the manifest")
    return data, digest


def model_id(family: str, digests: dict[str, str]) -> str:
    """`<family>-<12 hex>`: names exactly the files loaded, whatever their location."""
    return f"{family}-{hashlib.sha256(''.join(digests[n] for n in sorted(digests)).encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- shapes


class _Shape(tuple):
    """A tensor's shape where a tensor would be."""


class _StateDict(dict):
    """Stands in for OrderedDict; a dict subclass, so that BUILD can set `_metadata` on it."""


def _rebuild_tensor(storage, offset, size, *rest) -> _Shape:
    return _Shape(size)


def _rebuild_parameter(data, *rest):
    return data


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch.save pickle into dicts of shapes; refuses every name but these."""

    ALLOWED = {("collections", "OrderedDict"): _StateDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        if module == "torch" and name.endswith("Storage"):  # only named in persistent ids
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid):
        return None  # a storage: its data is not needed for shapes


def _pickle_shapes(data: bytes) -> object:
    """The object of a torch.save file with shapes for tensors: the zip format (torch >= 1.6) or
    the legacy one (magic number, protocol, system info, then the object)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            return _ShapeUnpickler(io.BytesIO(z.read(name))).load()
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, sys info: plain values
        _ShapeUnpickler(stream).load()
    return _ShapeUnpickler(stream).load()


def _safetensors_shapes(data: bytes) -> Shapes:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + length])
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def tensor_shapes(data: bytes, path: str) -> Shapes:
    """Parameter name -> shape of a model file's state dict (a bare one or under "model")."""
    try:
        if path.endswith(".safetensors"):
            return _safetensors_shapes(data)
        obj = _pickle_shapes(data)
    except Exception as e:  # truncated files, foreign pickles and bad headers raise many types
        raise ModelError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, _Shape) for v in sd.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    return {name: tuple(shape) for name, shape in sd.items()}


def infer_widths(shapes: Shapes, k: int, path: str, family: str, decoder: bool) -> Widths:
    """Widths of stage k as stored (out channels for encoders, in channels for decoders), after
    checking that exactly the stage's layers are present."""
    expected = set(stage_convs(k))
    found = {key.rsplit(".", 1)[0] for key in shapes if key.startswith("conv") and "_aux" not in key}
    found.discard("conv0")
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise ModelError(f"{path}: layers do not match stage {k} (missing {missing}, unexpected {extra})")
    try:
        dim = 1 if decoder else 0
        widths = {n: int(shapes[f"{n}.weight"][dim]) for n in stage_convs(k)}
    except (KeyError, IndexError) as e:
        raise ModelError(f"{path}: malformed weights ({e})") from None
    full = {**TEACHER_WIDTHS, **widths}  # deeper layers are unused by this stage
    # A student's aux layers map to its teacher's widths, which need not be VGG-19's.
    aux = {key.split("_aux")[0]: int(s[0]) for key, s in shapes.items() if key.endswith("1_aux.weight")}
    return Widths(family, full, aux=bool(aux), aux_widths={**TEACHER_WIDTHS, **aux} if aux else None)


def check_partners(encoder: Widths, decoder: Widths, k: int, decoder_path: str, encoder_name: str) -> None:
    """Decoder k must invert encoder k: the same widths, read from the other side."""
    if encoder.for_stage(k) != decoder.for_stage(k):
        raise ModelError(f"{decoder_path}: widths {list(decoder.for_stage(k).values())} do not invert "
                         f"{encoder_name} (widths {list(encoder.for_stage(k).values())})")


# ---------------------------------------------------------------- describing


def _parameters(shapes: Shapes) -> int:
    count = 0
    for name, shape in shapes.items():
        if "_aux" not in name:  # the training-only embeddings are not part of the model
            n = 1
            for d in shape:
                n *= d
            count += n
    return count


def describe_model_set(uri: str | os.PathLike | None = None) -> str:
    """What `cdcore models info` prints: stages, widths and parameter counts, from the files."""
    uri = str(uri or default_models_dir())
    check_directory(uri)
    ext, manifest = file_layout(uri)
    family = manifest.get("family", "cd16x" if ext == "pth" else "custom")
    stages = tuple(sorted(manifest.get("stages") or STAGES))
    rows, digests = [], {}
    for k in stages:
        counts, widths = {}, {}
        for kind in ("encoder", "decoder"):
            name = f"{kind}{k}.{ext}"
            data, digests[name] = read_file(uri, name, manifest)
            shapes = tensor_shapes(data, storage.join(uri, name))
            widths[kind] = infer_widths(shapes, k, storage.join(uri, name), family, kind == "decoder")
            counts[kind] = _parameters(shapes)
        check_partners(widths["encoder"], widths["decoder"], k, storage.join(uri, f"decoder{k}.{ext}"),
                       f"encoder{k}.{ext}")
        aux = " +aux" if widths["encoder"].aux else ""
        rows.append(f"  stage {k}  widths {'-'.join(map(str, widths['encoder'].for_stage(k).values()))}{aux}"
                    f"  params enc {counts['encoder']:,} dec {counts['decoder']:,}")
    head = [f"model set {uri}", f"  family   {family}", f"  id       {model_id(family, digests)}",
            f"  stages   {','.join(map(str, stages))}"]
    return "\n".join(head + rows)


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
