"""python -m jobs.distill: collaborative distillation of one stage, on Ray Train.

    python -m jobs.distill --teacher ../shared/models/cd16x --stage 2 --width-divisor 2 \\
        --mode both --data s3://bucket/coco --steps 20000 --batch-size 16 --workers 4 --use-gpu \\
        --storage s3://bucket/runs --export s3://bucket/models/cd16x-div2

The student starts as the L1-pruned teacher (or --student), trains with DDP on --workers workers
(gloo on CPU, NCCL on GPU), each reading its own share of the images, and checkpoints to
--storage/--name. A worker failure restarts from the last checkpoint (--max-failures times); a
rerun with --resume continues a stopped run. At the end the run folder gets loss_curve.png and
samples.png, and --export receives the stage as a model set that `cdcore` and `jobs.stylize` load.
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

from cdcore import storage
from cdcore.modelset import save_stage
from cdcore.stylize import to_uint8
from cdcore.training import figures, trainset
from cdcore.training.losses import LossWeights

from .config import OBJECTIVES, PHASES, DistillConfig
from .train import Models, load_teacher, load_weights, read_progress, starting_student, train_worker

RUN_FILE = "run.json"  # the settings a run started with, in its folder beside the checkpoints
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
    p.add_argument("--workers", type=int, default=1)
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
    fs, path = storage.arrow_filesystem(cfg.storage)  # the same endpoint and retries as cdcore.storage
    return ray.train.RunConfig(name=cfg.name, storage_path=path, storage_filesystem=fs, failure_config=failure)


def start_or_resume(cfg: DistillConfig) -> None:
    """Record a new run's settings, or check that --resume continues a run with the same ones.

    Ray Train continues any run whose name and storage it finds, so without this a typo in the
    settings of a rerun would silently train on from someone else's checkpoint.
    """
    run_file = storage.join(cfg.storage, cfg.name, RUN_FILE)
    exists = storage.exists(run_file)
    if exists and not cfg.resume:
        raise ValueError(f"run {storage.join(cfg.storage, cfg.name)} already exists: pass --resume to "
                         "continue it, or choose another --name or --storage")
    if not exists:
        if cfg.resume:
            raise ValueError(f"--resume: no run at {storage.join(cfg.storage, cfg.name)} to continue")
        storage.write_bytes(run_file, json.dumps(cfg.to_dict(), indent=2).encode())
        return
    changed = cfg.resume_mismatch(json.loads(storage.read_bytes(run_file)))
    if changed:
        raise ValueError(f"--resume: settings differ from those of the run being resumed {changed}")


@dataclasses.dataclass
class RunSummary:
    run_dir: str  # URI of the run folder: checkpoints, run.json, loss_curve.png, samples.png
    metrics: dict  # the last report
    history: list[dict]  # {"phase", "step", term: mean, ...} over the whole run, resumes included


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
    trainset.list_images(cfg.data)
    start_or_resume(cfg)
    if not ray.is_initialized():
        ray.init()  # local, or the cluster in RAY_ADDRESS
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=_run_config(cfg),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        history = finish(cfg, directory, Models(student, decoder, teacher, collaborator))
    return RunSummary(storage.join(cfg.storage, cfg.name), result.metrics, history)


def finish(cfg: DistillConfig, checkpoint_dir: str, models: Models) -> list[dict]:
    """Loss curve and sample grid into the run folder; the stage into --export. `models` hold the
    starting student, which receives the checkpoint's weights. Returns the loss history."""
    load_weights(checkpoint_dir, models.student, models.decoder)
    progress = read_progress(checkpoint_dir)
    run_dir = storage.join(cfg.storage, cfg.name)
    storage.write_bytes(storage.join(run_dir, "loss_curve.png"), figures.png_bytes(loss_figure(progress.history)))
    storage.write_bytes(storage.join(run_dir, "samples.png"), figures.png_bytes(sample_grid(cfg, models)))
    if cfg.export:
        if "decoder" not in cfg.phases and "joint" not in cfg.phases:
            print(f"note: --mode {cfg.mode} does not train the decoder; the export holds its starting point")
        save_stage(cfg.export, models.student, models.decoder, family=models.student.widths.name)
        print(f"exported stage {cfg.stage} to {cfg.export}")
    return progress.history


def loss_figure(history: list[dict]) -> Image.Image:
    """One panel per phase, every loss term against the step."""
    panels = []
    for phase in dict.fromkeys(row["phase"] for row in history):
        rows = [r for r in history if r["phase"] == phase]
        terms = [t for t in rows[0] if t not in ("phase", "step")]
        panels.append(figures.loss_panel(f"{phase} phase", {t: [(r["step"], r[t]) for r in rows] for t in terms}))
    return figures.stack(panels)


@torch.inference_mode()
def sample_grid(cfg: DistillConfig, models: Models) -> Image.Image:
    """Rows of training crops: input, teacher reconstruction D_T(T(x)), collaborative
    reconstruction D_T(aux(S(x))) and student reconstruction D_S(S(x))."""
    student, decoder, teacher, collaborator = models
    stream = trainset.CropStream(trainset.list_images(cfg.data), cfg.crop, cfg.short_side, cfg.seed)
    x = trainset.to_batch([stream.sample(p) for p in range(SAMPLES)])
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
