"""`--io-threads auto` (issue 24, item 5): the rule that sizes an actor's loaders from measured
rates, and an actor on slow S3 reads (moto behind the loopback proxy of tests/faults.py, holding
every request) that grows its loaders and gives the rows it gives with them pinned."""
from __future__ import annotations

import logging

import boto3
import numpy as np
import pytest
from PIL import Image

from cdcore.io import images
from cdcore.options import Recipe
from faults import S3Proxy
from jobs.stylize.driver import build_parser
from jobs.stylize.loaders import MAX_LOADERS_GPU, MIN_LOADERS, CallRates, loader_cap, loader_count
from jobs.stylize.manifest import Options
from jobs.stylize.plan import plan_rows
from jobs.stylize.worker import Stylizer, WorkerConfig
from shared import CONTENT, MODELS, STYLE

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
LEVELS = (1,)  # the cheapest cascade: the device outpaces the reads even on a loaded machine


def rates(load_per_row: float, device_per_row: float, waited_s: float, rows: int = 10) -> CallRates:
    return CallRates(rows, load_per_row * rows, rows, device_per_row * rows, waited_s)


def test_loaders_grow_to_the_ratio_of_load_to_device_time_when_the_device_waited():
    # 50 ms a row to load, 5 ms a row on the device: ten loads in flight keep it fed.
    assert loader_count(2, rates(0.050, 0.005, waited_s=0.4), cap=32) == 10
    assert loader_count(2, rates(0.051, 0.005, waited_s=0.4), cap=32) == 11  # ceil
    assert loader_count(2, rates(0.5, 0.001, waited_s=5.0), cap=8) == 8  # never past the cap
    assert loader_count(2, rates(0.05, 0.0, waited_s=1.0), cap=8) == 8  # a device that took no time


def test_loaders_do_not_grow_for_a_fed_device_and_shrink_to_what_it_needs():
    assert loader_count(4, rates(0.050, 0.005, waited_s=0.001), cap=32) == 4  # waited under 10%: fed
    assert loader_count(16, rates(0.010, 0.005, waited_s=0.001), cap=32) == 8  # two would do: halved
    assert loader_count(8, rates(0.010, 0.005, waited_s=0.001), cap=32) == 4
    assert loader_count(3, rates(0.001, 0.005, waited_s=1.0), cap=32) == MIN_LOADERS  # never below
    assert loader_count(7, CallRates(), cap=32) == 7  # nothing measured: as it was


def test_the_cap_is_four_loaders_a_cpu_or_a_gpu_actors_fixed_share():
    assert loader_cap("cpu", 1) == 4 and loader_cap("cpu", 3) == 12 and loader_cap("cpu", 0.25) == MIN_LOADERS
    assert loader_cap("cuda", 1) == loader_cap("cuda:0", 16) == MAX_LOADERS_GPU


def test_io_threads_is_auto_by_default_and_a_count_pins_it():
    def parse(*extra: str):
        return build_parser().parse_args(["--manifest", "m.parquet", "--output-prefix", "o", "--results", "r", *extra])

    assert parse().io_threads is None and parse("--io-threads", "auto").io_threads is None
    assert parse("--io-threads", "0").io_threads == 0 and parse("--io-threads", "5").io_threads == 5
    with pytest.raises(SystemExit):
        parse("--io-threads", "-1")
    assert WorkerConfig("m", (1,)).io_threads is None and not WorkerConfig("m", (1,), io_threads=0).overlaps


@pytest.fixture
def slow_s3(s3_endpoint, s3_bucket, monkeypatch):
    """(bucket URI, proxy): the actor's storage reaches moto through a proxy that holds every request."""
    proxy = S3Proxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield s3_bucket, proxy
    proxy.close()


def test_an_auto_actor_on_slow_reads_grows_its_loaders_and_gives_the_same_rows(slow_s3, tmp_path):
    bucket, proxy = slow_s3
    s3 = boto3.client("s3", endpoint_url=proxy.upstream.geturl(), region_name="us-east-1")
    photo = Image.open(CONTENT / "bridge_512.jpg").convert("RGB")
    contents = []
    for i in range(24):
        photo.crop((i * 8, i * 4, i * 8 + 256, i * 4 + 192)).resize((64, 48)).save(tmp_path / "c.png")
        s3.put_object(Bucket=bucket[len("s3://"):], Key=f"c{i}.png", Body=(tmp_path / "c.png").read_bytes())
        contents.append(f"{bucket}/c{i}.png")
    style = tmp_path / "style.png"
    Image.open(STYLE / "style_a_570.jpg").convert("RGB").resize((64, 64)).save(style)

    def run(actor: Stylizer, out: str) -> dict:
        records = [{"content": c, "style": str(style), "output": str(tmp_path / out / f"{i}.png")}
                   for i, c in enumerate(contents)]
        rows = plan_rows(records, Options(str(tmp_path / out), Recipe(levels=LEVELS)))
        results = []
        for start in range(0, len(rows), 6):  # each call runs with what the one before measured
            results += actor.process_batch(rows[start:start + 6], budget_s=1e9)["results"]
        return {r["row"]: r for r in results}

    proxy.delay_s = 0.6  # a distant store: 600 ms a request; a 64x48 row renders in some 10-100 ms
    budget = 5 * 64 * 48  # fewer rows than the loaders grow to: they wait on it
    auto = Stylizer("w", WorkerConfig(str(MODELS), LEVELS, cpus=2, batch_images=1, pixel_budget=budget))
    started = auto.loaders
    by_auto = run(auto, "auto")
    assert started == MIN_LOADERS and MIN_LOADERS < auto.loaders <= loader_cap("cpu", 2)
    assert auto.counters["loaders"] == auto.loaders and auto.counters["device_wait_s"] > 0
    assert auto._budget.held == 0 and auto._budget.peak <= budget

    proxy.delay_s = 0.0
    by_one = run(Stylizer("w", WorkerConfig(str(MODELS), LEVELS, io_threads=0)), "one")
    assert sorted(by_auto) == sorted(by_one) == list(range(len(contents)))
    for i in by_one:
        assert by_auto[i]["status"] == by_one[i]["status"] == "ok"
        assert (by_auto[i]["width"], by_auto[i]["height"]) == (64, 48)
        np.testing.assert_array_equal(images.read_image(str(tmp_path / "auto" / f"{i}.png")).rgb,
                                      images.read_image(str(tmp_path / "one" / f"{i}.png")).rgb)
