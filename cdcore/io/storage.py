"""One small interface over URIs: local paths, file:// and s3://.

Model directories, images, manifests and results tables all move through these functions, so a job
runs the same against a local disk, MinIO, Ceph or AWS S3. Local files are handled here; objects on
S3 by the `s3` backend (boto3, its endpoint and retries: see `configure`). Every failure is a
one-line StorageError (NotFound where nothing is there) that names the URI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from . import s3
from .errors import NotFound, StorageError, is_transient, one_line
from .s3 import DEFAULT_MAX_ATTEMPTS, configure, transient_answer

__all__ = ["DEFAULT_MAX_ATTEMPTS", "Head", "NotFound", "StorageError", "arrow_filesystem", "atomic_local",
           "configure", "download", "exists", "is_local", "is_transient", "join", "list_files", "local_path",
           "ping", "read_bytes", "read_head", "read_small", "size", "transient_answer", "upload", "write_bytes"]


@contextlib.contextmanager
def _errors(label: str) -> Iterator[None]:
    """Turn boto3 and OS errors into a one-line StorageError or NotFound that starts with `label`."""
    try:
        with s3.errors(label):
            yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise NotFound(f"{label}: no such file") from e
    except OSError as e:
        raise StorageError(f"{label}: {one_line(e.strerror or e)}") from e


# ------------------------------------------------------------------------------------------- URIs

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


@contextlib.contextmanager
def atomic_local(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the caller to create; move it into place on success.

    os.replace within one directory is atomic: readers see the old file or the whole new one. The
    name is hidden and ends in ".part" so list_files skips writes in progress. The caller creates
    the file itself (not mkstemp) so it gets the usual umask permissions, not 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(".part")


# ------------------------------------------------------------------------------------- operations

def exists(uri: str) -> bool:
    """Whether a local file/directory or an S3 object (not a mere key prefix) exists."""
    uri = str(uri)
    if is_local(uri):
        return local_path(uri).exists()
    try:
        size(uri)
    except NotFound:
        return False
    return True


def size(uri: str) -> int:
    """Size in bytes of the file or object."""
    uri = str(uri)
    with _errors(uri):
        return local_path(uri).stat().st_size if is_local(uri) else s3.size(uri)


@dataclasses.dataclass(frozen=True)
class Head:
    """The first bytes of a file or object (`read_head`), its whole size, and on S3 the version
    they came from (its ETag): what `read_bytes` needs to fetch only the rest."""

    data: bytes
    size: int
    etag: str | None = None

    @property
    def whole(self) -> bool:
        return len(self.data) >= self.size


def read_bytes(uri: str, head: Head | None = None) -> bytes:
    """The whole file or object. Given its `head`, an object fetches only what `head` lacks, in one
    ranged GET of that version, where the rest is under the part size (nothing at all where the head
    holds it whole): a small image then costs one request in all, not a HEAD and a GET more."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            return local_path(uri).read_bytes()
        if head is not None and head.whole:
            return head.data
        if head is not None and head.size - len(head.data) <= s3.part_size():
            rest = s3.read_rest(uri, len(head.data), head.size, head.etag)
            if rest is not None:
                return head.data + rest
        return s3.read_whole(uri)


def read_small(uri: str) -> bytes:
    """`read_bytes` for small files and objects, such as training images: one GET request.

    download_fileobj asks for the size first and starts transfer threads, which on an object of
    some 100 KB costs several times the transfer itself; a plain GET does not.
    """
    uri = str(uri)
    with _errors(uri):
        return local_path(uri).read_bytes() if is_local(uri) else s3.read_small(uri)


def read_head(uri: str, length: int) -> Head:
    """The first `length` bytes of a file or object (fewer when it is shorter) and its whole size,
    in one request: enough to read an image's header without fetching the image."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            with open(local_path(uri), "rb") as f:
                return Head(f.read(length), os.fstat(f.fileno()).st_size)
        return Head(*s3.read_head(uri, length))


def download(uri: str, path: str | os.PathLike) -> None:
    """Copy `uri` to the local file `path`: on S3 in parallel ranged parts when larger than the
    part size, a broken part fetched again."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            shutil.copyfile(local_path(uri), path)
        else:
            s3.download(uri, str(path))


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` at `uri` atomically: temp file + rename locally; S3 objects appear whole anyway."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            with atomic_local(local_path(uri)) as tmp:
                tmp.write_bytes(data)
        else:
            s3.write_bytes(uri, data)


def upload(path: str | os.PathLike, uri: str) -> None:
    """Copy the local file `path` to `uri`: atomically on disk; on S3 in parallel parts when larger
    than the part size (a failed multipart upload is aborted, never left half visible)."""
    uri = str(uri)
    with _errors(f"{path} -> {uri}"):
        if is_local(uri):
            with atomic_local(local_path(uri)) as tmp:
                shutil.copyfile(path, tmp)
        else:
            s3.upload(str(path), uri)


def ping(prefix: str) -> None:
    """One cheap request to the storage of `prefix` (a listing of at most one key under it);
    raises StorageError when storage does not answer. Local paths always answer."""
    prefix = str(prefix)
    if not is_local(prefix):
        with _errors(prefix):
            s3.ping(prefix)


def list_files(prefix: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file under `prefix`, recursively, sorted, as full URIs in the prefix's own form.

    `prefix` is a folder: a local directory, or an s3:// prefix taken up to a "/" (so "s3://b/img"
    lists "img/..." and not "img2/..."). A missing directory or empty prefix gives [].
    `suffixes` such as [".jpg", ".png"] keeps names ending in one of them, ignoring case.
    """
    prefix = str(prefix)
    with _errors(prefix):
        uris = _list_local(prefix) if is_local(prefix) else s3.list_objects(prefix)
    if suffixes is not None:
        if isinstance(suffixes, str):
            suffixes = [suffixes]
        ends = tuple("." + s.lower().lstrip(".") for s in suffixes)
        uris = [u for u in uris if u.lower().endswith(ends)]
    return sorted(uris)


def _list_local(prefix: str) -> list[str]:
    root = local_path(prefix)
    return [
        join(prefix, os.path.relpath(os.path.join(folder, name), root))
        for folder, _, names in os.walk(root)
        for name in names
        if not _is_partial(name)
    ]


def arrow_filesystem(uri: str, max_attempts: int | None = None):
    """(pyarrow FileSystem, path) for `uri`, with this module's endpoint, region and retries
    (`max_attempts` tries per request instead, where a caller would rather wait than fail).

    pyarrow alone honours AWS_ENDPOINT_URL but not configure() or CDCORE_S3_ENDPOINT. Use as
    `pq.read_table(path, filesystem=fs)`; `path` may be one file or a directory of files.
    """
    uri = str(uri)
    if is_local(uri):
        import pyarrow.fs as pafs  # only table code needs pyarrow; keep image workers' imports light

        return pafs.LocalFileSystem(), str(local_path(uri))
    return s3.arrow_filesystem(uri, max_attempts)
