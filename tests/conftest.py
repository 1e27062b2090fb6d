"""Shared fixtures and the test tiers.

The S3 fixtures are self-contained: a real HTTP S3 server (moto) on 127.0.0.1. Tests that use a
server or Ray fixture are marked `integration` here; tests that start subprocesses, Ray or
training runs by themselves carry the mark in their module. `pytest -m "not integration"` runs
the unit tier alone.
"""
from __future__ import annotations

import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer


SERVER_FIXTURES = {"s3_endpoint", "s3_bucket", "local_ray", "ray_head", "flaky_s3"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (address="local": never someone else's cluster on this host)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 for the whole session.

    While it runs, the AWS_* environment points boto3, pyarrow and child processes at it with dummy
    credentials; the previous environment comes back afterwards.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "CDCORE_S3_ENDPOINT"):
                env.delenv(name, raising=False)
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            env.setenv("AWS_ACCESS_KEY_ID", "testing")
            env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server, as "s3://name"."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"
