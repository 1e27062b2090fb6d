"""The two charts of a jobs.report page, drawn with Pillow alone: rows per minute over a run, by
status, and where the actors' time went, by phase."""
from __future__ import annotations

from typing import Mapping, Sequence

from PIL import Image, ImageDraw

STATUS_COLOURS = {"ok": (44, 160, 44), "skipped": (150, 150, 150), "failed": (214, 39, 40)}
PHASE_COLOURS = ((31, 119, 180), (255, 127, 14), (148, 103, 189), (44, 160, 44), (140, 86, 75), (23, 190, 207))
SIZE = (900, 300)
LEFT, TOP, RIGHT, BOTTOM = 60, 30, 20, 48  # margins: tick labels, title, legend
BAR_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_BARS = 60


def _axes(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw, tuple[int, int, int, int]]:
    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    box = (LEFT, TOP, SIZE[0] - RIGHT, SIZE[1] - BOTTOM)
    draw.text((LEFT, 8), title, fill="black")
    draw.rectangle(box, outline="black")
    return img, draw, box


def _legend(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    x = LEFT
    for name, colour in entries:
        draw.rectangle((x, SIZE[1] - 16, x + 12, SIZE[1] - 6), fill=colour)
        draw.text((x + 16, SIZE[1] - 18), name, fill="black")
        x += 24 + 7 * len(name)


def _elapsed(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200 else \
        f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def per_minute(finished_s: Sequence[float], statuses: Sequence[str], start: float | None = None,
               bars: int = MAX_BARS) -> tuple[float, dict[str, list[float]]]:
    """(seconds a bar, {status: rows per minute in each bar}) from the rows' finish times, bars
    from `start` (else the first finish) to the last finish, as narrow as BAR_SECONDS allows
    without making more than `bars` of them."""
    start = min(finished_s) if start is None else start
    span = max(max(finished_s) - start, 1e-9)
    width = next((b for b in BAR_SECONDS if span / b <= bars), BAR_SECONDS[-1])
    count = int(span // width) + 1
    rates = {status: [0.0] * count for status in STATUS_COLOURS}
    for t, status in zip(finished_s, statuses):
        rates.setdefault(status, [0.0] * count)[min(max(int((t - start) // width), 0), count - 1)] += 60.0 / width
    return width, rates


def rows_per_minute(finished_s: Sequence[float], statuses: Sequence[str], start: float | None = None) -> Image.Image:
    """Stacked bars of rows finished per minute over the run, by status."""
    if not finished_s:
        img, draw, (left, top, _, _) = _axes("rows per minute, by status")
        draw.text((left + 10, top + 10), "no finish times recorded", fill="black")
        return img
    width, rates = per_minute(finished_s, statuses, start)
    img, draw, (left, top, right, bottom) = _axes(f"rows per minute, by status (bars of {_elapsed(width)})")
    count = len(next(iter(rates.values())))
    peak = max(sum(r[b] for r in rates.values()) for b in range(count)) or 1.0
    step = (right - left) / count
    gap = int(step > 3)  # a pixel between bars wide enough to spare it
    for b in range(count):
        y = bottom
        for status, colour in STATUS_COLOURS.items():
            h = rates[status][b] / peak * (bottom - top)
            if h:
                draw.rectangle((left + b * step + gap, y - h, left + (b + 1) * step - gap, y), fill=colour)
            y -= h
    draw.text((4, top - 6), f"{peak:,.0f}", fill="black")
    draw.text((4, bottom - 6), "0", fill="black")
    draw.text((left, bottom + 4), "0 s", fill="black")
    draw.text((right - 60, bottom + 4), _elapsed(count * width), fill="black")
    _legend(draw, list(STATUS_COLOURS.items()))
    return img


def phase_breakdown(seconds: Mapping[str, float]) -> Image.Image:
    """A bar per phase: the actors' seconds in it and its share of their time."""
    img, draw, (left, top, right, bottom) = _axes("where the actors' time went, by phase (ok rows)")
    total = sum(seconds.values())
    if not total:
        draw.text((left + 10, top + 10), "no phase times recorded", fill="black")
        return img
    row = (bottom - top) / len(seconds)
    peak = max(seconds.values())
    for i, (phase, value) in enumerate(seconds.items()):
        y = top + i * row
        draw.text((8, y + row / 2 - 6), phase, fill="black")
        end = left + value / peak * (right - left - 150)
        draw.rectangle((left, y + 4, max(end, left + 1), y + row - 4), fill=PHASE_COLOURS[i % len(PHASE_COLOURS)])
        draw.text((end + 6, y + row / 2 - 6), f"{value:,.1f} s ({value / total:.0%})", fill="black")
    return img
