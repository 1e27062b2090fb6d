"""What a user can ask of a stylization, checked in one place.

`Recipe` holds how one content is stylized (method, alpha, levels, stroke scale, sizes, and
gatys's iterations, style weight and start image). Its fields are checked by the functions below, and the same functions parse the
command-line options and the job's manifest cells, so `cdcore stylize`, `jobs.stylize` and a
manifest row accept and refuse exactly the same values. `add_image_options` defines the options
once for both commands.

No torch, numpy or boto3 here: the commands import this to answer `--help` at once.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

METHODS = ("wct", "adain", "gatys")
# AdaIN runs the whole cascade by default: at relu4_1 alone, with decoders trained for
# reconstruction, it barely moves the photo towards the style
# (benchmarks/history/sessions-1-9.md, issue 14).
DEFAULT_LEVELS = {"wct": (5, 4, 3, 2, 1), "adain": (5, 4, 3, 2, 1)}
GATYS_LEVELS = (5,)  # gatys optimizes pixels against encoder 5 as its loss network
# Gatys's defaults, chosen with benchmarks/quality.py; the weight multiplies the relative style
# term against the relative content term (see cdcore.transfer.gatys).
DEFAULT_ITERATIONS = 200
DEFAULT_STYLE_WEIGHT = 100.0
INITS = ("content", "noise")  # what gatys starts from
# Stages whose strokes a stroke scale enlarges: their receptive fields (about 40 to 300 image
# pixels) set the size of the style's patterns; stages 2 and 1 refine edges and texture.
COARSE_STAGES = (5, 4, 3)
# Images this large are streamed (cdcore.streaming) in memory that does not grow with them, so the
# limit is no longer memory but scratch disk (checked before a run) and time: 2 GP covers the
# gigapixel panoramas people make. Decompression bombs are refused apart from it
# (images.check_pixels).
DEFAULT_MAX_PIXELS = 2_000_000_000
# Network precision (cdcore.models.precision): fp32 reproduces the reference; fp16 runs the convolutions
# under autocast (statistics and maps stay float64). bf16 is not offered: its 8-bit mantissa put
# results 26.6 to 29.9 dB from fp32 on an H100 (4 to 42 MP), under the 30 dB bar
# (benchmarks/history/sessions-1-9.md, issue 11); fp16 stayed at 38.5 to 42.9 dB.
PRECISIONS = ("fp32", "fp16")
NOT_OFFERED = {"bf16": "bf16 is not offered: it stylizes under 30 dB PSNR from fp32 (26.6 dB at 42 MP); use fp16"}


# ------------------------------------------------------------------------------- checks

def method(value) -> str:
    if value not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {value!r})")
    return value


def alpha(value) -> float:
    """Style strength in [0, 1], from a number or text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1] (got {value!r})") from None
    if not 0.0 <= number <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must be in [0, 1] (got {number:g})")
    return number


def levels(value) -> tuple[int, ...] | None:
    """Stages to run, coarse to fine: '5,4,3' or (5, 4, 3) -> (5, 4, 3); None or '' -> None
    (the method's default)."""
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, (int, float)):  # a one-stage cell that a table reader took for a number
        value = str(value)
    try:
        stages = tuple(int(t) for t in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise ValueError(f"levels must be comma-separated stages such as 5,4,3,2,1 (got {value!r})") from None
    if not stages or any(k not in range(1, 6) for k in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"levels must be distinct stages 1..5 (got {value!r})")
    return stages


def _whole(value, name: str, minimum: int) -> int:
    try:
        number = float(value)
        whole = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a whole number >= {minimum} (got {value!r})") from None
    if whole != number or whole < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum} (got {value!r})")
    return whole


def side(value, name: str = "size") -> int:
    """A shorter-side length in pixels; 0 keeps the image as it is."""
    return _whole(value, name, 0)


def crop(value) -> tuple[int, int] | None:
    """A centre crop after the resize: N (N x N) or WxH pixels, as text or numbers; None, '' or 0:
    no crop."""
    if value is None or value == "" or value == 0 or value == "0":
        return None
    if isinstance(value, str):
        parts = value.lower().split("x")
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    try:
        sides = [_whole(p, "crop", 1) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise ValueError(f"crop must be N or WxH pixels, each at least 1 (got {value!r})")
    return (sides[0], sides[-1])


def stroke_scale(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"stroke scale must be a number >= 1 (got {value!r})") from None
    if not number >= 1.0:  # also refuses NaN
        raise ValueError(f"stroke scale must be a number >= 1 (got {value!r})")
    return number


def split_levels(stages: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(coarse, fine) stages for a stroke scale, which needs both kinds, the coarse ones first."""
    coarse = tuple(k for k in stages if k in COARSE_STAGES)
    fine = stages[len(coarse):]
    if not coarse or not fine or stages[: len(coarse)] != coarse:
        raise ValueError(f"a stroke scale needs coarse levels (of {', '.join(map(str, COARSE_STAGES))}) followed "
                         f"by fine ones (2, 1), both present (got levels {','.join(map(str, stages))})")
    return coarse, fine


def iterations(value) -> int:
    return _whole(value, "iterations", 1)


def style_weight(value) -> float:
    """Gatys's weight of the style term against the content term: a finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"style weight must be a number > 0 (got {value!r})") from None
    if not 0.0 < number < float("inf"):  # also refuses NaN
        raise ValueError(f"style weight must be a number > 0 (got {value!r})")
    return number


def init(value) -> str:
    if value not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)} (got {value!r})")
    return value


def tile_size(value) -> int | None:
    """None (choose from free memory), 0 (whole image) or a window side in pixels."""
    return None if value is None else _whole(value, "tile size", 0)


