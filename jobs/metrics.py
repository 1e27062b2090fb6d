"""Every series the jobs export to Prometheus, in one table, and a recorder for them.

The jobs record through `ray.util.metrics`; Ray's metrics agent on each node serves them on the
node's metrics export port (`ray start --metrics-export-port`) as `ray_<name>`, counters as
`ray_<name>_total`, histograms as `ray_<name>_bucket`, `_sum` and `_count`, each series labelled
with the recording process (WorkerId, NodeAddress, ...) besides its own tags. cluster/grafana.json
charts them; a test checks that its queries name only series of this table.

CDSTYLE_METRICS=0 in the environment of the driver (and so of a local Ray's actors) records
nothing: for clusters that want none, and for measuring what recording costs
(benchmarks/job_scale.py --compare-metrics).

Tags are low-cardinality only (a run, a status, a phase, an actor name), never a URI or a row:
every distinct tag set is a series that Prometheus keeps. Gauges are set again periodically: Ray
drops a gauge that was not set within two export intervals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# Bounds of the seconds histograms: 1 ms to 1 h, about three buckets a decade.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
                   150.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Series:
    name: str  # as recorded; Prometheus names follow from it and `kind` (see `prometheus_names`)
    kind: str  # counter | gauge | histogram
    tags: tuple[str, ...]
    help: str


SERIES = {s.name: s for s in (
    # jobs.stylize; `run` is the results' run id (one per job run, like Ray Data's `dataset`)
    Series("cdstyle_rows", "counter", ("run", "status", "failure"),
           "Rows with a result: status ok|skipped|failed; failure transient|permanent on failed rows, else empty"),
    Series("cdstyle_megapixels", "counter", ("run",), "Megapixels of the outputs written (ok rows)"),
    Series("cdstyle_row_phase_seconds", "histogram", ("run", "phase", "method"),
           "Seconds an ok row spent in each phase: read, decode, style, stylize, encode, write (from the actors)"),
    # Ray 2.60's agent rebuilds a histogram's _sum from bucket midpoints (ray-project/ray#64852),
    # so the exact seconds per phase, for the phase breakdown, are a counter of their own.
    Series("cdstyle_phase_seconds", "counter", ("run", "phase"),
           "Seconds the actors spent in each phase, summed over ok rows"),
    Series("cdstyle_transient_failures", "counter", ("run",),
           "Transient failures met (storage did not answer): each row runs again, or fails past its deadline"),
    Series("cdstyle_rows_queued", "gauge", ("run",), "Rows waiting for an actor, retries included"),
    Series("cdstyle_rows_in_flight", "gauge", ("run",), "Rows handed to actors, not yet back"),
    Series("cdstyle_actors_alive", "gauge", ("run",), "Actors in the pool"),
    Series("cdstyle_actor_replacements", "gauge", ("run",), "Actors started to replace dead ones so far"),
    Series("cdstyle_actor_device_busy", "gauge", ("run", "actor"),
           "Share of its time since it started that the actor's device was stylizing or preparing styles"),
    Series("cdstyle_storage_paused", "gauge", ("run",), "1 while storage does not answer and dispatching is paused"),
    Series("cdstyle_eta_seconds", "gauge", ("run",), "Seconds left at the rate so far"),
    # jobs.distill; `run` is the Ray Train run name (ray_train_run_name in Ray Train's own series)
    Series("cdstyle_distill_steps", "counter", ("run", "phase"), "Optimizer steps done"),
    Series("cdstyle_distill_step_seconds", "histogram", ("run", "phase", "part", "rank"),
           "Seconds per step of one worker: part data_wait (the batch) or compute (the step itself)"),
    Series("cdstyle_distill_loss", "gauge", ("run", "phase", "term"),
           "Loss terms at the last report, averaged over its steps and the workers"),
    Series("cdstyle_distill_checkpoints", "counter", ("run", "phase"), "Checkpoints written"),
)}


def prometheus_names(series: Series) -> tuple[str, ...]:
    """The names Prometheus scrapes for a series (Ray adds the `ray_` prefix)."""
    base = f"ray_{series.name}"
    return {"counter": (f"{base}_total",), "gauge": (base,),
            "histogram": (f"{base}_bucket", f"{base}_sum", f"{base}_count")}[series.kind]


_made: dict[str, object] = {}  # name -> ray.util.metrics object, one per process
ENABLED = os.environ.get("CDSTYLE_METRICS", "1") != "0"


def _metric(name: str):
    """The Ray metric for `name`, made on first use; None while this process is not connected to
    Ray (a Stylizer used as a plain class, a benchmark without Ray, a driver after its Ray is gone)."""
    if not ENABLED:
        return None
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    metric = _made.get(name)
    if metric is None:
        from ray.util import metrics

        s = SERIES[name]
        if s.kind == "histogram":
            metric = metrics.Histogram(s.name, s.help, boundaries=list(SECONDS_BUCKETS), tag_keys=s.tags)
        else:
            metric = {"counter": metrics.Counter, "gauge": metrics.Gauge}[s.kind](s.name, s.help, tag_keys=s.tags)
        _made[name] = metric
    return metric


class Recorder:
    """Records the series of SERIES with `tags` added to every point (the run, typically)."""

    def __init__(self, **tags: str):
        self.tags = tags

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        metric = _metric(name)
        if metric is not None and value > 0:  # Ray refuses increments of 0
            metric.inc(float(value), {**self.tags, **tags})

    def set(self, name: str, value: float, **tags: str) -> None:
        metric = _metric(name)
        if metric is not None:
            metric.set(float(value), {**self.tags, **tags})

    def observe(self, name: str, value: float, **tags: str) -> None:
        metric = _metric(name)
        if metric is not None:
            metric.observe(float(value), {**self.tags, **tags})
