"""The actor's row pipeline (issue 11): phase timings, overlapped I/O, the pixel budget, precision
and the JPEG codecs. The actor class runs here without Ray; test_job_stylize runs it in jobs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdcore.io import codecs, images
from cdcore.models import precision
from cdcore.cli import main as cdcore_main
from cdcore.pipeline import Stylist
from jobs.stylize.manifest import Options
from jobs.stylize.plan import plan_rows
from jobs.stylize.worker import PixelBudget, Stylizer, WorkerConfig
from shared import CONTENT, MODELS, SHARED, STYLE, psnr

ROOT = Path(__file__).resolve().parents[1]
STAGES = (5, 4, 3, 2, 1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    photo = Image.open(CONTENT / "bridge_512.jpg").convert("RGB")
    for i, size in enumerate([(96, 72), (80, 64), (72, 96), (64, 64)]):
        photo.resize(size).save(d / f"c{i}.jpg", quality=92)
    Image.open(STYLE / "style_a_570.jpg").resize((96, 96)).save(d / "style.jpg")
    (d / "broken.jpg").write_bytes((d / "c0.jpg").read_bytes()[:300])
    return d


def rows_for(inputs: Path, out: Path, names: list[str]):
    records = [{"content": str(inputs / n), "style": str(inputs / "style.jpg"), "output": str(out / f"{i}-{n}.png")}
               for i, n in enumerate(names)]
    return plan_rows(records, Options(str(out)))


# ------------------------------------------------------------------------------ timings

def test_stylize_file_reports_where_its_time_went(inputs, tmp_path):
    stylist = Stylist(str(MODELS), "cpu")
    first = stylist.stylize_file(str(inputs / "c0.jpg"), str(inputs / "style.jpg"), str(tmp_path / "a.png"))
    second = stylist.stylize_file(str(inputs / "c1.jpg"), str(inputs / "style.jpg"), str(tmp_path / "b.png"))
    for done in (first, second):
        t = done.timings
        assert min(t.read_s, t.decode_s, t.stylize_s, t.encode_s, t.write_s) > 0, t
    assert first.timings.style_s > 0 and second.timings.style_s == 0  # the second found it cached


# ------------------------------------------------------------------------------ overlap

def test_overlapped_rows_equal_one_by_one_rows(inputs, tmp_path):
    """The same statuses, errors and pixels, one result per row, with I/O overlapped or not."""
    names = ["c0.jpg", "broken.jpg", "c1.jpg", "missing.jpg", "c2.jpg", "c3.jpg"]
    outcomes = {}
    for threads in (0, 2):
        out = tmp_path / f"t{threads}"
        actor = Stylizer("w", WorkerConfig(str(MODELS), STAGES, io_threads=threads))
        results = actor.process_batch(rows_for(inputs, out, names), budget_s=1e9)["results"]
        assert sorted(r["row"] for r in results) == list(range(len(names)))
        outcomes[threads] = {r["row"]: r for r in results}
        assert actor.counters["rows"] == len(names)
    for i, name in enumerate(names):
        serial, overlapped = outcomes[0][i], outcomes[2][i]
        assert serial["status"] == overlapped["status"] and serial["error"] == overlapped["error"]
        if serial["status"] == "ok":
            assert overlapped["stylize_s"] > 0 and overlapped["read_s"] > 0
            np.testing.assert_array_equal(images.read_image(str(tmp_path / "t0" / f"{i}-{name}.png")).rgb,
                                          images.read_image(str(tmp_path / "t2" / f"{i}-{name}.png")).rgb)
        else:
            assert str(inputs / name) in overlapped["error"] and overlapped["failure"] == "permanent"


def test_past_its_deadline_a_batch_returns_and_leaves_unstarted_rows_untouched(inputs, tmp_path):
    names = ["c0.jpg", "c1.jpg", "c2.jpg", "c3.jpg"] * 3
    rows = plan_rows([{"content": str(inputs / n), "style": str(inputs / "style.jpg"),
                       "output": str(tmp_path / f"{i}.png")} for i, n in enumerate(names)], Options(str(tmp_path)))
    actor = Stylizer("w", WorkerConfig(str(MODELS), STAGES, io_threads=1))
    results = actor.process_batch(rows, budget_s=0.0)["results"]
    done = {r["row"] for r in results}
    assert 1 <= len(done) < len(rows)
    assert {int(p.stem) for p in tmp_path.glob("*.png")} == done  # nothing written for the rest


def test_pixel_budget_waits_for_room_and_admits_an_oversized_image_alone():
    budget = PixelBudget(100)
    budget.acquire(60)
    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.acquire(60), admitted.set()))
    waiter.start()
    assert not admitted.wait(0.2)  # 120 > 100: it waits
    budget.release(60)
    assert admitted.wait(5)
    waiter.join()
    budget.release(60)
    budget.acquire(500)  # larger than the whole budget, and nothing else held: let in
    assert budget.held == 500 and budget.peak == 500


def test_an_overlapping_actor_holds_no_more_pixels_than_its_budget(inputs, tmp_path):
    one = 96 * 72
    actor = Stylizer("w", WorkerConfig(str(MODELS), STAGES, io_threads=3, pixel_budget=2 * one))
    results = actor.process_batch(rows_for(inputs, tmp_path, ["c0.jpg"] * 6), budget_s=1e9)["results"]
    assert len(results) == 6 and all(r["status"] == "ok" for r in results)
    assert one <= actor._budget.peak <= 2 * one and actor._budget.held == 0


# ------------------------------------------------------------------------------ precision

def test_precision_choices_and_fallbacks():
    cpu = torch.device("cpu")
    assert precision.resolve("fp32", cpu) == ("fp32", None)
    assert precision.resolve("fp16", torch.device("cuda")) == ("fp16", None)
    ran, note = precision.resolve("fp16", cpu)
    assert ran == "fp32" and "CUDA only" in note
    with pytest.raises(ValueError, match="bf16 is not offered.*30 dB"):
        precision.resolve("bf16", cpu)
    with pytest.warns(RuntimeWarning, match="running fp32"):
        assert Stylist(str(MODELS), "cpu", precision="fp16").precision == "fp32"


def test_precision_is_refused_with_one_line_by_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cdcore_main(["stylize", str(CONTENT / "bridge_512.jpg"), str(STYLE / "style_b_512.jpg"),
                     "-o", str(tmp_path / "o.png"), "--models", str(MODELS), "--precision", "bf16"])
    assert exit_.value.code == 2 and "bf16 is not offered" in capsys.readouterr().err.splitlines()[-1]


def test_fp16_networks_stay_near_fp32_whole_and_tiled():
    """The reduced-precision plumbing (autocast, float64 statistics, widening before rounding) on
    the CPU, which can run fp16 convolutions slowly; on CUDA the same code is what runs fast."""
    stylist = Stylist(str(MODELS), "cpu")
    content = Image.open(CONTENT / "bridge_512.jpg").convert("RGB").resize((160, 128))
    style = Image.open(STYLE / "style_b_512.jpg").convert("RGB").resize((128, 128))
    reference = np.asarray(stylist.stylize(content, style))
    stylist.precision = "fp16"  # what `resolve` gives on a GPU
    whole = np.asarray(stylist.stylize(content, style))
    stylist.tile_size = 64
    tiled = np.asarray(stylist.stylize(content, style))
    assert 30 <= psnr(whole, reference) < 80  # near, and really another precision
    assert psnr(tiled, whole) >= 60


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_reproduces_the_cpu_and_fp16_stays_above_30_db():
    content, style = str(CONTENT / "bridge_512.jpg"), str(STYLE / "style_b_512.jpg")
    on_cpu = np.asarray(Stylist(str(MODELS), "cpu").stylize(content, style))
    assert psnr(np.asarray(Stylist(str(MODELS), "cuda").stylize(content, style)), on_cpu) >= 40
    assert psnr(np.asarray(Stylist(str(MODELS), "cuda", precision="fp16").stylize(content, style)), on_cpu) >= 30


# ------------------------------------------------------------------------------ codecs

def jpeg(image: Image.Image, **options) -> bytes:
    data = io.BytesIO()
    image.save(data, "JPEG", **options)
    return data.getvalue()


def pillow_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("mode, options", [("RGB", {"quality": 95, "subsampling": 0}), ("RGB", {"quality": 80}),
                                           ("RGB", {"progressive": True}), ("L", {})])
def test_plain_jpegs_decode_to_exactly_what_pillow_gives(mode, options):
    data = jpeg(Image.open(CONTENT / "harbor_420.jpg").convert(mode), **options)
    assert codecs.is_plain_jpeg(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(codecs.decode_jpeg(data), pillow_rgb(data))
    np.testing.assert_array_equal(images.decode(data, "x.jpg").rgb, pillow_rgb(data))


@pytest.mark.parametrize("mode, options, on_gpu", [("RGB", {"subsampling": 0}, True), ("L", {}, True),
                                                   ("RGB", {"subsampling": 1}, False), ("RGB", {}, False)])
def test_only_jpegs_of_full_chroma_are_decoded_on_a_gpu(mode, options, on_gpu):
    # nvJPEG upsamples 4:2:2 and 4:2:0 chroma otherwise than libjpeg-turbo (16 levels apart on an
    # H200): those keep the host's decoder. The choice reads the header alone, so no GPU is needed.
    img = Image.open(io.BytesIO(jpeg(Image.open(CONTENT / "harbor_420.jpg").convert(mode), **options)))
    assert codecs.is_plain_jpeg(img, "cuda") == on_gpu
    assert codecs.is_plain_jpeg(img, "cpu") and codecs.is_plain_jpeg(img)


def test_rotated_and_cmyk_jpegs_keep_the_pillow_path():
    photo = Image.open(CONTENT / "harbor_420.jpg").convert("RGB")
    exif = Image.Exif()
    exif[codecs.EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    rotated = jpeg(photo, exif=exif.tobytes())
    assert not codecs.is_plain_jpeg(Image.open(io.BytesIO(rotated)))
    assert images.decode(rotated, "r.jpg").size == (photo.height, photo.width)
    cmyk = jpeg(photo.convert("CMYK"))
    assert not codecs.is_plain_jpeg(Image.open(io.BytesIO(cmyk)))
    np.testing.assert_array_equal(images.decode(cmyk, "c.jpg").rgb, pillow_rgb(cmyk))


# ------------------------------------------------------------------------------ the GPU check

@pytest.mark.integration
def test_gpu_session_runs_on_the_cpu(tmp_path):
    """`benchmarks/gpu_session.sh --quick` runs every gpu_check section on small images on the
    CPU, so the one call a lent GPU gets works the day it comes."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = dict(line.split(": exit ") for line in done.stdout.splitlines() if ": exit " in line)
    assert {name: status.split()[0] for name, status in steps.items()} == \
        {"dataset": "0", "whole": "0", "variants": "0", "streamed": "0", "scale": "0", "tests": "0"}, (tmp_path / "tests.txt").read_text()[-2000:]
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back
    text = {name: (tmp_path / f"{name}.txt").read_text() for name in steps}
    assert "| cpu fp32 vs golden output |" in text["whole"]
    lines = [line for line in text["whole"].splitlines() if "vs golden" in line]
    assert float(lines[0].split("|")[2].split()[0]) >= 40
    measured = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("dataset", "whole")}
    assert {r["mode"] for r in measured["whole"]["speed"]} == {"whole", "tiled"}
    assert "device busy" in text["whole"]
    assert all(job["ok"] == job["rows"] for runs in measured["whole"]["job"].values() for job in runs)
    # the dataset section (issue 24): batch 1 against batches, batched equal to single, the actor batching
    bare = measured["dataset"]["dataset"]["bare"]
    assert {r["batch"] for r in bare} > {1} and all(r["batched_vs_single_db"] >= 60 for r in bare)
    job = measured["dataset"]["dataset"]["job"]
    assert job["ok"] == job["rows"] and job["device_calls"] < job["rows"]
    assert "16 threads, batched on cpu" in text["dataset"] and "max diff 0 vs Pillow" in text["dataset"]
    # issue 28's sections: tiled against whole at scale (exact), the streamed path, the profile
    tiled = [line.split("|") for line in text["scale"].splitlines() if line.startswith("| ") and "| tiled" in line]
    assert tiled and all(float(cells[6].split()[0]) >= 75 for cells in tiled)
    assert "JPEG in, JPEG out" in text["streamed"] and "profile (torch.profiler" in text["whole"]
    rows = [line for line in text["variants"].splitlines() if line.startswith("| ")]
    variants = [line for line in rows if not line.startswith(("| variant:", "| eigh (", "| eigendecomposition"))]
    assert sum(line.startswith("| eigh (") for line in rows) == 4
    assert len(variants) == 2 * 8 and all(float(line.split("|")[7]) >= 60 for line in variants)
