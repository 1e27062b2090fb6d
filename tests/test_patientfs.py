"""cdcore.io.patientfs: a pyarrow filesystem that waits out storage outages, against moto's S3 server
through the loopback proxy of tests/faults.py (blackouts cut every connection, throttling answers
503 SlowDown)."""
from __future__ import annotations

import gc
import logging
import os
import pickle
import time

import boto3
import pyarrow.fs as pafs
import pytest

from cdcore.io import patientfs, storage
from faults import S3Proxy

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
DATA = os.urandom(6 * 1024 * 1024 + 7)  # over pyarrow's 5 MiB part size: a multipart upload


@pytest.fixture
def proxied(s3_endpoint, s3_bucket, monkeypatch):
    """(proxy, bucket name, a direct boto3 client): pyarrow reaches moto only through the proxy,
    with two tries per request so that faults reach the patient layer at once."""
    proxy = S3Proxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    yield proxy, s3_bucket[len("s3://"):], boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    proxy.close()


def patient_fs(bucket: str, patience_s: float = 60.0) -> pafs.FileSystem:
    fs, _ = storage.arrow_filesystem(f"s3://{bucket}")
    return patientfs.patient(fs, patience_s)


def test_pyarrow_errors_are_classified_as_cdcore_storage_classifies_s3_answers():
    def transient(message: str, kind=OSError) -> bool:
        return storage.is_transient(patientfs.arrow_error(kind(message)))

    assert transient("When initiating multiple part upload for key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION "
                     "during CreateMultipartUpload operation: curlCode: 52, Server returned nothing")
    assert transient("When listing objects under key 'x/' in bucket 'b': AWS Error SLOW_DOWN during ListObjectsV2 "
                     "operation: Please reduce your request rate.")
    assert transient("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body.")
    assert not transient("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket "
                         "does not exist")
    assert not transient("AWS Error ACCESS_DENIED during PutObject operation: Access Denied")
    assert not transient("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation: No response body.")
    assert not transient("[Errno 2] Path does not exist 'b/k'", FileNotFoundError)
    assert not transient("disk full")


def test_patiently_tries_transient_failures_again_and_lets_others_through(monkeypatch):
    monkeypatch.setattr(patientfs, "FIRST_DELAY_S", 0.01)
    cut = OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 52")
    denied = OSError("AWS Error ACCESS_DENIED during PutObject operation: Access Denied")
    outcomes = [cut, storage.StorageError("s3://b/k: SlowDown", transient=True), "done", denied]
    calls = []

    def next_outcome():
        calls.append(outcomes[0])
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert patientfs.patiently(next_outcome) == "done" and len(calls) == 3
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        patientfs.patiently(next_outcome)
    assert len(calls) == 4  # a permanent error is not tried again
    outcomes[:] = [cut] * 100
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):  # past the deadline the error stands
        patientfs.patiently(next_outcome, patience_s=0.05)
    assert 4 + 2 <= len(calls) < 4 + 10


def test_the_proxy_relays_the_length_a_head_request_answers(proxied):
    """A HEAD answer's Content-Length is the object's size; the proxy once replaced it with its
    empty body's, so pyarrow sized every object at 0 and read back empty checkpoints."""
    proxy, bucket, direct = proxied
    direct.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    via_proxy = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
    assert via_proxy.head_object(Bucket=bucket, Key="k")["ContentLength"] == 1000


def test_a_write_during_a_blackout_lands_whole_once_storage_answers(proxied):
    proxy, bucket, direct = proxied
    fs = pickle.loads(pickle.dumps(patient_fs(bucket)))  # as Ray Train's controller and workers get it
    proxy.fault_for(2.5)
    started = time.monotonic()
    with fs.open_output_stream(f"{bucket}/run/state.bin") as out:
        out.write(DATA[:1000])
        out.write(DATA[1000:])
    assert proxy.counts["cut"] > 0 and time.monotonic() - started >= 2.0  # it waited out the blackout
    assert direct.get_object(Bucket=bucket, Key="run/state.bin")["Body"].read() == DATA


def test_reads_listings_and_downloads_wait_out_throttling_and_blackouts(proxied, tmp_path):
    """What Ray Train does with a checkpoint: look it up, list it, copy it to a local folder."""
    proxy, bucket, direct = proxied
    for name in ("a.safetensors", "b.json"):
        direct.put_object(Bucket=bucket, Key=f"ckpt/{name}", Body=DATA if name.startswith("a") else b"{}")
    fs = patient_fs(bucket)
    proxy.throttle(0.5)
    assert fs.get_file_info(f"{bucket}/ckpt/a.safetensors").size == len(DATA)
    assert sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/ckpt"))) == [
        "a.safetensors", "b.json"]
    with fs.open_input_file(f"{bucket}/ckpt/a.safetensors") as f:
        f.seek(len(DATA) - 7)
        assert f.read() == DATA[-7:]
    proxy.fault_for(2.0)
    pafs.copy_files(f"{bucket}/ckpt", str(tmp_path), source_filesystem=fs)
    proxy.heal()
    assert (tmp_path / "a.safetensors").read_bytes() == DATA and (tmp_path / "b.json").read_bytes() == b"{}"
    assert proxy.counts["cut"] > 0 and proxy.counts["throttled"] > 0


def test_permanent_errors_are_not_retried(proxied):
    _, bucket, _ = proxied
    fs = patient_fs(bucket)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(f"{bucket}/missing")
    with pytest.raises(OSError, match="NO_SUCH_BUCKET"):
        with fs.open_output_stream("no-such-bucket-here/k") as out:
            out.write(b"x")
    assert time.monotonic() - started < patientfs.FIRST_DELAY_S  # no backoff was waited


def test_an_outage_longer_than_the_patience_fails_with_the_storage_error(proxied):
    proxy, bucket, _ = proxied
    fs = patient_fs(bucket, patience_s=2.0)
    proxy.blackout()
    started = time.monotonic()
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fs.get_file_info(f"{bucket}/k")
    proxy.heal()
    assert 1.0 <= time.monotonic() - started < 10.0


def test_a_stream_dropped_without_close_writes_nothing(proxied):
    _, bucket, direct = proxied
    fs = patient_fs(bucket)
    out = fs.open_output_stream(f"{bucket}/half")
    out.write(b"half a file")
    del out
    gc.collect()
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
