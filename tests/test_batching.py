"""Dataset-rate stylization (issue 24): the batch size rule, the actor stylizing rows of one size
together with results and failures per row, and --crop from the library, the command and the job.
The batched cascade's own equivalence tests are in test_stylize and test_transforms."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from cdcore import batching
from cdcore.cli import main as cdcore_main
from cdcore.io import images
from cdcore.models.modelset import load_model_set
from cdcore.options import Recipe, crop
from cdcore.pipeline import Stylist
from jobs.stylize.driver import build_parser, prepare
from jobs.stylize.manifest import Options
from jobs.stylize.plan import plan_rows
from jobs.stylize.worker import Stylizer, WorkerConfig
from shared import CONTENT, MODELS, STYLE, psnr

LEVELS = (3, 2, 1)  # shallow stages keep the actor tests quick; batching is the same at every stage


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Photos of three sizes that --content-size 40 --crop 48x40 makes one shape, one of another
    shape, a corrupt JPEG and a style."""
    d = tmp_path_factory.mktemp("inputs")
    photo = Image.open(CONTENT / "harbor_420.jpg").convert("RGB")
    for i, size in enumerate([(64, 48), (60, 40), (90, 60), (70, 52), (80, 50)]):
        photo.crop((9 * i, 5 * i, 300 + 9 * i, 240 + 5 * i)).resize(size).save(d / f"c{i}.jpg", quality=92)
    photo.resize((40, 40)).save(d / "square.jpg", quality=92)
    (d / "broken.jpg").write_bytes((d / "c0.jpg").read_bytes()[:300])
    Image.open(STYLE / "style_a_570.jpg").resize((96, 96)).save(d / "style.jpg")
    return d


# ------------------------------------------------------------------------------ the batch size

def test_batch_size_follows_memory_and_pixels():
    models = load_model_set(MODELS, LEVELS)
    per_image = 8 * 64 * batching.BYTES_PER_CHANNEL_PIXEL * 24  # stage 1's encoder is 24 wide
    plenty = 1 << 40
    assert batching.choose_batch_images(models, LEVELS, 48, 64, available=plenty) == \
        batching.BATCH_PIXELS["cpu"] // (48 * 64)
    assert batching.choose_batch_images(models, LEVELS, 48, 64, limit=5, available=plenty) == 5
    # memory: a quarter of what is free holds three images, so three it is ...
    assert batching.choose_batch_images(models, LEVELS, 8, 64, available=int(12.5 * per_image)) == 3
    # ... and an image that does not fit at all still runs, alone (in tiles).
    assert batching.choose_batch_images(models, LEVELS, 400, 640, available=per_image) == 1
    with pytest.raises(ValueError, match="positive"):
        batching.choose_batch_images(models, LEVELS, 0, 10)


# ------------------------------------------------------------------------------ the actor

def rows_for(inputs, out, names, recipe):
    records = [{"content": str(inputs / n), "style": str(inputs / "style.jpg"), "output": str(out / f"{i}-{n}.png")}
               for i, n in enumerate(names)]
    return plan_rows(records, Options(str(out), recipe))


def run_actor(inputs, out, names, recipe, **config):
    actor = Stylizer("w", WorkerConfig(str(MODELS), LEVELS, **config))
    results = actor.process_batch(rows_for(inputs, out, names, recipe), budget_s=1e9)["results"]
    assert sorted(r["row"] for r in results) == list(range(len(names)))  # one result per row
    return actor, {r["row"]: r for r in results}


