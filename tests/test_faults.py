"""Faults cost time, not rows: jobs.stylize through a loopback proxy that blacks out or throttles
moto's S3 server, on a real local Ray."""
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cdcore.io import storage
from faults import S3Proxy
from jobs.stylize.driver import build_parser, prepare, run
from shared import CONTENT, MODELS, STYLE

ROWS = 16


@pytest.fixture
def proxied(s3_endpoint, s3_bucket, monkeypatch):
    """Clients (this process and the actors) reach the S3 server only through the proxy, with two
    tries per request, so faults reach the job's own retries quickly."""
    proxy = S3Proxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    yield proxy, s3_bucket
    proxy.close()


def put_inputs(bucket: str, tmp_path: Path) -> Path:
    """ROWS small contents and two styles on S3; the manifest on local disk."""
    photo = Image.open(CONTENT / "bridge_512.jpg").resize((120, 90))
    rows = []
    for i in range(ROWS):
        local = tmp_path / f"c{i}.jpg"
        photo.rotate(i * 7).save(local)
        storage.upload(local, f"{bucket}/in/c{i}.jpg")
        rows.append(f"{bucket}/in/c{i}.jpg,{bucket}/styles/s{i % 2}.jpg")
    for i, name in enumerate(("style_a_570.jpg", "style_b_512.jpg")):
        Image.open(STYLE / name).resize((128, 128)).save(tmp_path / f"s{i}.jpg")
        storage.upload(tmp_path / f"s{i}.jpg", f"{bucket}/styles/s{i}.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style\n" + "\n".join(rows) + "\n")
    return manifest


def run_job(manifest: Path, bucket: str, tmp_path: Path, *extra, on_result=None):
    args = build_parser().parse_args([
        "--manifest", str(manifest), "--output-prefix", f"{bucket}/out", "--results", str(tmp_path / "results"),
        "--models", str(MODELS), "--actors", "2", "--levels", "3,2,1", *map(str, extra)])
    said: list[str] = []
    report = run(prepare(args), on_result=on_result, say=said.append)
    return report, said, pq.read_table(str(tmp_path / "results")).to_pylist()


def test_a_storage_outage_mid_job_costs_time_not_rows(local_ray, proxied, tmp_path):
    proxy, bucket = proxied
    manifest = put_inputs(bucket, tmp_path)
    seen = []

    def outage_after_two_rows(record: dict) -> None:
        seen.append(record)
        if len(seen) == 2:
            proxy.fault_for(6.0)  # refuse and cut every connection for 6 s

    report, said, results = run_job(manifest, bucket, tmp_path, on_result=outage_after_two_rows)
    assert report.count("ok") == ROWS and report.count("failed") == 0
    assert len(results) == ROWS and all(r["status"] == "ok" for r in results)
    assert proxy.counts["cut"] > 0 and report.transient_failures > 0
    assert any(r["retries"] for r in results)
    assert any(s.startswith("storage unreachable since") and "paused, next probe in" in s for s in said), said
    assert any("resuming" in s for s in said), said
    assert sorted(storage.list_files(f"{bucket}/out")) == sorted(r["output"] for r in results)


def test_throttling_costs_time_not_rows(local_ray, proxied, tmp_path):
    proxy, bucket = proxied
    manifest = put_inputs(bucket, tmp_path)
    proxy.throttle(0.3)  # 503 SlowDown on 30% of requests, all job long
    report, _, results = run_job(manifest, bucket, tmp_path)
    proxy.heal()
    assert report.count("ok") == ROWS and all(r["status"] == "ok" for r in results)
    assert proxy.counts["throttled"] > 0


def test_a_row_that_keeps_failing_transiently_fails_at_its_deadline(local_ray, proxied, tmp_path):
    proxy, bucket = proxied
    manifest = put_inputs(bucket, tmp_path)
    proxy.failing = "/in/c5.jpg"  # this one object answers 503 whatever is asked; the rest are fine
    report, _, results = run_job(manifest, bucket, tmp_path, "--retry-deadline", 2)
    failed = [r for r in results if r["status"] == "failed"]
    assert [r["content"] for r in failed] == [f"{bucket}/in/c5.jpg"]
    assert failed[0]["failure"] == "transient" and "retried for" in failed[0]["error"] and failed[0]["retries"] >= 1
    assert report.count("ok") == ROWS - 1
    assert np.sum([r["status"] == "ok" for r in results]) == ROWS - 1
