"""Dataset-rate stylization (issue 24): images per second of ordinary-size contents, one at a time
against batches, and torch ops per image.

    python benchmarks/dataset_rate.py [--sizes 64x48,256x192,512x384] [--batches 1,auto,32]
                                      [--threads 1] [--seconds 6] [--profile 64x48:1,32]
                                      [--breakdown 64x48:1,32] [--baseline REV]

For each content size: the same distinct photos (crops of the shared pictures, resized) run
through `stylize` one by one (batch 1) and through `stylize_batch` in batches, uint8 in host
memory to uint8 in host memory, WCT 5..1, the style prepared once. Rounds alternate between the
batch sizes so that load from other processes falls on all of them alike; each figure is the
best round's. On the CPU the rate is also given per CPU-second of this process: with one thread
that is images/s on an idle machine, and it stays so on a machine that others load, where wall
time does not. `auto` is the batch the job's actors choose (`cdcore.batching.choose_batch_images`). The
profile counts the torch ops (every `aten::` call torch.profiler records, nested ones included)
and the convolutions that took torch's slow path, per image; `--breakdown 64x48:1,32` says where
an image's time goes (networks, moments, maps) at those batches. `--baseline REV` adds batch 1 of
the cascade as it was at a git revision (3cf08ad: before issue 24), timed in turn with the rest.

`benchmarks/gpu_check.py` runs the same measurements on a GPU (its `dataset` section).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdcore.batching import choose_batch_images  # noqa: E402
from cdcore.models import precision as precisions  # noqa: E402
from cdcore.models.modelset import ModelSet, load_model_set  # noqa: E402
from cdcore.options import DEFAULT_LEVELS  # noqa: E402
from cdcore.transfer import stylize as cascade  # noqa: E402

SHARED = ROOT.parent / "shared"
PHOTOS = ("images/content/bridge_512.jpg", "images/content/harbor_420.jpg")
STYLE = "images/style/style_b_512.jpg"


def contents(shared: Path, width: int, height: int, count: int) -> list[np.ndarray]:
    """`count` distinct (height, width, 3) uint8 photos: shifted crops of the shared pictures,
    resized, so that no two images of a batch are the same."""
    photos = [Image.open(shared / p).convert("RGB") for p in PHOTOS]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        shift = (i // len(photos)) % 8 * 8
        box = (shift, shift // 2, w - 32 + shift // 2, h - 32 + shift // 4)
        out.append(np.array(photo.crop(box).resize((width, height), Image.Resampling.BILINEAR)))
    return out


def style_rgb(shared: Path) -> np.ndarray:
    return np.array(Image.open(shared / STYLE).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))


def style_of(models: ModelSet, shared: Path, device: torch.device) -> cascade.StyleStats:
    return cascade.style_statistics(models, cascade.to_tensor(style_rgb(shared), device), "wct", DEFAULT_LEVELS["wct"])


def auto_batch(models: ModelSet, height: int, width: int) -> int:
    return choose_batch_images(models, DEFAULT_LEVELS["wct"], height, width)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(models: ModelSet, rgbs: list[np.ndarray], style: cascade.StyleStats, batch: int) -> list[np.ndarray]:
    """Stylize `rgbs` `batch` at a time, host uint8 to host uint8 (what an actor's row costs)."""
    device = next(models.encoder(5).parameters()).device
    out = []
    for start in range(0, len(rgbs), batch):
        group = rgbs[start:start + batch]
        if batch == 1:
            out.append(cascade.to_uint8(cascade.stylize(models, cascade.to_tensor(group[0], device), style)))
        else:
            result = cascade.stylize_batch(models, cascade.to_tensor_batch(group, device), style)
            out.extend(cascade.to_uint8_batch(result))
    return out


def rates(models: ModelSet, rgbs: list[np.ndarray], style: cascade.StyleStats, batches: list[int],
          seconds: float, precision: str = "fp32",
          others: dict[str, Callable[[], tuple[float, float]]] | None = None) -> dict:
    """Per batch size, the best images/s of wall time and of this process's CPU time, over rounds
    that alternate between the batch sizes for about `seconds`. `others` are more rounds to take
    in turn, each a call that runs one over `rgbs` and returns its (wall s, CPU s)."""
    device = next(models.encoder(5).parameters()).device

    def ours(b: int) -> tuple[float, float]:
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        run(models, rgbs, style, b)
        synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    rounds = {**{b: functools.partial(ours, b) for b in batches}, **(others or {})}
    best = {key: (0.0, 0.0) for key in rounds}
    with precisions.networks(device, precision):
        for b in batches:  # warm-up: kernels, allocator, this shape's plans
            run(models, rgbs[:b], style, b)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or not all(w for w, _ in best.values()):
            for key, one_round in rounds.items():
                wall, cpu = one_round()
                best[key] = max(best[key][0], len(rgbs) / wall), max(best[key][1], len(rgbs) / max(cpu, 1e-9))
    return best


@contextlib.contextmanager
def baseline_rounds(rev: str, rgbs: list[np.ndarray], shared: Path, threads: int) -> Iterator[Callable]:
    """Rounds of batch 1 through the cascade as it was at git revision `rev`: its `cdcore` is
    unpacked into a temporary folder and run by benchmarks/batch1_rounds.py in a child process,
    which times each round itself (so the pipe costs nothing) on the same contents and style."""
    with tempfile.TemporaryDirectory(prefix="cdcore-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cdcore"], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        images = Path(tmp) / "images.npz"
        np.savez(images, contents=np.stack(rgbs), style=style_rgb(shared))
        child = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "batch1_rounds.py"), tmp, str(images),
                                  str(shared / "models" / "cd16x"), str(threads)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the cascade at {rev} did not start (exit {child.wait()})")

            def one_round() -> tuple[float, float]:
                child.stdin.write("\n")
                child.stdin.flush()
                wall, cpu = child.stdout.readline().split()
                return float(wall), float(cpu)

            yield one_round
        finally:
            child.stdin.close()
            child.wait()


