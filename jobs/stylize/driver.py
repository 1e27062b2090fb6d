"""`python -m jobs.stylize`: stylize a manifest, or a dataset of folders, on a pool of Ray actors.

Runs on whatever Ray it finds: the cluster named by RAY_ADDRESS (which `ray job submit` sets),
else a new local one. Inputs, outputs, the manifest, the models and the results are URIs: local
paths, file:// or s3://.

Exit status 0 when the job ran, even if some rows failed (the results say which and why); 2, with
one line on stderr, when the job cannot run: an unreadable manifest or missing columns, a dataset
folder without images, missing or broken models, unreachable storage, bad options, actors that
cannot start.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import ray

from cdcore import options
from cdcore.io import storage
from cdcore.models.modelfiles import ModelError, default_models_dir
from cdcore.models.modelset import load_model_set

from .dataset import DEFAULT_EXTENSIONS, DEFAULT_NAME, Dataset, DatasetError, expand
from .deaths import DEFAULT_MAX_ROW_DEATHS
from .manifest import ManifestError, Options, read_manifest, resolve
from .plan import Plan, plan_table
from .progress import JobProgress
from .results import Report, ResultsWriter, done_outputs, failed, new_run_id, summary, write_summary
from .retries import DEFAULT_DEADLINE_S, Retries
from .scheduler import IN_FLIGHT_PER_ACTOR, Dispatcher, PoolError, StyleQueue
from .telemetry import JobTelemetry
from .worker import Stylizer, WorkerConfig

EXIT_CANNOT_RUN = 2
# Storage settings that actors, being other processes, perhaps on other machines, must see to
# reach the same object store as the driver. Passed only when set here, and never printed.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "CDCORE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_PROFILE", "AWS_MAX_ATTEMPTS")


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


def _batch_images(text: str) -> int | None:
    """'auto' (None: each actor chooses per image size) or a number of rows >= 1."""
    return None if text == "auto" else _count(1)(text)


def _io_threads(text: str) -> int | None:
    """'auto' (None: each actor sizes its loaders from measured rates) or a count >= 0."""
    return None if text == "auto" else _count(0)(text)


def _extensions(text: str) -> tuple[str, ...]:
    names = tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"no extensions in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.stylize", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="CSV, Parquet or JSON Lines table with columns content, style and "
                        f"optionally output, {', '.join(options.ROW_FIELDS)} (per-row options)")
    source.add_argument("--contents", help="dataset mode: a folder or prefix of content images, read recursively; "
                        "outputs mirror its tree under --output-prefix")
    p.add_argument("--styles", help="dataset mode: a folder or prefix of style images")
    p.add_argument("--num-styles", type=_count(1), default=1, help="dataset mode: styles per content (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset mode: which styles each content gets (default 0)")
    p.add_argument("--extensions", type=_extensions, default=DEFAULT_EXTENSIONS,
                   help=f"dataset mode: file extensions to take, any case (default {','.join(DEFAULT_EXTENSIONS)})")
    p.add_argument("--output-name", default=DEFAULT_NAME,
                   help="dataset mode: output file name from {stem}, {style}, {ext}, {k} (default "
                        f"{DEFAULT_NAME}; {{stem}}{{ext}} keeps the content's own name)")
    p.add_argument("--output-prefix", required=True, help="where outputs go: manifest rows without an output as "
                   "<prefix>/<content>+<style>_<method>_a<alpha>.<content's format, else png>")
    p.add_argument("--results", required=True, help="results prefix (a directory or s3:// prefix): every run adds "
                   "Parquet parts there as it goes; a rerun reads them and skips rows already done")
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
    p.add_argument("--io-threads", type=_io_threads, default=None, metavar="N|auto",
                   help="threads per actor that read and decode the next rows and encode and write finished ones "
                        "while the device stylizes; auto (default): 2 to start, then as many reads in flight as "
                        "the device's measured pace needs, up to 4 per CPU of the actor or 32 on a GPU "
                        "(jobs.stylize.loaders); 0: each row start to end, one at a time")
    p.add_argument("--batch-images", type=_batch_images, default=None, metavar="N|auto",
                   help="rows of one size (after --content-size and --crop) that an actor stylizes together; auto "
                        "(default): as many as a quarter of the device's free memory holds, up to 64K pixels a "
                        "batch on a CPU and 16M on a GPU (cdcore.batching); not with --io-threads 0")
    p.add_argument("--retry-deadline", type=_count(0, float), default=DEFAULT_DEADLINE_S,
                   help="seconds a row that fails transiently (storage unreachable, 5xx, throttled) is retried "
                        f"for, from its first such failure, before it fails (default {DEFAULT_DEADLINE_S:g})")
    p.add_argument("--max-row-deaths", type=_count(1), default=DEFAULT_MAX_ROW_DEATHS,
                   help="a row fails after the actor running it alone died this many times (default "
                        f"{DEFAULT_MAX_ROW_DEATHS}); deaths with other rows running are charged to none of them")
    p.add_argument("--flush-rows", type=_count(1), default=50_000,
                   help="write a results part every N rows (default 50000) ...")
    p.add_argument("--flush-seconds", type=_count(0.1, float), default=60.0,
                   help="... or every S seconds, whichever comes first (default 60)")
    options.add_image_options(p)
    return p


# ---------------------------------------------------------------------------------------- planning

@dataclass
class Job:
    """Everything decided on the driver before any actor starts."""

    plan: Plan
    worker: WorkerConfig
    results: str
    model_id: str | None
    actors: int | None
    num_gpus: float
    num_cpus: float
    flush_rows: int = 50_000
    flush_seconds: float = 60.0
    retry_deadline: float = DEFAULT_DEADLINE_S
    output_prefix: str | None = None  # what the dispatcher probes while storage is down
    max_row_deaths: int = DEFAULT_MAX_ROW_DEATHS


def manifest_next_to(results: str) -> str:
    """Where dataset mode writes the manifest it expanded: beside the results prefix, not in it
    (read_table(prefix) reads every part there)."""
    base = results.rstrip("/")
    return (base[: -len(".parquet")] if base.endswith(".parquet") else base) + "-manifest.parquet"


def _read_source(args: argparse.Namespace, output_prefix: str, results: str):
    """(manifest table, its URI): read from --manifest, or expanded from --contents/--styles (its
    URI then says where `prepare` writes it)."""
    if args.manifest:
        uri = resolve(args.manifest)
        return read_manifest(uri), uri
    if not args.styles:
        raise DatasetError("--contents needs --styles")
    dataset = Dataset(resolve(args.contents), resolve(args.styles), output_prefix, args.num_styles, args.seed,
                      args.extensions, args.output_name)
    return expand(dataset), manifest_next_to(results)


def _write_table(table, uri: str) -> None:
    data = io.BytesIO()
    pq.write_table(table, data)
    storage.write_bytes(uri, data.getvalue())


def prepare(args: argparse.Namespace) -> Job:
    """Read or expand and plan the rows, and check the models, so a job that cannot run stops
    here, on the driver, before a cluster starts actors for it."""
    if args.styles and not args.contents:
        raise DatasetError("--styles belongs to dataset mode: give --contents too, or use --manifest")
    job_options = Options(resolve(args.output_prefix), options.recipe_from_args(args))
    results = resolve(args.results)
    table, source = _read_source(args, job_options.output_prefix, results)
    plan = plan_table(table, job_options, source)
    stages = plan.stages()
    models = resolve(args.models or default_models_dir())
    model_id = load_model_set(models, stages).model_id if stages else None
    if not args.manifest:  # the expanded manifest, so the run can be inspected and reproduced
        _write_table(table, source)
    worker = WorkerConfig(models=models, stages=stages, device="cuda" if args.num_gpus_per_actor else "cpu",
                          overwrite=args.overwrite, max_pixels=args.max_pixels, style_cache=args.style_cache,
                          tile_size=args.tile_size, precision=args.precision, io_threads=args.io_threads,
                          cpus=args.cpus_per_actor,
                          output_prefix=job_options.output_prefix, batch_images=args.batch_images)
    return Job(plan, worker, results, model_id, args.actors, args.num_gpus_per_actor, args.cpus_per_actor,
               args.flush_rows, args.flush_seconds, args.retry_deadline, job_options.output_prefix,
               args.max_row_deaths)


# ----------------------------------------------------------------------------------------- running

def forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def actor_factory(job: Job, say: Callable[[str], None], run_id: str = ""):
    """`new_actor(name)` for the dispatcher: a Stylizer actor with the job's resources (its
    metrics tagged with `run_id`)."""
    options = {"num_cpus": job.num_cpus, "num_gpus": job.num_gpus,
               "max_restarts": 0,  # the dispatcher replaces dead actors and decides what to retry
               # an overlapping actor runs its two batches in flight at once (worker.py says why)
               "max_concurrency": IN_FLIGHT_PER_ACTOR if job.worker.overlaps else 1}
    env = forwarded_env()
    if env:
        options["runtime_env"] = {"env_vars": env}
        say(f"passing {', '.join(sorted(env))} to the actors")
    remote = ray.remote(Stylizer).options(**options)
    config = dataclasses.replace(job.worker, run=run_id)
    return lambda name: remote.remote(name, config)


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
    """Run the job's rows on a pool of actors, streaming results parts under `job.results`.

    Rows that earlier runs recorded as done there are not run again (unless --overwrite). Uses
    the Ray connection this process already has, or makes one (RAY_ADDRESS or a new local Ray)
    and closes it again. `on_result(record)` sees each results record as it arrives. The run's
    series go to Ray's metrics agent (jobs/metrics.py) and its summary beside the parts.
    """
    started = time.monotonic()
    writer = ResultsWriter(job.results, new_run_id(), job.flush_rows, job.flush_seconds)
    progress = JobProgress(len(job.plan))
    telemetry = JobTelemetry(writer.run, progress)

    def tell(message: str) -> None:
        progress.clear()
        say(message)

    def collect(record: dict) -> None:
        writer.add(record)
        progress.add(record)
        if on_result:
            on_result(record)

    try:
        runnable, earlier = _still_to_run(job)
        progress.total -= earlier
        refused = job.plan.refused()
        for chunk in np.array_split(refused, max(1, len(refused) // 10_000)):
            for row in job.plan.rows(chunk):
                collect(failed(row, row.error))
        pool = _dispatch(job, runnable, collect, progress, writer, telemetry, tell) if len(runnable) else None
        telemetry.tick(force=True)  # the rows refused while planning, when no actor ran
    except storage.StorageError as e:
        raise JobError(f"cannot write or read the results: {e}") from None
    finally:
        progress.status.end()  # a message after this one starts a line of its own
        _close(writer)
    report = Report(progress.tally, earlier, pool.counters if pool else {}, pool.started if pool else 0,
                    pool.replaced if pool else 0, time.monotonic() - started, job.results, writer.parts,
                    pool.transient_failures if pool else 0, writer.run)
    try:
        write_summary(report, job.model_id)
    except storage.StorageError as e:  # derived from the parts, which are complete: no reason to fail
        say(f"could not write the run's summary beside the results ({e}); the results parts are complete")
    return report


def _still_to_run(job: Job) -> tuple[np.ndarray, int]:
    """Plan positions to run, and how many runnable rows earlier runs did already."""
    runnable = job.plan.runnable()
    if job.worker.overwrite:
        return runnable, 0
    done = done_outputs(job.results)
    if not len(done):
        return runnable, 0
    mask = np.isin(job.plan.output_hashes()[runnable], done)
    return runnable[~mask], int(mask.sum())


def _answers(prefix: str) -> bool:
    """Whether storage answers a request under `prefix` (a refusal, unlike silence, is an answer)."""
    try:
        storage.ping(prefix)
    except storage.StorageError as e:
        return not e.transient
    return True


def _close(writer: ResultsWriter) -> None:
    try:
        writer.close()
    except storage.StorageError as e:
        raise JobError(f"cannot write the results: {e}") from None


def _dispatch(job: Job, runnable: np.ndarray, collect: Callable[[dict], None], progress: JobProgress,
              writer: ResultsWriter, telemetry: JobTelemetry, say: Callable[[str], None]) -> Dispatcher:
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init()
    try:
        size = pool_size(job, len(runnable))
        say(f"{len(runnable)} rows to run on {size} actor{'s' * (size != 1)} ({job.num_gpus:g} GPU, "
            f"{job.num_cpus:g} CPU each)")
        if job.num_gpus and not ray.cluster_resources().get("GPU"):
            say("no GPU in the cluster yet: the actors wait until an autoscaler adds GPU nodes")

        def waited(d: Dispatcher) -> None:
            writer.tick()
            telemetry.tick(d)
            progress.maybe_print(f"{d.ready_actors}/{len(d.actors)} ready")

        queue = StyleQueue(job.plan.style_groups(runnable))
        pool = Dispatcher(queue, job.plan.rows, actor_factory(job, say, writer.run), size, collect, waited)
        pool.retries, pool.say = Retries(job.retry_deadline), say
        pool.max_row_deaths = job.max_row_deaths
        pool.overlapped = job.worker.overlaps
        pool.probe = lambda: _answers(job.output_prefix or job.results)
        try:
            pool.run()
        except PoolError as e:
            raise JobError(f"{e}; {len(queue)} rows not run (a rerun runs them)") from None
        telemetry.tick(pool, force=True)  # before a Ray connected here goes
        progress.maybe_print(force=True)
        return pool
    finally:
        if connected_here:
            ray.shutdown()


# -------------------------------------------------------------------------------------------- main

def _say(msg: str) -> None:
    print(f"jobs.stylize: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = prepare(args)
        report = run(job, say=_say)
    except (ManifestError, DatasetError, ModelError, storage.StorageError, JobError, ValueError) as e:
        _say(f"error: {e}")
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        _say("interrupted; rows already written stay, and a rerun skips them")
        return 130
    print(summary(report, job.model_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
