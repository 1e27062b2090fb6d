"""Stylization quality: how far each method and option moves a photo towards its style, what it
keeps of the photo, and how long it takes; plus a contact sheet to see it.

For every shared content x style pair (../shared/images), every variant below is run through
`cdcore.pipeline.Stylist` (the flow the command, the job and the library use; 8-bit output) and
judged with `cdcore.transfer.quality`:

    style     mean relative Gram error at relu1_1..relu5_1 against the style (lower: more stylized),
              by the models' own encoder 5 and, as a second opinion, by another model set's
    content   relative relu4_1 error against the content photo (0: the photo itself)
    seconds   wall time of one stylize call, style preparation included

The `photo` row is the unstylized content: a default must reach at most half its style distance.
Gatys optimizes the first judge's very terms, which flatters it there; watch the second judge.

    python benchmarks/quality.py [--content-size 0] [--quick] [--sheet docs/quality_contact_sheet.png]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cdcore import memory
from cdcore.transfer import quality
from cdcore.io.images import read_image, resize_to
from cdcore.models.modelset import load_model_set
from cdcore.options import Recipe
from cdcore.pipeline import Stylist
from cdcore.transfer.stylize import to_tensor

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
THUMB = 160  # contact-sheet cell side in pixels: the sheet stays a few hundred KB for the README
SHEET_COLOURS = 96


@dataclass(frozen=True)
class Variant:
    label: str  # names the method and the options that differ from its defaults
    recipe: Recipe
    default: bool = False  # the method's default: judged against the half-the-photo goal
    on_sheet: bool = False  # shown in the contact sheet
    quick: bool = True  # run with --quick too


VARIANTS = (
    Variant("wct (5,4,3,2,1)", Recipe("wct"), default=True, on_sheet=True),
    Variant("wct 5", Recipe("wct", levels=(5,))),
    Variant("wct 4", Recipe("wct", levels=(4,))),
    Variant("wct 3", Recipe("wct", levels=(3,))),
    Variant("adain 4 (old default)", Recipe("adain", levels=(4,)), on_sheet=True),
    Variant("adain (5,4,3,2,1)", Recipe("adain"), default=True, on_sheet=True),
    Variant("adain 4,3,2,1", Recipe("adain", levels=(4, 3, 2, 1))),
    Variant("gatys (w 100, content, 200 it)", Recipe("gatys"), default=True, on_sheet=True),
    Variant("gatys w 10", Recipe("gatys", style_weight=10), quick=False),
    Variant("gatys w 1000", Recipe("gatys", style_weight=1000), quick=False),
    Variant("gatys 50 it", Recipe("gatys", iterations=50), quick=False),
    Variant("gatys init noise", Recipe("gatys", init="noise"), on_sheet=True, quick=False),
)


def pairs() -> list[tuple[Path, Path]]:
    contents = sorted((SHARED / "images" / "content").glob("*.jpg"))
    styles = sorted((SHARED / "images" / "style").glob("*.jpg"))
    return [(c, s) for c in contents for s in styles]


@dataclass
class Score:
    style: float
    style_second: float
    content: float
    seconds: float


def judge(judges, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor, seconds: float) -> Score:
    first, second = judges
    return Score(quality.style_distance(first, out, style),
                 quality.style_distance(second, out, style) if second else float("nan"),
                 quality.content_distance(first, out, content), seconds)


def run_pair(stylist: Stylist, judges, content_path: Path, style_path: Path, variants, content_size: int):
    """Scores per label (the photo first) and the images for the sheet."""
    content = resize_to(read_image(str(content_path)), content_size).rgb
    style = read_image(str(style_path)).rgb
    content_t, style_t = to_tensor(content), to_tensor(style)
    scores = {"photo": judge(judges, content_t, content_t, style_t, 0.0)}
    pictures = {"content": content, "style": style}
    for variant in variants:
        started = time.monotonic()
        out = np.array(stylist.stylize(content, style, variant.recipe))  # a writable copy for torch
        seconds = time.monotonic() - started
        scores[variant.label] = judge(judges, to_tensor(out), content_t, style_t, seconds)
        pictures[variant.label] = out
    return scores, pictures


def print_rows(name: str, scores: dict[str, Score]) -> None:
    photo = scores["photo"].style
    for label, s in scores.items():
        print(f"| {name} | {label} | {s.style:.4f} | {s.style / photo:.2f} | {s.style_second:.4f} "
              f"| {s.content:.3f} | {s.seconds:.1f} |", flush=True)


def print_summary(all_scores: list[dict[str, Score]]) -> None:
    """Per variant, the mean of each score over the pairs, and its style distance as a fraction of
    the photo's: the mean and the worst over the pairs (the goal is a worst of at most 0.5)."""
    print("| variant | style | / photo, mean | / photo, worst | style (2nd judge) | / photo (2nd), mean | content | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in all_scores[0]:
        def mean(field):
            return float(np.mean([getattr(s[label], field) for s in all_scores]))
        ratios = [s[label].style / s["photo"].style for s in all_scores]
        second = np.mean([s[label].style_second / s["photo"].style_second for s in all_scores])
        print(f"| {label} | {mean('style'):.4f} | {np.mean(ratios):.2f} | {max(ratios):.2f} "
              f"| {mean('style_second'):.4f} | {second:.2f} | {mean('content'):.3f} | {mean('seconds'):.1f} |")


def thumbnail(rgb: np.ndarray) -> Image.Image:
    """The picture fitted into a THUMB x THUMB cell, centred on black."""
    image = Image.fromarray(rgb)
    image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (THUMB, THUMB))
    cell.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return cell


