"""What `--io-threads auto` buys on slow reads (issue 24, item 5): rows/s of one actor, loaders
pinned against sized from measured rates, on small rows read from moto's S3 server through the
loopback proxy of tests/faults.py holding every request `--delay-ms` (a distant store's first byte).

    python benchmarks/loaders_rate.py            # 64 rows of 64x48 PNG, 100 ms a request
    python benchmarks/loaders_rate.py --quick    # 24 rows

Prints one table: loaders setting, rows, seconds, rows/s, the loaders it ended with, the share of
the call the device waited for loaded rows, and rows/s against the pinned 2 of the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the loopback proxy

from faults import S3Proxy  # noqa: E402
from local_s3 import moto_server, point_at  # noqa: E402

from cdcore.io import storage  # noqa: E402
from cdcore.options import Recipe  # noqa: E402
from jobs.stylize.manifest import Options  # noqa: E402
from jobs.stylize.plan import plan_rows  # noqa: E402
from jobs.stylize.worker import Stylizer, WorkerConfig  # noqa: E402

SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models" / "cd16x"
LEVELS = (1,)
CALL_ROWS = 8  # rows per process_batch call: the actor resizes between calls


def put_rows(bucket: str, count: int, work: Path) -> list[str]:
    photo = Image.open(SHARED / "images" / "content" / "bridge_512.jpg").convert("RGB")
    uris = []
    for i in range(count):
        photo.rotate(i * 3).resize((64, 48)).save(work / "c.png")
        uris.append(f"{bucket}/in/c{i}.png")
        storage.upload(work / "c.png", uris[-1])
    return uris


def run(io_threads: int | None, contents: list[str], style: Path, out: Path) -> dict:
    actor = Stylizer("bench", WorkerConfig(str(MODELS), LEVELS, io_threads=io_threads, cpus=os.cpu_count(),
                                           overwrite=True))
    records = [{"content": c, "style": str(style), "output": str(out / f"{i}.png")} for i, c in enumerate(contents)]
    rows = plan_rows(records, Options(str(out), Recipe(levels=LEVELS)))
    actor.process_batch(rows[:2], budget_s=1e9)  # models warm, style encoded: not what is measured
    started = time.perf_counter()
    for start in range(0, len(rows), CALL_ROWS):
        results = actor.process_batch(rows[start:start + CALL_ROWS], budget_s=1e9)["results"]
        assert all(r["status"] == "ok" for r in results), results
    wall = time.perf_counter() - started
    return {"rows": len(rows), "wall": wall, "loaders": actor.loaders, "waited": actor.counters["device_wait_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--delay-ms", type=float, default=100.0)
    args = p.parse_args()
    count = 24 if args.quick else 64
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        point_at(endpoint)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        contents = put_rows("s3://bench", count, work)
        style = work / "style.png"
        Image.open(SHARED / "images" / "style" / "style_a_570.jpg").convert("RGB").resize((64, 64)).save(style)
        proxy = S3Proxy(endpoint)
        proxy.delay_s = args.delay_ms / 1000
        point_at(proxy.url)
        try:
            measured = {name: run(threads, contents, style, work / name) for name, threads in
                        (("2", 2), ("8", 8), ("auto", None))}
        finally:
            proxy.close()
    print(f"# loaders on {args.delay_ms:g} ms reads: {count} rows of 64x48 PNG, --levels 1, "
          f"{platform.machine()}, {os.cpu_count()} CPUs (auto's cap: 4 a CPU)")
    print("| --io-threads | rows | s | rows/s | loaders at the end | device waited s | vs 2 |")
    print("|---|---|---|---|---|---|---|")
    base = measured["2"]["rows"] / measured["2"]["wall"]
    for name, m in measured.items():
        rate = m["rows"] / m["wall"]
        print(f"| {name} | {m['rows']} | {m['wall']:.2f} | {rate:.1f} | {m['loaders']} | {m['waited']:.2f} | "
              f"{rate / base:.2f}x |")


if __name__ == "__main__":
    main()
