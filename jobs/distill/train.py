"""What every Ray Train worker of `jobs.distill` runs: build the models, train each phase, report.

A checkpoint is a directory:
    encoder.safetensors, decoder.safetensors   the student (the encoder with its aux layers)
    optimizer.pt                               Adam's state for the current phase
    progress.json                              phase, steps done in it, loss and timing history,
                                               the unreadable images skipped so far, settings
Workers restore from `ray.train.get_checkpoint()`, which Ray Train fills after a worker failure
(FailureConfig) and on a rerun under the same run name, so both continue where training stopped.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from cdcore.io import storage
from cdcore.models.modelset import load_model_set
from cdcore.models.nets import Decoder, Encoder
from cdcore.io.patientfs import patiently
from cdcore.training import losses, pruning, trainset, vgg

from .config import DistillConfig
from .telemetry import TrainMetrics

log = logging.getLogger(__name__)
ENCODER_FILE, DECODER_FILE, OPTIMIZER_FILE, PROGRESS_FILE = (
    "encoder.safetensors", "decoder.safetensors", "optimizer.pt", "progress.json")


# ------------------------------------------------------------------------------------------ models


class Models(NamedTuple):
    """A worker's models: the student pair in training, the frozen teacher pair."""

    student: Encoder
    decoder: Decoder
    teacher: Encoder
    collaborator: Decoder | None


def load_teacher(cfg: DistillConfig) -> tuple[Encoder, Decoder | None]:
    """Teacher encoder and decoder (None for torchvision VGG-19, which has none), frozen, on the CPU."""
    k = cfg.stage
    if cfg.teacher_vgg19:
        return vgg.encoder_from_torchvision(vgg.load_torchvision_weights(cfg.teacher_vgg19), k), None
    models = load_model_set(cfg.teacher, stages=[k])
    return models.encoder(k), models.decoder(k)


def starting_student(cfg: DistillConfig, teacher: Encoder, collaborator: Decoder | None) -> tuple[Encoder, Decoder]:
    """The student before training: `cfg.student`'s stage if given, else the L1-pruned teacher.

    Without a teacher decoder to prune, the student decoder starts from PyTorch's default
    initialisation (seeded, so every worker and every restart builds the same one).
    """
    k = cfg.stage
    if cfg.student:
        models = load_model_set(cfg.student, stages=[k])
        return models.encoder(k), models.decoder(k)
    if collaborator is None:
        encoder, _ = pruning.prune_encoder(teacher, cfg.width_divisor)
        torch.manual_seed(cfg.seed)
        return encoder, Decoder(k, encoder.widths)
    return pruning.prune_stage(teacher, collaborator, cfg.width_divisor)


