"""One small interface over URIs: local paths, file:// and s3://.

(Local-only placeholder; the S3 backend is being written.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse


class StorageError(OSError):
    """An object could not be read or written; the message names the URI and the reason."""


class NotFound(StorageError):
    pass


def is_local(uri: str) -> bool:
    return urlparse(str(uri)).scheme in ("", "file")


def local_path(uri: str) -> Path:
    uri = str(uri)
    return Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_local(base) and not base.startswith("file://"):
        return str(Path(base, *parts))
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    return local_path(uri).exists()


def read_bytes(uri: str) -> bytes:
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{uri}: no such file") from None
    except OSError as e:
        raise StorageError(f"{uri}: {e.strerror or e}") from None


def write_bytes(uri: str, data: bytes) -> None:
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
