"""Batch job benchmark: jobs.stylize on a local Ray against a plain loop over cdcore, and the
speed-up from reusing style statistics.

    .venv/bin/python benchmarks/batch_job.py [--pairs 32] [--megapixels 1] [--styles 4]
        [--style-megapixels 1] [--reuse-pairs 16] [--actors 2] [--levels 5,4,3,2,1]
        [--loop-threads 1,2]

1. The same `--pairs` content/style pairs (`--styles` distinct styles), all stylized with WCT:
   a. loop: one process with 1 and `--actors` torch threads (`--loop-threads`), models loaded
      once and each style's statistics computed once (as the README's library example does):
      read, stylize, write, pair by pair;
   b. job: `jobs.stylize.run` on a local Ray with `--actors` actors of one CPU each.
   The job's time is counted from the call (actors start, load models, run, results written) with
   Ray already up, as on a running cluster; `ray.init` is timed apart. "Overhead" is the share of
   the actors' time not spent on rows: 1 - sum(busy) / (actors x job seconds); "efficiency" is the
   job's speed against the one-thread loop's times the number of actors.
2. Style reuse, through the job: `--reuse-pairs` contents with one style, against as many
   contents each with its own style (distinct files, so nothing is cached).

Inputs are made from ../shared/images (resized and cropped to the sizes asked for) in a temporary
directory. Prints markdown tables. Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from cdcore.io import images
from cdcore.models.modelset import load_model_set
from cdcore.options import levels as parse_levels
from cdcore.transfer.stylize import style_statistics, stylize, to_tensor, to_uint8
from jobs.stylize.driver import build_parser, prepare, run

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models" / "cd16x"


def sized(path: Path, megapixels: float, variant: int) -> Image.Image:
    """`path` cropped a little (differently per variant, so copies differ) and resized to about
    `megapixels` at its aspect ratio."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    cut = variant % 8 * 4
    img = img.crop((cut, cut // 2, w - cut, h - cut // 2))
    scale = math.sqrt(megapixels * 1e6 / (img.width * img.height))
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


def make_images(sources: list[Path], count: int, megapixels: float, folder: Path, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:03d}.jpg"
        sized(sources[i % len(sources)], megapixels, i).save(path, quality=95)
        paths.append(str(path))
    return paths


def write_manifest(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("content,style\n" + "".join(f"{c},{s}\n" for c, s in pairs))
    return path


def run_loop(pairs: list[tuple[str, str]], out: Path, levels: tuple[int, ...], threads: int) -> float:
    """The plain loop: one process, models once, each style's statistics once."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    models = load_model_set(MODELS, levels).to("cpu", channels_last=True)
    stats = {}
    out.mkdir(parents=True, exist_ok=True)
    for i, (content, style) in enumerate(pairs):
        if style not in stats:
            s = to_tensor(images.read_image(style).rgb).contiguous(memory_format=torch.channels_last)
            stats[style] = style_statistics(models, s, "wct", levels)
        picture = images.read_image(content)
        c = to_tensor(picture.rgb).contiguous(memory_format=torch.channels_last)
        images.write_image(str(out / f"{i:03d}.jpg"), images.Picture(to_uint8(stylize(models, c, stats[style], 1.0, levels))))
    return time.perf_counter() - started


def run_job(manifest: Path, out: Path, actors: int, levels: str) -> dict:
    args = build_parser().parse_args([
        "--manifest", str(manifest), "--output-prefix", str(out), "--results", str(out / "results.parquet"),
        "--models", str(MODELS), "--actors", str(actors), "--levels", levels])
    started = time.perf_counter()
    report = run(prepare(args))
    seconds = time.perf_counter() - started
    rows = sum(report.tally.counts.values())
    if report.count("ok") != rows:
        raise RuntimeError(f"{manifest}: {rows - report.count('ok')} rows not ok")
    busy = sum(c["busy_seconds"] for c in report.actors.values())
    encoded = sum(c["styles_encoded"] for c in report.actors.values())
    return {"seconds": seconds, "overhead": 1 - busy / (actors * seconds), "styles_encoded": encoded}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--megapixels", type=float, default=1.0, help="content size")
    p.add_argument("--styles", type=int, default=4)
    p.add_argument("--style-megapixels", type=float, default=1.0)
    p.add_argument("--reuse-pairs", type=int, default=16)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--levels", default="5,4,3,2,1")
    p.add_argument("--loop-threads", default=None,
                   help="comma-separated torch thread counts for the loop (default: 1 and --actors)")
    args = p.parse_args()
    loop_threads = sorted({int(t) for t in (args.loop_threads or f"1,{args.actors}").split(",")} | {1})
    levels = parse_levels(args.levels)
    content_sources = sorted((SHARED / "images" / "content").glob("*.jpg")) + \
        sorted((SHARED / "images" / "train").glob("*.png"))
    style_sources = sorted((SHARED / "images" / "style").glob("*.jpg"))

    with tempfile.TemporaryDirectory(prefix="batch-job-") as tmp:
        work = Path(tmp)
        contents = make_images(content_sources, max(args.pairs, args.reuse_pairs), args.megapixels,
                               work / "content", "c")
        styles = make_images(style_sources, max(args.styles, args.reuse_pairs), args.style_megapixels,
                             work / "style", "s")
        pairs = [(contents[i], styles[i % args.styles]) for i in range(args.pairs)]
        megapixels = sum(np.prod(Image.open(c).size) for c, _ in pairs) / 1e6
        print(f"{args.pairs} pairs, {megapixels / args.pairs:.2f} MP contents, {args.styles} styles of "
              f"{args.style_megapixels:g} MP, levels {args.levels}, {args.actors} actors x 1 CPU in the job\n")

        loops = {n: run_loop(pairs, work / f"loop{n}", levels, n) for n in loop_threads}
        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - started
        try:
            job = run_job(write_manifest(work / "pairs.csv", pairs), work / "job", args.actors, args.levels)
            n = args.reuse_pairs
            shared = run_job(write_manifest(work / "one_style.csv", [(contents[i], styles[0]) for i in range(n)]),
                             work / "one_style", args.actors, args.levels)
            independent = run_job(write_manifest(work / "own_styles.csv", [(contents[i], styles[i]) for i in range(n)]),
                                  work / "own_styles", args.actors, args.levels)
        finally:
            ray.shutdown()

    print("| run | seconds | pairs/s | MP/s | job speed / this |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for threads, seconds in loops.items():
        print(f"| plain loop, 1 process, {threads} thread{'s' * (threads > 1)} | {seconds:.1f} | "
              f"{args.pairs / seconds:.3f} | {megapixels / seconds:.3f} | {seconds / job['seconds']:.2f}x |")
    print(f"| jobs.stylize, {args.actors} actors x 1 CPU | {job['seconds']:.1f} | {args.pairs / job['seconds']:.3f} | "
          f"{megapixels / job['seconds']:.3f} | |")
    efficiency = loops[1] / args.actors / job["seconds"]
    print(f"\njob: actor overhead {job['overhead']:.0%}, efficiency {efficiency:.0%} of {args.actors} x the "
          f"one-thread loop; ray.init (local, not counted above): {init:.1f} s\n")
    print("| style reuse | seconds | pairs/s | styles encoded |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in ((f"1 style x {n} contents", shared), (f"{n} pairs, {n} styles", independent)):
        print(f"| {name} | {r['seconds']:.1f} | {n / r['seconds']:.3f} | {r['styles_encoded']} |")
    print(f"\nstyle reuse speed-up: {independent['seconds'] / shared['seconds']:.2f}x")


if __name__ == "__main__":
    main()