def phase_loss(phase: str, cfg: DistillConfig, student: Encoder, decoder: Decoder, teacher: Encoder,
               collaborator: Decoder | None) -> tuple[nn.Module, list[nn.Parameter]]:
    """The loss module of a phase and the parameters it trains (requires_grad set accordingly).

    conv0 is the fixed input normalisation and never trains; aux layers train only with the
    embedding loss (in "joint" they would get no gradient, which DDP rejects).
    """
    student.requires_grad_(False)
    decoder.requires_grad_(phase in ("decoder", "joint"))
    if phase in ("encoder", "joint"):
        for name, module in student.named_children():
            module.requires_grad_(name != "conv0" and (phase == "encoder" or not name.endswith("_aux")))
    if phase == "encoder":
        loss_cls = losses.AdaINDistillLoss if cfg.objective == "adain" else losses.CollaborativeLoss
        module = loss_cls(student, teacher, collaborator, cfg.weights)
    else:
        module = losses.ReconstructionLoss(student, decoder, teacher, cfg.weights)
    return module, [p for p in module.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------- checkpoints


@dataclass
class StepProgress:
    """Where training stands: steps done in `phase`, the loss history of the whole run, and the
    images found unreadable so far (uri -> reason)."""

    phase: str
    step: int = 0
    history: list[dict] = field(default_factory=list)  # {"phase", "step", term: mean, ...}
    skipped: dict[str, str] = field(default_factory=dict)


def save_checkpoint(directory: str, student: Encoder, decoder: Decoder, optimizer: torch.optim.Optimizer,
                    progress: StepProgress, cfg: DistillConfig) -> None:
    """Write the checkpoint files (see the module docstring) into `directory`."""
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
              os.path.join(directory, ENCODER_FILE))
    save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()},
              os.path.join(directory, DECODER_FILE))
    torch.save(optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
    state = {"phase": progress.phase, "step": progress.step, "history": progress.history,
             "skipped": progress.skipped, "config": cfg.to_dict()}
    Path(directory, PROGRESS_FILE).write_text(json.dumps(state))


def read_progress(directory: str) -> StepProgress:
    state = json.loads(Path(directory, PROGRESS_FILE).read_text())
    return StepProgress(state["phase"], state["step"], state["history"], state.get("skipped", {}))


def load_weights(directory: str, student: Encoder, decoder: Decoder) -> None:
    """Load a checkpoint's student weights into models of the same widths."""
    student.load_state_dict(load_file(os.path.join(directory, ENCODER_FILE)))
    decoder.load_state_dict(load_file(os.path.join(directory, DECODER_FILE)))


def read_optimizer(directory: str) -> dict:
    data = Path(directory, OPTIMIZER_FILE).read_bytes()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------- the loop


# Seconds per step, beside the loss terms in reports and the history: waiting for the batch (the
# loader, and the copy to the device), and the training step itself (on a GPU this includes the
# wait for queued kernels whenever the host runs ahead of the device).
TIMING_TERMS = ("data_s", "compute_s")


class LossWindow:
    """Running sums of loss terms and step times between two reports, averaged over steps and
    workers.

    Loss sums stay on the device (a float() per step would wait for the GPU every step); the
    all-reduce runs on that device too, as NCCL needs.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.seconds = [0.0, 0.0]  # data wait, compute
        self.steps = 0

    def add(self, terms: dict[str, torch.Tensor], data_s: float, compute_s: float) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().double()
        self.seconds[0] += data_s
        self.seconds[1] += compute_s
        self.steps += 1

    def mean(self, world: int) -> dict[str, float]:
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        seconds = torch.tensor(self.seconds, dtype=torch.float64, device=device)
        values = torch.cat([torch.stack([self.sums[n] for n in names]), seconds]) / self.steps
        if world > 1:
            # Each worker saw its own share of the batch; the mean of equal shares is the global mean.
            dist.all_reduce(values)
            values /= world
        return dict(zip([*names, *TIMING_TERMS], values.tolist()))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def data_share(row: dict) -> float:
    """The share of step time spent waiting for data, from a history row or report."""
    total = row["data_s"] + row["compute_s"]
    return row["data_s"] / total if total > 0 else 0.0


def _progress_line(phase: str, step: int, cfg: DistillConfig, means: dict, rate: float, phases_left: int) -> str:
    remaining = cfg.steps - step + phases_left * cfg.steps
    terms = "  ".join(f"{n} {v:.4g}" for n, v in means.items() if n not in ("total", *TIMING_TERMS))
    return (f"[{phase}] step {step}/{cfg.steps}  loss {means['total']:.4g} ({terms})  "
            f"{rate:.2f} step/s  {rate * cfg.batch_size:.1f} img/s  "
            f"data {means['data_s']:.3f} s + compute {means['compute_s']:.3f} s per step "
            f"({data_share(means):.0%} waiting for data)  ETA {_duration(remaining / rate)}")


class SkipLog:
    """The unreadable images a worker's batches passed over: a warning for each the first time,
    and the union over all workers (and earlier runs of this one) at checkpoints."""

    def __init__(self, earlier: dict[str, str]):
        self.seen = dict(earlier)

    def note(self, skipped: tuple[trainset.Unreadable, ...]) -> None:
        for uri, reason in skipped:
            if uri not in self.seen:
                self.seen[uri] = reason
                # The reason names the image.
                log.warning("skipping an unreadable image, %s; the next image of its epoch takes its place", reason)

    def union(self, world: int) -> dict[str, str]:
        """Every worker's skips (a collective: every worker must call it)."""
        if world == 1:
            return dict(sorted(self.seen.items()))
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, self.seen)
        return dict(sorted((k, v) for d in gathered for k, v in d.items()))


class Streams(NamedTuple):
    """The run's crop streams: content, and style for the AdaIN objective."""

    content: trainset.CropStream
    style: trainset.CropStream | None


def build_streams(cfg: DistillConfig) -> Streams:
    """The crop streams over the image lists the driver wrote into the run folder."""
    content = trainset.CropStream(trainset.load_listing(cfg.listing_uri("data")), cfg.crop, cfg.short_side, cfg.seed)
    # The style stream draws from its own seed so that content and style crops are independent.
    style = (trainset.CropStream(trainset.load_listing(cfg.listing_uri("style_data")), cfg.crop, cfg.short_side,
                                 cfg.seed + 1) if cfg.style_data else None)
    return Streams(content, style)