def contact_sheet(rows: list[dict[str, np.ndarray]], columns: list[str], path: Path) -> None:
    """Rows: pairs; columns: content, style, each variant; a title line above each column. Saved
    as a palette PNG so the README can carry it (a few hundred KB)."""
    header = 28
    sheet = Image.new("RGB", (THUMB * len(columns), header + THUMB * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(columns):
        draw.text((i * THUMB + 4, 8), name, fill="black")
        for j, pictures in enumerate(rows):
            sheet.paste(thumbnail(pictures[name]), (i * THUMB, header + j * THUMB))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=SHEET_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(SHARED / "models" / "cd16x"))
    parser.add_argument("--second-judge", default=str(SHARED / "models" / "cd16x_base"),
                        help="another model set whose encoder 5 judges the style too ('' for none)")
    parser.add_argument("--content-size", type=int, default=0, help="shorter side of the contents (0: as they are)")
    parser.add_argument("--quick", action="store_true", help="leave out the slow gatys variants")
    parser.add_argument("--sheet", default="docs/quality_contact_sheet.png", help="contact sheet PNG ('' for none)")
    args = parser.parse_args()

    memory.reuse_freed_memory()  # as the `cdcore` command and the job's actors do
    stylist = Stylist(args.models, "auto", tile_size=0)
    judges = (stylist.models, load_model_set(args.second_judge, device=stylist.device) if args.second_judge else None)
    variants = [v for v in VARIANTS if v.quick or not args.quick]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {stylist.device}, "
          f"{time.strftime('%Y-%m-%d')}, content size {args.content_size or 'as is'}")
    print("| pair | variant | style | / photo | style (2nd judge) | content | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    all_scores, sheet_rows = [], []
    for content_path, style_path in pairs():
        scores, pictures = run_pair(stylist, judges, content_path, style_path, variants, args.content_size)
        print_rows(f"{content_path.stem} x {style_path.stem}", scores)
        all_scores.append(scores)
        sheet_rows.append(pictures)
    print()
    print_summary(all_scores)
    if args.sheet:
        columns = ["content", "style"] + [v.label for v in variants if v.on_sheet]
        contact_sheet(sheet_rows, columns, Path(args.sheet))
        print(f"\ncontact sheet: {args.sheet} ({Path(args.sheet).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
