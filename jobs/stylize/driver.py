"""`python -m jobs.stylize`: stylize every content/style pair of a manifest on a pool of Ray actors.

Runs on whatever Ray it finds: the cluster named by RAY_ADDRESS (which `ray job submit` sets),
else a new local one. Inputs, outputs, the manifest, the models and the results table are URIs:
local paths, file:// or s3://.

Exit status 0 when the job ran, even if some rows failed (the results table says which and why);
2, with one line on stderr, when the job cannot run: an unreadable manifest or missing columns,
missing or broken models, unreachable storage, bad options, actors that cannot start.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import ray

from cdcore import options, storage
from cdcore.modelfiles import ModelError, default_models_dir
from cdcore.modelset import load_model_set

from .manifest import ManifestError, Options, Row, plan_rows, read_manifest, resolve
from .progress import JobProgress
from .results import Report, failed, results_uri, summary, write_results
from .scheduler import Dispatcher, PoolError
from .worker import Stylizer, WorkerConfig

EXIT_CANNOT_RUN = 2
# Storage settings that actors, being other processes, perhaps on other machines, must see to
# reach the same object store as the driver. Passed only when set here, and never printed.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "CDCORE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_PROFILE")


class JobError(RuntimeError):
    """The job cannot run (or cannot finish writing its results); the message says why."""


# ----------------------------------------------------------------------------------------- options

def _count(minimum: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum} (got {value})")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.stylize", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="CSV, Parquet or JSON Lines table with columns "
                   f"content, style and optionally output, {', '.join(options.ROW_FIELDS)} (per-row options)")
    p.add_argument("--output-prefix", required=True, help="where rows without an output go, as "
                   "<prefix>/<content>+<style>_<method>_a<alpha>.<content's format, else png>")
    p.add_argument("--results", required=True, help="results table: a .parquet file, or a directory "
                   "or prefix that gets a new part-<time>.parquet per run")
    p.add_argument("--models", default=None, help="model set directory or URI "
                   "(default: $CDCORE_MODELS, else where `cdcore models fetch` writes)")
    p.add_argument("--actors", type=_count(1), default=None,
                   help="actors in the pool (default: as many as the cluster's GPUs or CPUs hold now)")
    p.add_argument("--num-gpus-per-actor", type=_count(0, float), default=0.0,
                   help="GPUs per actor; 0 runs on CPU (default 0)")
    p.add_argument("--cpus-per-actor", type=_count(0.01, float), default=1.0,
                   help="CPU slots per actor, also its torch threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo rows whose output exists")
    p.add_argument("--style-cache", type=_count(1), default=16, help="styles each actor keeps (default 16)")
    options.add_image_options(p)
    return p


# ---------------------------------------------------------------------------------------- planning

@dataclass
class Job:
    """Everything decided on the driver before any actor starts."""

    rows: list[Row]
    worker: WorkerConfig
    results: str
    model_id: str | None
    actors: int | None
    num_gpus: float
    num_cpus: float


def prepare(args: argparse.Namespace) -> Job:
    """Read and plan the manifest and check the models, so a job that cannot run stops here, on
    the driver, before a cluster starts actors for it."""
    job_options = Options(resolve(args.output_prefix), options.recipe_from_args(args))
    manifest = resolve(args.manifest)
    rows = plan_rows(read_manifest(manifest), job_options, source=manifest)
    stages = tuple(sorted({k for row in rows if not row.error for k in row.recipe.stages}, reverse=True))
    models = resolve(args.models or default_models_dir())
    model_id = load_model_set(models, stages).model_id if stages else None
    worker = WorkerConfig(models=models, stages=stages, device="cuda" if args.num_gpus_per_actor else "cpu",
                          overwrite=args.overwrite, max_pixels=args.max_pixels, style_cache=args.style_cache,
                          tile_size=args.tile_size)
    return Job(rows, worker, resolve(args.results), model_id, args.actors, args.num_gpus_per_actor,
               args.cpus_per_actor)


# ----------------------------------------------------------------------------------------- running

def forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def actor_factory(job: Job, say: Callable[[str], None]):
    """`new_actor(name)` for the dispatcher: a Stylizer actor with the job's resources."""
    options = {"num_cpus": job.num_cpus, "num_gpus": job.num_gpus,
               "max_restarts": 0}  # the dispatcher replaces dead actors and decides what to retry
    env = forwarded_env()
    if env:
        options["runtime_env"] = {"env_vars": env}
        say(f"passing {', '.join(sorted(env))} to the actors")
    remote = ray.remote(Stylizer).options(**options)
    return lambda name: remote.remote(name, job.worker)


