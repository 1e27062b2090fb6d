"""The S3 backend of `cdcore.io.storage`: boto3's client, its settings, and its answers as
StorageErrors.

S3 goes through boto3 with its standard credential chain (environment, profile, instance role);
nothing here reads or prints credentials. The endpoint is, first found: `configure(endpoint_url=...)`,
`CDCORE_S3_ENDPOINT`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`; none means AWS itself. Ray workers
are other processes: they see environment variables (pass them in the runtime_env), not the
driver's `configure()` calls.

Every function takes an s3:// URI and raises botocore's own errors; `errors(label)` turns those into
StorageError and NotFound, as `storage` does around every call.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import threading
from typing import Iterator
from urllib.parse import urlparse

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from . import paths
from .errors import NotFound, StorageError, one_line

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class _Settings:
    endpoint_url: str | None = None
    max_attempts: int | None = None  # None: $AWS_MAX_ATTEMPTS, else DEFAULT_MAX_ATTEMPTS
    part_size: int = 16 * MiB


DEFAULT_MAX_ATTEMPTS = 6
MAX_CONNECTIONS = 64


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


def endpoint() -> str | None:
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


def attempts() -> int:
    """Tries per request: configure()'s, else $AWS_MAX_ATTEMPTS, else DEFAULT_MAX_ATTEMPTS."""
    return _settings.max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS)


def client():
    """This process's S3 client, created on first use.

    Keyed by pid: a client's connection pool must not be shared across a fork, so a Ray worker or
    multiprocessing child builds its own. Once built, boto3 clients are safe to share by threads.
    """
    global _cached_client
    key = (os.getpid(), endpoint(), attempts())
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
        # One connection per thread that may read at once: an actor's loaders (up to 32 on a GPU,
        # jobs.stylize.loaders) and a transfer's parts. botocore's default of 10 would make the
        # rest wait for a connection, or drop and reopen them.
        max_pool_connections=MAX_CONNECTIONS,
    )
    # A private Session: boto3's default session is not thread-safe while creating clients.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def transfer() -> TransferConfig:
    return TransferConfig(multipart_threshold=_settings.part_size, multipart_chunksize=_settings.part_size)


def part_size() -> int:
    return _settings.part_size


# ---------------------------------------------------------------------------------------- errors

_NOT_FOUND_REASONS = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such key"}
# Error codes of S3 and its look-alikes that mean "not now" rather than "no".
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
                    "RequestTimeout", "ServiceUnavailable", "InternalError", "OperationAborted"}
# botocore's failures to get an answer at all: refused, reset or closed connections, timeouts.
_TRANSIENT_BOTOCORE = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                       botocore.exceptions.ReadTimeoutError, botocore.exceptions.ResponseStreamingError,
                       botocore.exceptions.IncompleteReadError)


def _from_client_error(label: str, e: botocore.exceptions.ClientError) -> StorageError:
    error = e.response.get("Error", {})
    code = error.get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _NOT_FOUND_REASONS or code in ("404", "NotFound") or status == 404:
        # A HEAD answer has no body, so a 404 there cannot tell a missing key from a missing bucket.
        return NotFound(f"{label}: {_NOT_FOUND_REASONS.get(code, 'not found (404)')}")
    return StorageError(f"{label}: {code or status}: {one_line(error.get('Message') or e)}",
                        transient_answer(code, status))


def transient_answer(code: str, status: int | None) -> bool:
    """Whether an S3 error answer, by its code (such as "SlowDown") or HTTP status, means "not now"
    rather than "no". Shared by every client of S3 here (boto3, and pyarrow in cdcore.io.patientfs)."""
    return code in _TRANSIENT_CODES or status == 429 or (status or 0) >= 500


def _from_botocore_error(label: str, e: Exception) -> StorageError:
    transient = isinstance(e, _TRANSIENT_BOTOCORE) or isinstance(e, boto3.exceptions.RetriesExceededError)
    return StorageError(f"{label}: {one_line(e)}", transient)


