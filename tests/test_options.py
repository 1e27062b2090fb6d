"""cdcore.options: one set of image options for the command, the job and manifest rows."""
import re

import pytest

from cdcore import options
from cdcore.cli import main as cdcore_main
from cdcore.options import Recipe
from jobs.stylize.driver import main as job_main

IMAGE_OPTIONS = ("--method", "--alpha", "--levels", "--content-size", "--style-size", "--tile-size",
                 "--stroke-scale", "--max-pixels", "--iterations", "--style-weight", "--init")


def help_text(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def option_blocks(text: str) -> dict[str, str]:
    """Each option's entry in argparse's help: its first line and the indented lines after it."""
    blocks, current = {}, None
    for line in text.splitlines():
        start = re.match(r"  (--[a-z-]+)", line)
        if start:
            current = start.group(1)
            blocks[current] = line.strip()
        elif current and line.startswith("      "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_the_command_and_the_job_offer_the_same_image_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # one wrapping for both
    command = option_blocks(help_text(cdcore_main, ["stylize", "--help"], capsys))
    job = option_blocks(help_text(job_main, ["--help"], capsys))
    for name in IMAGE_OPTIONS:
        assert name in command and command[name] == job.get(name), name
    # Per-row values for what makes sense per row, named as the options are.
    assert options.ROW_FIELDS == ("method", "alpha", "levels", "stroke_scale", "content_size")
    assert all(f"--{field.replace('_', '-')}" in job for field in options.ROW_FIELDS)
    assert ", ".join(options.ROW_FIELDS) in " ".join(job["--manifest"].split())


def test_output_extensions_in_the_help_are_the_writable_ones():
    from cdcore import cli
    from cdcore.io import images

    assert cli.OUTPUT_EXTENSIONS == ", ".join([*images.FORMATS, *images.STREAMED_FORMATS])


def test_recipe_checks_and_normalises_every_field():
    recipe = Recipe("adain", "0.5", "3,2,1", "2", "96", 0, "10", "1e3", "noise")
    assert (recipe.alpha, recipe.levels, recipe.stroke_scale, recipe.content_size, recipe.iterations,
            recipe.style_weight, recipe.init) == (0.5, (3, 2, 1), 2.0, 96, 10, 1000.0, "noise")
    assert Recipe().stages == (5, 4, 3, 2, 1) == Recipe("adain").stages
    assert Recipe("gatys", levels=(2,)).stages == (5,)
    assert Recipe(alpha=0.2).style_key == Recipe(alpha=0.9).style_key != Recipe(style_size=64).style_key
    # Gatys's settings act on the optimization of the content, not on the style's preparation.
    assert Recipe("gatys").style_key == Recipe("gatys", iterations=5, style_weight=7, init="noise").style_key
    for bad, match in [({"method": "nst"}, "method"), ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
                       ({"alpha": float("nan")}, "alpha"), ({"levels": "6"}, "levels"),
                       ({"stroke_scale": 0.5}, "stroke scale"), ({"content_size": -1}, "content size"),
                       ({"content_size": 1.5}, "content size"), ({"iterations": 0}, "iterations"),
                       ({"style_weight": 0}, "style weight"), ({"style_weight": "inf"}, "style weight"),
                       ({"style_weight": "nan"}, "style weight"), ({"init": "zeros"}, "init"),
                       ({"levels": (4,), "stroke_scale": 2}, "coarse levels")]:
        with pytest.raises(ValueError, match=match):
            Recipe(**bad)
    assert Recipe("gatys", stroke_scale=2).stroke_scale == 2.0  # ignored by gatys, as alpha is


@pytest.mark.parametrize("argv,reason", [(["--alpha", "2"], "alpha must be in [0, 1] (got 2)"),
                                         (["--levels", "0"], "levels must be distinct stages 1..5"),
                                         (["--style-weight", "-1"], "style weight must be a number > 0"),
                                         (["--init", "zeros"], "init must be one of content, noise"),
                                         (["--tile-size", "-5"], "tile size must be a whole number >= 0")])
def test_bad_options_are_refused_by_both_front_ends_alike(capsys, argv, reason):
    for main, base in ((cdcore_main, ["stylize", "c.jpg", "s.jpg", "-o", "o.png"]),
                       (job_main, ["--manifest", "m.csv", "--output-prefix", "o", "--results", "r"])):
        with pytest.raises(SystemExit) as done:
            main(base + argv)
        assert done.value.code == 2 and reason in capsys.readouterr().err
