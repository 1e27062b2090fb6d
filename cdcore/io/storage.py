"""One small interface over URIs: local paths, file:// and s3://.

Model directories, images, manifests and results tables all move through these functions, so a job
runs the same against a local disk, MinIO, Ceph or AWS S3.

S3 goes through boto3 with its standard credential chain (environment, profile, instance role);
nothing here reads or prints credentials. The endpoint is, first found: `configure(endpoint_url=...)`,
`CDCORE_S3_ENDPOINT`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`; none means AWS itself. Ray workers
are other processes: they see environment variables (pass them in the runtime_env), not the
driver's `configure()` calls.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

MiB = 1024 * 1024


class StorageError(OSError):
    """An object could not be read or written; the message names the URI and the reason.
    `transient`: trying again later may succeed (the connection failed or timed out, the server
    answered 5xx or asked to slow down), as opposed to a missing object or a refused access."""

    transient = False

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class NotFound(StorageError):
    """The file, object or bucket does not exist."""


# ---------------------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class _Settings:
    endpoint_url: str | None = None
    max_attempts: int | None = None  # None: $AWS_MAX_ATTEMPTS, else DEFAULT_MAX_ATTEMPTS
    part_size: int = 16 * MiB


DEFAULT_MAX_ATTEMPTS = 6


_settings = _Settings()


def configure(
    *,
    endpoint_url: str | None = None,
    max_attempts: int | None = None,
    part_size: int = _Settings.part_size,
) -> None:
    """Set this process's S3 options; each call replaces all of them (`configure()` resets).

    endpoint_url: an S3-compatible server such as "http://minio:9000", overriding the environment.
    max_attempts: tries per request; throttling, 5xx and dropped connections are retried with
        exponential backoff (botocore "standard" retry mode). None: `$AWS_MAX_ATTEMPTS` (the AWS
        tools' own variable, which reaches Ray workers through the runtime env), else 6.
    part_size: objects larger than this move in parts of this size, in parallel (S3 minimum 5 MiB).
    """
    global _settings
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if part_size < 5 * MiB:
        raise ValueError(f"part_size must be at least 5 MiB (S3's minimum part), got {part_size}")
    _settings = _Settings(endpoint_url, max_attempts, part_size)


def _endpoint() -> str | None:
    # Resolved here rather than left to boto3 so the client, the cache key and arrow_filesystem
    # all agree on one endpoint.
    return (
        _settings.endpoint_url
        or os.environ.get("CDCORE_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


# ----------------------------------------------------------------------------------------- client

_client_lock = threading.Lock()
_cached_client: tuple[tuple, object] | None = None  # ((pid, endpoint, max_attempts), client)


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child.
    global _client_lock
    _client_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _max_attempts() -> int:
    """Tries per request: configure()'s, else $AWS_MAX_ATTEMPTS, else DEFAULT_MAX_ATTEMPTS."""
    return _settings.max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS)


def _client():
    """This process's S3 client, created on first use.

    Keyed by pid: a client's connection pool must not be shared across a fork, so a Ray worker or
    multiprocessing child builds its own. Once built, boto3 clients are safe to share by threads.
    """
    global _cached_client
    key = (os.getpid(), _endpoint(), _max_attempts())
    with _client_lock:
        if _cached_client is None or _cached_client[0] != key:
            _cached_client = (key, _new_client(key[1], key[2]))
        return _cached_client[1]


def _new_client(endpoint: str | None, max_attempts: int):
    config = botocore.config.Config(
        # "total_max_attempts" counts the first try; botocore's "max_attempts" key counts only retries.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        # S3-compatible servers (MinIO, Ceph, moto) serve buckets as paths, not as DNS subdomains.
        s3={"addressing_style": "path"} if endpoint else None,
    )
    # A private Session: boto3's default session is not thread-safe while creating clients.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _transfer() -> TransferConfig:
    return TransferConfig(multipart_threshold=_settings.part_size, multipart_chunksize=_settings.part_size)


# ---------------------------------------------------------------------------------------- errors

_NOT_FOUND_REASONS = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such key"}
# Error codes of S3 and its look-alikes that mean "not now" rather than "no".
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
                    "RequestTimeout", "ServiceUnavailable", "InternalError", "OperationAborted"}