def train_phase(phase: str, cfg: DistillConfig, models: Models, progress: StepProgress, streams: Streams,
                optimizer_state: dict | None = None) -> None:
    """Train one phase from `progress.step` to `cfg.steps`, reporting every `log_every` steps and
    checkpointing every `checkpoint_every` steps and at the end of the phase."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    module, params = phase_loss(phase, cfg, *models)
    model = ray.train.torch.prepare_model(module)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    wanted = [streams.content] + ([streams.style] if phase == "encoder" and cfg.objective == "adain" else [])
    batches = iter(trainset.loader(wanted, range(progress.step, cfg.steps), cfg.batch_size, rank, world,
                                   cfg.loader_processes, cfg.prefetch, pin_memory=device.type == "cuda"))
    window, skips, started, first = LossWindow(), SkipLog(progress.skipped), time.monotonic(), progress.step
    metrics, reported = TrainMetrics(cfg.name, phase, rank), progress.step
    phases_left = len(cfg.phases) - cfg.phases.index(phase) - 1
    clock = time.perf_counter()
    for step in range(progress.step, cfg.steps):
        batch = next(batches)
        inputs = tuple(trainset.to_input(crops, device) for crops in batch.crops)
        fetched = time.perf_counter()
        terms = model(*inputs)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        computed = time.perf_counter()
        window.add(terms, fetched - clock, computed - fetched)
        metrics.step(fetched - clock, computed - fetched)
        skips.note(batch.skipped)
        done = step + 1
        save = done % cfg.checkpoint_every == 0 or done == cfg.steps
        if save or done % cfg.log_every == 0:
            means = window.mean(world)
            window = LossWindow()
            progress.step = done
            progress.history.append({"phase": phase, "step": done, **means})
            rate = (done - first) / (time.monotonic() - started)
            if rank == 0:
                log.info(_progress_line(phase, done, cfg, means, rate, phases_left))
            if save:
                progress.skipped = skips.union(world)
            state = (models.student, models.decoder, optimizer, progress) if save and rank == 0 else None
            _report(means, phase, done, cfg, state)
            metrics.reported(done - reported, {t: v for t, v in means.items() if t not in TIMING_TERMS}, save)
            reported = done
        clock = time.perf_counter()  # reports and checkpoints count as neither data nor compute
def _report(means: dict, phase: str, step: int, cfg: DistillConfig, state: tuple | None) -> None:
    """Report metrics from every worker (Ray Train's report is a barrier); rank 0 adds the
    checkpoint when `state` is given."""
    metrics = {"phase": phase, "step": step, **means}
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, *state, cfg)
        upload = None if storage.is_local(cfg.run_dir) else checkpoint_uploader(cfg.run_dir)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint-{phase}-{step:07d}", checkpoint_upload_fn=upload)


def checkpoint_uploader(run_dir: str):
    """Ray Train's `checkpoint_upload_fn` for object storage. Its default upload (pyarrow's
    copy_files) can lose a file to a storage blip without saying so: with connections cut partway
    through a multipart upload, copy_files returned normally and the object was never stored
    (pyarrow 26, through tests/faults.py's proxy). This one writes each file through
    cdcore.io.storage (whole objects or aborted multipart uploads, errors raised) and tries transient
    failures again, with backoff, for up to 5 minutes (cdcore.io.patientfs.PATIENCE_S)."""

    def upload(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        destination = storage.join(run_dir, name)
        for file in sorted(os.listdir(checkpoint.path)):
            patiently(lambda: storage.upload(os.path.join(checkpoint.path, file), storage.join(destination, file)))
        run = ray.train.get_context().get_storage()  # the same place, as Ray Train's filesystem sees it
        return ray.train.Checkpoint(path=f"{run.experiment_fs_path}/{name}", filesystem=run.storage_filesystem)

    return upload


def train_worker(config: dict) -> None:
    """Ray Train's per-worker entry point; `config` is `DistillConfig.to_dict()`."""
    cfg = DistillConfig.from_dict(config)
    device = ray.train.torch.get_device()
    teacher, collaborator = load_teacher(cfg)
    student, decoder = starting_student(cfg, teacher, collaborator)
    progress, optimizer_state = StepProgress(cfg.phases[0]), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress = read_progress(directory)
            load_weights(directory, student, decoder)
            optimizer_state = read_optimizer(directory)
    models = Models(student.to(device), decoder.to(device), teacher.to(device),
                    collaborator.to(device) if collaborator is not None else None)
    streams = build_streams(cfg)  # the run's image lists, read once for all phases
    for phase in cfg.phases[cfg.phases.index(progress.phase):]:
        if phase != progress.phase:  # the checkpoint's phase is finished: the next starts afresh
            progress.phase, progress.step, optimizer_state = phase, 0, None
        train_phase(phase, cfg, models, progress, streams, optimizer_state)
