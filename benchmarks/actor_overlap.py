"""Where an actor's time goes, and what overlapping I/O with the device buys (issue 11).

    python benchmarks/actor_overlap.py            # the full run recorded in RESULTS.md
    python benchmarks/actor_overlap.py --quick    # small sizes, a minute

Prints three tables:
1. the per-row breakdown (read, decode, style, stylize, encode, write) of `Stylist.stylize_file`
   for 1, 4 and 16 MP rows, JPEG in and out and PNG in and out;
2. rows/s of the job's actor class with overlap off (--io-threads 0) and on, on rows where I/O is
   a large share: 4 MP JPEG in, PNG out, --levels 1, one compute thread per actor;
3. the device-busy share projected for a GPU from table 1's CPU I/O times and the cascade's FLOP
   count (or a measured GPU stylize time, --gpu-seconds), with and without overlap.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdcore.models.architecture import CD16X, stage_layers  # noqa: E402
from cdcore.options import Recipe  # noqa: E402
from cdcore.pipeline import Stylist  # noqa: E402
from cdcore.timings import PHASES  # noqa: E402
from jobs.stylize.manifest import Row  # noqa: E402
from jobs.stylize.worker import Stylizer, WorkerConfig  # noqa: E402

SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models" / "cd16x"
CONTENT = SHARED / "images" / "content" / "bridge_512.jpg"
STYLE = SHARED / "images" / "style" / "style_b_512.jpg"
# What one H100 stylized 4 MP in (fp32, whole image; benchmarks/gpu_check.py,
# benchmarks/history/sessions-1-9.md, issue 11).
H100_SECONDS_4MP = 0.115


def cascade_flops_per_pixel(levels=(5, 4, 3, 2, 1), widths=CD16X) -> float:
    """FLOPs per content pixel of the cascade: every 3x3 conv of each stage's encoder, and its
    mirror in the decoder, at the resolution it runs at (pooling quarters the pixels)."""
    total = 0.0
    for k in levels:
        convs, scale, c_in = widths.for_stage(k), 1.0, 3
        for name in stage_layers(k):
            if name == "pool":
                scale /= 4
                continue
            total += 2 * 2 * 9 * c_in * convs[name] * scale  # multiply-adds, encoder and decoder
            c_in = convs[name]
    return total


def make_image(path: Path, megapixels: float) -> None:
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    photo = Image.open(CONTENT).convert("RGB").resize((width, int(round(width / 1.5))), Image.Resampling.LANCZOS)
    photo.save(path, quality=95) if path.suffix == ".jpg" else photo.save(path, compress_level=3)


def breakdown(tmp: Path, sizes: list[float]) -> list[dict]:
    stylist = Stylist(str(MODELS), "cpu")
    stylist.stylize_file(str(CONTENT), str(STYLE), str(tmp / "warm.png"))  # models warm, style cached
    rows = []
    for mp in sizes:
        for ext in (".jpg", ".png"):
            source = tmp / f"in-{mp:g}{ext}"
            make_image(source, mp)
            done = stylist.stylize_file(str(source), str(STYLE), str(tmp / f"out-{mp:g}{ext}"))
            rows.append({"mp": done.width * done.height / 1e6, "format": ext, **done.timings.as_dict()})
            print(table_row(rows[-1]), flush=True)
    return rows


def table_row(r: dict) -> str:
    io = r["read_s"] + r["decode_s"] + r["encode_s"] + r["write_s"]
    total = io + r["style_s"] + r["stylize_s"]
    return (f"| {r['mp']:.1f} | {r['format']} | " + " | ".join(f"{r[p]:.3f}" for p in PHASES)
            + f" | {io / total:.0%} |")


def overlap(tmp: Path, rows: int, megapixels: float, repeats: int) -> list[tuple[int, float]]:
    """Rows/s of the actor class, overlap off and on, alternated `repeats` times (the best of each
    counts: this machine is shared, and the best is the least disturbed)."""
    torch.set_num_threads(1)
    source = tmp / "row.jpg"
    make_image(source, megapixels)
    recipe = Recipe(levels=(1,))
    best = {}
    actors = {t: Stylizer("bench", WorkerConfig(str(MODELS), (1,), overwrite=True, io_threads=t)) for t in (0, 2)}
    for _ in range(repeats):
        for threads, actor in actors.items():
            batch = [Row(i, str(source), str(STYLE), str(tmp / f"o{threads}-{i}.png"), "wct", recipe)
                     for i in range(rows)]
            actor.process_batch(batch[:1], 1e9)  # warm
            started = time.perf_counter()
            results = actor.process_batch(batch, 1e9)["results"]
            rate = rows / (time.perf_counter() - started)
            assert all(r["status"] == "ok" for r in results), results
            best[threads] = max(best.get(threads, 0.0), rate)
            print(f"  io threads {threads}: {rate:.3f} rows/s", flush=True)
    return sorted(best.items())


def projection(rows: list[dict], gpu_seconds: float, threads: int) -> list[str]:
    """Device-busy share on a GPU: the device stylizes in `gpu_seconds` per 4 MP; the host reads,
    decodes, encodes and writes as measured here. One by one the device waits for all of the
    I/O; overlapped, the I/O of one row runs on `threads` threads while the device works, so the
    device waits only when I/O per row / threads exceeds the device's time per row."""
    lines = []
    for r in (r for r in rows if abs(r["mp"] - 4) < 0.5):
        device = gpu_seconds * r["mp"] / 4
        io = r["read_s"] + r["decode_s"] + r["encode_s"] + r["write_s"]
        serial = device / (device + io)
        overlapped = min(1.0, device / max(io / threads, 1e-9))
        lines.append(f"| {r['mp']:.1f} | {r['format']} | {device:.3f} | {io:.3f} | {serial:.0%} | "
                     f"{overlapped:.0%} ({threads} threads) |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--overlap-only", action="store_true", help="table 2 alone (it wants an otherwise idle machine)")
    p.add_argument("--gpu-seconds", type=float, default=H100_SECONDS_4MP,
                   help=f"the device's seconds per 4 MP (default {H100_SECONDS_4MP}: an H100, measured)")
    args = p.parse_args(argv)
    sizes, rows, repeats = ([0.25, 1], 4, 1) if args.quick else ([1, 4, 16], 8, 3)
    cpu = platform.processor() or platform.machine()
    print(f"# actor_overlap on {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    with tempfile.TemporaryDirectory() as tmp:
        print("| MP | format | " + " | ".join(PHASES) + " | I/O share |\n|---|---|" + "---|" * (len(PHASES) + 1))
        measured = [] if args.overlap_only else breakdown(Path(tmp), sizes)
        overlap_mp = 1 if args.quick else 4
        print(f"\nrows/s, {rows} rows of {overlap_mp} MP JPEG in, PNG out, --levels 1, 1 compute thread:")
        rates = overlap(Path(tmp), rows, overlap_mp, repeats)
    off, on = rates[0][1], rates[1][1]
    print(f"| io threads | rows/s |\n|---|---|\n| 0 | {off:.3f} |\n| 2 | {on:.3f} |\nspeed-up {on / off:.2f}x "
          f"(goal >= 1.4x)")

    flops = cascade_flops_per_pixel()
    print(f"\ncascade: {flops / 1e3:.1f} kFLOP per content pixel = {flops * 1e6 / 1e9:.0f} GFLOP per MP; "
          f"a GPU stylizing 4 MP in {args.gpu_seconds:.3f} s runs at {4 * flops * 1e6 / args.gpu_seconds / 1e12:.1f} "
          "TFLOP/s effective")
    print("| MP | format | device s/row | host I/O s/row | busy one by one | busy overlapped |\n|---|---|---|---|---|---|")
    for threads in (2, 8):
        print("\n".join(projection(measured, args.gpu_seconds, threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