# botocore's failures to get an answer at all: refused, reset or closed connections, timeouts.
_TRANSIENT_BOTOCORE = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                       botocore.exceptions.ReadTimeoutError, botocore.exceptions.ResponseStreamingError,
                       botocore.exceptions.IncompleteReadError)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _from_client_error(label: str, e: botocore.exceptions.ClientError) -> StorageError:
    error = e.response.get("Error", {})
    code = error.get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _NOT_FOUND_REASONS or code in ("404", "NotFound") or status == 404:
        # A HEAD answer has no body, so a 404 there cannot tell a missing key from a missing bucket.
        return NotFound(f"{label}: {_NOT_FOUND_REASONS.get(code, 'not found (404)')}")
    return StorageError(f"{label}: {code or status}: {_one_line(error.get('Message') or e)}",
                        transient_answer(code, status))


def transient_answer(code: str, status: int | None) -> bool:
    """Whether an S3 error answer, by its code (such as "SlowDown") or HTTP status, means "not now"
    rather than "no". Shared by every client of S3 here (boto3, and pyarrow in cdcore.io.patientfs)."""
    return code in _TRANSIENT_CODES or status == 429 or (status or 0) >= 500


def _from_botocore_error(label: str, e: Exception) -> StorageError:
    transient = isinstance(e, _TRANSIENT_BOTOCORE) or isinstance(e, boto3.exceptions.RetriesExceededError)
    return StorageError(f"{label}: {_one_line(e)}", transient)


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a transient StorageError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, StorageError):
            return error.transient
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _errors(label: str) -> Iterator[None]:
    """Turn boto3 and OS errors into a one-line StorageError or NotFound that starts with `label`."""
    try:
        yield
    except StorageError:
        raise
    except boto3.exceptions.S3UploadFailedError as e:
        # boto3 wraps an upload's ClientError in this; unwrap it so a missing bucket stays NotFound.
        cause = e.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            raise _from_client_error(label, cause) from e
        if isinstance(cause, botocore.exceptions.BotoCoreError):
            raise _from_botocore_error(label, cause) from e
        raise StorageError(f"{label}: {_one_line(e)}") from e
    except botocore.exceptions.ClientError as e:
        raise _from_client_error(label, e) from e
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error) as e:
        raise _from_botocore_error(label, e) from e
    except FileNotFoundError as e:
        raise NotFound(f"{label}: no such file") from e
    except OSError as e:
        raise StorageError(f"{label}: {_one_line(e.strerror or e)}") from e


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


def _split_s3(uri: str) -> tuple[str, str]:
    """"s3://bucket/some/key" -> ("bucket", "some/key"). Keys are taken verbatim (no URL decoding)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"unsupported URI {uri!r}: expected a local path, file:// or s3://")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


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
        if is_local(uri):
            return local_path(uri).stat().st_size
        bucket, key = _split_s3(uri)
        return _client().head_object(Bucket=bucket, Key=key)["ContentLength"]


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
        if head is not None and head.size - len(head.data) <= _settings.part_size:
            rest = _rest_of(uri, head)
            if rest is not None:
                return head.data + rest
        buffer = io.BytesIO()
        # download_fileobj, not get_object: it fetches big objects in parallel ranges and retries a
        # stream that breaks midway, which botocore's request retries do not cover.
        _client().download_fileobj(*_split_s3(uri), buffer, Config=_transfer())
        return buffer.getvalue()


def _rest_of(uri: str, head: Head) -> bytes | None:
    """The bytes of the object after `head`, in one ranged GET of the same version; None where the
    object has changed since (the caller reads the new one whole)."""
    bucket, key = _split_s3(uri)
    condition = {"IfMatch": head.etag} if head.etag else {}
    for attempt in range(1, _max_attempts() + 1):
        try:
            body = _client().get_object(Bucket=bucket, Key=key, Range=f"bytes={len(head.data)}-", **condition)["Body"]
            rest = body.read()
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
            if attempt == _max_attempts():
                raise
            continue
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "InvalidRange"):
                return None
            raise
        return rest if len(head.data) + len(rest) == head.size else None
    return None


def read_small(uri: str) -> bytes:
    """`read_bytes` for small files and objects, such as training images: one GET request.

    download_fileobj asks for the size first and starts transfer threads, which on an object of
    some 100 KB costs several times the transfer itself; a plain GET does not. Its body arrives
    whole or the read is tried again (botocore retries requests, not a body that breaks midway).
    """
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            return local_path(uri).read_bytes()
        bucket, key = _split_s3(uri)
        attempts = _max_attempts()
        for attempt in range(1, attempts + 1):
            body = _client().get_object(Bucket=bucket, Key=key)["Body"]
            try:
                return body.read()
            except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
                if attempt == attempts:
                    raise


def read_head(uri: str, length: int) -> Head:
    """The first `length` bytes of a file or object (fewer when it is shorter) and its whole size,
    in one request: enough to read an image's header without fetching the image."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            path = local_path(uri)
            with open(path, "rb") as f:
                return Head(f.read(length), os.fstat(f.fileno()).st_size)
        bucket, key = _split_s3(uri)
        answer = _client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(length, 1) - 1}")
        total = answer.get("ContentRange", "").rpartition("/")[2]
        data = answer["Body"].read()
        return Head(data, int(total) if total.isdigit() else len(data), answer.get("ETag"))


