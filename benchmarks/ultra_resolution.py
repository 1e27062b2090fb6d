"""Ultra-resolution stylization: seconds, MP/s and peak RSS, whole image vs tiled.

    python benchmarks/ultra_resolution.py [--sizes 4,16,42] [--tile-sizes 1024] [--threads 2]
                                          [--modes reference,whole,tiled,streamed] [--levels 5,4,3,2,1]
                                          [--stroke-scale S] [--device cpu|cuda] [--load N]
                                          [--style NAME]

Each configuration runs in a fresh subprocess that does what `cdcore stylize` does: read the
content (a real photo upscaled to the size, written once to --workdir as JPEG), stylize it with
the 16x WCT cascade (5,4,3,2,1) into an `images.Canvas`, and write a JPEG. Peak RSS is the child's
VmHWM (not ru_maxrss, which Linux carries over from the parent across exec), so it includes
importing torch (about 0.55 GB here) and decoding the input. The "reference" mode runs the
whole-image pipeline written the straightforward way (`naive_stylize` of stylize_speed.py: NCHW,
padded copies, default allocator), the baseline the issue's memory figures describe.
Whole-image runs are skipped where their estimated peak exceeds half of MemAvailable: the
machine is shared.

The "streamed" mode is `Stylist.stylize_file` itself on a content that `cdcore.streaming.streams` (the
region reader, disk buffers and strip writer), timed from call to return: decoding and encoding
happen while it stylizes, so its seconds and MP/s include them. Sizes 200 (20000x10000) and 1000
(40000x25000, 1 GP) are made with libvips, which upscales without holding the image. A streamed
run also reports the most scratch disk it used (free space sampled every second) and the stages
that encoded their features again for want of it; `--stroke-scale S` runs it with a stroke scale.
`--device cuda` runs the streamed mode on a GPU (networks on the device, buffers and codecs on the
host), where `--tile-sizes auto` lets the engine choose from the device's free memory; sizes that
fit the device whole are not streamed there and are skipped.

`--load N` runs N busy processes (a Python loop each) beside every configuration, as a node shares
its cores with decoders, encoders and other actors. Every row says where its peak RSS was reached:
the child samples its resident set every 20 ms beside the run and keeps the stage, pass and tile
(or "before the first tile", "after the last tile": decoding, encoding) of the highest sample.
Size 120 (15000x8000) is the issue-28 recipe: the photo upscaled by Pillow, saved at quality 90.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # cdcore, installed or not
# ../shared beside the checkout, or a copy carried inside it (.gpu/shared) to a lent GPU machine.
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / ".gpu" / "shared") if p.is_dir()), ROOT.parent / "shared")
# Sizes with the 2.5:1 aspect of the 10240x4096 (42 MP).
SIZES = {4: (3200, 1280), 16: (6400, 2560), 42: (10240, 4096), 120: (15000, 8000), 200: (20000, 10000),
         1000: (40000, 25000)}
QUALITY = {120: 90}  # JPEG quality of the made content (95 for the others)
# Whole-image peak RSS per pixel, rounded up from this machine (6.2 GB at 16 MP, with the runtime),
# and the reference pipeline's (the issue quotes about 12 GB for 8 MP).
WHOLE_BYTES_PER_PIXEL = 400
REFERENCE_BYTES_PER_PIXEL = 1500
AUTO = -1  # --tile-sizes auto: the engine chooses


def make_content(mp: int, workdir: Path) -> Path:
    """The content photo upscaled (bicubic) to the size of `mp`, as a JPEG, made once."""
    from PIL import Image

    path = workdir / f"content_{mp}mp.jpg"
    source = SHARED / "images" / "content" / "bridge_512.jpg"
    if not path.exists() and mp > 120:  # too large for Pillow to hold comfortably
        import pyvips

        workdir.mkdir(parents=True, exist_ok=True)
        photo = pyvips.Image.new_from_file(str(source))
        (w, h) = SIZES[mp]
        photo.resize(w / photo.width, vscale=h / photo.height, kernel="cubic").jpegsave(str(path), Q=95)
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        photo = Image.open(source).convert("RGB")
        Image.MAX_IMAGE_PIXELS = None
        photo.resize(SIZES[mp], Image.Resampling.BICUBIC).save(path, quality=QUALITY.get(mp, 95))
    return path


def child(args) -> None:
    """One configuration; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from cdcore.io import images
    from cdcore import memory, tiling
    from cdcore.models.modelset import load_model_set
    from cdcore.transfer.stylize import style_statistics, to_tensor, to_uint8

    if args.streamed:
        return streamed_child(args)
    models = load_model_set(args.models)
    style_rgb = images.read_image(str(SHARED / "images" / "style" / args.style)).rgb
    if not args.reference:  # as `cdcore stylize` does
        memory.reuse_freed_memory()
        models.to("cpu", channels_last=True)
        style = style_statistics(models, to_tensor(style_rgb), "wct")
    t0 = time.perf_counter()
    picture = images.read_image(args.content)
    t1 = time.perf_counter()
    height, width = picture.rgb.shape[:2]
    canvas = images.Canvas(height, width)
    peak = PeakWatch().start()
    progress = peak.progress(args.verbose)
    if args.reference:
        from stylize_speed import naive_stylize

        canvas.rgb[:] = to_uint8(naive_stylize(models, to_tensor(picture.rgb), to_tensor(style_rgb)))
    else:
        engine = tiling.TiledEngine(models, args.tile_size, progress=progress)
        engine.stylize(picture.rgb, style, 1.0, args.levels, out=canvas.rgb)
    t2 = time.perf_counter()
    stylize_peak = peak_rss()
    peak.where = "writing the result"
    canvas.save(args.output)
    t3 = time.perf_counter()
    peak.stop()
    os.unlink(args.output)
    print(json.dumps({"read_s": t1 - t0, "stylize_s": t2 - t1, "write_s": t3 - t2,
                      "mp": height * width / 1e6, "peak_rss": peak_rss(),
                      "stylize_peak_rss": stylize_peak, "peak_at": peak.at}))


