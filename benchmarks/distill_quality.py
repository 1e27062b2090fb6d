"""Does collaborative distillation beat its ablations? The paper's claim, at laptop scale.

A half-width student of the published 16x stage-k model (the 16x set is the teacher) is trained
three ways with the same steps, data, seed and learning rate, through `jobs.distill` on Ray:

  (a) collaborative  encoder with the full loss (10 embed + pixel + perceptual through the
                     teacher's decoder), then the student's decoder
  (b) no-collab      encoder with the embedding loss alone, then the student's decoder
  (c) plain          the pruned encoder and decoder trained together on reconstruction, for as
                     many steps as (a) takes in total

and judged on held-out images (../shared/images/content and style, never trained on):
reconstruction PSNR of decoder(encoder(x)) against x, and the PSNR of a single-level WCT at stage
k (every content with every style) against the teacher's WCT output.

    python benchmarks/distill_quality.py [--stages 2,3] [--steps 300] [--workers 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from cdcore.io import images
from cdcore.models.modelset import ModelSet, load_model_set
from cdcore.transfer.stylize import style_statistics, stylize, to_tensor
from cdcore.training import pruning, trainset
from cdcore.training.losses import LossWeights
from jobs.distill import driver as job
from jobs.distill.config import DistillConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TEACHER = SHARED / "models" / "cd16x"
HELD_OUT_SIDE = 256  # held-out images are evaluated whole, at this shorter side


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images (1, 3, H, W), both clamped to [0, 1] as a saved image would be."""
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def held_out(folder: str) -> list[torch.Tensor]:
    """The folder's images (1, 3, H, W), scaled and cropped to multiples of 16 so that every
    stage's decoder returns the input size."""
    pictures = []
    for uri in trainset.list_images(str(SHARED / "images" / folder)):
        x = to_tensor(trainset.resize_shorter_side(images.read_image(uri).rgb, HELD_OUT_SIDE))
        pictures.append(x[..., : x.shape[-2] // 16 * 16, : x.shape[-1] // 16 * 16])
    return pictures


@torch.inference_mode()
def reconstruction_psnr(models: ModelSet, k: int, pictures: list[torch.Tensor]) -> float:
    """Mean PSNR of decoder k(encoder k(x)) against x."""
    return float(np.mean([psnr(models.decoder(k)(models.encoder(k)(x)), x) for x in pictures]))


@torch.inference_mode()
def wct_psnr(models: ModelSet, teacher: ModelSet, k: int, contents: list[torch.Tensor],
             styles: list[torch.Tensor]) -> float:
    """Mean PSNR of the single-level WCT output at stage k against the teacher's, over all pairs."""
    scores = []
    for s in styles:
        ours, theirs = style_statistics(models, s, levels=(k,)), style_statistics(teacher, s, levels=(k,))
        scores += [psnr(stylize(models, c, ours), stylize(teacher, c, theirs)) for c in contents]
    return float(np.mean(scores))


def pruned_start(teacher: ModelSet, k: int) -> ModelSet:
    """The untrained L1-pruned student, as a model set (the common starting point)."""
    enc, dec = pruning.prune_stage(teacher.encoder(k), teacher.decoder(k), 2)
    return ModelSet("pruned", "pruned", {k: enc.eval()}, {k: dec.eval()}, "pruned")


def train_variants(k: int, steps: int, base: DistillConfig, out: Path) -> dict[str, str]:
    """Run the three variants; returns variant -> exported model set folder."""
    no_reconstruction = LossWeights(pixel=0.0, perceptual=0.0)
    exports = {v: str(out / f"stage{k}-{v}") for v in ("collaborative", "no-collab", "plain")}
    common = dict(stage=k)
    job.run(dataclasses.replace(base, **common, mode="both", steps=steps, name=f"s{k}-collaborative",
                                export=exports["collaborative"]))
    # (b) in two runs: the decoder phase needs its pixel and perceptual terms back.
    encoder_only = str(out / f"stage{k}-no-collab-encoder")
    job.run(dataclasses.replace(base, **common, mode="encoder", steps=steps, weights=no_reconstruction,
                                name=f"s{k}-no-collab-encoder", export=encoder_only))
    job.run(dataclasses.replace(base, **common, mode="decoder", steps=steps, student=encoder_only,
                                name=f"s{k}-no-collab-decoder", export=exports["no-collab"]))
    job.run(dataclasses.replace(base, **common, mode="joint", steps=2 * steps, name=f"s{k}-plain",
                                export=exports["plain"]))
    return exports


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="2", help="comma-separated stages of the 16x set to distil")
    p.add_argument("--steps", type=int, default=300, help="steps per phase")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="folder for runs and exports (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="distill-quality-"))
    ray.init(num_cpus=args.workers, include_dashboard=False)
    base = DistillConfig(stage=2, data=str(SHARED / "images" / "train"), storage=str(out / "runs"),
                         teacher=str(TEACHER), width_divisor=2, batch_size=args.batch_size, lr=args.lr, crop=args.crop,
                         workers=args.workers, seed=0, log_every=50, checkpoint_every=10 * args.steps)
    contents, styles = held_out("content"), held_out("style")
    rows = []
    try:
        for k in (int(s) for s in args.stages.split(",")):
            teacher = load_model_set(TEACHER, stages=[k])
            started = time.monotonic()
            exports = train_variants(k, args.steps, base, out)
            minutes = (time.monotonic() - started) / 60
            rows.append((k, "teacher (16x)", reconstruction_psnr(teacher, k, contents + styles), None))
            candidates = {"pruned start": pruned_start(teacher, k),
                          **{v: load_model_set(folder, stages=[k]) for v, folder in exports.items()}}
            for variant, models in candidates.items():
                rows.append((k, variant, reconstruction_psnr(models, k, contents + styles),
                             wct_psnr(models, teacher, k, contents, styles)))
            print(f"stage {k}: three variants trained in {minutes:.1f} min", flush=True)
    finally:
        ray.shutdown()
    print(f"\nheld out: {len(contents)} contents, {len(styles)} styles, shorter side {HELD_OUT_SIDE}; "
          f"{args.steps} steps per phase, batch {args.batch_size}, crop {args.crop}, lr {args.lr}, "
          f"{args.workers} workers")
    print(f"{'stage':>5}  {'variant':<16} {'recon PSNR dB':>13} {'WCT PSNR vs teacher dB':>23}")
    for k, variant, recon, wct in rows:
        print(f"{k:>5}  {variant:<16} {recon:>13.2f} {'-' if wct is None else f'{wct:.2f}':>23}")


if __name__ == "__main__":
    main()