def pool_size(job: Job, runnable: int) -> int:
    """--actors, else as many as the cluster's resources hold now; never more than the rows."""
    if job.actors:
        wanted = job.actors
    else:
        resources = ray.cluster_resources()
        have, per_actor = (resources.get("GPU", 0), job.num_gpus) if job.num_gpus else \
                          (resources.get("CPU", 0), job.num_cpus)
        wanted = max(1, int(have // per_actor))
    return min(wanted, runnable)


def run(job: Job, on_result: Callable[[dict], None] | None = None,
        say: Callable[[str], None] = lambda msg: None) -> Report:
    """Run the job's rows on a pool of actors and write the results table.

    Uses the Ray connection this process already has, or makes one (RAY_ADDRESS or a new local
    Ray) and closes it again. `on_result(record)` sees each results record as it arrives.
    """
    started = time.monotonic()
    records = [failed(row, row.error) for row in job.rows if row.error]
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init()
    try:
        pool = _dispatch(job, records, on_result, say)
    finally:
        if connected_here:
            ray.shutdown()
    uri = _write(job.results, records)
    return Report(records, pool.counters, pool.started, pool.replaced, time.monotonic() - started, uri)


def _dispatch(job: Job, records: list[dict], on_result: Callable[[dict], None] | None,
              say: Callable[[str], None]) -> Dispatcher:
    """Run the rows that can run, appending a results record per row to `records`."""
    runnable = [row for row in job.rows if not row.error]
    progress = JobProgress(len(job.rows))
    for record in records:
        progress.add(record)

    def collect(record: dict) -> None:
        records.append(record)
        progress.add(record)
        if on_result:
            on_result(record)

    size = pool_size(job, len(runnable))
    say(f"{len(runnable)} rows to run on {size} actor{'s' * (size != 1)} ({job.num_gpus:g} GPU, "
        f"{job.num_cpus:g} CPU each); {len(records)} refused while planning")
    if runnable and job.num_gpus and not ray.cluster_resources().get("GPU"):
        say("no GPU in the cluster yet: the actors wait until an autoscaler adds GPU nodes")
    pool = Dispatcher(runnable, actor_factory(job, say), size, collect,
                      on_wait=lambda d: progress.maybe_print(f"{d.ready_actors}/{len(d.actors)} ready"))
    try:
        pool.run()
    except PoolError as e:
        done = {r["row"] for r in records}
        records += [failed(row, f"{row.content}: not run: {e}") for row in runnable if row.index not in done]
        _write(job.results, records)
        raise JobError(str(e)) from None
    progress.maybe_print(force=True)
    return pool


def _write(target: str, records: list[dict]) -> str:
    uri = results_uri(target)
    try:
        write_results(uri, records)
    except storage.StorageError as e:
        raise JobError(f"cannot write the results table: {e}") from None
    return uri


# -------------------------------------------------------------------------------------------- main

def _say(msg: str) -> None:
    print(f"jobs.stylize: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = prepare(args)
        report = run(job, say=_say)
    except (ManifestError, ModelError, storage.StorageError, JobError, ValueError) as e:
        _say(f"error: {e}")
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        _say("interrupted; rows already written stay, and a rerun skips them")
        return 130
    print(summary(report, job.model_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