def streamed_child(args) -> None:
    """`Stylist.stylize_file` on a streamed content: one call, decoding and encoding included."""
    from cdcore import memory
    from cdcore.options import Recipe
    from cdcore.pipeline import Stylist

    memory.reuse_freed_memory()  # as `cdcore stylize` does
    tile_size = None if args.tile_size == AUTO else args.tile_size
    stylist = Stylist(args.models, args.device, tile_size=tile_size, max_pixels=2_000_000_000)
    style = str(SHARED / "images" / "style" / args.style)
    recipe = Recipe(levels=args.levels, stroke_scale=args.stroke_scale)
    stylist.stylize_file(style, style, str(args.workdir / "warm.jpg"), recipe.replace(stroke_scale=1.0))  # the style
    if not stylist.streams(args.content, args.output, recipe):
        print(json.dumps({"skipped": f"fits the {args.device} device whole: not streamed"}))
        return
    peak = PeakWatch()
    progress = peak.progress(args.verbose)
    ready = memory.resident_bytes()  # the runtime, models and style loaded: what any run holds
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with DiskWatch(tempfile.gettempdir()) as disk, warnings.catch_warnings(record=True) as said, peak:
        warnings.simplefilter("always")
        done = stylist.stylize_file(args.content, style, args.output, recipe, progress)
    seconds = time.perf_counter() - t0
    os.unlink(args.output)
    print(json.dumps({"read_s": 0.0, "stylize_s": seconds, "write_s": 0.0, "mp": done.width * done.height / 1e6,
                      "peak_rss": peak_rss(), "ready_rss": ready, "cpu_s": cpu_seconds() - cpu0, "scratch": disk.peak,
                      "peak_at": peak.at, "warnings": [str(w.message) for w in said]}))


