"""jobs.stylize when Ray's memory monitor kills an actor: a row whose image takes the node over the
monitor's threshold fails after its second death, named as a memory-monitor kill; the other rows
are done.

A real local Ray with the monitor tuned through its own settings: it looks every 100 ms, and its
threshold is put MARGIN_GB above what the machine uses when Ray starts (Ray and one actor with
its models take under 1 GB of that). The big row's image, a generated 400 MP 16-bit greyscale
PNG, would take its actor over 4 GB to decode (16-bit images take the in-memory path, which scales
them to 8 bits through float64): the monitor stops it a few seconds in, gigabytes before that peak. Other processes on the machine would have to grow by about 2 GB during the test's
seconds to make the monitor stop the actor over an ordinary row (which would cost that row one
more try, not the test), or to shrink by as much for the monitor to miss the big row.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from jobs.stylize.driver import build_parser, prepare, run
from shared import CONTENT, MODELS, STYLE

pytestmark = pytest.mark.integration
MARGIN_GB = 2.8
BIG_SIDE = 20_000  # 400 MP; decoding it would take over 4 GB at the peak
SMALL_ROWS = 4


def meminfo_kb(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def used_fraction() -> float:
    """The share of the machine's memory in use, as Ray's memory monitor counts it outside a
    memory-limited cgroup: everything but what the kernel calls available."""
    return 1 - meminfo_kb("MemAvailable") / meminfo_kb("MemTotal")


@pytest.fixture(scope="module")
def watched_ray():
    """A local Ray whose memory monitor stops a worker once the machine uses MARGIN_GB more
    than now. Ray reads these settings when it starts, from its environment."""
    if meminfo_kb("MemAvailable") < (MARGIN_GB + 5) * 2**20:
        pytest.skip("too little free memory to let an actor grow past the monitor's threshold safely")
    threshold = used_fraction() + MARGIN_GB * 2**20 / meminfo_kb("MemTotal")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_memory_usage_threshold", f"{threshold:.4f}")
        env.setenv("RAY_memory_monitor_refresh_ms", "100")
        env.setenv("RAY_min_memory_free_bytes", "-1")  # the threshold alone decides
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def greyscale_png(path: Path, side: int) -> None:
    """A side x side 16-bit greyscale PNG of stripes, written a row at a time: a few MB on disk,
    never held whole here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = bytes(range(256)) * (side // 256) + bytes(side % 256)
    row = b"\x00" + bytes(b for v in pixels for b in (v, v))  # filter byte, then big-endian 16-bit pixels
    compress = zlib.compressobj(1)
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(compress.compress(row) for _ in range(side)) + compress.flush()))
        f.write(chunk(b"IEND", b""))


def manifest(tmp_path: Path) -> tuple[Path, Path]:
    """SMALL_ROWS small rows and, among them, the big one. Its style does not exist: had the
    monitor not stopped the actor, the row would fail at once on that (and the test with it)
    instead of stylizing 400 MP for minutes."""
    Image.open(STYLE / "style_a_570.jpg").resize((96, 96)).save(tmp_path / "style.jpg")
    photo = Image.open(CONTENT / "bridge_512.jpg").resize((96, 72))
    rows = []
    for i in range(SMALL_ROWS):
        photo.rotate(i * 9).save(tmp_path / f"c{i}.jpg")
        rows.append(f"{tmp_path / f'c{i}.jpg'},{tmp_path / 'style.jpg'}")
    big = tmp_path / "big.png"
    greyscale_png(big, BIG_SIDE)
    # 16 bits a sample keep the row on the in-memory path, which decodes it whole; 8-bit, it would
    # be streamed (cdcore.streaming), hold little and never meet the monitor.
    rows.insert(1, f"{big},{tmp_path / 'no-style.jpg'}")
    path = tmp_path / "m.csv"
    path.write_text("content,style\n" + "\n".join(rows) + "\n")
    return path, big


def test_a_row_that_runs_its_actor_out_of_memory_fails_as_a_memory_kill(watched_ray, tmp_path):
    path, big = manifest(tmp_path)
    args = build_parser().parse_args([
        "--manifest", str(path), "--output-prefix", str(tmp_path / "out"), "--results", str(tmp_path / "r.parquet"),
        "--models", str(MODELS), "--actors", "1", "--levels", "2,1", "--max-pixels", str(BIG_SIDE ** 2)])
    said: list[str] = []
    report = run(prepare(args), say=said.append)
    results = {r["content"]: r for r in pq.read_table(str(tmp_path / "r.parquet")).to_pylist()}
    failed = results.pop(str(big))
    # Two starts alone, each killed; one more where the first kill came while the actor also held
    # small rows (a death among several rows is charged to none of them).
    assert failed["status"] == "failed" and failed["attempts"] in (2, 3), failed
    assert "2 actors died while running it alone" in failed["error"], failed["error"]
    assert failed["error"].count("killed by Ray's memory monitor") == 2, failed["error"]
    assert sum("killed by the memory monitor" in line for line in said) >= 2, said
    assert len(results) == SMALL_ROWS and all(r["status"] == "ok" for r in results.values()), results
    assert all(os.path.isfile(r["output"]) for r in results.values())
    assert report.count("ok") == SMALL_ROWS and report.count("failed") == 1