@contextlib.contextmanager
def errors(label: str) -> Iterator[None]:
    """Turn boto3's errors into a one-line StorageError or NotFound that starts with `label`."""
    try:
        yield
    except boto3.exceptions.S3UploadFailedError as e:
        # boto3 wraps an upload's ClientError in this; unwrap it so a missing bucket stays NotFound.
        cause = e.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            raise _from_client_error(label, cause) from e
        if isinstance(cause, botocore.exceptions.BotoCoreError):
            raise _from_botocore_error(label, cause) from e
        raise StorageError(f"{label}: {one_line(e)}") from e
    except botocore.exceptions.ClientError as e:
        raise _from_client_error(label, e) from e
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error) as e:
        raise _from_botocore_error(label, e) from e


# ------------------------------------------------------------------------------------- operations

def split(uri: str) -> tuple[str, str]:
    """"s3://bucket/some/key" -> ("bucket", "some/key"). Keys are taken verbatim (no URL decoding)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"unsupported URI {uri!r}: expected a local path, file:// or s3://")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def size(uri: str) -> int:
    bucket, key = split(uri)
    return client().head_object(Bucket=bucket, Key=key)["ContentLength"]


def read_whole(uri: str) -> bytes:
    buffer = io.BytesIO()
    # download_fileobj, not get_object: it fetches big objects in parallel ranges and retries a
    # stream that breaks midway, which botocore's request retries do not cover.
    client().download_fileobj(*split(uri), buffer, Config=transfer())
    return buffer.getvalue()


def read_rest(uri: str, start: int, size: int, etag: str | None) -> bytes | None:
    """The bytes of the object from `start` on, in one ranged GET of the version `etag`; None
    where the object has changed since (the caller reads the new one whole)."""
    bucket, key = split(uri)
    condition = {"IfMatch": etag} if etag else {}
    for attempt in range(1, attempts() + 1):
        try:
            body = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-", **condition)["Body"]
            rest = body.read()
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
            if attempt == attempts():
                raise
            continue
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "InvalidRange"):
                return None
            raise
        return rest if start + len(rest) == size else None
    return None


def read_small(uri: str) -> bytes:
    """One GET: its body arrives whole or the read is tried again (botocore retries requests, not a
    body that breaks midway)."""
    bucket, key = split(uri)
    tries = attempts()
    for attempt in range(1, tries + 1):
        body = client().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read()
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
            if attempt == tries:
                raise


def read_head(uri: str, length: int) -> tuple[bytes, int, str | None]:
    """(the first `length` bytes, the object's whole size, its ETag), in one request."""
    bucket, key = split(uri)
    answer = client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(length, 1) - 1}")
    total = answer.get("ContentRange", "").rpartition("/")[2]
    data = answer["Body"].read()
    return data, int(total) if total.isdigit() else len(data), answer.get("ETag")


def download(uri: str, path: str) -> None:
    client().download_file(*split(uri), path, Config=transfer())


def write_bytes(uri: str, data: bytes) -> None:
    client().upload_fileobj(io.BytesIO(data), *_writable(uri), Config=transfer())


def upload(path: str, uri: str) -> None:
    client().upload_file(path, *_writable(uri), Config=transfer())


def _writable(uri: str) -> tuple[str, str]:
    """(bucket, key) of a URI that may be written: no key with "..", "." or empty segments, which
    several S3-compatible stores resolve or drop, so the object would land under another name
    (cdcore.io.paths)."""
    bucket, key = split(uri)
    why = paths.segment_problem(key)
    if why is not None:
        raise StorageError(f"{uri}: not written, as {why} (S3-compatible stores resolve or drop such "
                           "segments)")
    return bucket, key


def ping(uri: str) -> None:
    bucket, key = split(uri)
    client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)


def list_objects(prefix: str) -> list[str]:
    """Every object under the folder `prefix` (taken up to a "/"), as s3:// URIs."""
    bucket, key = split(prefix)
    folder = key if key == "" or key.endswith("/") else key + "/"
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
    return [
        f"s3://{bucket}/{obj['Key']}"
        for page in pages
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")  # "folder" marker objects some tools create
    ]


def arrow_filesystem(uri: str, max_attempts: int | None = None):
    """(pyarrow S3FileSystem, "bucket/key") for `uri`, with this module's endpoint, region and
    retries."""
    import pyarrow.fs as pafs  # only table code needs pyarrow; keep image workers' imports light

    bucket, key = split(uri)
    options = {
        "region": client().meta.region_name,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts or attempts()),
    }
    where = endpoint()
    if where:
        parsed = urlparse(where)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options), f"{bucket}/{key}".rstrip("/")
