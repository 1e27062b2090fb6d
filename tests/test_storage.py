"""cdcore.io.storage against local disk and a real HTTP S3 server (moto, see conftest.s3_endpoint)."""
from __future__ import annotations

import http.server
import io
import os
import select
import threading

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdcore.io import s3, storage
from cdcore.io.s3 import MiB
from cdcore.io.storage import NotFound, StorageError


@pytest.fixture(params=["path", "file", pytest.param("s3", marks=pytest.mark.integration)])
def base(request, tmp_path):
    """An empty folder as a plain path, a file:// URI and an s3:// bucket."""
    folder = tmp_path / "base"
    if request.param == "path":
        return str(folder)
    if request.param == "file":
        return f"file://{folder}"
    return request.getfixturevalue("s3_bucket")


@pytest.fixture
def configure():
    """storage.configure, with the defaults put back after the test."""
    yield storage.configure
    storage.configure()


def _s3(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return boto3.client("s3"), bucket, key


def test_round_trip(base, tmp_path):
    data = os.urandom(1000)
    uri = storage.join(base, "a", "b", "blob.bin")
    assert not storage.exists(uri)

    storage.write_bytes(uri, data)

    assert storage.exists(uri)
    assert storage.size(uri) == len(data)
    assert storage.read_bytes(uri) == data

    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    copy = storage.join(base, "copy.bin")
    storage.upload(local, copy)
    assert storage.read_bytes(copy) == data
    assert storage.list_files(base) == sorted([uri, copy])


def test_write_replaces_whole_file_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "out" / "image.png"
    storage.write_bytes(str(path), b"old")
    storage.write_bytes(str(path), b"new")
    assert os.listdir(path.parent) == ["image.png"]
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "outputs get the usual permissions"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(StorageError, match="No space left"):
        storage.write_bytes(str(path), b"half")
    assert os.listdir(path.parent) == ["image.png"]
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("operation", ["read_bytes", "size"])
def test_missing_key_and_bucket_raise_not_found_naming_the_uri(s3_bucket, operation, tmp_path):
    call = {"read_bytes": storage.read_bytes, "size": storage.size}[operation]
    for uri in (f"{s3_bucket}/no/such.png", "s3://no-such-bucket-here/x.png"):
        with pytest.raises(NotFound) as caught:
            call(uri)
        message = str(caught.value)
        assert uri in message and "\n" not in message
        assert not storage.exists(uri)
    assert os.listdir(tmp_path) == []


def test_missing_local_file_raises_not_found(tmp_path):
    uri = str(tmp_path / "nothing.png")
    with pytest.raises(NotFound, match="nothing.png: no such file"):
        storage.read_bytes(uri)


def test_write_and_list_missing_bucket(s3_endpoint):
    with pytest.raises(NotFound, match="s3://no-such-bucket-here/k: no such bucket"):
        storage.write_bytes("s3://no-such-bucket-here/k", b"x")
    with pytest.raises(NotFound, match="no such bucket"):
        storage.list_files("s3://no-such-bucket-here/d")


def test_list_files_is_recursive_sorted_and_filters_suffixes(base):
    for name in ["b.JPG", "x/a.png", "x/y/c.txt", "x/y/z/d.jpg", "xy/e.jpg"]:
        storage.write_bytes(storage.join(base, name), b"-")

    images = storage.list_files(base, suffixes=[".jpg", "png"])
    assert images == [storage.join(base, n) for n in ["b.JPG", "x/a.png", "x/y/z/d.jpg", "xy/e.jpg"]]
    # a prefix is a folder: "x" does not reach into "xy"
    assert storage.list_files(storage.join(base, "x")) == [
        storage.join(base, n) for n in ["x/a.png", "x/y/c.txt", "x/y/z/d.jpg"]
    ]
    assert storage.list_files(storage.join(base, "x/"), suffixes=".txt") == [storage.join(base, "x/y/c.txt")]
    assert storage.list_files(storage.join(base, "missing")) == []


def test_list_files_skips_local_writes_in_progress(tmp_path):
    (tmp_path / "done.png").write_bytes(b"-")
    (tmp_path / ".next.png.0123abcd.part").write_bytes(b"-")
    assert storage.list_files(tmp_path) == [str(tmp_path / "done.png")]


def test_multipart_upload_round_trips(s3_bucket, tmp_path, configure):
    configure(part_size=5 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MiB))
    uri = f"{s3_bucket}/big/big.bin"

    storage.upload(source, uri)

    client, bucket, key = _s3(uri)
    assert client.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"'), "expected 3 parts"
    assert storage.read_bytes(uri) == source.read_bytes()


def test_configure_rejects_bad_values():
    with pytest.raises(ValueError, match="5 MiB"):
        storage.configure(part_size=1024)
    with pytest.raises(ValueError, match="max_attempts"):
        storage.configure(max_attempts=0)
    with pytest.raises(ValueError, match="no bucket"):
        storage.read_bytes("s3:///key")


