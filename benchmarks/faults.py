"""Faults cost time, not rows: jobs.stylize under actor kills, storage outages and throttling.

    .venv/bin/python benchmarks/faults.py [--rows 80] [--size 768x512] [--levels 3,2,1] [--actors 2]
                                          [--scenarios kills+10s] [--repeat 10]

Every scenario runs the same job (`--rows` contents of `--size` on moto's S3 server on 127.0.0.1,
reached through the loopback proxy of tests/faults.py, `--actors` CPU actors, local Ray) and
counts failed rows, rows recorded more than once, ok outputs that do not decode, and actor deaths
the job named memory kills (none of these faults is one):

    fault-free        the baseline time
    kills+10s         once the first row is done, 3 SIGKILLs 6 s apart, each of a random live
                      actor, then a 10 s outage (goal: 0 failed in every run)
    outage 60s        a 60 s outage (goal: time <= baseline + 60 + 30 s)
    slowdown 30%      503 SlowDown on 30% of requests for 20 s

`--repeat N` runs each scenario N times, a table row each.

A lost node is tested (not timed) by tests/test_node_loss.py on a real two-node cluster. Prints
a markdown table. Not a test: times depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fault injection fixtures

from faults import S3Proxy  # noqa: E402
from local_s3 import moto_server, point_at  # noqa: E402

from cdcore.io import images, storage  # noqa: E402
from jobs.stylize.driver import build_parser, prepare, run  # noqa: E402

SHARED = ROOT.parent / "shared"


def put_inputs(bucket: str, rows: int, size: tuple[int, int], work: Path) -> Path:
    photo = Image.open(SHARED / "images" / "content" / "bridge_512.jpg").resize(size)
    lines = []
    for i in range(rows):
        photo.rotate(i * 3).save(work / "c.jpg", quality=92)
        storage.upload(work / "c.jpg", f"{bucket}/in/c{i}.jpg")
        lines.append(f"{bucket}/in/c{i}.jpg,{bucket}/styles/s{i % 4}.jpg")
    for i, path in enumerate(sorted((SHARED / "images" / "style").glob("*.jpg")) * 2):
        if i < 4:
            Image.open(path).resize((384, 384)).save(work / "s.jpg")
            storage.upload(work / "s.jpg", f"{bucket}/styles/s{i}.jpg")
    manifest = work / "m.csv"
    manifest.write_text("content,style\n" + "\n".join(lines) + "\n")
    return manifest


def live_actor_pids() -> list[int]:
    """The pids of the job's live actors, from the GCS's actor table (the tests' Ray runs no
    dashboard for ray.util.state to ask)."""
    from ray._private import state

    return [a["Pid"] for a in state.actors().values() if a["State"] == "ALIVE" and a["ActorClassName"] == "Stylizer"]


def chaos(proxy: S3Proxy, first_row: threading.Event, done: threading.Event, kills: list[int]) -> None:
    """Once the first row is done: 3 SIGKILLs 6 s apart, each of a random live actor (when every
    actor is still starting, the kill waits for one), then 10 s of outage. Stops when the job is over."""
    first_row.wait()
    for _ in range(3):
        while not done.is_set():
            pids = live_actor_pids()
            if pids:
                try:
                    os.kill(random.choice(pids), signal.SIGKILL)
                    kills.append(1)
                    break
                except ProcessLookupError:  # died meanwhile: pick again
                    pass
            done.wait(0.2)
        if done.wait(6.0):
            return
    proxy.fault_for(10.0)


def run_scenario(name: str, proxy: S3Proxy, manifest: Path, bucket: str, work: Path, args, run_no: int = 0) -> dict:
    tag = f"{name.split()[0]}-{run_no}"
    out, results = f"{bucket}/out-{tag}", work / f"results-{tag}"
    job_args = build_parser().parse_args([
        "--manifest", str(manifest), "--output-prefix", out, "--results", str(results),
        "--models", str(SHARED / "models" / "cd16x"), "--actors", str(args.actors), "--levels", args.levels])
    seen, said, kills = [], [], []
    first_row, done = threading.Event(), threading.Event()
    if name.startswith("kills"):
        threading.Thread(target=chaos, args=(proxy, first_row, done, kills), daemon=True).start()

    def on_result(record: dict) -> None:
        seen.append(record)
        first_row.set()
        if len(seen) == 5 and name in ("outage 60s", "slowdown 30%"):
            fault = {"outage 60s": (60, None), "slowdown 30%": (20, lambda: proxy.throttle(0.3))}[name]
            proxy.fault_for(fault[0], fault[1])

    started = time.perf_counter()
    try:
        report = run(prepare(job_args), on_result=on_result, say=said.append)
    finally:
        done.set()
    seconds = time.perf_counter() - started
    proxy.heal()
    records = pq.read_table(str(results)).to_pylist()
    rows = [r["row"] for r in records]
    unreadable = 0
    for r in records:
        if r["status"] == "ok":
            try:
                images.read_image(r["output"])
            except images.ImageError:
                unreadable += 1
    deaths = [line for line in said if "rows in flight" in line]  # the dispatcher's line for each death
    for record in records:
        if record["status"] == "failed":
            print(f"  failed: {record['error']}", file=sys.stderr)
    return {"seconds": seconds, "failed": report.count("failed"), "duplicated": len(rows) - len(set(rows)),
            "missing": args.rows - len(set(rows)), "unreadable": unreadable, "kills": len(kills),
            "deaths": len(deaths), "memory": sum("memory" in line for line in deaths), "replaced": report.replaced,
            "transient": report.transient_failures, "cut": proxy.counts["cut"], "throttled": proxy.counts["throttled"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=80)
    p.add_argument("--size", default="768x512")
    p.add_argument("--levels", default="3,2,1")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--scenarios", default="fault-free,kills+10s,outage 60s,slowdown 30%")
    p.add_argument("--repeat", type=int, default=1, help="runs of each scenario (default 1)")
    args = p.parse_args()
    random.seed(0)
    with moto_server() as endpoint:
        run_scenarios(args, S3Proxy(endpoint))


def run_scenarios(args: argparse.Namespace, proxy: S3Proxy) -> None:
    point_at(proxy.url, AWS_MAX_ATTEMPTS="2")
    import boto3

    boto3.client("s3").create_bucket(Bucket="faults")
    ray.init(address="local", num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    print("| scenario | run | seconds | failed | duplicated | missing | unreadable | SIGKILLs | deaths | named memory "
          "kills | actors replaced | transient failures | requests cut | requests throttled |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            work = Path(tmp)
            width, height = map(int, args.size.split("x"))
            manifest = put_inputs("s3://faults", args.rows, (width, height), work)
            for name in args.scenarios.split(","):
                for run_no in range(1, args.repeat + 1):
                    proxy.counts.clear()
                    r = run_scenario(name, proxy, manifest, "s3://faults", work, args, run_no)
                    print(f"| {name} | {run_no} | {r['seconds']:.1f} | {r['failed']} | {r['duplicated']} | "
                          f"{r['missing']} | {r['unreadable']} | {r['kills']} | {r['deaths']} | {r['memory']} | "
                          f"{r['replaced']} | {r['transient']} | {r['cut']} | {r['throttled']} |", flush=True)
    finally:
        ray.shutdown()
        proxy.close()


if __name__ == "__main__":
    main()
