"""The GPU at scale, for `gpu_check.py` (sections "scale", "streamed" and "profile"; issue 28).

- scale: the tiled engine against the whole image at large sizes (200 MP and 1 GP on a GPU):
  seconds, MP/s, the ratio of the tiled MP/s to the whole image's (the whole image at that size
  where it fits the device, else at the largest size that did), where planning put the buffers,
  and tiled vs whole in dB where both ran;
- streamed: a JPEG in, a JPEG out through the streamed path (the region reader, the tiled engine,
  the strip writer): seconds and the most host memory resident during the call;
- profile: one cascade under `torch.profiler` with CUDA activity: the device's kernel time
  against the gaps between kernels over the wall time, copies, and the top kernels (on the CPU:
  the top operators by self time).
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdcore import memory, tiling
from cdcore.options import Recipe
from cdcore.pipeline import Stylist
from cdcore.tiling import placement


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(work, device: torch.device):
    _synchronize(device)
    started = time.perf_counter()
    result = work()
    _synchronize(device)
    return result, time.perf_counter() - started


def check_scale(content_of, psnr, device: torch.device, models: str, sizes: list[float], tile: int | None,
                style_rgb: np.ndarray, emit=print) -> list[dict]:
    """The scale table's rows (see the module docstring), each passed to `emit` as it is made, so
    a run cut off keeps the sizes it finished; returns the records. `content_of(mp)`: an (H, W, 3)
    uint8."""
    stylist = Stylist(models, device)
    style = _style(stylist, style_rgb)
    records, whole_rate = [], None
    for mp in sizes:
        rgb = content_of(mp)
        pixels = rgb.shape[0] * rgb.shape[1] / 1e6
        whole = None
        try:
            whole, seconds = _timed(lambda: tiling.TiledEngine(stylist.models, 0).stylize(rgb, style), device)
            whole_rate = pixels / seconds
            emit(f"| {mp:g} | whole | {seconds:.2f} | {whole_rate:.2f} | 1.00x | - | - |")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            emit(f"| {mp:g} | whole | out of device memory | | | | |")
        engine = tiling.TiledEngine(stylist.models, tile)
        size = tiling.resolve_tile_size(stylist.models, Recipe().stages, *rgb.shape[:2], tile)
        where = placement.choose(stylist.models, Recipe().stages, *rgb.shape[:2], size)[0] if size else "-"
        engine.stylize(rgb[:1024, :1024], style)  # warm-up: this window shape's kernels
        tiled, seconds = _timed(lambda: engine.stylize(rgb, style), device)
        rate = pixels / seconds
        ratio = f"{rate / whole_rate:.2f}x" if whole_rate else "-"
        quality = f"{psnr(tiled, whole):.1f} dB" if whole is not None else "-"
        emit(f"| {mp:g} | tiled {size or 'whole'} ({where}) | {seconds:.2f} | {rate:.2f} | {ratio} | "
                     f"{quality} | {peak_host_gb():.2f} |")
        records.append({"megapixels": mp, "tile": size, "placement": where, "seconds": seconds, "mp_per_s": rate,
                        "whole_mp_per_s": whole_rate, "psnr_vs_whole": quality})
        del whole, tiled, rgb
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def _style(stylist: Stylist, style_rgb: np.ndarray):
    from cdcore.transfer.stylize import style_statistics, to_tensor

    return style_statistics(stylist.models, to_tensor(style_rgb, stylist.device), "wct")


def check_streamed(shared: Path, device: torch.device, models: str, megapixels: float, style: str) -> list[str]:
    """A JPEG of `megapixels` (the photo upscaled by libvips) through the streamed path
    (`Stylist.stylize_streamed`, whatever its size): seconds, MP/s and the host memory it held."""
    import pyvips

    with tempfile.TemporaryDirectory() as tmp:
        content, output = Path(tmp) / "content.jpg", Path(tmp) / "out.jpg"
        photo = pyvips.Image.new_from_file(str(shared / "images" / "content" / "bridge_512.jpg"))
        width = int(round((megapixels * 1e6 * 2.5) ** 0.5))
        scale = width / photo.width
        photo.resize(scale, vscale=round(width / 2.5) / photo.height, kernel="cubic").jpegsave(str(content), Q=95)
        stylist = Stylist(models, device, max_pixels=2_000_000_000)
        stylist.stylize_streamed(str(content), style, str(Path(tmp) / "warm.jpg"))  # warm-up, the style
        ready = memory.resident_bytes()
        with ResidentWatch() as watch:
            _, seconds = _timed(lambda: stylist.stylize_streamed(str(content), style, str(output)), device)
        mp = Image.open(output).size
        pixels = mp[0] * mp[1] / 1e6
        return [f"| {pixels:.3g} MP JPEG in, JPEG out | {seconds:.1f} | {pixels / seconds:.2f} | "
                f"{watch.most / 1e9:.2f} | {ready / 1e9:.2f} |"]


class ResidentWatch:
    """The most this process held resident while the block ran, sampled every 20 ms."""

    def __init__(self):
        self.most, self._stop = memory.resident_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, memory.resident_bytes())

    def __enter__(self) -> "ResidentWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def peak_host_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")) / 1e9


def profile_cascade(device: torch.device, models: str, rgb: np.ndarray, style_rgb: np.ndarray,
                    tile: int, top: int = 8) -> list[str]:
    """One whole-image and one tiled cascade under torch.profiler: wall time, device kernel time
    (the union of kernel intervals) against the gaps, copies, and the top kernels or operators."""
    from torch.profiler import ProfilerActivity, profile

    stylist = Stylist(models, device)
    style = _style(stylist, style_rgb)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    lines = []
    for label, size in (("whole", 0), (f"tiled {tile}", tile)):
        engine = tiling.TiledEngine(stylist.models, size)
        engine.stylize(rgb, style)  # warm-up: kernels, allocator, cuDNN's choices
        with profile(activities=activities) as prof:
            _, wall = _timed(lambda: engine.stylize(rgb, style), device)
        lines += [f"\n{label}, {rgb.shape[1]}x{rgb.shape[0]}: wall {wall * 1e3:.0f} ms"] + _summary(prof, wall, top)
    return lines


def _summary(prof, wall: float, top: int) -> list[str]:
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:  # the CPU: operators by self time
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        return ["| operator | calls | self CPU ms |", "|---|---|---|"] + [
            f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e3:.1f} |" for e in ops]
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, end = 0.0, spans[0][0]
    for start, stop in spans:  # the union of the intervals
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    copies = sum(e.time_range.end - e.time_range.start for e in kernels if "memcpy" in e.name.lower())
    totals: dict[str, list] = {}
    for e in kernels:
        entry = totals.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += e.time_range.end - e.time_range.start
    lines = [f"device busy {busy / 1e3:.0f} ms of {wall * 1e3:.0f} ms wall ({busy / 1e6 / wall:.0%}), gaps "
             f"{max(0.0, wall * 1e6 - busy) / 1e3:.0f} ms; copies {copies / 1e3:.0f} ms; {len(kernels)} kernels",
             "| kernel | calls | ms | share of busy |", "|---|---|---|---|"]
    for name, (calls, total) in sorted(totals.items(), key=lambda kv: kv[1][1], reverse=True)[:top]:
        lines.append(f"| {name[:90]} | {calls} | {total / 1e3:.1f} | {total / max(busy, 1e-9):.0%} |")
    return lines