def max_pixels(value) -> int:
    return _whole(value, "max pixels", 1)


def precision(value) -> str:
    if value in NOT_OFFERED:
        raise ValueError(NOT_OFFERED[value])
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {value!r})")
    return value


# ------------------------------------------------------------------------------- recipe

@dataclass(frozen=True)
class Recipe:
    """How one content is stylized. Every field is checked (and normalised) on creation, so a
    Recipe that exists is one that can run; a bad value raises ValueError naming it."""

    method: str = "wct"
    alpha: float = 1.0  # wct, adain: 1 is the style's statistics, 0 the content's
    levels: tuple[int, ...] | None = None  # None: DEFAULT_LEVELS; gatys always uses GATYS_LEVELS
    stroke_scale: float = 1.0  # > 1: the coarse stages run on the content downscaled by it
    content_size: int = 0  # resize the content so its shorter side is this; 0: as it is
    style_size: int = 0  # the same for the style
    iterations: int = DEFAULT_ITERATIONS  # gatys: L-BFGS iterations
    style_weight: float = DEFAULT_STYLE_WEIGHT  # gatys: style term against content term
    init: str = "content"  # gatys: start from the content or from noise
    crop: tuple[int, int] | None = None  # (width, height) of a centre crop after the resize; None: none

    def __post_init__(self):
        checked = {"method": method(self.method), "alpha": alpha(self.alpha), "levels": levels(self.levels),
                   "stroke_scale": stroke_scale(self.stroke_scale),
                   "content_size": side(self.content_size, "content size"),
                   "style_size": side(self.style_size, "style size"),
                   "iterations": iterations(self.iterations), "style_weight": style_weight(self.style_weight),
                   "init": init(self.init), "crop": crop(self.crop)}
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.stroke_scale > 1.0 and self.method != "gatys":  # gatys ignores it, as it does alpha
            split_levels(self.stages)

    @property
    def stages(self) -> tuple[int, ...]:
        """The stages this recipe runs, in order."""
        if self.method == "gatys":
            return GATYS_LEVELS
        return self.levels or DEFAULT_LEVELS[self.method]

    @property
    def style_key(self) -> tuple:
        """What a prepared style depends on: recipes that share it share one preparation (gatys's
        weight, start and iterations act on the content's optimization, not on the style)."""
        return (self.method, self.stages, self.style_size)

    def replace(self, **changes) -> "Recipe":
        """A copy with some fields changed (and checked); None values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# Recipe fields that a manifest row may set for itself (style_size and gatys's settings are per
# job: a style's preparation is shared across rows, and a job runs one optimization setting).
ROW_FIELDS = ("method", "alpha", "levels", "stroke_scale", "content_size")


# ------------------------------------------------------------------------------- options

def _arg(check):
    """An argparse type from a check: its ValueError becomes argparse's one-line usage error."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The options of a stylization, the same for `cdcore stylize` and `jobs.stylize`."""
    add = parser.add_argument
    add("--method", choices=METHODS, default="wct",
        help="wct: the multi-level cascade; adain: mean/std matching; gatys: pixel optimization (default wct)")
    add("--alpha", type=_arg(alpha), default=1.0, help="style strength in [0, 1] for wct and adain (default 1)")
    add("--levels", type=_arg(levels), default=None,
        help="stages to run, coarse to fine (default 5,4,3,2,1 for wct and adain; gatys uses 5)")
    add("--content-size", type=_arg(side), default=0,
        help="resize the content so its shorter side is N px; the output has that size (0: as it is, default)")
    add("--crop", type=_arg(crop), default=None, metavar="N|WxH",
        help="centre-crop the content to N x N or W x H px after --content-size, as dataset pipelines do "
             "(resize 256, crop 224); the output has that size (default: no crop)")
    add("--style-size", type=_arg(side), default=0,
        help="resize the style so its shorter side is N px (0: as it is, default)")
    add("--stroke-scale", type=_arg(stroke_scale), default=1.0,
        help="run the coarse stages (5,4,3) on the content downscaled by S, so strokes stay visible on very "
             "large images; the fine stages (2,1) run at full size (default 1: off)")
    add("--iterations", type=_arg(iterations), default=DEFAULT_ITERATIONS,
        help=f"L-BFGS iterations for gatys (default {DEFAULT_ITERATIONS})")
    add("--style-weight", type=_arg(style_weight), default=DEFAULT_STYLE_WEIGHT,
        help=f"gatys: weight of the style term against the content term; higher is more stylized "
             f"(default {DEFAULT_STYLE_WEIGHT:g})")
    add("--init", type=_arg(init), choices=INITS, default="content",
        help="gatys: start from the content photo (default) or from noise (more of the style, less of the photo)")
    add("--tile-size", type=_arg(tile_size), default=None,
        help="the exact tiled engine's windows hold at most N x N pixels; 0: the whole image at once "
             "(default: the whole image when it fits a quarter of the free device memory, else tiles sized from it)")
    add("--max-pixels", type=_arg(max_pixels), default=DEFAULT_MAX_PIXELS,
        help=f"refuse inputs with more pixels than this (default {DEFAULT_MAX_PIXELS // 1_000_000} MP)")
    add("--precision", type=_arg(precision), default="fp32",
        help="network precision: fp32 reproduces the reference (default); fp16 runs the convolutions on a GPU's "
             "tensor cores (about 40 dB from fp32, 1.5x faster on an H100); statistics stay float64")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return Recipe(args.method, args.alpha, args.levels, args.stroke_scale, args.content_size,
                  args.style_size, args.iterations, args.style_weight, args.init, args.crop)
