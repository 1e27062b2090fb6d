"""The `cdcore` command: stylize an image, fetch and inspect model sets.

Bad input (missing or corrupt files, too many pixels, a broken model directory) ends with exit
status 2 and one line on stderr that names the input and the reason; no output file is written.
"""
from __future__ import annotations

import argparse
import sys
import time

from . import images, memory, storage
from .modelset import ModelError, default_models_dir, fetch_published, load_model_set

EXIT_BAD_INPUT = 2


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stylize", help="stylize CONTENT with the style of STYLE")
    s.add_argument("content", help="content image (path, file:// or s3:// URI)")
    s.add_argument("style", help="style image (path, file:// or s3:// URI)")
    s.add_argument("-o", "--output", required=True, help="output image; format from the extension "
                   f"({', '.join(sorted(images.FORMATS))})")
    s.add_argument("--method", choices=("wct", "adain", "gatys"), default="wct")
    s.add_argument("--alpha", type=float, default=1.0, help="style strength in [0, 1] (wct, adain)")
    s.add_argument("--levels", help="stages to run, coarse to fine (default: 5,4,3,2,1 for wct, 4 for adain)")
    s.add_argument("--models", default=None, help="model directory or URI "
                   "(default: $CDCORE_MODELS, else where `cdcore models fetch` writes)")
    s.add_argument("--content-size", type=_non_negative_int, default=0,
                   help="resize the content so its longer side is N px (0: keep)")
    s.add_argument("--style-size", type=_non_negative_int, default=0,
                   help="resize the style so its longer side is N px (0: keep)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--tile-size", type=_non_negative_int, default=None,
                   help="the exact tiled engine's windows hold at most N x N pixels; 0: whole image at "
                        "once; default: whole image when it fits comfortably in memory, else tiles sized "
                        "from it")
    s.add_argument("--stroke-scale", type=float, default=1.0,
                   help="run the coarse stages (5,4,3) on the content downscaled by S, so strokes stay "
                        "visible on very large images; the fine stages (2,1) run at full size (default 1: off)")
    s.add_argument("--max-pixels", type=_non_negative_int, default=images.DEFAULT_MAX_PIXELS,
                   help="refuse inputs with more pixels than this (default 300 MP)")
    s.add_argument("--iterations", type=_non_negative_int, default=200, help="L-BFGS iterations (gatys)")

    m = sub.add_parser("models", help="fetch or inspect model sets")
    msub = m.add_subparsers(dest="models_command", required=True)
    f = msub.add_parser("fetch", help="download the published 16x models and verify their sha256")
    f.add_argument("--dest", default=None, help=f"target directory (default {default_models_dir()})")
    f.add_argument("--source", default=None, help="a local directory or file:// URL standing in for upstream")
    i = msub.add_parser("info", help="print what a model set holds")
    i.add_argument("dir", nargs="?", default=None, help="model directory or URI")
    return parser


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_printer(every_s: float = 2.0):
    """A tiling progress callback printing one line at most every `every_s` seconds (so a run
    shorter than that prints none)."""
    last = [time.monotonic()]

    def report(p) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            _say(f"cdcore: {p}")

    return report


def cmd_stylize(args: argparse.Namespace) -> None:
    from . import tiling
    from .gatys import gatys, progress_printer
    from .stylize import parse_levels, pick_device, to_tensor, to_uint8

    started = time.monotonic()
    images.output_format(args.output)  # fail on a bad extension before any work
    method = args.method
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1] (got {args.alpha})")
    if args.stroke_scale < 1.0:
        raise ValueError(f"--stroke-scale must be >= 1 (got {args.stroke_scale})")
    levels = (5,) if method == "gatys" else parse_levels(args.levels, method)
    device = pick_device(args.device)
    content = images.resize_to(images.read_image(args.content, args.max_pixels), args.content_size)
    style = images.resize_to(images.read_image(args.style, args.max_pixels), args.style_size)
    models = load_model_set(args.models, stages=levels, device=device)
    if device.type == "cpu":
        models.to(device, channels_last=True)

    w, h = content.size
    canvas = tiling.Canvas(h, w, content.alpha)
    progress = _progress_printer()
    if method == "gatys":
        result, _ = gatys(models, to_tensor(content.rgb, device), to_tensor(style.rgb, device),
                          iterations=args.iterations, progress=progress_printer(args.iterations))
        canvas.rgb[...] = to_uint8(result)
    else:
        stats = tiling.style_statistics_tiled(models, style.rgb, method, levels, args.tile_size, progress)
        if args.stroke_scale > 1.0:
            tiling.stylize_stroke_scaled(models, content.rgb, stats, args.alpha, levels, args.stroke_scale,
                                         args.tile_size, out=canvas.rgb, progress=progress)
        else:
            tiling.stylize_tiled(models, content.rgb, stats, args.alpha, levels, args.tile_size,
                                 out=canvas.rgb, progress=progress)
    canvas.save(args.output)
    _say(f"cdcore: wrote {args.output} ({w}x{h}, {method}, {models.model_id}) "
         f"in {time.monotonic() - started:.1f} s")


def cmd_models(args: argparse.Namespace) -> None:
    if args.models_command == "fetch":
        dest = fetch_published(args.dest, args.source, log=lambda msg: _say(f"cdcore: {msg}"))
        _say(f"cdcore: models ready in {dest}")
    else:
        print(load_model_set(args.dir).describe())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    memory.reuse_freed_memory()
    try:
        if args.command == "stylize":
            cmd_stylize(args)
        else:
            cmd_models(args)
    except (images.ImageError, ModelError, storage.StorageError, ValueError) as e:
        _say(f"cdcore: error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("cdcore: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