def download(uri: str, path: str | os.PathLike) -> None:
    """Copy `uri` to the local file `path`: on S3 in parallel ranged parts when larger than the
    part size, a broken part fetched again."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            shutil.copyfile(local_path(uri), path)
        else:
            _client().download_file(*_split_s3(uri), str(path), Config=_transfer())


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` at `uri` atomically: temp file + rename locally; S3 objects appear whole anyway."""
    uri = str(uri)
    with _errors(uri):
        if is_local(uri):
            with atomic_local(local_path(uri)) as tmp:
                tmp.write_bytes(data)
        else:
            _client().upload_fileobj(io.BytesIO(data), *_split_s3(uri), Config=_transfer())


def upload(path: str | os.PathLike, uri: str) -> None:
    """Copy the local file `path` to `uri`: atomically on disk; on S3 in parallel parts when larger
    than the part size (a failed multipart upload is aborted, never left half visible)."""
    uri = str(uri)
    with _errors(f"{path} -> {uri}"):
        if is_local(uri):
            with atomic_local(local_path(uri)) as tmp:
                shutil.copyfile(path, tmp)
        else:
            _client().upload_file(str(path), *_split_s3(uri), Config=_transfer())


def ping(prefix: str) -> None:
    """One cheap request to the storage of `prefix` (a listing of at most one key under it);
    raises StorageError when storage does not answer. Local paths always answer."""
    prefix = str(prefix)
    if is_local(prefix):
        return
    bucket, key = _split_s3(prefix)
    with _errors(prefix):
        _client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)


def list_files(prefix: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file under `prefix`, recursively, sorted, as full URIs in the prefix's own form.

    `prefix` is a folder: a local directory, or an s3:// prefix taken up to a "/" (so "s3://b/img"
    lists "img/..." and not "img2/..."). A missing directory or empty prefix gives [].
    `suffixes` such as [".jpg", ".png"] keeps names ending in one of them, ignoring case.
    """
    prefix = str(prefix)
    with _errors(prefix):
        uris = _list_local(prefix) if is_local(prefix) else _list_s3(prefix)
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


def _list_s3(prefix: str) -> list[str]:
    bucket, key = _split_s3(prefix)
    folder = key if key == "" or key.endswith("/") else key + "/"
    pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
    return [
        f"s3://{bucket}/{obj['Key']}"
        for page in pages
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")  # "folder" marker objects some tools create
    ]


# ------------------------------------------------------------------------------------------ arrow

def arrow_filesystem(uri: str, max_attempts: int | None = None):
    """(pyarrow FileSystem, path) for `uri`, with this module's endpoint, region and retries
    (`max_attempts` tries per request instead, where a caller would rather wait than fail).

    pyarrow alone honours AWS_ENDPOINT_URL but not configure() or CDCORE_S3_ENDPOINT. Use as
    `pq.read_table(path, filesystem=fs)`; `path` may be one file or a directory of files.
    """
    import pyarrow.fs as pafs  # only table code needs pyarrow; keep image workers' imports light

    uri = str(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), str(local_path(uri))
    bucket, key = _split_s3(uri)
    options = {
        "region": _client().meta.region_name,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts or _max_attempts()),
    }
    endpoint = _endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options), f"{bucket}/{key}".rstrip("/")
