"""How jobs.stylize scales in rows: planning, dispatch and the driver's memory, and S3 listing.

    .venv/bin/python benchmarks/job_scale.py [--rows 100000,1000000] [--actors 2] [--styles 100]
        [--list-objects 100000] [--compare-metrics N]

1. For each row count: a Parquet manifest of that many rows whose outputs all exist (empty files
   in folders of 1,000), with `--styles` styles, run by `jobs.stylize` on a local Ray with
   `--actors` actors of one CPU, in a fresh driver process per count. Every row comes back
   `skipped`, so the time is the job's own overhead: planning (reading and planning the
   manifest), dispatch (rows/s from the call to `run` to the last result, Ray already up), and
   the driver's peak RSS (VmHWM). Goal: >= 5,000 rows/s with 2 actors, <= 1.5 GB at 1M rows.
   `--compare-metrics N` runs each count N times with the job's metrics and N times without
   (CDSTYLE_METRICS=0), alternating, over the same files, and times the driver's metrics ticks:
   goal, the rate with metrics within 5% of the rate without.
2. `--list-objects` empty objects put on moto's S3 server on 127.0.0.1, then listed with
   `storage.list_files` (paginated, 1,000 keys a page): seconds.

Setup (files, manifest, uploads) is not timed. Prints markdown tables. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "models" / "cd16x"

# The driver's side, in a fresh process so that its peak RSS is the job's alone.
CHILD = """
import json, resource, sys, time
import ray
from jobs.stylize import telemetry
from jobs.stylize.driver import build_parser, prepare, run
spent = [0.0]  # seconds the driver spends recording metrics
tick = telemetry.JobTelemetry.tick
def timed(self, *args, **kwargs):
    t = time.perf_counter()
    tick(self, *args, **kwargs)
    spent[0] += time.perf_counter() - t
telemetry.JobTelemetry.tick = timed
ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False)
args = build_parser().parse_args(sys.argv[2:])
t0 = time.perf_counter()
job = prepare(args)
t1 = time.perf_counter()
cpu = resource.getrusage(resource.RUSAGE_SELF)
report = run(job)
t2 = time.perf_counter()
used = resource.getrusage(resource.RUSAGE_SELF)
cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime  # every thread of the driver
ray.shutdown()
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"plan_s": t1 - t0, "run_s": t2 - t1, "skipped": report.count("skipped"),
                  "other": report.count("ok") + report.count("failed"), "parts": len(report.parts),
                  "peak_rss": hwm, "metrics_s": spent[0], "cpu_s": cpu_s}))