class PeakWatch:
    """Where the resident set peaked: sampled every `interval` s on a thread, labelled with the
    last tile reported (`progress`), "before the first tile" or "after the last tile"."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.where, self.at, self.most = interval, "before the first tile", "", 0
        self.last = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def progress(self, verbose: bool):
        def report(p) -> None:
            self.last = p
            self.where = f"stage {p.stage} {p.step}, tile {p.tile}/{p.tiles}"
            if p.tile == p.tiles and p.step == "render" and p.stage == 1:
                self.where = "after the last tile"
            if verbose:
                print(p, file=sys.stderr, flush=True)
        return report

    def _watch(self) -> None:
        from cdcore import memory

        while not self._stop.wait(self.interval):
            rss = memory.resident_bytes()
            if rss > self.most:
                self.most, self.at = rss, f"{self.where} ({rss / 1e9:.2f} GB sampled)"

    def start(self) -> "PeakWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "PeakWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.where = "after the call"
        self.stop()


class DiskWatch:
    """The most space used on `directory`'s disk beyond what was used at the start, sampled every
    second on a thread (other writers on the disk count too)."""

    def __init__(self, directory: str):
        self.directory, self.peak, self._stop = directory, 0, threading.Event()
        self._start = shutil.disk_usage(directory).used
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, shutil.disk_usage(self.directory).used - self._start)

    def __enter__(self) -> "DiskWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """CPU time of this process (all threads, user and system): unlike wall time, it hardly grows
    when other work shares the cores, so sizes measured at different times compare."""
    times = os.times()
    return times.user + times.system


def peak_rss() -> int:
    """This process's peak resident set in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_child(content: Path, mode: str, tile_size: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--content", str(content), "--tile-size", str(tile_size),
           "--output", str(args.workdir / f"out_{os.getpid()}.jpg"), "--threads", str(args.threads),
           "--models", args.models, "--levels", ",".join(map(str, args.levels)),
           "--workdir", str(args.workdir), "--stroke-scale", str(args.stroke_scale), "--device", args.device,
           "--style", args.style]
    cmd += ["--verbose"] if args.verbose else []
    cmd += ["--reference"] if mode == "reference" else []
    cmd += ["--streamed"] if mode == "streamed" else []
    with busy_processes(args.load):
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` processes spinning a Python loop beside what runs in the block, stopped after it."""
    # Each spins until its parent is gone, so that a benchmark killed outright leaves none behind.
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6): pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def cpu_rate(r: dict) -> str:
    return f"{r['mp'] / r['cpu_s']:.3f}" if r.get("cpu_s") else ""


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4,16,42", help="megapixel sizes among 4, 16, 42, 200, 1000")
    p.add_argument("--tile-sizes", default="1024", help="tile sizes of the tiled runs, comma-separated")
    p.add_argument("--modes", default="whole,tiled",
                   help="in the order to run: whole (cdcore, whole image), tiled, streamed (the whole "
                        "stylize_file call on a streamed content, tiles of --tile-sizes), and reference (the "
                        "straightforward whole-image pipeline of benchmarks/stylize_speed.py)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", type=lambda t: tuple(int(k) for k in t.split(",")), default=(5, 4, 3, 2, 1),
                   help="stages of the WCT cascade (default 5,4,3,2,1); the reference mode runs all five")
    p.add_argument("--stroke-scale", type=float, default=1.0, help="stroke scale of the streamed runs")
    p.add_argument("--models", default=str(SHARED / "models" / "cd16x"))
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cdcore-bench",
                   help="where the upscaled contents are kept between runs")
    p.add_argument("--device", default="cpu", help="where the streamed mode runs the networks: cpu or cuda")
    p.add_argument("--load", type=int, default=0, help="busy processes to run beside each configuration")
    p.add_argument("--style", default="style_b_512.jpg", help="a style of the shared images (style_a_570.jpg: "
                                                                "the issue-28 recipe)")
    p.add_argument("--verbose", action="store_true", help="print tile progress to stderr")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--content", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--tile-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.device != "cpu":
        import torch

        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}, streamed mode only", flush=True)
    print(f"load: {args.load} busy processes beside each run; style {args.style}", flush=True)
    print("| size | mode | stylize s | MP/s | read + write s | peak RSS GB | MP per CPU s | scratch GB | peak at |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mp in (int(s) for s in args.sizes.split(",")):
        content = make_content(mp, args.workdir)
        w, h = SIZES[mp]
        tiled = ("tiled", "streamed")
        runs = [(mode, 0) if mode not in tiled else (mode, AUTO if t == "auto" else int(t))
                for mode in args.modes.split(",")
                for t in (args.tile_sizes.split(",") if mode in tiled else ["0"])]
        for mode, tile in runs:
            label = {"whole": "whole image", "reference": "reference whole image"}.get(
                mode, f"{mode} {'auto' if tile == AUTO else tile}")
            need = w * h * (REFERENCE_BYTES_PER_PIXEL if mode == "reference" else WHOLE_BYTES_PER_PIXEL)
            if tile == 0 and need > mem_available() / 2:
                print(f"| {w}x{h} ({w * h / 1e6:.1f} MP) | {label} | skipped: needs about {need / 1e9:.0f} "
                      f"GB, over half of MemAvailable | | | | | |", flush=True)
                continue
            if mode == "streamed" and args.stroke_scale > 1:
                label += f", stroke scale {args.stroke_scale:g}"
            r = run_child(content, mode, tile, args)
            if "skipped" in r:
                print(f"| {w}x{h} ({w * h / 1e6:.1f} MP) | {label} | skipped: {r['skipped']} | | | | | |", flush=True)
                continue
            scratch = f"{r['scratch'] / 1e9:.1f}" if "scratch" in r else ""
            print(f"| {w}x{h} ({r['mp']:.1f} MP) | {label} | {r['stylize_s']:.1f} | "
                  f"{r['mp'] / r['stylize_s']:.3f} | {r['read_s']:.1f} + {r['write_s']:.1f} | "
                  f"{r['peak_rss'] / 1e9:.2f} | {cpu_rate(r)} | {scratch} | {r.get('peak_at', '')} |", flush=True)
            if "ready_rss" in r:
                print(f"  (resident before the call: {r['ready_rss'] / 1e9:.2f} GB)", flush=True)
            for line in r.get("warnings", []):
                print(f"  ({line})", flush=True)

if __name__ == "__main__":
    main()
