"""jobs.stylize: planning and queueing as plain functions; the whole job on a real local Ray, on
local files and on moto's HTTP S3 server; `ray job submit` to a real token-authenticated head;
an actor killed mid-job; style statistics reused across rows."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cdcore.io import storage
from cdcore.cli import main as cdcore_main
from cdcore.io.images import read_image
from cdcore.options import DEFAULT_LEVELS, Recipe
from jobs.stylize.manifest import Options, Row, derived_output, read_manifest
from jobs.stylize.plan import plan_rows, plan_table
from jobs.stylize.scheduler import StyleQueue
from jobs.stylize.driver import build_parser, main, prepare, run
from shared import CONTENT, MODELS, STYLE

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The few stylizations run in this process use one thread, as each actor does: on two shared
    cores, two OpenMP threads stall for seconds whenever another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- inputs on disk

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Small images (sizes not multiples of 16, one with alpha) and the three kinds of bad input."""
    d = tmp_path_factory.mktemp("inputs")
    Image.open(CONTENT / "bridge_512.jpg").resize((150, 110)).save(d / "bridge.jpg", quality=95)
    harbor = np.array(Image.open(CONTENT / "harbor_420.jpg").resize((100, 75)))
    alpha = np.tile(np.linspace(0, 255, 100).astype(np.uint8), (75, 1))
    Image.fromarray(np.dstack([harbor, alpha]), "RGBA").save(d / "harbor.png")
    Image.open(STYLE / "style_a_570.jpg").resize((128, 128)).save(d / "style_a.jpg")
    Image.open(STYLE / "style_b_512.jpg").resize((96, 128)).save(d / "style_b.jpg")
    (d / "truncated.jpg").write_bytes((d / "bridge.jpg").read_bytes()[:1500])
    (d / "notes.png").write_text("not an image")
    return d


GOOD = [  # content, style, extra columns
    ("bridge.jpg", "style_a.jpg", {}),
    ("harbor.png", "style_a.jpg", {"alpha": 0.5}),
    ("bridge.jpg", "style_b.jpg", {"method": "adain"}),
]
BAD = [  # content, style, what the error must say
    ("truncated.jpg", "style_a.jpg", "truncated"),
    ("missing.jpg", "style_b.jpg", "no such file"),
    ("notes.png", "style_a.jpg", "not a readable image"),
]


def manifest_rows(base: str) -> list[dict]:
    rows = [{"content": f"{base}/{c}", "style": f"{base}/{s}", **extra} for c, s, extra in GOOD]
    rows += [{"content": f"{base}/{c}", "style": f"{base}/{s}"} for c, s, _ in BAD]
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = ["content", "style", "method", "alpha"]
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def read_results(uri: str) -> list[dict]:
    return sorted(pq.read_table(uri).to_pylist(), key=lambda r: r["row"])


def check_first_run(results: list[dict], base: str) -> None:
    assert [r["row"] for r in results] == list(range(len(GOOD) + len(BAD)))
    for r, (content, _, _) in zip(results, GOOD):
        assert r["status"] == "ok" and r["error"] is None and r["attempts"] == 1, r
        expected = read_image(f"{base}/{content}").size
        assert (r["width"], r["height"]) == expected
        assert read_image(r["output"]).size == expected  # written whole, and decodable
        assert r["model_id"].startswith("cd16x-") and r["actor"]
        assert min(r["read_s"], r["decode_s"], r["stylize_s"], r["encode_s"], r["write_s"]) > 0, r
    for r, (content, _, reason) in zip(results[len(GOOD):], BAD):
        assert r["status"] == "failed" and r["output"], r
        assert f"{base}/{content}" in r["error"] and reason in r["error"], r["error"]


def job_args(manifest, prefix, results, models=MODELS, *extra) -> list[str]:
    return ["--manifest", str(manifest), "--output-prefix", str(prefix), "--results", str(results),
            "--models", str(models), *map(str, extra)]


# --------------------------------------------------------------------------- planning, queueing