"""


def make_rows(root: Path, rows: int, styles: int) -> Path:
    """A manifest of `rows` rows whose outputs exist (empty files, 1,000 to a folder)."""
    out = root / "out"
    content, style, output = [], [], []
    for i in range(rows):
        folder = out / f"{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        path = folder / f"c{i}.jpg"
        path.touch()
        content.append(str(root / "in" / f"{i // 1000:05d}" / f"c{i}.jpg"))
        style.append(str(root / "styles" / f"s{i % styles}.jpg"))
        output.append(str(path))
    manifest = root / "manifest.parquet"
    pq.write_table(pa.table({"content": content, "style": style, "output": output}), manifest)
    return manifest


def run_job(root: Path, manifest: Path, actors: int, results: str = "results", metrics: bool = True) -> dict:
    args = ["--manifest", str(manifest), "--output-prefix", str(root / "out"), "--results",
            str(root / results), "--models", str(MODELS), "--actors", str(actors)]
    env = {**os.environ, "CDSTYLE_METRICS": "1" if metrics else "0"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(actors), *args], cwd=ROOT, capture_output=True,
                          text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def dispatch_table(counts: list[int], actors: int, styles: int) -> None:
    print("| rows | planning s | dispatch s | rows/s | driver peak RSS GB | parts |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for rows in counts:
        with tempfile.TemporaryDirectory(prefix="job-scale-") as tmp:
            manifest = make_rows(Path(tmp), rows, styles)
            r = run_job(Path(tmp), manifest, actors)
        if r["skipped"] != rows or r["other"]:
            raise RuntimeError(f"expected {rows} skipped rows, got {r}")
        print(f"| {rows:,} | {r['plan_s']:.1f} | {r['run_s']:.1f} | {rows / r['run_s']:,.0f} | "
              f"{r['peak_rss'] / 1e9:.2f} | {r['parts']} |", flush=True)


def metrics_table(counts: list[int], actors: int, styles: int, repeats: int) -> None:
    """Dispatch with and without the job's metrics over the same files, after one untimed run that
    warms the page cache: in pairs, on then off, then off then on (so neither always goes first);
    each run has its own results prefix, so each skips every row itself."""
    print("\n| rows | metrics | dispatch s (each run) | median rows/s | best rows/s | driver CPU s (each run) "
          "| driver s in metrics |")
    print("| ---: | --- | --- | ---: | ---: | --- | ---: |")
    for rows in counts:
        with tempfile.TemporaryDirectory(prefix="job-scale-") as tmp:
            manifest = make_rows(Path(tmp), rows, styles)
            seconds, cpu, recording = {True: [], False: []}, {True: [], False: []}, {True: [], False: []}
            run_job(Path(tmp), manifest, actors, "results-warm-up")
            for i in range(repeats):
                for metrics in ((True, False) if i % 2 == 0 else (False, True)):
                    r = run_job(Path(tmp), manifest, actors, f"results-{metrics}-{i}", metrics)
                    if r["skipped"] != rows or r["other"]:
                        raise RuntimeError(f"expected {rows} skipped rows, got {r}")
                    seconds[metrics].append(r["run_s"])
                    recording[metrics].append(r["metrics_s"])
                    cpu[metrics].append(r["cpu_s"])
        rate = {m: rows / statistics.median(s) for m, s in seconds.items()}
        best = {m: rows / min(s) for m, s in seconds.items()}
        for metrics in (True, False):
            print(f"| {rows:,} | {'on' if metrics else 'off'} | {', '.join(f'{s:.1f}' for s in seconds[metrics])} | "
                  f"{rate[metrics]:,.0f} | {best[metrics]:,.0f} | {', '.join(f'{s:.1f}' for s in cpu[metrics])} | "
                  f"{statistics.median(recording[metrics]):.3f} |")
        print(f"| {rows:,} | on / off | | {rate[True] / rate[False]:.3f} | {best[True] / best[False]:.3f} | "
              f"{statistics.median(cpu[True]) / statistics.median(cpu[False]):.3f} | |", flush=True)


def listing_table(objects: int) -> None:
    import boto3
    from local_s3 import moto_server, point_at

    from cdcore.io import storage

    with moto_server() as endpoint:
        point_at(endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket="listing")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="listing", Key=f"p/{i // 1000:03d}/{i}.jpg", Body=b""),
                          range(objects)))
        t0 = time.perf_counter()
        listed = storage.list_files("s3://listing/p", ["jpg"])
        seconds = time.perf_counter() - t0
    assert len(listed) == objects, len(listed)
    print(f"\n| objects listed on moto S3 | seconds | objects/s |\n| ---: | ---: | ---: |\n"
          f"| {objects:,} | {seconds:.1f} | {objects / seconds:,.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="100000,1000000")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--styles", type=int, default=100)
    p.add_argument("--list-objects", type=int, default=100_000, help="0: skip the listing")
    p.add_argument("--compare-metrics", type=int, default=0, metavar="N",
                   help="instead of the dispatch table: N runs with metrics and N without per count")
    args = p.parse_args()
    counts = [int(n) for n in args.rows.split(",")]
    if args.compare_metrics:
        metrics_table(counts, args.actors, args.styles, args.compare_metrics)
    else:
        dispatch_table(counts, args.actors, args.styles)
    if args.list_objects:
        listing_table(args.list_objects)


if __name__ == "__main__":
    main()
