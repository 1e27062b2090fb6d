"""jobs.distill on a real local Ray: 2-worker gloo training, checkpoints, resume, export, S3.

Kept small for 2 CPU cores: stage 2 of the 16x models as teacher, a half-width student, 64 px crops,
four steps per phase. The training images are the shared ones plus one file that is not an image,
which every run must pass over the same way.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch
import torchvision
from PIL import Image

from cdcore.io import images, storage
from cdcore.models.modelset import load_model_set
from cdcore.transfer.stylize import stylize, style_statistics, to_tensor
from cdcore.training import losses, pruning, trainset
from jobs.distill import driver as job
from jobs.distill.config import DistillConfig
from jobs.distill.train import load_weights

TEACHER = "../shared/models/cd16x"
TRAIN = "../shared/images/train"
STEPS = 4
CORRUPT = "broken.jpg"


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """The shared training images and one corrupt file, in a folder of their own."""
    folder = tmp_path_factory.mktemp("train")
    for path in trainset.list_images(TRAIN):
        (folder / Path(path).name).symlink_to(Path(path).resolve())
    (folder / CORRUPT).write_bytes(b"\xff\xd8 not really a JPEG")
    return folder


def config(tmp, **overrides) -> DistillConfig:
    settings = dict(teacher=TEACHER, stage=2, width_divisor=2, mode="both", data=TRAIN, steps=STEPS,
                    batch_size=4, lr=1e-3, crop=64, workers=2, storage=str(tmp / "runs"),
                    export=str(tmp / "export"), log_every=1, checkpoint_every=2, seed=3)
    return DistillConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def ray_local(s3_endpoint):
    # After s3_endpoint: Ray's workers inherit the environment that points S3 at the moto server.
    with pytest.MonkeyPatch.context() as env:
        # Ray Train's controller looks at its workers every 2 s by default, which made each of
        # these few-second runs take some 15 s longer.
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def two_workers(ray_local, train_data, tmp_path_factory):
    """A finished 2-worker run (encoder then decoder phase), each worker with two loader
    processes, and its settings."""
    cfg = config(tmp_path_factory.mktemp("two"), data=str(train_data), loader_workers=2)
    return cfg, job.run(cfg)


@pytest.fixture(scope="module")
def one_worker_s3(ray_local, s3_endpoint, train_data, tmp_path_factory):
    """The same encoder phase on 1 worker reading in its training loop (no loader processes),
    with the same global batch, and data, checkpoints and export on S3."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="distill")
    for path in trainset.list_images(str(train_data)):
        storage.upload(path, storage.join("s3://distill/train", storage.local_path(path).name))
    cfg = config(tmp_path_factory.mktemp("one"), workers=1, mode="encoder", steps=3, data="s3://distill/train",
                 storage="s3://distill/runs", export="s3://distill/export", loader_workers=0)
    return cfg, job.run(cfg)


def checkpoint_dir(cfg: DistillConfig, name: str):
    return storage.local_path(storage.join(cfg.storage, cfg.name, name))


def held_out_batch() -> torch.Tensor:
    stream = trainset.CropStream(trainset.list_images("../shared/images/content"), crop=64, seed=11)
    return trainset.to_batch([stream.sample(p).crop for p in range(8)])


@pytest.mark.integration
def test_two_worker_run_reports_every_step_and_leaves_checkpoints_and_figures(two_workers):
    cfg, summary = two_workers
    assert [(r["phase"], r["step"]) for r in summary.history] == [
        (phase, step) for phase in ("encoder", "decoder") for step in range(1, STEPS + 1)]
    assert summary.metrics["phase"] == "decoder" and summary.metrics["step"] == STEPS
    for name in ("checkpoint-encoder-0000002", "checkpoint-encoder-0000004", "checkpoint-decoder-0000004"):
        assert (checkpoint_dir(cfg, name) / "encoder.safetensors").is_file()
    for figure in ("loss_curve.png", "samples.png"):
        image = Image.open(io.BytesIO(storage.read_bytes(storage.join(summary.run_dir, figure))))
        assert image.width > 100 and image.height > 100


@pytest.mark.integration
def test_step_timing_is_reported_and_kept_in_the_run_folder(two_workers):
    _, summary = two_workers
    assert all(r["data_s"] >= 0 and r["compute_s"] > 0 for r in summary.history)
    lines = storage.read_bytes(storage.join(summary.run_dir, job.TIMING_FILE)).decode().splitlines()
    assert lines[0] == "phase,step,data_s,compute_s,data_share"
    assert [line.split(",")[:2] for line in lines[1:]] == [[r["phase"], str(r["step"])] for r in summary.history]


