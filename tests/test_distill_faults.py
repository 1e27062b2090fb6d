"""jobs.distill through a storage blip: checkpoints and Ray Train's run state on moto's S3 server
behind the loopback proxy, which cuts every connection for a few seconds once the first
checkpoint has landed, and again once the last has. With --max-failures 0 any storage call that
failed for good would end the run.

Kept small: stage 1 of the 16x models at half width, the encoder phase only, 32 px crops of
images shortened to 48 px, one worker reading in its training loop.
"""
from __future__ import annotations

import logging
import time
import uuid

import boto3
import pytest
import ray
import torch
from safetensors.torch import load as load_safetensors

from cdcore.models.modelset import load_model_set
from faults import S3Proxy
from jobs.distill import driver as job
from jobs.distill.config import DistillConfig
from jobs.distill.train import ENCODER_FILE, PROGRESS_FILE

pytestmark = pytest.mark.integration
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
TEACHER = "../shared/models/cd16x"
TRAIN = "../shared/images/train"
STEPS = 8
BLACKOUT_S = 5.0
TERMS = ("embed", "pixel", "perceptual", "total")
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


@pytest.fixture(scope="module")
def proxied_ray(s3_endpoint):
    """(proxy, direct boto3 client): a local Ray whose driver and workers reach S3 only through
    the proxy. The environment is set before ray.init so that the workers inherit it; two tries
    per request let faults through to the job's own patience at once."""
    proxy = S3Proxy(s3_endpoint)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        env.setenv("AWS_MAX_ATTEMPTS", "2")
        # Ray Train's controller looks at its workers every 2 s by default; a run of a few
        # seconds' training took 28 s, and takes 14 s with this.
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield proxy, boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        finally:
            ray.shutdown()
            proxy.close()


def config(bucket: str, tmp_path, name: str) -> DistillConfig:
    return DistillConfig(teacher=TEACHER, stage=1, width_divisor=2, mode="encoder", data=TRAIN, steps=STEPS,
                         batch_size=2, lr=1e-3, crop=32, short_side=48, workers=1, loader_workers=0,
                         storage=f"s3://{bucket}/runs", name=name, export=str(tmp_path / name),
                         log_every=1, checkpoint_every=1, seed=3, max_failures=0)


def checkpoint_file(run: str, step: int, file: str) -> str:
    return f"runs/{run}/checkpoint-encoder-{step:07d}/{file}"


def test_a_storage_blackout_while_checkpointing_costs_time_not_the_run(proxied_ray, tmp_path):
    proxy, direct = proxied_ray
    bucket = f"distill-blip-{uuid.uuid4().hex[:8]}"
    direct.create_bucket(Bucket=bucket)
    calm = job.run(config(bucket, tmp_path, "calm"))
    assert proxy.counts["cut"] == 0

    # Blackouts start as the last file of the first and of the last checkpoint is stored (the
    # uploader sends them in name order), so what follows each meets a storage that cuts every
    # connection: Ray Train's own write of its checkpoint list, and the next checkpoint's upload.
    for step in (1, STEPS):
        proxy.blackout_after(checkpoint_file("blip", step, PROGRESS_FILE), BLACKOUT_S)
    started = time.monotonic()
    blip = job.run(config(bucket, tmp_path, "blip"))
    print(f"run through two {BLACKOUT_S:.0f} s blackouts: {time.monotonic() - started:.1f} s, {proxy.counts}")
    assert sum(SNAPSHOT in request for request in proxy.faulted) >= 2, proxy.faulted
    assert any(checkpoint_file("blip", 2, "") in request for request in proxy.faulted), proxy.faulted

    # Every step ran once, with no restart (max_failures=0), and trained as the calm run did.
    assert [r["step"] for r in blip.history] == list(range(1, STEPS + 1))
    for calm_row, blip_row in zip(calm.history, blip.history, strict=True):
        for term in TERMS:
            assert blip_row[term] == pytest.approx(calm_row[term], rel=1e-6), (blip_row["step"], term)
    # Every checkpoint is whole on storage (read past the proxy), and the export holds the last.
    for step in range(1, STEPS + 1):
        stored = direct.get_object(Bucket=bucket, Key=checkpoint_file("blip", step, ENCODER_FILE))["Body"].read()
        weights = load_safetensors(stored)
        assert weights and all(t.numel() for t in weights.values())
    exported = load_model_set(str(tmp_path / "blip"), stages=[1]).encoder(1).state_dict()
    assert all(torch.equal(exported[name], weights[name]) for name in exported)
    direct.head_object(Bucket=bucket, Key="runs/blip/loss_curve.png")