@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_manifest_formats_read_alike(tmp_path, fmt):
    records = [{"content": "a.jpg", "style": "NA", "alpha": 0.5, "extra": 1},
               {"content": "b c.png", "style": "s3://b/s.png", "alpha": None, "extra": 2}]
    path = tmp_path / f"m.{fmt}"
    table = pa.Table.from_pylist(records)
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = [{k: v for k, v in r.items() if k != "extra"} for r in records]
    assert read_manifest(str(path)).to_pylist() == expected  # "NA" stays a name, unknown columns are dropped


def test_planning_defaults_overrides_and_row_problems():
    options = Options(output_prefix="s3://b/out", recipe=Recipe(alpha=0.8))
    records = [
        {"content": "s3://b/in/cat.jpg", "style": "s3://b/st/ink.png"},
        {"content": "s3://b/in/cat.tif", "style": "s3://b/st/ink.png", "method": "adain", "alpha": 0.25},
        {"content": "s3://b/in/dog.bmp", "style": "s3://b/st/ink.png", "method": "gatys"},
        {"content": "s3://b/in/x.jpg", "style": "s3://b/st/ink.png", "alpha": "strong"},
        {"content": "s3://b/in/x.jpg", "style": "s3://b/st/ink.png", "method": "vangogh"},
        {"content": None, "style": "s3://b/st/ink.png"},
        {"content": "s3://b/other/cat.jpg", "style": "s3://b/st/ink.png"},  # same derived output as row 0
        {"content": "rel/cat.jpg", "style": "s3://b/st/ink.png", "output": "out/x.gif"},
        {"content": "s3://b/in/e.png", "style": "s3://b/st/ink.png", "levels": "3,2", "stroke_scale": 2,
         "content_size": "64"},
        {"content": "s3://b/in/f.png", "style": "s3://b/st/ink.png", "levels": 4, "stroke_scale": "2"},
        {"content": "s3://b/in/g.png", "style": "s3://b/st/ink.png", "content_size": -3},
    ]
    rows = plan_rows(records, options, source="m.csv")
    assert rows[0] == Row(0, "s3://b/in/cat.jpg", "s3://b/st/ink.png", "s3://b/out/cat+ink_wct_a0.8.jpg",
                          "wct", Recipe(alpha=0.8))
    assert (rows[1].output, rows[1].recipe.stages) == ("s3://b/out/cat+ink_adain_a0.25.tif", DEFAULT_LEVELS["adain"])
    assert (rows[2].output, rows[2].recipe.stages) == ("s3://b/out/dog+ink_gatys.png", (5,))  # bmp: we write png
    assert rows[3].error == "m.csv row 3: alpha must be a number in [0, 1] (got 'strong')"
    assert rows[4].error.startswith("m.csv row 4: method must be one of wct, adain, gatys")
    assert rows[5].error == "m.csv row 5: no content URI"
    assert rows[6].error == "m.csv row 6: output s3://b/out/cat+ink_wct_a0.8.jpg is also the output of row 0"
    assert "unsupported output format .gif" in rows[7].error
    assert rows[8].recipe == Recipe(alpha=0.8, levels=(3, 2), stroke_scale=2.0, content_size=64)
    assert rows[9].error == "m.csv row 9: a stroke scale needs coarse levels (of 5, 4, 3) followed by fine " \
                            "ones (2, 1), both present (got levels 4)"
    assert rows[10].error == "m.csv row 10: content size must be a whole number >= 0 (got -3)"
    assert derived_output("/o", "/a/b.c.JPG", "s.png", "wct", 1.0) == "/o/b.c+s_wct_a1.jpg"


def test_queue_keeps_styles_on_actors_and_shares_the_last_one():
    a, b, c = np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6])
    queue = StyleQueue([c, a, b])
    assert len(queue) == 7
    assert queue.take("x", 2) == [0, 1] and queue.take("y", 1) == [4]  # the largest free groups first
    assert queue.take("y", 5) == [5] and queue.take("y", 5) == [6]  # b used up: the free group c first
    assert queue.take("y", 1) == [2] and queue.take("x", 1) == [3]  # then help with a
    queue.put_back([0, 1])  # sent back unstarted: served first, as a batch
    queue.put_back([3], suspect=True)  # its actor died: served alone, before the others
    assert queue.take("x", 5) == [3] and queue.take("x", 5) == [0, 1]
    assert queue.take("x", 5) == [] and len(queue) == 0


