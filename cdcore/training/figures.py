"""Small PNG figures drawn with Pillow alone: loss curves and labelled image grids."""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))
_MARGIN = (70, 30, 20, 40)  # left, top, right, bottom: room for tick labels, title and legend


def loss_panel(title: str, series: Mapping[str, Sequence[tuple[int, float]]],
               size: tuple[int, int] = (900, 320)) -> Image.Image:
    """Curves of (step, value) per name on a log10 y axis, with a legend and min/max ticks.

    Values that are not positive cannot go on a log axis and are skipped.
    """
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = _MARGIN[0], _MARGIN[1], size[0] - _MARGIN[2], size[1] - _MARGIN[3]
    draw.text((left, 8), title, fill="black")
    points = {name: [(s, v) for s, v in pts if v > 0 and math.isfinite(v)] for name, pts in series.items()}
    every = [p for pts in points.values() for p in pts]
    draw.rectangle((left, top, right, bottom), outline="black")
    if not every:
        draw.text((left + 10, top + 10), "no data", fill="black")
        return img
    s_lo, s_hi = min(s for s, _ in every), max(s for s, _ in every)
    y_lo, y_hi = math.log10(min(v for _, v in every)), math.log10(max(v for _, v in every))
    s_span, y_span = max(s_hi - s_lo, 1), max(y_hi - y_lo, 1e-6)

    def xy(step: int, value: float) -> tuple[float, float]:
        x = left + (step - s_lo) / s_span * (right - left)
        y = bottom - (math.log10(value) - y_lo) / y_span * (bottom - top)
        return x, y

    for value, y in ((10 ** y_hi, top), (10 ** y_lo, bottom)):
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
    for step, anchor in ((s_lo, left), (s_hi, right - 40)):
        draw.text((anchor, bottom + 4), f"step {step}", fill="black")
    for i, (name, pts) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(pts) > 1:
            draw.line([xy(s, v) for s, v in pts], fill=colour, width=2)
        elif pts:
            x, y = xy(*pts[0])
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        legend_x = left + 10 + 130 * i
        draw.line((legend_x, size[1] - 12, legend_x + 20, size[1] - 12), fill=colour, width=3)
        draw.text((legend_x + 25, size[1] - 18), name, fill="black")
    return img


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], pad: int = 4) -> Image.Image:
    """Images (H, W, 3) uint8 laid out in rows, all cells the size of the largest, with a title
    above every column."""
    if not rows or any(len(r) != len(titles) for r in rows):
        raise ValueError(f"every row needs one image per title ({len(titles)} titles)")
    cell_h = max(a.shape[0] for r in rows for a in r)
    cell_w = max(a.shape[1] for r in rows for a in r)
    head = 16
    grid = Image.new("RGB", (len(titles) * (cell_w + pad) + pad, head + len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((pad + c * (cell_w + pad), 2), title, fill="black")
    for r, row in enumerate(rows):
        for c, array in enumerate(row):
            grid.paste(Image.fromarray(array), (pad + c * (cell_w + pad), head + pad + r * (cell_h + pad)))
    return grid


def stack(panels: Sequence[Image.Image]) -> Image.Image:
    """Panels one above the other, left-aligned."""
    out = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