@pytest.mark.integration
def test_the_corrupt_image_is_skipped_named_and_listed_in_the_run_folder(two_workers, train_data):
    _, summary = two_workers
    broken = str(train_data / CORRUPT)
    assert list(summary.skipped) == [broken] and "not a readable image" in summary.skipped[broken]
    kept = storage.read_bytes(storage.join(summary.run_dir, job.SKIPPED_FILE)).decode()
    assert kept.startswith(broken + "\t")


@pytest.mark.integration
def test_the_data_is_listed_once_into_the_run_folder(two_workers, train_data):
    cfg, summary = two_workers
    listed = trainset.load_listing(storage.join(summary.run_dir, "images.txt"))
    assert listed == trainset.list_images(str(train_data)) and len(listed) == 14


@pytest.mark.integration
def test_training_lowers_the_loss_on_held_out_images(two_workers):
    cfg, _ = two_workers
    models = load_model_set(TEACHER, stages=[2])
    teacher, collaborator = models.encoder(2), models.decoder(2)
    x = held_out_batch()

    def losses_at(checkpoint: str | None) -> tuple[float, float]:
        student, decoder = pruning.prune_stage(teacher, collaborator, 2)
        if checkpoint:
            load_weights(str(checkpoint_dir(cfg, checkpoint)), student, decoder)
        with torch.no_grad():
            encoder_loss = losses.collaborative_loss(student, teacher, collaborator, x)["total"]
            decoder_loss = losses.reconstruction_loss(student, decoder, teacher, x)["total"]
        return encoder_loss.item(), decoder_loss.item()

    start, after_encoder, after_both = losses_at(None), losses_at("checkpoint-encoder-0000004"), losses_at(
        "checkpoint-decoder-0000004")
    assert after_encoder[0] < 0.97 * start[0]  # the encoder phase lowers the collaborative loss
    assert after_both[1] < 0.97 * after_encoder[1]  # the decoder phase lowers the reconstruction loss


@pytest.mark.integration
def test_export_loads_and_stylizes(two_workers):
    cfg, _ = two_workers
    models = load_model_set(cfg.export, stages=[2])
    assert models.encoder(2).widths.for_stage(2) == {"conv11": 8, "conv12": 8, "conv21": 16}
    content, style = (to_tensor(trainset.resize_shorter_side(images.read_image(f"../shared/images/{name}").rgb, 96))
                      for name in ("content/harbor_420.jpg", "style/style_b_512.jpg"))
    out = stylize(models, content, style_statistics(models, style, levels=(2,)), levels=(2,))
    assert out.shape == content.shape and torch.isfinite(out).all()
    assert 0.02 < out.std() and out.mean().item() == pytest.approx(0.5, abs=0.35)


@pytest.mark.integration
def test_one_worker_matches_two_workers_with_the_same_global_batch(two_workers, one_worker_s3):
    """Also: reading in the loop and in two loader processes per worker give the same batches,
    with the same image skipped."""
    _, two = two_workers
    _, one = one_worker_s3
    steps = len(one.history)
    assert steps == 3 and len(one.skipped) == 1
    for a, b in zip(one.history, two.history[:steps]):
        assert (a["phase"], a["step"]) == (b["phase"], b["step"])
        for term in ("embed", "pixel", "perceptual", "total"):
            assert a[term] == pytest.approx(b[term], rel=1e-3), (a["step"], term)


@pytest.mark.integration
def test_s3_run_checkpoints_and_exports_to_s3(one_worker_s3):
    cfg, summary = one_worker_s3
    files = storage.list_files(summary.run_dir)
    assert any(f.endswith("checkpoint-encoder-0000002/encoder.safetensors") for f in files)
    assert storage.join(summary.run_dir, "loss_curve.png") in files
    assert load_model_set(cfg.export, stages=[2]).family == "cd16x-div2"


@pytest.mark.integration
def test_resume_continues_from_the_last_checkpoint(two_workers):
    cfg, first = two_workers
    # Other loader settings: they change how batches are read, never which.
    summary = job.run(dataclasses.replace(cfg, steps=STEPS + 2, resume=True, loader_workers=1, prefetch=3))
    assert summary.history[: len(first.history)] == first.history
    assert [(r["phase"], r["step"]) for r in summary.history[len(first.history):]] == [
        ("decoder", STEPS + 1), ("decoder", STEPS + 2)]
    assert (checkpoint_dir(cfg, f"checkpoint-decoder-{STEPS + 2:07d}") / "decoder.safetensors").is_file()