def test_plan_groups_rows_by_style_and_recipe_and_refuses_duplicate_outputs():
    records = [{"content": f"c{i}.jpg", "style": style, "alpha": alpha}
               for i, (style, alpha) in enumerate([("s1.jpg", 1), ("s2.jpg", 1), ("s1.jpg", 0.5), ("s1.jpg", 1)])]
    records.append({"content": "c9.jpg", "style": "s1.jpg", "output": "/o/c0+s1_wct_a1.jpg"})
    records.append({"content": "c8.jpg", "style": "s3.jpg", "levels": "2,1"})
    columns = ("content", "style", "alpha", "output", "levels")
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records])
    plan = plan_table(table, Options("/o"), "m.csv")
    assert plan.refused().tolist() == [4]
    assert plan.rows([4])[0].error == "m.csv row 4: output /o/c0+s1_wct_a1.jpg is also the output of row 0"
    groups = [g.tolist() for g in plan.style_groups(plan.runnable())]
    assert sorted(groups) == [[0, 2, 3], [1], [5]]  # alpha does not change a style's preparation
    assert plan.stages() == (5, 4, 3, 2, 1)
    assert len(plan.recipes) == 3  # alpha 1, alpha 0.5, levels 2,1


def test_stylizer_encodes_a_style_once_and_keeps_going_after_bad_rows(inputs, tmp_path):
    """The actor class without Ray: counters, cache and per-row failures."""
    from jobs.stylize.worker import Stylizer, WorkerConfig

    records = manifest_rows(str(inputs)) + [{"content": str(inputs / "bridge.jpg"),
                                              "style": str(inputs / "style_a.jpg"), "alpha": 0.3}]
    rows = plan_rows(records, Options(str(tmp_path)))
    worker = Stylizer("w0", WorkerConfig(str(MODELS), stages=(5, 4, 3, 2, 1), style_cache=1))
    statuses = [worker.process(row) for row in rows]
    assert [s["status"] for s in statuses] == ["ok"] * 3 + ["failed"] * 3 + ["ok"]
    # Styles a, a, b (adain), then a again, which one cache slot no longer holds; the bad contents
    # fail before their styles are needed.
    assert worker.counters["styles_encoded"] == 3 and worker.counters["rows"] == 7

    # In tiles of 64 px the result is the whole image's up to float rounding.
    tiled = Stylizer("w1", WorkerConfig(str(MODELS), stages=(5, 4, 3, 2, 1), overwrite=True, tile_size=64))
    whole = read_image(rows[1].output).rgb
    assert tiled.process(rows[1])["status"] == "ok"
    assert np.abs(read_image(rows[1].output).rgb.astype(int) - whole).max() <= 1


def test_per_row_options_match_the_command_pixel_for_pixel(inputs, tmp_path):
    """Manifest columns levels, stroke_scale and content_size do what the command's options do."""
    from jobs.stylize.worker import Stylizer, WorkerConfig

    content, style = str(inputs / "bridge.jpg"), str(inputs / "style_a.jpg")
    columns = {"levels": "5,4,3,2,1", "stroke_scale": 1.5, "content_size": 96, "alpha": 0.6}
    rows = plan_rows([{"content": content, "style": style, "output": str(tmp_path / "job.png"), **columns}],
                     Options(str(tmp_path)))
    worker = Stylizer("w0", WorkerConfig(str(MODELS), stages=(5, 4, 3, 2, 1), tile_size=64))
    assert worker.process(rows[0])["status"] == "ok"
    cli_out = str(tmp_path / "cli.png")
    assert cdcore_main(["stylize", content, style, "-o", cli_out, "--models", str(MODELS), "--tile-size", "64",
                        "--levels", "5,4,3,2,1", "--stroke-scale", "1.5", "--content-size", "96",
                        "--alpha", "0.6"]) == 0
    job = read_image(str(tmp_path / "job.png"))
    assert job.size == (131, 96)  # the shorter side is 96
    np.testing.assert_array_equal(job.rgb, read_image(cli_out).rgb)