# The parts of the cascade that `breakdown` times: a label, and where its calls are looked up.
PARTS = (("encoders", "encoder"), ("decoders (a map folded in, where it pays)", "decoder"),
         ("content moments", ("moments_per_image",)), ("maps (eigendecompositions)", ("affine_map",)),
         ("applying the maps", ("apply_affine",)))


@contextlib.contextmanager
def _timed(owner, name: str, spent: list[float], clock) -> Iterator[None]:
    """Replace `owner.name` by a wrapper that adds the time of each call to spent[0]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += clock() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if isinstance(owner, torch.nn.Module):
            del owner.forward  # the class's own forward again
        else:
            setattr(owner, name, inner)


def breakdown(models: ModelSet, rgbs: list[np.ndarray], style: cascade.StyleStats, batch: int,
              seconds: float) -> dict[str, float]:
    """ms per image in each of PARTS at `batch`, and the rest of a run, over runs of about
    `seconds`: the calls are wrapped with a clock (CPU time on the CPU; on a GPU wall time with a
    synchronisation around every call, which serialises the device: a profile, not a rate)."""
    device = next(models.encoder(5).parameters()).device
    clock = time.process_time if device.type == "cpu" else lambda: (synchronize(device), time.perf_counter())[1]
    spent = {label: [0.0] for label, _ in PARTS}
    run(models, rgbs[:batch], style, batch)  # warm-up
    with contextlib.ExitStack() as stack:
        for label, where in PARTS:
            if isinstance(where, str):  # a network of every stage
                for k in DEFAULT_LEVELS["wct"]:
                    stack.enter_context(_timed(getattr(models, where)(k), "forward", spent[label], clock))
            else:
                for name in where:
                    stack.enter_context(_timed(cascade.transforms, name, spent[label], clock))
        images, started, start = 0, clock(), time.perf_counter()
        while time.perf_counter() - start < seconds or not images:
            run(models, rgbs[:batch], style, batch)
            images += batch
        total = clock() - started
    ms = {label: 1e3 * t[0] / images for label, t in spent.items()}
    return {**ms, "the rest": 1e3 * total / images - sum(ms.values()), "total": 1e3 * total / images}


def op_counts(models: ModelSet, rgbs: list[np.ndarray], style: cascade.StyleStats, batch: int) -> dict[str, float]:
    """Per image: torch ops, convolutions, and those on torch's slow non-oneDNN CPU path."""
    from torch.profiler import ProfilerActivity, profile

    run(models, rgbs[:batch], style, batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(models, rgbs[:batch], style, batch)
    counts = {e.key: e.count for e in prof.key_averages()}

    def total(match) -> float:
        return sum(n for key, n in counts.items() if match(key)) / batch

    return {"ops": total(lambda k: k.startswith("aten::")), "conv2d": total(lambda k: k == "aten::conv2d"),
            "slow_conv": total(lambda k: k == "aten::_slow_conv2d_forward"),
            "eigh": total(lambda k: k == "aten::_linalg_eigh")}


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda t: [_size(s) for s in t.split(",")], default="64x48,256x192,512x384")
    p.add_argument("--batches", default="1,auto", help="batch sizes to compare: numbers or auto (default 1,auto)")
    p.add_argument("--images", type=int, default=None, help="images per round (default: 2 of the largest batch)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as an actor of one CPU)")
    p.add_argument("--seconds", type=float, default=6.0, help="time per content size, all rounds (default 6)")
    p.add_argument("--profile", default="64x48:1,32", help="SIZE:B1,B2: count ops per image at these batches")
    p.add_argument("--breakdown", default="", help="SIZE:B1,B2: ms per image in each part of the cascade at these batches")
    p.add_argument("--baseline", default="", metavar="REV",
                   help="also time batch 1 of the cascade as it was at git revision REV, in turn with this tree's")
    p.add_argument("--shared", type=Path, default=SHARED)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    models = load_model_set(args.shared / "models" / "cd16x")
    models.to("cpu", channels_last=True)  # as `Stylist` runs the CPU
    device = torch.device("cpu")
    style = style_of(models, args.shared, device)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"# dataset_rate on {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    base = f"{args.baseline}'s batch 1"
    print("| content | batch | images/s (wall) | images per CPU-s | CPU ms per image | x batch 1 (CPU) |"
          + (f" x {base} (CPU) |" if args.baseline else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.baseline else ""))
    for w, h in args.sizes:
        batches = sorted({auto_batch(models, h, w) if b == "auto" else int(b) for b in args.batches.split(",")})
        rgbs = contents(args.shared, w, h, args.images or 2 * max(batches))
        old_rounds = baseline_rounds(args.baseline, rgbs, args.shared, args.threads) if args.baseline else None
        with old_rounds or contextlib.nullcontext() as old_round:
            others = {base: old_round} if old_round else None
            measured = rates(models, rgbs, style, batches, args.seconds, others=others)
        one, old = measured.get(1), measured.get(base)
        for key, (wall, cpu) in measured.items():
            label = key if key == base else f"{key}{' (auto)' if key == auto_batch(models, h, w) else ''}"
            ratios = [f"{cpu / one[1]:.2f}x" if one else "-"] + ([f"{cpu / old[1]:.2f}x"] if old else [])
            print(f"| {w}x{h} | {label} | {wall:.1f} | {cpu:.1f} | {1e3 / cpu:.1f} | " + " | ".join(ratios) + " |",
                  flush=True)
    if args.breakdown:
        size, _, batches = args.breakdown.partition(":")
        w, h = _size(size)
        batches = [int(b) for b in batches.split(",")]
        rgbs = contents(args.shared, w, h, max(batches))
        print(f"\n| {w}x{h}: {'CPU ' if device.type == 'cpu' else ''}ms per image | "
              + " | ".join(f"batch {b}" for b in batches) + " |")
        print("|---|" + "---|" * len(batches))
        parts = {b: breakdown(models, rgbs, style, b, args.seconds / len(batches)) for b in batches}
        for label in parts[batches[0]]:
            print(f"| {label} | " + " | ".join(f"{parts[b][label]:.2f}" for b in batches) + " |")
    if args.profile:
        size, _, batches = args.profile.partition(":")
        w, h = _size(size)
        batches = [int(b) for b in batches.split(",")]
        rgbs = contents(args.shared, w, h, max(batches))
        print(f"\n| {w}x{h}: per image | " + " | ".join(f"batch {b}" for b in batches) + " |")
        print("|---|" + "---|" * len(batches))
        counted = {b: op_counts(models, rgbs, style, b) for b in batches}
        for key, label in (("ops", "torch ops"), ("conv2d", "conv2d calls"),
                           ("slow_conv", "_slow_conv2d_forward"), ("eigh", "eigendecompositions")):
            print(f"| {label} | " + " | ".join(f"{counted[b][key]:.1f}" for b in batches) + " |")
        if len(batches) > 1:
            first, last = batches[0], batches[-1]
            print(f"\nops per image at batch {last}: {counted[last]['ops'] / counted[first]['ops']:.3f} of batch {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
