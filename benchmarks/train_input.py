"""Training input benchmark: can the distillation input pipeline keep a trainer fed from S3?

    .venv/bin/python benchmarks/train_input.py [--images 2000] [--batch-size 16] [--steps 12]
        [--loader-workers 1,2,4] [--train-steps 16] [--gpu-tflops 25,100]

1. Crops/s that `cdcore.training.trainset.loader` delivers from a moto S3 server (a separate
   process on 127.0.0.1) over `--images` generated 640x480 JPEGs (COCO's size, cut from
   ../shared/images, JPEG quality 95): reading in the training loop as the job did before this
   loader (`storage.read_bytes`, one image after another), with 0 loader workers (in the loop,
   `storage.read_small`) and with each of `--loader-workers`. Each setting reads its own steps,
   so none finds images decoded by another in a cache. A serial run of 64 images splits one
   crop's time into the S3 read (both ways), the JPEG decode and the resize and crop.
2. Steps/s of a stage-2 `jobs.distill` run (encoder phase, the 16x model as teacher, half-width
   student, batch `--batch-size` of 256 px crops, one Ray Train worker holding both CPUs, default
   loader) with its data on the S3 server, against the same run with its data in memory: a folder
   of `--batch-size` images, which the loader process decodes once and keeps in its cache. Steady
   state: the first report window (start-up) is left out; data share from the job's own timing.
3. The GPU arithmetic: one training step's FLOPs (counted by torch for the measured setting and
   for the paper's, a VGG-19 teacher and a 16x student), the step time at each of `--gpu-tflops`
   sustained, the crops/s that asks of the input, and the loader CPUs per GPU it implies.

Prints markdown tables. Not a test: numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cdcore.io import images, s3, storage
from cdcore.models.architecture import TEACHER
from cdcore.models.modelset import load_model_set
from cdcore.models.nets import Decoder, Encoder
from cdcore.training import losses, pruning, trainset
from jobs.distill import driver as job
from jobs.distill.config import DistillConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEACHER_16X = SHARED / "models" / "cd16x"
BUCKET = "train-input"
SIZE = (640, 480)  # COCO's usual size


# ------------------------------------------------------------------------------- S3 and data


def start_s3() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process (not a thread of this one: the loader's reads must not
    share this process's interpreter with the server), and its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    # Loader processes and Ray workers inherit this environment.
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "CDCORE_S3_ENDPOINT"):
        os.environ.pop(name, None)
    return server, endpoint


def photo_like(sources: list[Image.Image], i: int) -> bytes:
    """A distinct 640x480 JPEG: a window of a shared photo at a random scale, flipped at random."""
    rng = np.random.default_rng(i)
    src = sources[i % len(sources)]
    scale = max(SIZE[0] / src.width, SIZE[1] / src.height) * rng.uniform(1.0, 1.6)
    img = src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.BILINEAR)
    left, top = rng.integers(0, img.width - SIZE[0] + 1), rng.integers(0, img.height - SIZE[1] + 1)
    img = img.crop((left, top, left + SIZE[0], top + SIZE[1]))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_dataset(count: int, prefixes: list[str]) -> list[tuple[str, ...]]:
    """`count` generated JPEGs written under each of `prefixes`; their listings."""
    sources = [Image.open(p).convert("RGB") for p in sorted((SHARED / "images").glob("*/*.*"))]

    def put(i: int) -> int:
        data = photo_like(sources, i)
        for prefix in prefixes:
            storage.write_bytes(storage.join(prefix, f"{i:06d}.jpg"), data)
        return len(data)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(put, range(count)))
    print(f"{count} JPEGs of {SIZE[0]}x{SIZE[1]}, {np.mean(sizes) / 1024:.0f} KiB on average")
    return [trainset.list_images(prefix) for prefix in prefixes]


# ------------------------------------------------------------------------------------- crops/s


def crops_per_second(stream: trainset.CropStream, steps: range, batch_size: int, workers: int | None) -> float:
    """Crops/s over `steps`, loader start-up included. workers None: reading in the loop as the
    job did before its loader, through `storage.read_bytes`."""
    started = time.perf_counter()
    if workers is None:
        with patched(storage, "read_small", storage.read_bytes):
            for step in steps:
                stream.batch(step, batch_size)
    else:
        for _ in trainset.loader([stream], steps, batch_size, workers=workers):
            pass
    return len(steps) * batch_size / (time.perf_counter() - started)


def cpu_ms_per_crop(stream: trainset.CropStream, positions: range) -> float:
    """CPU milliseconds one crop costs the loader process (read, decode, resize, crop): its own
    CPU time, not the wall clock, so the S3 server and other work on the machine are left out."""
    started = time.process_time()
    for p in positions:
        stream.sample(p)
    return 1000 * (time.process_time() - started) / len(positions)


@contextlib.contextmanager
def patched(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def crop_profile(stream: trainset.CropStream, positions: range) -> dict[str, float]:
    """Milliseconds per crop in each part of the work, one image after another."""
    spent = {"S3 read (read_bytes, before)": 0.0, "S3 read (read_small)": 0.0, "JPEG decode": 0.0,
             "resize + crop": 0.0}
    for p in positions:
        uri = stream.image_at(p)
        t0 = time.perf_counter()
        storage.read_bytes(uri)
        t1 = time.perf_counter()
        data = storage.read_small(uri)
        t2 = time.perf_counter()
        rgb = images.decode(data, uri).rgb
        t3 = time.perf_counter()
        stream._crop(trainset.resize_shorter_side(rgb, stream.short_side), p)
        t4 = time.perf_counter()
        for part, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[part] += seconds
    return {part: 1000 * s / len(positions) for part, s in spent.items()}


# ------------------------------------------------------------------------------ training runs


def training_run(data: str, storage_dir: str, name: str, args) -> dict:
    """A stage-2 encoder-phase run; steady steps/s and data share from its timing history."""
    cfg = DistillConfig(teacher=str(TEACHER_16X), stage=2, width_divisor=2, mode="encoder", data=data,
                        storage=storage_dir, name=name, steps=args.train_steps, batch_size=args.batch_size,
                        workers=1, cpus_per_worker=2, log_every=2, checkpoint_every=args.train_steps)
    history = job.run(cfg).history[1:]  # the first window holds start-up
    # Medians over report windows: bursts of other work on the machine move means more.
    data_s = float(np.median([r["data_s"] for r in history]))
    compute_s = float(np.median([r["compute_s"] for r in history]))
    return {"steps/s": 1 / (data_s + compute_s), "data_s": data_s, "compute_s": compute_s,
            "share": data_s / (data_s + compute_s)}


# ---------------------------------------------------------------------------- GPU arithmetic


def step_gflops(teacher: Encoder, collaborator: Decoder, divisor: int, batch: int, crop: int) -> float:
    """GFLOPs of one encoder-phase training step (forward and backward) on a (batch, 3, crop, crop)
    batch, counted by torch on the meta device."""
    student, _ = pruning.prune_stage(teacher, collaborator, divisor)
    loss = losses.CollaborativeLoss(student, teacher, collaborator).to("meta")
    with FlopCounterMode(display=False) as counter:
        loss(torch.empty(batch, 3, crop, crop, device="meta"))["total"].backward()
    return counter.get_total_flops() / 1e9


def gpu_rows(batch_size: int, tflops: list[float], cpu_crops_per_s: float) -> list[str]:
    models = load_model_set(TEACHER_16X, stages=[2])
    settings = {
        "measured: cd16x teacher, student / 2": (models.encoder(2), models.decoder(2), 2),
        "paper: VGG-19 teacher, 16x student (/ 4)": (Encoder(2, TEACHER), Decoder(2, TEACHER), 4),
    }
    rows = []
    for name, (teacher, collaborator, divisor) in settings.items():
        gflops = step_gflops(teacher, collaborator, divisor, batch_size, 256)
        for rate in tflops:
            step_s = gflops / (rate * 1e3)
            needed = batch_size / step_s
            rows.append(f"| {name} | {gflops:.0f} | {rate:g} | {1000 * step_s:.1f} | {needed:.0f} | "
                        f"{needed / cpu_crops_per_s:.0f} |")
    return rows


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=12, help="steps read per loader setting")
    p.add_argument("--loader-workers", default="1,2,4")
    p.add_argument("--train-steps", type=int, default=16, help="steps of each training run")
    p.add_argument("--gpu-tflops", default="25,100",
                   help="sustained TFLOP/s assumed for a GPU training step (TF32/bf16 convolutions)")
    args = p.parse_args()
    settings = [None, 0] + [int(w) for w in args.loader_workers.split(",")]
    needed = (len(settings) * args.steps + 4) * args.batch_size
    if args.images < needed:
        raise SystemExit(f"--images must be at least {needed} so that no setting re-reads an image")

    server, _ = start_s3()
    tmp = tempfile.TemporaryDirectory(prefix="train-input-")
    try:
        print(f"load average at start: {os.getloadavg()[0]:.1f}")
        s3.client().create_bucket(Bucket=BUCKET)
        listed = time.perf_counter()
        found, on_disk = make_dataset(args.images, [f"s3://{BUCKET}/coco", str(Path(tmp.name, "coco"))])
        print(f"generated, written and listed in {time.perf_counter() - listed:.0f} s\n")
        stream = trainset.CropStream(found, seed=1)
        disk_stream = trainset.CropStream(on_disk, seed=1)

        profile = crop_profile(stream, range(len(found) - 64, len(found)))
        print("| part of one crop (serial) | ms |\n|---|---|")
        print("\n".join(f"| {part} | {ms:.1f} |" for part, ms in profile.items()))
        print(f"| total (read_small) | {sum(profile.values()) - next(iter(profile.values())):.1f} |\n")

        rates = {}
        print("| loader workers | crops/s from S3 | crops/s from local disk |\n|---|---|---|")
        for i, workers in enumerate(settings):
            steps = range(i * args.steps, (i + 1) * args.steps)
            rates[workers] = crops_per_second(stream, steps, args.batch_size, workers)
            local = crops_per_second(disk_stream, steps, args.batch_size, workers)
            label = {None: "before: in the training loop, read_bytes", 0: "0: in the training loop"}.get(
                workers, str(workers))
            print(f"| {label} | {rates[workers]:.0f} | {local:.0f} |")
        print(f"load average: {os.getloadavg()[0]:.1f}")

        memory = Path(tmp.name, "memory")
        memory.mkdir()
        for i, path in enumerate(on_disk[: args.batch_size]):
            Path(memory, f"{i:03d}.jpg").symlink_to(path)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            runs = {f"S3 ({args.images} images)": training_run(f"s3://{BUCKET}/coco", tmp.name, "s3", args),
                    f"memory ({args.batch_size} images, cached)": training_run(str(memory), tmp.name, "memory", args)}
        finally:
            ray.shutdown()
        print("\n| stage-2 run, data in | steps/s | data s/step | compute s/step | data share |\n|---|---|---|---|---|")
        for name, r in runs.items():
            print(f"| {name} | {r['steps/s']:.3f} | {r['data_s']:.4f} | {r['compute_s']:.3f} | {r['share']:.1%} |")
        s3, mem = runs.values()
        print(f"\nload average: {os.getloadavg()[0]:.1f}; S3 against memory: {s3['steps/s'] / mem['steps/s'] - 1:+.1%} "
              f"steps/s")
        cpu_ms = cpu_ms_per_crop(stream, range(len(found) - 128, len(found) - 64))
        loader_cpu = args.batch_size * cpu_ms / 1000
        print(f"loader CPU per crop: {cpu_ms:.1f} ms; per step {loader_cpu:.3f} CPU s, "
              f"{loader_cpu / (s3['compute_s'] * 2):.1%} of the compute's 2 CPUs x {s3['compute_s']:.2f} s")

        per_cpu = 1000 / cpu_ms
        print(f"\nGPU arithmetic, batch {args.batch_size} of 256 px, {per_cpu:.0f} crops/s per loader CPU "
              f"({cpu_ms:.1f} CPU ms per crop, measured above):\n")
        print("| setting | GFLOP/step | TFLOP/s sustained | GPU ms/step | crops/s needed | loader CPUs per GPU |")
        print("|---|---|---|---|---|---|")
        print("\n".join(gpu_rows(args.batch_size, [float(t) for t in args.gpu_tflops.split(",")], per_cpu)))
    finally:
        tmp.cleanup()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