@pytest.mark.parametrize("case, expected", [
    ("missing manifest", "manifest not found"),
    ("missing column", "missing column(s) style"),
    ("unknown format", "unsupported manifest format .txt"),
    ("missing models", "model file missing"),
    ("bad levels", "levels must be distinct stages 1..5"),
])
def test_a_job_that_cannot_run_exits_2_with_one_line(tmp_path, capsys, inputs, case, expected):
    manifest, models, extra = tmp_path / "m.csv", MODELS, []
    write_csv(manifest, manifest_rows(str(inputs))[:1])
    if case == "missing manifest":
        manifest = tmp_path / "nope.csv"
    elif case == "missing column":
        manifest.write_text("content\na.jpg\n")
    elif case == "unknown format":
        manifest = tmp_path / "m.txt"
    elif case == "missing models":
        models = tmp_path
    else:
        extra = ["--levels", "6,5"]
    args = job_args(manifest, tmp_path / "out", tmp_path / "r.parquet", models, *extra)
    if extra:  # a bad option: argparse's usage and one line naming the option and the reason
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "argument --levels" in err.splitlines()[-1] and expected in err, err
    else:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.parquet").exists()


# ------------------------------------------------------------------------------- on a local Ray

def test_local_files_ok_failed_skipped_overwritten(local_ray, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(inputs.parent)  # relative manifest paths resolve against the working directory
    base = inputs.name
    manifest = tmp_path / "m.csv"
    write_csv(manifest, manifest_rows(base))
    out = tmp_path / "out"

    assert main(job_args(manifest, out, tmp_path / "run1.parquet", MODELS, "--actors", 1)) == 0
    first = read_results(str(tmp_path / "run1.parquet"))
    check_first_run(first, str(inputs))
    summary = capsys.readouterr().out
    assert "time in the actors: read" in summary and "devices busy" in summary, summary
    np.testing.assert_array_equal(read_image(first[1]["output"]).alpha, read_image(str(inputs / "harbor.png")).alpha)

    # The job and `cdcore stylize` must agree pixel for pixel (png is lossless).
    cli_out = tmp_path / "cli.png"
    assert cdcore_main(["stylize", str(inputs / "harbor.png"), str(inputs / "style_a.jpg"), "-o", str(cli_out),
                        "--alpha", "0.5", "--models", str(MODELS)]) == 0
    np.testing.assert_array_equal(read_image(first[1]["output"]).rgb, read_image(str(cli_out)).rgb)

    written = {r["output"]: os.stat(r["output"]).st_mtime_ns for r in first[:len(GOOD)]}
    assert main(job_args(manifest, out, tmp_path / "run2.parquet", MODELS, "--actors", 1)) == 0
    second = read_results(str(tmp_path / "run2.parquet"))
    assert [r["status"] for r in second] == ["skipped"] * len(GOOD) + ["failed"] * len(BAD)
    assert {o: os.stat(o).st_mtime_ns for o in written} == written  # untouched

    assert main(job_args(manifest, out, tmp_path / "run3.parquet", MODELS, "--actors", 1, "--overwrite")) == 0
    third = read_results(str(tmp_path / "run3.parquet"))
    assert [r["status"] for r in third] == ["ok"] * len(GOOD) + ["failed"] * len(BAD)
    assert all(os.stat(o).st_mtime_ns != t for o, t in written.items())
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(o).name for o in written)  # no temp files


