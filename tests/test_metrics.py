"""The job's series on a real Ray node's metrics endpoint, read over HTTP while the job runs and
after it, against its results table; the Grafana dashboard against the table of series in code."""
from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from jobs.metrics import SERIES, prometheus_names
from jobs.stylize.driver import build_parser, prepare, run
from shared import CONTENT, MODELS, STYLE

DASHBOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana.json"
PHASES = ("read", "decode", "style", "stylize", "encode", "write")
DISTILL_STEPS = 12  # enough for the loss gauges to be seen while they are set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_ray():
    """A local Ray whose metrics agent serves on a known port and takes points every second (and
    keeps a gauge 2 s after its process last set it)."""
    import ray

    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        # Read by the driver's core worker, the raylet and the actors (10 s by default; Ray
        # rounds it up to 1 s).
        env.setenv("RAY_metrics_report_interval_ms", "500")
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Ray Train's 2 s default slows short runs
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _metrics_export_port=port)
        try:
            yield f"http://127.0.0.1:{port}/metrics"
        finally:
            ray.shutdown()


def scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """Samples by name, the job's only: [(labels, value)]."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_cdstyle_"):
                samples[s.name].append((s.labels, s.value))
    return samples


def total(samples, name: str, **labels: str) -> float:
    """The sum over every process that recorded `name` with these labels."""
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == want for k, want in labels.items()))


@pytest.fixture
def job_rows(tmp_path) -> Path:
    """Rows that end ok (6), skipped (its output exists) and failed (a missing content, a bad
    alpha refused while planning)."""
    Image.open(CONTENT / "bridge_512.jpg").resize((150, 110)).save(tmp_path / "bridge.jpg", quality=95)
    Image.open(STYLE / "style_a_570.jpg").resize((128, 128)).save(tmp_path / "style.jpg")
    rows = [f"{tmp_path}/bridge.jpg,{tmp_path}/style.jpg,{tmp_path}/out/ok{i}.png,1" for i in range(6)]
    (tmp_path / "out").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "there.png")
    rows += [f"{tmp_path}/bridge.jpg,{tmp_path}/style.jpg,{tmp_path}/out/there.png,1",
             f"{tmp_path}/missing.jpg,{tmp_path}/style.jpg,{tmp_path}/out/missing.png,1",
             f"{tmp_path}/bridge.jpg,{tmp_path}/style.jpg,{tmp_path}/out/bad.png,strong"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style,output,alpha\n" + "\n".join(rows) + "\n")
    return manifest


def test_job_series_on_the_metrics_endpoint_agree_with_the_results(metrics_ray, job_rows, tmp_path):
    results = tmp_path / "results"
    args = build_parser().parse_args(["--manifest", str(job_rows), "--output-prefix", str(tmp_path / "out"),
                                      "--results", str(results), "--models", str(MODELS), "--actors", "1",
                                      "--cpus-per-actor", "1"])
    job = prepare(args)
    finished, seen = [], threading.Event()

    def hold(record: dict) -> None:
        """The driver takes its first result from an actor only once the test has looked: however
        fast the rows go (same-shape rows stylize as one batch), the look is taken while it runs."""
        if record.get("actor"):
            seen.wait(timeout=60)

    runner = threading.Thread(target=lambda: finished.append(run(job, on_result=hold)))
    runner.start()
    try:
        # While it runs: the driver's gauges, set at its ticks (the last before the first result).
        during, deadline = {}, time.monotonic() + 60
        while runner.is_alive() and not during.get("ray_cdstyle_actors_alive") and time.monotonic() < deadline:
            time.sleep(0.5)
            during = scrape(metrics_ray)
        assert runner.is_alive() and not seen.is_set(), "the job ended before its gauges were seen"
        seen.set()
        assert total(during, "ray_cdstyle_actors_alive") == 1
        assert total(during, "ray_cdstyle_storage_paused") == 0
        assert total(during, "ray_cdstyle_rows_queued") + total(during, "ray_cdstyle_rows_in_flight") >= 1
        [(labels, _)] = during["ray_cdstyle_actors_alive"]
        run_id = labels["run"]
    finally:
        runner.join(timeout=600)
    [report] = finished
    assert report.run == run_id

    table = pq.read_table(results).to_pylist()
    by_status = defaultdict(int)
    for r in table:
        by_status[r["status"], r["failure"] or ""] += 1
    assert dict(by_status) == {("ok", ""): 6, ("skipped", ""): 1, ("failed", "permanent"): 2}
    ok = [r for r in table if r["status"] == "ok"]

    # After: Ray takes a few export intervals to show the last points.
    deadline = time.monotonic() + 30
    while True:
        after = scrape(metrics_ray)
        counted = {key: total(after, "ray_cdstyle_rows_total", run=run_id, status=key[0], failure=key[1])
                   for key in by_status}
        phases = total(after, "ray_cdstyle_row_phase_seconds_count", run=run_id, phase="stylize")
        if (counted == by_status and phases == len(ok)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert counted == by_status
    megapixels = sum(r["width"] * r["height"] for r in ok) / 1e6
    assert math.isclose(total(after, "ray_cdstyle_megapixels_total", run=run_id), megapixels, rel_tol=1e-9)
    for phase in PHASES:  # each ok row's phase seconds, observed in the actor
        assert total(after, "ray_cdstyle_row_phase_seconds_count", run=run_id, phase=phase, method="wct") == len(ok)
        recorded = sum(r[f"{phase}_s"] for r in ok)
        assert math.isclose(total(after, "ray_cdstyle_phase_seconds_total", run=run_id, phase=phase),
                            recorded, rel_tol=1e-6, abs_tol=1e-9), phase
    slowest = max(r["stylize_s"] for r in ok)
    under = [(float(l["le"]), v) for l, v in after["ray_cdstyle_row_phase_seconds_bucket"]
             if l["run"] == run_id and l["phase"] == "stylize"]
    assert all(v == len(ok) for le, v in under if le >= slowest)  # every row in the buckets above it
    assert total(after, "ray_cdstyle_eta_seconds", run=run_id) == 0  # the last tick, at the end
    assert total(after, "ray_cdstyle_transient_failures_total", run=run_id) == 0
    # Every sample the job exported is of a series in the table.
    exported = {n for s in SERIES.values() for n in prometheus_names(s)}
    assert set(after) <= exported, set(after) - exported

    # The summary beside the parts says the same.
    [summary_file] = results.glob("_summary-*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["run"] == run_id and summary["rows"] == {"ok": 6, "skipped": 1, "failed": 2}
    assert math.isclose(summary["phase_seconds"]["stylize"], sum(r["stylize_s"] for r in ok))
    assert all(r["finished"] is not None for r in table)


def test_distill_series_agree_with_what_ray_train_received(metrics_ray, tmp_path):
    from jobs.distill import driver
    from jobs.distill.config import DistillConfig

    cfg = DistillConfig(teacher=str(MODELS), stage=2, width_divisor=2, mode="encoder", data=str(CONTENT),
                        steps=DISTILL_STEPS, batch_size=2, crop=64, workers=1, storage=str(tmp_path / "runs"),
                        log_every=1, checkpoint_every=DISTILL_STEPS // 2, loader_workers=0)
    finished, losses = [], {}
    runner = threading.Thread(target=lambda: finished.append(driver.run(cfg)))
    runner.start()
    try:  # the loss gauges age out of Ray's agent soon after the workers end: watch them while they run
        while runner.is_alive():
            seen = scrape(metrics_ray).get("ray_cdstyle_distill_loss", [])
            losses = {l["term"]: v for l, v in seen if l["run"] == cfg.name} or losses
            time.sleep(0.3)
    finally:
        runner.join(timeout=600)
    [done] = finished
    labels = {"run": cfg.name, "phase": "encoder"}
    deadline = time.monotonic() + 30
    while True:
        after = scrape(metrics_ray)
        if total(after, "ray_cdstyle_distill_steps_total", **labels) == DISTILL_STEPS or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert total(after, "ray_cdstyle_distill_steps_total", **labels) == DISTILL_STEPS
    assert total(after, "ray_cdstyle_distill_checkpoints_total", **labels) == 2  # half way and at the end
    for part in ("data_wait", "compute"):
        assert total(after, "ray_cdstyle_distill_step_seconds_count", **labels, part=part, rank="0") == DISTILL_STEPS
    # The loss gauges held the terms of a report, as Ray Train got them.
    reports = [{t: v for t, v in r.items() if t not in ("phase", "step", "data_s", "compute_s")} for r in done.history]
    assert losses and any(r.keys() == losses.keys() and all(math.isclose(losses[t], r[t], rel_tol=1e-9) for t in r)
                          for r in reports), (losses, reports)


# ------------------------------------------------------------------------------------- dashboard

def test_dashboard_loads_and_charts_only_series_the_jobs_export():
    board = json.loads(DASHBOARD.read_text())
    exported = {n for s in SERIES.values() for n in prometheus_names(s)}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert board["uid"] and board["title"] and len(panels) >= 6
    assert {v["name"]: v["current"]["value"] for v in board["templating"]["list"]
            if v["type"] == "datasource"} == {"datasource": "Prometheus"}
    charted = set()
    for panel in panels:
        assert panel["datasource"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bray_[a-z_]+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            charted |= names
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert set(re.findall(r"\bray_[a-z_]+", variable["query"]["query"])) <= exported, variable["name"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("rows/s by status", "mp/s", "phase", "busy", "breaker", "retries", "eta"):
        assert wanted in titles, wanted
    # Every series of jobs.stylize and jobs.distill is on some panel.
    assert {s.name for s in SERIES.values()} == {n[4:].removesuffix("_total").removesuffix("_sum")
                                                 .removesuffix("_count").removesuffix("_bucket") for n in charted}