def test_actor_stylizes_rows_of_one_size_together(inputs, tmp_path):
    """Rows that decode to one shape (--content-size, then --crop) share device calls, in groups of
    --batch-images; a corrupt row and one that the crop does not fit fail alone; each image is what
    the actor makes of it one row at a time."""
    recipe = Recipe(levels=LEVELS, content_size=40, crop=(48, 40))
    names = ["c0.jpg", "c1.jpg", "broken.jpg", "c2.jpg", "square.jpg", "c3.jpg", "c4.jpg"]
    _, alone = run_actor(inputs, tmp_path / "alone", names, recipe, io_threads=0)
    actor, together = run_actor(inputs, tmp_path / "together", names, recipe, io_threads=2, batch_images=3)
    statuses = [together[i]["status"] for i in range(len(names))]
    assert statuses == [alone[i]["status"] for i in range(len(names))] == \
        ["ok", "ok", "failed", "ok", "failed", "ok", "ok"]
    assert str(inputs / "broken.jpg") in together[2]["error"] and together[2]["failure"] == "permanent"
    assert "larger than the image" in together[4]["error"] and str(inputs / "square.jpg") in together[4]["error"]
    assert actor.counters["device_calls"] == 2  # five rows of 48x40: a group of 3, then the 2 left
    for i, name in enumerate(names):
        if together[i]["status"] == "ok":
            assert together[i]["stylize_s"] > 0 and (together[i]["width"], together[i]["height"]) == (48, 40)
            one = images.read_image(str(tmp_path / "alone" / f"{i}-{name}.png")).rgb
            batched = images.read_image(str(tmp_path / "together" / f"{i}-{name}.png")).rgb
            assert psnr(batched, one) >= 50.0  # float rounding apart, the same image


def test_actor_groups_by_shape(inputs, tmp_path):
    """Without a crop the rows decode to several shapes: only the two of 60x40 share a call."""
    recipe = Recipe(levels=LEVELS, content_size=40)  # 53x40, 60x40, 60x40, 54x40, 64x40
    actor, results = run_actor(inputs, tmp_path, ["c0.jpg", "c1.jpg", "c2.jpg", "c3.jpg", "c4.jpg"], recipe)
    assert all(r["status"] == "ok" for r in results.values())
    assert [(results[i]["width"], results[i]["height"]) for i in range(5)] == \
        [(53, 40), (60, 40), (60, 40), (54, 40), (64, 40)]
    assert actor.counters["device_calls"] == 4


def test_a_group_shares_its_stylize_time_by_pixels(inputs, tmp_path):
    recipe = Recipe(levels=LEVELS, content_size=40, crop=(48, 40))
    actor, results = run_actor(inputs, tmp_path, ["c0.jpg", "c1.jpg", "c2.jpg", "c3.jpg"], recipe, batch_images=4)
    shares = [r["stylize_s"] for r in results.values()]
    assert actor.counters["device_calls"] == 1 and all(s > 0 for s in shares)
    assert max(shares) == pytest.approx(min(shares), rel=1e-6)  # one shape: equal shares


def test_a_group_whose_batched_call_fails_renders_its_rows_alone(inputs, monkeypatch):
    """Should the batched call raise, each row renders by itself, so only the row at fault fails."""
    import cdcore.pipeline as pipeline

    stylist = Stylist(str(MODELS), "cpu", stages=LEVELS)
    recipe = Recipe(levels=LEVELS, content_size=40, crop=(48, 40))
    loaded = [stylist.load(str(inputs / n), str(inputs / "style.jpg"), recipe) for n in ("c0.jpg", "c1.jpg")]
    expected = [stylist.render(item, recipe).rgb.copy() for item in loaded]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "stylize_batch", broken)
    outcomes = stylist.render_batch(loaded, [recipe, recipe])
    for canvas, rgb in zip(outcomes, expected):
        np.testing.assert_array_equal(canvas.rgb, rgb)


# ------------------------------------------------------------------------------ --crop

def test_crop_values():
    assert crop(None) is None and crop("") is None and crop(0) is None
    assert crop("224") == (224, 224) == crop(224)
    assert crop("320x240") == (320, 240) == crop((320, 240))
    for bad in ("0x5", "axb", "1x2x3", "-4", "12x"):
        with pytest.raises(ValueError, match="crop"):
            crop(bad)
    with pytest.raises(ValueError, match="crop"):
        Recipe(crop="wide")