def test_s3_manifest_images_models_outputs_and_results(local_ray, s3_bucket, inputs, capsys):
    """Everything on moto's HTTP S3; actors reach it only through the env vars the driver forwards."""
    base = f"{s3_bucket}/in"
    for path in inputs.iterdir():
        storage.upload(path, f"{base}/{path.name}")
    for path in MODELS.iterdir():
        storage.upload(path, f"{s3_bucket}/models/cd16x/{path.name}")
    manifest = f"{s3_bucket}/manifest.jsonl"
    storage.write_bytes(manifest, "".join(json.dumps(r) + "\n" for r in manifest_rows(base)).encode())
    args = job_args(manifest, f"{s3_bucket}/out", f"{s3_bucket}/results", f"{s3_bucket}/models/cd16x",
                    "--actors", 1)

    assert main(args) == 0
    [summary_file, part] = storage.list_files(f"{s3_bucket}/results")
    assert part.rsplit("/", 1)[1].startswith("part-")
    check_first_run(read_results(f"{s3_bucket}/results/"), base)  # pyarrow's own S3, which skips "_summary-"
    summary = json.loads(storage.read_bytes(summary_file))
    assert summary_file.endswith(f"/_summary-{summary['run']}.json") and summary["parts"] == [part]
    assert summary["rows"] == {"ok": len(GOOD), "skipped": 0, "failed": len(BAD)}
    assert sum(summary["failure_reasons"].values()) == summary["failures"]["permanent"] == len(BAD)
    assert abs(sum(summary["phase_shares"].values()) - 1) < 1e-9 and 0 < summary["device_busy_share"] <= 1

    # A rerun takes the rows done from the earlier parts, without asking storage about them, and
    # runs the failed ones again.
    assert main(args) == 0
    later = [p for p in storage.list_files(f"{s3_bucket}/results", [".parquet"]) if p != part]
    assert [r["status"] for r in read_results(later[0])] == ["failed"] * len(BAD)
    assert len(read_results(f"{s3_bucket}/results")) == len(GOOD) + 2 * len(BAD)  # the history of runs
    assert f"{len(GOOD)} done by earlier runs" in capsys.readouterr().out

    assert main([*args, "--overwrite"]) == 0
    newest = max(storage.list_files(f"{s3_bucket}/results", [".parquet"]))
    assert [r["status"] for r in read_results(newest)] == ["ok"] * len(GOOD) + ["failed"] * len(BAD)


def many_rows(inputs: Path, tmp_path: Path, styles: list[str], count: int) -> Path:
    """`count` distinct rows (contents copied under new names) cycling through `styles`."""
    rows = []
    for i in range(count):
        content = tmp_path / "in" / f"c{i}.jpg"
        content.parent.mkdir(exist_ok=True)
        content.write_bytes((inputs / "bridge.jpg").read_bytes())
        rows.append({"content": str(content), "style": str(inputs / styles[i % len(styles)])})
    manifest = tmp_path / "m.csv"
    write_csv(manifest, rows)
    return manifest


def run_in_process(args: list[str], on_result=None):
    return run(prepare(build_parser().parse_args(args)), on_result=on_result)


def test_killed_actor_is_replaced_and_every_row_accounted_for(local_ray, inputs, tmp_path):
    manifest = many_rows(inputs, tmp_path, ["style_a.jpg", "style_b.jpg"], 10)
    killed = []

    def kill_first_actor(record: dict) -> None:
        # Its first row is back: its next row is already in flight, so this kill loses work.
        if not killed and record["status"] == "ok":
            killed.append(record["actor"])
            os.kill(int(record["actor"].rsplit(":", 1)[1]), signal.SIGKILL)  # "<name>@<host>:<pid>"

    report = run_in_process(job_args(manifest, tmp_path / "out", tmp_path / "r.parquet", MODELS,
                                     "--actors", 2), on_result=kill_first_actor)
    results = read_results(str(tmp_path / "r.parquet"))
    assert [r["row"] for r in results] == list(range(10))  # each manifest row exactly once
    assert all(r["status"] == "ok" and Path(r["output"]).is_file() for r in results), results
    assert report.replaced == 1 and report.started == 3
    retried = [r for r in results if r["attempts"] == 2]
    assert retried and all(r["actor"] != killed[0] for r in retried)
    assert len(list((tmp_path / "out").iterdir())) >= 10  # plus, perhaps, the killed write's hidden temp file