def train_workers_started_here() -> list[int]:
    """PIDs of Ray Train workers among this process's descendants (the Ray that the fixture
    started), never anyone else's."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.integration
def test_vgg19_teacher_decoder_training_survives_a_killed_worker(ray_local, tmp_path):
    """One run, two checks (a Ray run is the expensive part): a torchvision VGG-19 teacher, which
    has no decoder, gets one trained (--mode decoder --width-divisor 1); and when its worker is
    killed after a checkpoint, Ray Train restarts it from that checkpoint and the run completes
    with every step reported once."""
    torch.manual_seed(0)
    features = torchvision.models.vgg19().features  # random weights: nothing is downloaded
    weights = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, weights)
    with pytest.raises(ValueError, match="VGG-19 teacher has none"):
        config(tmp_path, teacher=None, teacher_vgg19=str(weights), mode="both")
    cfg = config(tmp_path, teacher=None, teacher_vgg19=str(weights), stage=1, width_divisor=1, mode="decoder",
                 steps=8, workers=1, checkpoint_every=2)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(job.run, cfg)
        first_checkpoint = checkpoint_dir(cfg, "checkpoint-decoder-0000002")
        deadline = time.monotonic() + 120
        while not first_checkpoint.is_dir() and not running.done() and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = train_workers_started_here()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        summary = running.result(timeout=300)
    assert killed, "no training worker to kill"
    assert [r["step"] for r in summary.history] == list(range(1, 9))
    models = load_model_set(cfg.export, stages=[1])
    assert models.family == "vgg19-div1" and models.decoder(1).conv11.in_channels == 64


def test_a_run_is_only_continued_with_resume_and_the_same_settings(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="no run at"):
        job.run(dataclasses.replace(cfg, resume=True))
    job.start_or_resume(cfg)
    with pytest.raises(ValueError, match="already exists"):
        job.run(cfg)
    with pytest.raises(ValueError, match="width_divisor"):
        job.run(dataclasses.replace(cfg, resume=True, width_divisor=4))


def test_a_resumed_run_reads_the_images_its_first_run_listed(tmp_path, train_data):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(train_data.iterdir())[:3]:
        (data / path.name).symlink_to(path.resolve())
    cfg = config(tmp_path, data=str(data))
    job.start_or_resume(cfg)
    job.keep_listings(cfg, job.list_data(cfg))
    (data / "added_later.png").symlink_to(next(train_data.glob("*.png")).resolve())
    resumed = dataclasses.replace(cfg, resume=True)
    assert len(job.list_data(resumed)["data"]) == 3
    assert len(job.list_data(cfg)["data"]) == 4  # a new run lists afresh


def test_loader_options_reach_the_config():
    args = ["--teacher", TEACHER, "--stage", "2", "--data", TRAIN, "--storage", "runs"]
    cfg = job.parse_args(args)
    assert (cfg.cpus_per_worker, cfg.loader_workers, cfg.prefetch, cfg.loader_processes) == (1, None, 2, 1)
    cfg = job.parse_args(args + ["--cpus-per-worker", "6", "--prefetch", "4"])
    assert (cfg.loader_processes, cfg.prefetch) == (5, 4)  # one CPU left for the training loop
    assert job.parse_args(args + ["--loader-workers", "0", "--cpus-per-worker", "6"]).loader_processes == 0
    for bad in (["--loader-workers", "-1"], ["--prefetch", "0"], ["--cpus-per-worker", "0"]):
        with pytest.raises(ValueError, match=bad[0].lstrip("-")):
            job.parse_args(args + bad)


def test_command_line_builds_the_config():
    cfg = job.parse_args(["--teacher", TEACHER, "--stage", "3", "--width-divisor", "2", "--data", TRAIN,
                          "--storage", "runs", "--workers", "2", "--pixel-weight", "0", "--perceptual-weight", "0"])
    assert (cfg.stage, cfg.width_divisor, cfg.mode, cfg.workers, cfg.batch_size) == (3, 2, "both", 2, 16)
    assert cfg.weights == losses.LossWeights(pixel=0.0, perceptual=0.0)
    assert cfg.name == "distill-stage3-div2-both"
    with pytest.raises(ValueError, match="multiple of workers"):
        job.parse_args(["--teacher", TEACHER, "--stage", "3", "--data", TRAIN, "--storage", "runs",
                        "--workers", "3"])


def test_the_timing_summary_says_when_a_run_is_input_bound():
    row = {"phase": "encoder", "step": 2, "total": 1.0}
    fed = [{**row, "data_s": 0.01, "compute_s": 1.0}]
    starved = [{**row, "data_s": 0.5, "compute_s": 1.0}]
    assert "1% waiting for data" in job.timing_summary(fed) and "input-bound" not in job.timing_summary(fed)
    assert "33% waiting for data" in job.timing_summary(starved) and "input-bound" in job.timing_summary(starved)
    assert job.timing_csv(starved).splitlines()[1] == "encoder,2,0.500000,1.000000,0.3333"