def _parquet_bytes(table):
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_results_table_written_via_storage_reads_with_pyarrow(s3_bucket):
    table = pa.table({"content": ["a.png", "b.png"], "status": ["ok", "failed"]})
    uri = f"{s3_bucket}/results/part-0.parquet"
    storage.write_bytes(uri, _parquet_bytes(table))
    storage.write_bytes(f"{s3_bucket}/results/part-1.parquet", _parquet_bytes(table))

    # pyarrow on its own follows AWS_ENDPOINT_URL, http scheme included
    assert pq.read_table(uri).equals(table)
    assert pq.read_table(f"{s3_bucket}/results").num_rows == 4

    fs, path = storage.arrow_filesystem(f"{s3_bucket}/results/")
    assert pq.read_table(path, filesystem=fs).num_rows == 4


def test_endpoint_override_reaches_boto3_and_pyarrow(s3_bucket, s3_endpoint, configure, monkeypatch):
    uri = f"{s3_bucket}/t.parquet"
    table = pa.table({"x": [1, 2, 3]})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    configure(endpoint_url=s3_endpoint, max_attempts=1)
    storage.write_bytes(uri, _parquet_bytes(table))
    fs, path = storage.arrow_filesystem(uri)
    assert pq.read_table(path, filesystem=fs).equals(table)

    configure(max_attempts=1)
    monkeypatch.setenv("CDCORE_S3_ENDPOINT", s3_endpoint)
    assert storage.exists(uri)


def test_other_errors_are_one_line_storage_errors_naming_the_uri(s3_endpoint, configure):
    configure(endpoint_url="http://127.0.0.1:9", max_attempts=1)  # connection refused
    uri = "s3://bucket/key.png"
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(uri)
    assert not isinstance(caught.value, NotFound)
    assert str(caught.value).startswith(f"{uri}: ") and "\n" not in str(caught.value)


class _FlakyS3(http.server.BaseHTTPRequestHandler):
    """Answers HEAD with 503 `failures` times, then with a 1234-byte object."""

    failures = 0
    requests = 0

    def do_HEAD(self):
        type(self).requests += 1
        if type(self).requests <= type(self).failures:
            self.send_response(503)
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "1234")
            self.send_header("ETag", '"abc"')
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_s3():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_5xx_is_retried_with_backoff(flaky_s3, s3_endpoint, configure):
    _FlakyS3.failures, _FlakyS3.requests = 2, 0
    configure(endpoint_url=flaky_s3, max_attempts=3)
    assert storage.size("s3://bucket/key") == 1234
    assert _FlakyS3.requests == 3

    _FlakyS3.failures, _FlakyS3.requests = 5, 0
    configure(endpoint_url=flaky_s3, max_attempts=2)
    with pytest.raises(StorageError, match=r"^s3://bucket/key: 503"):
        storage.size("s3://bucket/key")
    assert _FlakyS3.requests == 2


def test_forked_child_builds_its_own_client(s3_bucket):
    uri = f"{s3_bucket}/fork.bin"
    storage.write_bytes(uri, b"from parent")
    parent_client = s3.client()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running pytest's teardown
        try:
            ok = s3.client() is not parent_client and storage.read_bytes(uri) == b"from parent"
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 30)  # a deadlocked child must not hang the suite
    assert ready and os.read(read_end, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read_end)
    assert s3.client() is parent_client


def requests_made(sent: list[tuple[str, str]]):
    """Record (operation, key) of each S3 request this process's client makes, through botocore's
    own event hook; returns the function that stops recording."""
    def record(params, model, **_):
        sent.append((model.name, params.get("Key", "")))

    s3.client().meta.events.register("provide-client-params.s3", record)
    return lambda: s3.client().meta.events.unregister("provide-client-params.s3", record)


def test_a_read_goes_on_from_the_head_in_one_more_request_at_most(s3_bucket, configure):
    configure(part_size=5 * MiB)
    data = os.urandom(700 * 1024)
    storage.write_bytes(f"{s3_bucket}/h/small", data[:1000])
    storage.write_bytes(f"{s3_bucket}/h/medium", data)
    sent: list[tuple[str, str]] = []
    stop = requests_made(sent)
    try:
        head = storage.read_head(f"{s3_bucket}/h/small", 4096)
        assert head.whole and storage.read_bytes(f"{s3_bucket}/h/small", head) == data[:1000]
        assert sent == [("GetObject", "h/small")]  # the head was all of it
        head = storage.read_head(f"{s3_bucket}/h/medium", 4096)
        assert (head.size, len(head.data)) == (len(data), 4096) and not head.whole
        assert storage.read_bytes(f"{s3_bucket}/h/medium", head) == data
        assert sent[1:] == [("GetObject", "h/medium")] * 2  # no HeadObject, no second copy of the head
    finally:
        stop()


def test_an_object_replaced_after_its_head_is_read_whole_again(s3_bucket):
    uri = f"{s3_bucket}/h/changing"
    storage.write_bytes(uri, b"a" * 10_000)
    head = storage.read_head(uri, 100)
    storage.write_bytes(uri, b"b" * 20_000)  # another version: the rest of the first no longer exists
    assert storage.read_bytes(uri, head) == b"b" * 20_000