def test_one_style_is_encoded_once_per_actor(local_ray, inputs, tmp_path):
    manifest = many_rows(inputs, tmp_path, ["style_a.jpg"], 6)
    report = run_in_process(job_args(manifest, tmp_path / "out", tmp_path / "r.parquet", MODELS,
                                     "--actors", 2, "--levels", "5,4,3"))
    assert report.count("ok") == 6
    assert sum(c["rows"] for c in report.actors.values()) == 6
    assert {c["styles_encoded"] for c in report.actors.values()} == {1}, report.actors


# ------------------------------------------------------------------------ ray job submit, token auth

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real head (`ray start --head --block`) with token auth and a token of its own.

    The token lives in a private temporary file named by RAY_AUTH_TOKEN_PATH, so neither
    ~/.ray/auth_token nor other clusters on this machine are touched; --temp-dir keeps this head
    out of /tmp/ray, so a bare `ray.init()` elsewhere on the machine does not attach to it. The
    head is stopped by signalling the `ray start --block` process we started, which takes its
    Ray processes down with it (`ray stop` would kill every Ray on the machine). The venv's bin
    comes first on PATH, so the job's `python` is the venv's python.
    """
    home = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))  # short: Ray's socket paths are limited
    token = home / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{VENV_BIN}:{env['PATH']}")
    dashboard, gcs = free_port(), free_port()
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
         "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--temp-dir", str(home / "ray"),
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(url, head)
        yield url, env, f"127.0.0.1:{gcs}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the session we started, and only it
            head.wait()
        shutil.rmtree(home, ignore_errors=True)


def wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answering, if only to say 401
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no dashboard at {url} after {timeout} s")


def test_ray_job_submit_with_token_auth(ray_head, inputs, tmp_path):
    url, env, _ = ray_head
    with pytest.raises(urllib.error.HTTPError) as refused:  # the head really enforces the token
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert refused.value.code == 401

    manifest = tmp_path / "m.csv"
    write_csv(manifest, manifest_rows(str(inputs)))
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".",
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "-m", "jobs.stylize", *job_args(manifest, tmp_path / "out", tmp_path / "results")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in log, log[-3000:]
    check_first_run(read_results(str(tmp_path / "results")), str(inputs))


# ------------------------------------------------------------------------------------ dataset mode

def dataset_tree(root: Path, inputs: Path) -> tuple[Path, Path]:
    """contents/{a/one.jpg, a/two.PNG, b/c/three.jpeg} and styles/{s0,s1,s2}.jpg, small."""
    photo = Image.open(inputs / "bridge.jpg").resize((64, 48))
    for rel in ("a/one.jpg", "a/two.PNG", "b/c/three.jpeg"):
        path = root / "contents" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, "PNG" if rel.endswith("PNG") else "JPEG")
    (root / "styles").mkdir()
    for i, name in enumerate(("style_a.jpg", "style_b.jpg", "style_a.jpg")):
        Image.open(inputs / name).rotate(90 * i).save(root / "styles" / f"s{i}.jpg")
    return root / "contents", root / "styles"


def dataset_args(contents, styles, out, results, seed=7) -> list[str]:
    return ["--contents", str(contents), "--styles", str(styles), "--num-styles", "2", "--seed", str(seed),
            "--output-prefix", str(out), "--results", str(results), "--models", str(MODELS), "--actors", "1",
            "--levels", "2,1"]


def expected_outputs(manifest: list[dict], contents: str, out: str) -> list[str]:
    """The content's path below --contents, with the style's stem added, under --output-prefix."""
    names = []
    for row in manifest:
        rel, ext = os.path.splitext(row["content"][len(contents.rstrip("/")) + 1:])
        style = os.path.splitext(row["style"].rsplit("/", 1)[1])[0]
        names.append(f"{out.rstrip('/')}/{rel}+{style}{ext}")
    return names


def test_dataset_mode_mirrors_the_tree_and_a_rerun_runs_nothing(local_ray, inputs, tmp_path, capsys):
    contents, styles = dataset_tree(tmp_path, inputs)
    out, results = tmp_path / "out", tmp_path / "results"
    assert main(dataset_args(contents, styles, out, results)) == 0
    manifest = pq.read_table(str(tmp_path / "results-manifest.parquet")).to_pylist()
    assert len(manifest) == 6 and len({(r["content"], r["style"]) for r in manifest}) == 6
    outputs = expected_outputs(manifest, str(contents), str(out))
    assert [r["output"] for r in manifest] == outputs
    assert all(Path(o).is_file() for o in outputs) and (out / "b" / "c").is_dir()
    assert {r["status"] for r in pq.read_table(str(results)).to_pylist()} == {"ok"}
    capsys.readouterr()

    parts = sorted(results.glob("part-*"))
    assert main(dataset_args(contents, styles, out, results)) == 0  # the same seed: every row done already
    said = capsys.readouterr().out
    assert "0 rows in" in said and "6 done by earlier runs" in said and sorted(results.glob("part-*")) == parts
    assert len(list(results.glob("_summary-*.json"))) == 2  # no part, only the rerun's summary

    other = tmp_path / "other"
    assert main([*dataset_args(contents, styles, other, tmp_path / "r8", seed=8), "--levels", "1"]) == 0
    pairs = {(r["content"], r["style"]) for r in pq.read_table(str(tmp_path / "r8-manifest.parquet")).to_pylist()}
    assert pairs != {(r["content"], r["style"]) for r in manifest}


def test_dataset_mode_on_s3(local_ray, s3_bucket, inputs, tmp_path):
    contents, styles = dataset_tree(tmp_path, inputs)
    for path in [*contents.rglob("*.*"), *styles.iterdir()]:
        storage.upload(path, f"{s3_bucket}/{path.relative_to(tmp_path)}")
    out, results = f"{s3_bucket}/stylized/", f"{s3_bucket}/runs/r1"
    assert main(dataset_args(f"{s3_bucket}/contents", f"{s3_bucket}/styles", out, results)) == 0
    manifest = pq.read_table(f"{s3_bucket}/runs/r1-manifest.parquet").to_pylist()
    outputs = expected_outputs(manifest, f"{s3_bucket}/contents", out)
    assert storage.list_files(f"{s3_bucket}/stylized") == sorted(outputs)
    assert [r["status"] for r in read_results(results)] == ["ok"] * 6


def test_a_killed_driver_leaves_parts_that_a_rerun_uses(ray_head, inputs, tmp_path):
    _, env, address = ray_head
    contents, styles = dataset_tree(tmp_path, inputs)
    for i in range(9):  # 12 contents, 24 rows of the full cascade: long enough to kill in the middle
        shutil.copy(contents / "a" / "one.jpg", contents / "a" / f"more{i}.jpg")
    out, results = tmp_path / "out", tmp_path / "results"
    args = [*dataset_args(contents, styles, out, results)[:-2], "--flush-seconds", "0.2"]
    driver = subprocess.Popen([sys.executable, "-m", "jobs.stylize", *args], cwd=REPO,
                              env={**env, "RAY_ADDRESS": address}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        # A whole part, not the hidden file it is written through before its rename.
        while not (results.is_dir() and any(not p.name.startswith((".", "_")) for p in results.iterdir())) \
                and time.monotonic() < deadline:
            assert driver.poll() is None, "the job ended before a part was written"
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait()
    recorded = [r for r in pq.read_table(str(results)).to_pylist() if r["status"] == "ok"]
    assert 0 < len(recorded) < 24
    rerun = run_in_process(["--contents", str(contents), *args[2:]])
    assert rerun.earlier == len(recorded)
    assert rerun.count("ok") + rerun.count("skipped") == 24 - len(recorded) and rerun.count("failed") == 0
    final = pq.read_table(str(results)).to_pylist()
    assert {r["output"] for r in final if r["status"] in ("ok", "skipped")} == {str(p) for p in out.rglob("*.*")}
