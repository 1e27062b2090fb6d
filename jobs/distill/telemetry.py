"""What a training worker tells Prometheus (the series are defined in jobs/metrics.py), beside
what it reports to Ray Train (the same loss terms and step times, into the run's results).

Every worker times its own steps (data wait differs per worker: each reads its own share);
rank 0 counts the steps and checkpoints and holds the loss gauges, set again at most every
`every` seconds between reports so they do not age out of Ray's agent while steps are slow.
"""
from __future__ import annotations

import time

from ..metrics import Recorder


class TrainMetrics:
    def __init__(self, run: str, phase: str, rank: int, every: float = 1.0):
        self.metrics = Recorder(run=run, phase=phase)
        self.rank, self.every = str(rank), every
        self.losses: dict[str, float] = {}
        self._set = float("-inf")

    def step(self, data_s: float, compute_s: float) -> None:
        self.metrics.observe("cdstyle_distill_step_seconds", data_s, part="data_wait", rank=self.rank)
        self.metrics.observe("cdstyle_distill_step_seconds", compute_s, part="compute", rank=self.rank)
        if self.losses and time.monotonic() - self._set >= self.every:
            self._set_losses()

    def reported(self, steps: int, losses: dict[str, float], checkpoint: bool) -> None:
        """A report of `steps` more steps with these mean loss terms (rank 0 only)."""
        if self.rank != "0":
            return
        self.metrics.inc("cdstyle_distill_steps", steps)
        if checkpoint:
            self.metrics.inc("cdstyle_distill_checkpoints")
        self.losses = losses
        self._set_losses()

    def _set_losses(self) -> None:
        self._set = time.monotonic()
        for term, value in self.losses.items():
            self.metrics.set("cdstyle_distill_loss", value, term=term)
