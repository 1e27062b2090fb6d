"""python -m jobs.distill: collaborative distillation of one stage, on Ray Train.

    python -m jobs.distill --teacher ../shared/models/cd16x --stage 2 --width-divisor 2 \\
        --mode both --data s3://bucket/coco --steps 20000 --batch-size 16 --workers 4 --use-gpu \\
        --cpus-per-worker 8 --storage s3://bucket/runs --export s3://bucket/models/cd16x-div2

The student starts as the L1-pruned teacher (or --student), trains with DDP on --workers workers
(gloo on CPU, NCCL on GPU), each reading its own share of the images in --loader-workers processes
ahead of its training loop, and checkpoints to --storage/--name. The data is listed once, into the
run folder. A worker failure restarts from the last checkpoint (--max-failures times); a rerun
with --resume continues a stopped run. At the end the run folder gets loss_curve.png, samples.png
and timing.csv (data wait and compute per step), and --export receives the stage as a model set
that `cdcore` and `jobs.stylize` load.
A five-stage student is five runs (--stage 1..5) into one --export.

A torchvision VGG-19 teacher (--teacher-vgg19 vgg19-dcbb9e9d.pth) has no decoders: train them
first (--mode decoder --width-divisor 1 --export teacher/), then distil from that model set.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import ray
import ray.train
import torch
from PIL import Image
from ray.train.torch import TorchTrainer

from cdcore.io import patientfs, storage
from cdcore.models.modelset import save_stage
from cdcore.transfer.stylize import to_uint8
from cdcore.training import figures, trainset
from cdcore.training.losses import LossWeights

from .config import OBJECTIVES, PHASES, DistillConfig
from .train import (TIMING_TERMS, Models, StepProgress, data_share, load_teacher, load_weights, read_progress,
                    starting_student, train_worker)

RUN_FILE = "run.json"  # the settings a run started with, in its folder beside the checkpoints
TIMING_FILE = "timing.csv"  # seconds per step waiting for data and computing, per report
SKIPPED_FILE = "skipped.txt"  # unreadable images the run passed over: uri <tab> reason
SAMPLES = 4


def parse_args(argv: list[str] | None = None) -> DistillConfig:
    p = argparse.ArgumentParser(prog="python -m jobs.distill", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher", help="teacher model set (folder or URI)")
    teacher.add_argument("--teacher-vgg19", help="torchvision vgg19 ImageNet weights file (encoders only)")
    p.add_argument("--student", help="start from this model set's stage instead of pruning the teacher")
    p.add_argument("--stage", type=int, required=True, help="stage k: encoder/decoder to relu{k}_1")
    p.add_argument("--width-divisor", type=int, default=4, help="student widths = teacher widths / D")
    p.add_argument("--mode", choices=tuple(PHASES), default="both",
                   help="encoder: collaborative distillation; decoder: the student's decoder; both: one then "
                        "the other; joint: plain encoder+decoder training (a baseline)")
    p.add_argument("--objective", choices=OBJECTIVES, default="wct",
                   help="adain: the encoder phase uses AdaIN's content and style loss through the collaborator")
    p.add_argument("--data", required=True, help="folder or prefix of training images (recursive)")
    p.add_argument("--style-data", help="folder or prefix of style images (--objective adain)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per phase")
    p.add_argument("--batch-size", type=int, default=16, help="global batch, split over workers")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--short-side", type=int, default=300, help="images are resized to this shorter side")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP processes)")
    p.add_argument("--cpus-per-worker", type=int, default=1,
                   help="CPUs Ray reserves for each worker: its training loop and its loader processes")
    p.add_argument("--loader-workers", type=int,
                   help="processes per worker that read, decode and crop ahead of the training loop; 0 reads "
                        "in the loop. None: --cpus-per-worker - 1, at least 1")
    p.add_argument("--prefetch", type=int, default=2, help="steps each loader process prepares ahead")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument("--storage", required=True, help="folder or URI for runs and checkpoints")
    p.add_argument("--name", help="run name under --storage; None: distill-stage{K}-div{D}-{mode}")
    p.add_argument("--export", help="model set folder or URI to write the trained stage into")
    p.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps")
    p.add_argument("--log-every", type=int, default=20, help="steps")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before giving up")
    for term, default in dataclasses.asdict(LossWeights()).items():
        p.add_argument(f"--{term}-weight", type=float, default=default, help=f"weight of the {term} loss term")
    args = vars(p.parse_args(argv))
    weights = LossWeights(**{t: args.pop(f"{t}_weight") for t in dataclasses.asdict(LossWeights())})
    return DistillConfig(**args, weights=weights)


def _absolute(uri: str | None) -> str | None:
    """Local paths made absolute: workers and Ray's storage do not share the driver's cwd."""
    if uri is None or not storage.is_local(uri):
        return uri
    return str(storage.local_path(uri).resolve())


def _run_config(cfg: DistillConfig) -> ray.train.RunConfig:
    failure = ray.train.FailureConfig(max_failures=cfg.max_failures)
    if storage.is_local(cfg.storage):
        return ray.train.RunConfig(name=cfg.name, storage_path=cfg.storage, failure_config=failure)
    # Ray Train writes its run state and reads checkpoints back through this filesystem, in its
    # controller and workers: copies made by pickling, which lose pyarrow's retry settings (pyarrow
    # 26) and give up after 3 tries, a second or two. A failed call there fails the run. The
    # patient wrapper tries every call again through an outage of up to 5 minutes.
    fs, path = storage.arrow_filesystem(cfg.storage)
    return ray.train.RunConfig(name=cfg.name, storage_path=path, storage_filesystem=patientfs.patient(fs),
                               failure_config=failure)


def start_or_resume(cfg: DistillConfig) -> None:
    """Record a new run's settings, or check that --resume continues a run with the same ones.

    Ray Train continues any run whose name and storage it finds, so without this a typo in the
    settings of a rerun would silently train on from someone else's checkpoint.
    """
    run_file = storage.join(cfg.run_dir, RUN_FILE)
    exists = storage.exists(run_file)
    if exists and not cfg.resume:
        raise ValueError(f"run {cfg.run_dir} already exists: pass --resume to "
                         "continue it, or choose another --name or --storage")
    if not exists:
        if cfg.resume:
            raise ValueError(f"--resume: no run at {cfg.run_dir} to continue")
        storage.write_bytes(run_file, json.dumps(cfg.to_dict(), indent=2).encode())
        return
    changed = cfg.resume_mismatch(json.loads(storage.read_bytes(run_file)))
    if changed:
        raise ValueError(f"--resume: settings differ from those of the run being resumed {changed}")


def list_data(cfg: DistillConfig) -> dict[str, tuple[str, ...]]:
    """{"data": images, "style_data": images}: the lists a resumed run wrote at its start, else
    fresh listings. Listing a prefix of 100,000 objects takes a hundred requests, so it is done
    here once, not by every worker in every phase; keeping the list also keeps a resumed run's
    batches those of the first run, whatever was added to the bucket in between."""
    listings = {}
    for role in ("data", "style_data"):
        if getattr(cfg, role):
            kept = cfg.listing_uri(role)
            listings[role] = (trainset.load_listing(kept) if cfg.resume and storage.exists(kept)
                              else trainset.list_images(getattr(cfg, role)))
    return listings


def keep_listings(cfg: DistillConfig, listings: dict[str, tuple[str, ...]]) -> None:
    for role, found in listings.items():
        if not storage.exists(cfg.listing_uri(role)):
            trainset.save_listing(cfg.listing_uri(role), found)


@dataclasses.dataclass
class RunSummary:
    run_dir: str  # URI of the run folder: checkpoints, run.json, image lists, figures, timing.csv
    metrics: dict  # the last report
    history: list[dict]  # {"phase", "step", term: mean, ...} over the whole run, resumes included
    skipped: dict[str, str]  # unreadable images passed over: uri -> reason


def run(cfg: DistillConfig) -> RunSummary:
    """Train, then write the figures and the export."""
    cfg = dataclasses.replace(cfg, **{k: _absolute(getattr(cfg, k)) for k in
                                      ("teacher", "teacher_vgg19", "student", "data", "style_data", "storage",
                                       "export")})
    # Fail here, before the run exists and workers start, on a missing teacher or empty data.
    teacher, collaborator = load_teacher(cfg)
    student, decoder = starting_student(cfg, teacher, collaborator)
    if "encoder" in cfg.phases and not student.widths.aux:
        raise ValueError(f"--student {cfg.student} has no aux layers for the embedding loss of the encoder phase")
    listings = list_data(cfg)
    start_or_resume(cfg)
    keep_listings(cfg, listings)
    if not ray.is_initialized():
        ray.init()  # local, or the cluster in RAY_ADDRESS
    # A GPU is added to each worker's resources by use_gpu.
    scaling = ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                      resources_per_worker={"CPU": cfg.cpus_per_worker})
    trainer = TorchTrainer(train_worker, train_loop_config=cfg.to_dict(), scaling_config=scaling,
                           run_config=_run_config(cfg))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        progress = finish(cfg, directory, Models(student, decoder, teacher, collaborator), listings["data"])
    return RunSummary(cfg.run_dir, result.metrics, progress.history, progress.skipped)


def finish(cfg: DistillConfig, checkpoint_dir: str, models: Models, content: tuple[str, ...]) -> StepProgress:
    """Loss curve, sample grid (from `content`, the run's images), step timing and skipped
    images into the run folder; the stage into --export. `models` hold the starting student, which
    receives the checkpoint's weights. Returns the checkpoint's progress."""
    load_weights(checkpoint_dir, models.student, models.decoder)
    progress = read_progress(checkpoint_dir)
    run_dir = cfg.run_dir
    _put(storage.join(run_dir, "loss_curve.png"), figures.png_bytes(loss_figure(progress.history)))
    _put(storage.join(run_dir, "samples.png"), figures.png_bytes(sample_grid(cfg, models, content)))
    _put(storage.join(run_dir, TIMING_FILE), timing_csv(progress.history).encode())
    print(timing_summary(progress.history))
    if progress.skipped:
        report_skipped(run_dir, progress.skipped)
    if cfg.export:
        if "decoder" not in cfg.phases and "joint" not in cfg.phases:
            print(f"note: --mode {cfg.mode} does not train the decoder; the export holds its starting point")
        patientfs.patiently(lambda: save_stage(cfg.export, models.student, models.decoder,
                                               family=models.student.widths.name))
        print(f"exported stage {cfg.stage} to {cfg.export}")
    return progress


def _put(uri: str, data: bytes) -> None:
    """Write a file of the finished run, waiting out a storage outage as its checkpoints did."""
    patientfs.patiently(lambda: storage.write_bytes(uri, data))


def report_skipped(run_dir: str, skipped: dict[str, str]) -> None:
    """Count and name the unreadable images, on stdout and in the run folder."""
    uri = storage.join(run_dir, SKIPPED_FILE)
    _put(uri, "".join(f"{image}\t{reason}\n" for image, reason in skipped.items()).encode())
    print(f"skipped {len(skipped)} unreadable images (listed in {uri}):")
    for reason in skipped.values():
        print(f"  {reason}")  # each reason starts with the image's URI


def _timed(history: list[dict]) -> list[dict]:
    # Rows written before the job timed its steps have no timing.
    return [r for r in history if "data_s" in r]


def timing_csv(history: list[dict]) -> str:
    """One line per report: seconds per step waiting for data and computing, averaged over the
    steps since the previous report and over the workers, and the data share."""
    lines = ["phase,step,data_s,compute_s,data_share"]
    lines += [f"{r['phase']},{r['step']},{r['data_s']:.6f},{r['compute_s']:.6f},{data_share(r):.4f}"
              for r in _timed(history)]
    return "\n".join(lines) + "\n"


def timing_summary(history: list[dict]) -> str:
    """Where step time went over the run, so an input-bound run shows at once."""
    rows = _timed(history)
    if not rows:
        return "step time: not recorded"
    data, compute = sum(r["data_s"] for r in rows), sum(r["compute_s"] for r in rows)
    share = data / (data + compute) if data + compute > 0 else 0.0
    hint = "  (input-bound: try more --loader-workers or --cpus-per-worker)" if share > 0.1 else ""
    return (f"step time: data {data / len(rows):.3f} s + compute {compute / len(rows):.3f} s per step "
            f"on average over reports, {share:.0%} waiting for data{hint}")


def loss_figure(history: list[dict]) -> Image.Image:
    """One panel per phase, every loss term against the step."""
    panels = []
    for phase in dict.fromkeys(row["phase"] for row in history):
        rows = [r for r in history if r["phase"] == phase]
        terms = [t for t in rows[0] if t not in ("phase", "step", *TIMING_TERMS)]
        panels.append(figures.loss_panel(f"{phase} phase", {t: [(r["step"], r[t]) for r in rows] for t in terms}))
    return figures.stack(panels)


@torch.inference_mode()
def sample_grid(cfg: DistillConfig, models: Models, content: tuple[str, ...]) -> Image.Image:
    """Rows of training crops: input, teacher reconstruction D_T(T(x)), collaborative
    reconstruction D_T(aux(S(x))) and student reconstruction D_S(S(x))."""
    student, decoder, teacher, collaborator = models
    stream = trainset.CropStream(content, cfg.crop, cfg.short_side, cfg.seed)
    x = trainset.to_batch([stream.sample(p).crop for p in range(SAMPLES)])
    columns = {"input": x}
    if collaborator is not None:
        columns["teacher"] = collaborator(teacher(x))
        if student.widths.aux:
            columns["collaborative"] = collaborator(student.embed(cfg.stage, student(x)))
    columns["student"] = decoder(student(x))
    rows = [[to_uint8(images[i: i + 1]) for images in columns.values()] for i in range(SAMPLES)]
    return figures.image_grid(rows, list(columns))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        summary = run(cfg)
    except (ValueError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    final = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.metrics.items())
    print(f"{summary.run_dir}: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