def test_crop_takes_the_centre_after_the_resize():
    rgb = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    cut = images.crop_centre(images.Picture(rgb, rgb[..., 0].copy()), (4, 2))
    np.testing.assert_array_equal(cut.rgb, rgb[2:4, 2:6])
    np.testing.assert_array_equal(cut.alpha, rgb[2:4, 2:6, 0])
    with pytest.raises(ValueError, match="larger than the image"):
        images.crop_centre(images.Picture(rgb), (9, 2))


def test_crop_from_the_library(inputs):
    stylist = Stylist(str(MODELS), "cpu", stages=LEVELS)
    out = stylist.stylize(str(inputs / "c2.jpg"), str(inputs / "style.jpg"), levels=LEVELS, content_size=40,
                          crop=(48, 40))
    assert out.size == (48, 40)


def test_crop_from_the_command(inputs, tmp_path, capsys):
    out = tmp_path / "o.png"
    code = cdcore_main(["stylize", str(inputs / "c2.jpg"), str(inputs / "style.jpg"), "-o", str(out), "--models",
                        str(MODELS), "--levels", "3,2,1", "--content-size", "40", "--crop", "48x40"])
    assert code == 0 and Image.open(out).size == (48, 40)
    code = cdcore_main(["stylize", str(inputs / "c2.jpg"), str(inputs / "style.jpg"), "-o", str(out), "--models",
                        str(MODELS), "--levels", "3,2,1", "--crop", "500"])
    assert code == 2 and "c2.jpg" in capsys.readouterr().err  # larger than the image: names it


def test_crop_and_batch_images_from_the_job(inputs, tmp_path):
    """The job's options reach its rows and its actors (run here without Ray)."""
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["content", "style"])
        writer.writeheader()
        writer.writerows({"content": str(inputs / n), "style": str(inputs / "style.jpg")}
                         for n in ("c0.jpg", "c1.jpg", "c2.jpg"))
    job = prepare(build_parser().parse_args([
        "--manifest", str(manifest), "--output-prefix", str(tmp_path / "out"), "--results", str(tmp_path / "res"),
        "--models", str(MODELS), "--levels", "3,2,1", "--content-size", "40", "--crop", "48x40",
        "--batch-images", "3"]))
    assert job.worker.batch_images == 3
    rows = job.plan.rows(range(len(job.plan)))
    assert all(row.recipe.crop == (48, 40) for row in rows)
    actor = Stylizer("w", job.worker)
    results = actor.process_batch(rows, budget_s=1e9)["results"]
    assert [r["status"] for r in results] == ["ok"] * 3 and actor.counters["device_calls"] == 1
    assert all(Image.open(row.output).size == (48, 40) for row in rows)


def test_dataset_rate_breakdown_times_every_part_and_baseline_runs_a_revision(tmp_path):
    """benchmarks/dataset_rate.py --breakdown: each part of the cascade gets time at batch 1 and in
    a batch (a wrapper that missed its calls would print zero). --baseline: a revision's cascade
    (here HEAD's, unpacked from git) is timed in its child process and gets its own row."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "dataset_rate.py"), "--sizes", "32x32",
                           "--batches", "1,2", "--images", "2", "--seconds", "0.2", "--profile", "",
                           "--breakdown", "32x32:1,2", "--baseline", "HEAD"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    baseline = next(line for line in done.stdout.splitlines() if line.startswith("| 32x32 | HEAD's batch 1 |"))
    assert float(baseline.split(" | ")[2]) > 0 and baseline.endswith("| 1.00x |")
    table = done.stdout.split("CPU ms per image | batch 1 | batch 2 |")[1]
    rows = {line.split(" | ")[0].strip("| "): [float(x) for x in line.strip(" |").split(" | ")[1:]]
            for line in table.splitlines()[2:] if line.startswith("| ")}
    assert set(rows) == {"encoders", "decoders (a map folded in, where it pays)", "content moments",
                         "maps (eigendecompositions)", "applying the maps", "the rest", "total"}
    for label in ("encoders", "decoders (a map folded in, where it pays)", "content moments", "maps (eigendecompositions)"):
        assert min(rows[label]) > 0, label
    assert rows["applying the maps"][1] > 0  # a batch always applies its maps
