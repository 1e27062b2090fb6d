"""Whole-image stylization speed and memory: content of 0.25, 1 and 4 MP with a style of the same size.

Each configuration runs in a fresh subprocess so its peak RSS is its own. The baseline is the same
pipeline written the straightforward way (`naive_stylize`: NCHW, padded copies, separate ReLU,
whole-feature float64 statistics), measured in the same run.

    python benchmarks/stylize_speed.py [--sizes 0.25,1,4] [--models DIR] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def naive_stylize(models, content, style, alpha=1.0):
    """The straightforward pipeline, for the baseline: NCHW, a padded copy before every conv, a
    separate ReLU, whole-feature float64 statistics. Same weights and math as cdcore."""
    import torch
    import torch.nn.functional as F

    from cdcore.models.nets import LAYERS

    def run(module, x, plan):
        for name in plan:
            if name == "pool":
                x = F.max_pool2d(x, 2, 2) if module.__class__.__name__ == "Encoder" else F.interpolate(x, scale_factor=2)
            else:
                x = F.relu(getattr(module, name)(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        return x

    def stats(f):
        f = f[0].flatten(1).double()
        m = f.mean(1, keepdim=True)
        e, v = torch.linalg.eigh((f - m) @ (f - m).T / (f.shape[1] - 1))
        return f, m, e.clamp_min(1e-5), v

    x = content
    with torch.no_grad():
        for k in (5, 4, 3, 2, 1):
            enc, dec = models.encoder(k), models.decoder(k)
            plan = LAYERS[: LAYERS.index(f"conv{k}1") + 1]
            fc = run(enc, enc.conv0(x), plan)
            fs = run(enc, enc.conv0(style), plan)
            c, mc, ec, vc = stats(fc)
            _, ms, es, vs = stats(fs)
            white = vc @ torch.diag(ec ** -0.5) @ vc.T @ (c - mc)
            out = vs @ torch.diag(es ** 0.5) @ vs.T @ white + ms
            out = (alpha * out + (1 - alpha) * c).float().reshape(fc.shape)
            x = run(dec, out, tuple(reversed(plan)))
    return x


def run_one(megapixels: float, layout: str, models: str, repeat: int) -> dict:
    """In a child process: stylize an upscaled photo with an upscaled painting of the same size."""
    import numpy as np
    import torch
    from PIL import Image

    from cdcore.models.modelset import load_model_set
    from cdcore.transfer.stylize import style_statistics, stylize, to_tensor, to_uint8

    side = int(round((megapixels * 1e6) ** 0.5 / 16)) * 16  # the naive baseline needs multiples of 16

    def load(path):
        return to_tensor(np.array(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)))

    content = load(SHARED / "images/content/bridge_512.jpg")
    style = load(SHARED / "images/style/style_b_512.jpg")
    m = load_model_set(models)
    if layout == "cdcore":
        from cdcore import memory

        memory.reuse_freed_memory()  # as the `cdcore` command and the job's actors do
        m.to("cpu", channels_last=True)
        content = content.contiguous(memory_format=torch.channels_last)
        style = style.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        if layout == "cdcore":
            out = to_uint8(stylize(m, content, style_statistics(m, style), 1.0))
        else:
            out = to_uint8(naive_stylize(m, content, style))
        best = min(best, time.perf_counter() - t)
    assert out.shape == (side, side, 3)
    # VmHWM rather than ru_maxrss, which Linux carries over from the parent across exec.
    peak_gb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1e6
    return {"seconds": best, "side": side, "peak_rss_gb": peak_gb}


def measure(megapixels: float, layout: str, models: str, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([megapixels, layout, models, repeat])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.25,1,4")
    parser.add_argument("--models", default=str(SHARED / "models/cd16x"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--layouts", default="naive,cdcore", help="naive: the baseline; cdcore: this library")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*json.loads(args.child))))
        return

    import torch
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| content + style | pipeline | seconds | MP/s (content) | peak RSS GB | speed-up vs naive |")
    print("|---|---|---|---|---|---|")
    for mp in (float(s) for s in args.sizes.split(",")):
        baseline = None
        for layout in args.layouts.split(","):
            r = measure(mp, layout, args.models, args.repeat)
            baseline = baseline or r["seconds"]
            print(f"| {r['side']}^2 ({mp:g} MP) x2 | {layout} | {r['seconds']:.2f} | {mp / r['seconds']:.2f} "
                  f"| {r['peak_rss_gb']:.2f} | {baseline / r['seconds']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
