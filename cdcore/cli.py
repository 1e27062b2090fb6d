"""The `cdcore` command: stylize an image, fetch and inspect model sets.

Bad input (missing or corrupt files, too many pixels, a broken model directory) ends with exit
status 2 and one line on stderr that names the input and the reason; no output file is written.

Only `options` is imported up front: torch and boto3 take seconds to import, and `--help` needs
neither.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from . import options
from .statusline import StatusLine

EXIT_BAD_INPUT = 2
OUTPUT_EXTENSIONS = ".jpg, .jpeg, .png, .tif, .tiff, .webp, .dzi"  # images' FORMATS, STREAMED_FORMATS; tested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stylize", help="stylize CONTENT with the style of STYLE")
    s.add_argument("content", help="content image (path, file:// or s3:// URI)")
    s.add_argument("style", help="style image (path, file:// or s3:// URI)")
    s.add_argument("-o", "--output", required=True, help=f"output image; format from the extension ({OUTPUT_EXTENSIONS})")
    s.add_argument("--models", default=None, help="model directory or URI "
                   "(default: $CDCORE_MODELS, else where `cdcore models fetch` writes)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    options.add_image_options(s)

    m = sub.add_parser("models", help="fetch or inspect model sets")
    msub = m.add_subparsers(dest="models_command", required=True)
    f = msub.add_parser("fetch", help="download the published 16x models and verify their sha256")
    f.add_argument("--dest", default=None, help="target directory (default: $CDCORE_MODELS, else "
                   "~/.cache/cdcore/models/cd16x)")
    f.add_argument("--source", default=None, help="a local directory or file:// URL standing in for upstream")
    i = msub.add_parser("info", help="print what a model set holds")
    i.add_argument("dir", nargs="?", default=None, help="model directory or URI")
    return parser


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_printer(line: StatusLine):
    """A progress callback for `line`: on a terminal one line kept up to date, in a log a line
    every 2 s at most (so a run shorter than that prints none)."""

    def report(progress) -> None:
        line.show(f"cdcore: {progress}")

    return report


def cmd_stylize(args: argparse.Namespace) -> None:
    from .pipeline import Stylist

    started = time.monotonic()
    recipe = options.recipe_from_args(args)
    stylist = Stylist(args.models, args.device, stages=recipe.stages, tile_size=args.tile_size,
                      max_pixels=args.max_pixels, style_cache=1, precision=args.precision)
    line = StatusLine(every_log=2.0)
    try:
        done = stylist.stylize_file(args.content, args.style, args.output, recipe, _progress_printer(line))
    finally:
        line.end()
    _say(f"cdcore: wrote {args.output} ({done.width}x{done.height}, {recipe.method}, "
         f"{stylist.models.model_id}) in {time.monotonic() - started:.1f} s")


def cmd_models(args: argparse.Namespace) -> None:
    from .models.modelfiles import describe_model_set, fetch_published

    if args.models_command == "fetch":
        dest = fetch_published(args.dest, args.source, log=lambda msg: _say(f"cdcore: {msg}"))
        _say(f"cdcore: models ready in {dest}")
    else:
        print(describe_model_set(args.dir))


def _exit_on_sigterm(signum, frame):
    # kill, timeout and batch schedulers stop a run with SIGTERM, whose default ends the process
    # on the spot: a gigapixel run would leave tens of GB of scratch files behind. Leaving by an
    # exception unwinds the `finally` blocks that remove them (no partial output is ever written).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import memory

    memory.reuse_freed_memory()
    on_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main_thread else None
    try:
        if args.command == "stylize":
            cmd_stylize(args)
        else:
            cmd_models(args)
    except ValueError as e:  # StylizeError, ModelError, ImageError: each names the input at fault
        _say(f"cdcore: error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("cdcore: interrupted")
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
