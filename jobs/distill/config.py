"""The settings of one distillation run, shared by the driver and every training worker."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdcore.io.storage import join
from cdcore.models.nets import check_stage
from cdcore.training.losses import LossWeights

# --mode -> the phases it runs, in order. "joint" is the plain baseline: the pruned encoder and
# decoder trained together on reconstruction alone, without teacher features or collaborator.
PHASES = {
    "encoder": ("encoder",),
    "decoder": ("decoder",),
    "both": ("encoder", "decoder"),
    "joint": ("joint",),
}
OBJECTIVES = ("wct", "adain")
# The image list each data option is listed into, once per run, in the run folder.
LISTINGS = {"data": "images.txt", "style_data": "style_images.txt"}
# Settings a resumed run must share with the run that wrote its checkpoints.
FIXED_ON_RESUME = ("teacher", "teacher_vgg19", "student", "stage", "width_divisor", "mode", "objective")


@dataclass(frozen=True)
class DistillConfig:
    """One stage's distillation: what to learn from, on what data, for how long, where to write."""

    stage: int
    data: str
    storage: str
    teacher: str | None = None
    teacher_vgg19: str | None = None
    student: str | None = None
    width_divisor: int = 4
    mode: str = "both"
    objective: str = "wct"
    style_data: str | None = None
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    crop: int = 256
    short_side: int = 300
    workers: int = 1
    cpus_per_worker: int = 1
    loader_workers: int | None = None  # None: cpus_per_worker - 1, at least 1
    prefetch: int = 2
    use_gpu: bool = False
    name: str | None = None
    export: str | None = None
    resume: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    max_failures: int = 3
    weights: LossWeights = LossWeights()

    def __post_init__(self):
        check_stage(self.stage)
        if (self.teacher is None) == (self.teacher_vgg19 is None):
            raise ValueError("give exactly one teacher: --teacher (a model set) or --teacher-vgg19 "
                             f"(torchvision weights); got {self.teacher!r} and {self.teacher_vgg19!r}")
        if self.mode not in PHASES:
            raise ValueError(f"mode must be one of {tuple(PHASES)} (got {self.mode!r})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES} (got {self.objective!r})")
        if self.teacher_vgg19 and "encoder" in PHASES[self.mode]:
            raise ValueError(f"--mode {self.mode} needs the teacher's decoder as collaborator, and a torchvision "
                             "VGG-19 teacher has none: train it first (--mode decoder --width-divisor 1 --export DIR), "
                             "then distil with --teacher DIR")
        if self.objective == "adain" and not self.style_data:
            raise ValueError("--objective adain needs --style-data (a folder or prefix of style images)")
        for name in ("width_divisor", "steps", "batch_size", "workers", "cpus_per_worker", "prefetch",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size % self.workers:
            raise ValueError(f"batch size {self.batch_size} must be a multiple of workers ({self.workers})")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive (got {self.lr})")
        if not 1 <= self.crop <= self.short_side:
            raise ValueError(f"crop {self.crop} must be between 1 and the shorter side {self.short_side}")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ValueError(f"loader-workers must be >= 0 (got {self.loader_workers})")
        if self.max_failures < 0:
            raise ValueError(f"max-failures must be >= 0 (got {self.max_failures})")
        if self.name is None:
            object.__setattr__(self, "name", f"distill-stage{self.stage}-div{self.width_divisor}-{self.mode}")

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES[self.mode]

    @property
    def loader_processes(self) -> int:
        """Loader processes per training worker: as asked, else one per CPU the worker holds
        beyond the one its training loop runs on (and at least one, so reading overlaps compute)."""
        return self.loader_workers if self.loader_workers is not None else max(1, self.cpus_per_worker - 1)

    @property
    def run_dir(self) -> str:
        """URI of the run folder: run.json, the image lists, checkpoints, figures, timing."""
        return join(self.storage, self.name)

    def listing_uri(self, role: str) -> str:
        """Where the run keeps the image list of `role` ("data" or "style_data")."""
        return join(self.run_dir, LISTINGS[role])

    def to_dict(self) -> dict:
        """Plain values only (JSON and Ray-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        return cls(**{**d, "weights": LossWeights(**d["weights"])})

    def resume_mismatch(self, saved: dict) -> dict:
        """{setting: (saved, now)} for the settings that must not change on resume."""
        return {k: (saved.get(k), getattr(self, k)) for k in FIXED_ON_RESUME if saved.get(k) != getattr(self, k)}
