"""One command that checks the GPU path: `python benchmarks/gpu_check.py` on any CUDA machine.

Prints, with the device's name:
1. exactness: the device's fp32 result against the CPU's (and the golden output), PSNR;
2. speed: seconds and peak device memory to stylize 4, 16 and 42 MP (the paper's 10240x4096),
   whole-image and tiled, in each precision, with PSNR against fp32 and the automatic tile choice;
3. a job: rows of 4 MP JPEGs read from a local S3 server (moto, when installed; else local files)
   by the job's own actor class, with and without overlapped I/O, and the device busy share
   (stylize_s / wall). The actor runs in-process: Ray adds only the scheduling around it;
4. dataset rate (issue 24): images/s and MP/s of 224, 512 and 1024 px contents, one at a time
   against batches (`stylize_batch`, the batch the actors choose), in each precision, with the
   batched results' PSNR against the single ones; then the actor end to end on rows of 224 px
   JPEGs from the local S3 server, batching them, against the bare batched rate;
5. at scale (`gpu_scale`, issue 28): tiled against whole MP/s and dB at 200 MP and 1 GP, a
   gigapixel JPEG in and out streamed (seconds, host memory), and a profile of the cascade
   (kernel time against gaps, the top kernels);
6. variants (`gpu_variants`, issue 28): memory layout, cuDNN's autotuner, the reflect-pad path and
   where a batch's eigendecompositions run, tried against today's settings on a batch of 224 px
   images and on 42 MP whole; and batched float64 eigh timed on the device against the host.

`--device cpu --quick` runs the same on small images on the CPU; the test suite does, so the
script still works the day a GPU appears. Goals (issue 11, on an H100): fp32 within 40 dB of the
CPU; 42 MP in under 3 s; the job's device busy at least 80% of the time on 4 MP rows. Issue 24, on
an H100: at 512x512 fp32 >= 35 MP/s and fp16 >= 55 MP/s; at 224x224 fp16 >= 1,000 images/s; the
actor end to end >= 90% of the bare rate. Issue 28: 42 MP whole fp16 <= 0.3 s and fp32 <= 0.6 s;
tiled and streamed >= 0.7x the whole image's MP/s at 200 MP and 1 GP; a streamed gigapixel JPEG in
<= 30 s with host RSS <= 2.5 GB; tiled vs whole >= 75 dB.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdcore.io import images  # noqa: E402
from cdcore.models import precision  # noqa: E402
from cdcore import tiling  # noqa: E402
from cdcore.options import PRECISIONS, Recipe  # noqa: E402
from cdcore.pipeline import Loaded, Stylist  # noqa: E402
from cdcore.transfer.stylize import pick_device  # noqa: E402
from cdcore.timings import Timings  # noqa: E402
import gpu_scale  # noqa: E402

# ../shared beside the checkout, or a copy carried inside it (.gpu/shared) to a lent machine.
SHARED_CANDIDATES = (ROOT.parent / "shared", ROOT / ".gpu" / "shared")
CONTENT, STYLE = "images/content/bridge_512.jpg", "images/style/style_b_512.jpg"
GOLDEN = "golden/wct16x_bridge_512+style_b_512_alpha1.png"
ASPECT = 10240 / 4096  # the paper's ultra-resolution anchor


def emit(line: str) -> None:
    """Print a table row at once: a step cut off at its time limit keeps what it printed."""
    print(line, flush=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def content_of(shared: Path, megapixels: float) -> np.ndarray:
    """The shared photo, Lanczos-resized to `megapixels` at the paper's 2.5:1 aspect."""
    width = int(round((megapixels * 1e6 * ASPECT) ** 0.5))
    height = int(round(width / ASPECT))
    return np.array(Image.open(shared / CONTENT).convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def stylize_timed(stylist: Stylist, rgb: np.ndarray, style: str, recipe: Recipe) -> tuple[np.ndarray, float]:
    """The stylization alone (uint8 in host memory to uint8 in host memory), as a row's stylize_s."""
    loaded = Loaded("content", images.Picture(rgb), style, None, Timings())
    stylist.render(loaded, recipe)  # warms this size up (kernels, allocator) and prepares the style
    synchronize(stylist.device)
    if stylist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(stylist.device)
    loaded.timings = Timings()
    canvas = stylist.render(loaded, recipe)
    synchronize(stylist.device)
    return canvas.rgb.copy(), loaded.timings.stylize_s


# ------------------------------------------------------------------------------------ the checks

def check_exactness(shared: Path, device: torch.device, models: str) -> list[str]:
    recipe, content, style = Recipe(), str(shared / CONTENT), str(shared / STYLE)
    on_cpu = np.asarray(Stylist(models, "cpu").stylize(content, style, recipe))
    here = np.asarray(Stylist(models, device).stylize(content, style, recipe))
    golden = np.asarray(Image.open(shared / GOLDEN).convert("RGB"))
    return [f"| {device.type} fp32 vs CPU fp32 | {psnr(here, on_cpu):.1f} dB | >= 40 dB |",
            f"| {device.type} fp32 vs golden output | {psnr(here, golden):.1f} dB | >= 40 dB |"]


def check_speed(shared: Path, device: torch.device, models: str, sizes: list[float], tile: int,
                precisions: list[str]) -> tuple[list[str], list[dict]]:
    lines, records, reference = [], [], {}
    style, recipe = str(shared / STYLE), Recipe()
    loaded = Stylist(models, device).models  # for the automatic tile choice
    for mp in sizes:
        rgb = content_of(shared, mp)
        auto = tiling.resolve_tile_size(loaded, recipe.stages, *rgb.shape[:2], None)
        for mode, tile_size in (("whole", 0), ("tiled", tile)):
            for name in precisions:
                stylist = Stylist(models, device, tile_size=tile_size, precision=name)
                try:
                    out, seconds = stylize_timed(stylist, rgb, style, recipe)
                except torch.cuda.OutOfMemoryError:
                    lines.append(f"| {mp:g} | {mode} | {name} | out of memory | | | |")
                    torch.cuda.empty_cache()
                    continue
                reference.setdefault(mp, out)  # whole fp32 runs first
                quality = psnr(out, reference[mp])
                record = {"megapixels": mp, "mode": mode, "tile": tile_size, "precision": name, "seconds": seconds,
                          "mp_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / seconds, "peak": peak_memory(device),
                          "psnr_vs_fp32_whole": quality, "auto_tile": auto}
                records.append(record)
                lines.append(f"| {mp:g} | {mode}{f' {tile}' if tile_size else ''} | {name} | {seconds:.3f} | "
                             f"{record['mp_per_s']:.1f} | {record['peak']} | {quality:.1f} | {auto or 'whole'} |")
                del stylist, out
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return lines, records


def check_codecs(shared: Path, device: torch.device, megapixels: float) -> list[str]:
    """JPEG decode and encode, Pillow against torchvision here: MP/s and how the pixels compare."""
    import io

    from cdcore.io import codecs

    rgb = content_of(shared, megapixels)
    canvas = images.Canvas(*rgb.shape[:2])
    canvas.rgb[...] = rgb
    mp = rgb.shape[0] * rgb.shape[1] / 1e6

    def timed(work):
        work()  # warm-up (nvJPEG's first call initialises it)
        started = time.perf_counter()
        result = work()
        return result, mp / (time.perf_counter() - started)

    lines = []
    # Most cameras write 4:2:0, whose chroma nvJPEG upsamples otherwise than libjpeg-turbo: the
    # pipeline decodes only what `codecs.is_plain_jpeg` passes for the device there.
    for sampling, subsampling in (("4:4:4", 0), ("4:2:0", 2)):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=95, subsampling=subsampling)
        jpeg = buffer.getvalue()
        pillow, pillow_rate = timed(lambda: np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
        ours, ours_rate = timed(lambda: codecs.decode_jpeg(jpeg, device))
        used = "decoded there" if codecs.is_plain_jpeg(Image.open(io.BytesIO(jpeg)), device) else "left to the host"
        lines += [f"| decode {sampling} | Pillow | {pillow_rate:.0f} | | |",
                  f"| decode {sampling} | torchvision on {device.type} | {ours_rate:.0f} | {psnr(ours, pillow):.1f} dB "
                  f"vs Pillow | max diff {np.abs(ours.astype(int) - pillow).max()}: {used} |"]
    encoded, pillow_rate = timed(lambda: canvas.encode("out.jpg"))
    lines.append(f"| encode | Pillow q95 4:4:4 | {pillow_rate:.0f} | {len(encoded) / 1e6:.1f} MB | |")
    # On a GPU this is what the actors run (nvJPEG); on the CPU it shows why they keep Pillow.
    encoded, ours_rate = timed(lambda: codecs.encode_jpeg(canvas.rgb, 95, device))
    back = Image.open(io.BytesIO(encoded))
    sampling = "4:4:4" if back.layer[0][1:3] == (1, 1) else "4:2:0" if back.layer[0][1:3] == (2, 2) else "other"
    lines.append(f"| encode | torchvision q95 on {device.type} | {ours_rate:.0f} | {len(encoded) / 1e6:.1f} MB, "
                 f"{sampling} | {psnr(np.asarray(back.convert('RGB')), rgb):.1f} dB vs the source |")
    return lines


def check_batched_decode(shared: Path, device: torch.device, count: int, side: int) -> list[str]:
    """`count` distinct side x side 4:4:4 JPEGs (what `codecs.is_plain_jpeg` sends to a GPU)
    decoded one call each against from 16 threads through a `jpegbatch.JpegBatcher`: images/s,
    calls, and the largest difference from Pillow's pixels."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import dataset_rate
    from cdcore.io.jpegbatch import JpegBatcher

    data = []
    for rgb in dataset_rate.contents(shared, side, side, count):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=95, subsampling=0)
        data.append(buffer.getvalue())
    reference = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).astype(int) for d in data]
    lines = []
    for label, threads in (("one by one", 1), ("16 threads, batched", 16)):
        batcher = JpegBatcher(device)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(batcher.decode, data[:threads]))  # warm-up
            calls, started = batcher.calls, time.perf_counter()
            decoded = list(pool.map(batcher.decode, data))
            rate = count / (time.perf_counter() - started)
        diff = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(decoded, reference))
        lines.append(f"| decode {side} px 4:4:4 x{count} | {label} on {device.type} | {rate:.0f} images/s | "
                     f"{batcher.calls - calls} calls | max diff {diff} vs Pillow |")
    return lines


@contextlib.contextmanager
def row_storage(directory: Path):
    """A prefix to put the job's inputs and outputs under: a moto S3 server on 127.0.0.1 when moto
    is installed, else the local directory."""
    try:
        import boto3
        from local_s3 import moto_server, point_at
    except ImportError:
        yield str(directory), "local files (moto not installed)"
        return
    with moto_server() as endpoint:
        point_at(endpoint)
        boto3.client("s3").create_bucket(Bucket="gpu-check")
        yield "s3://gpu-check", f"moto S3 on {endpoint}"


def check_job(shared: Path, device: torch.device, models: str, rows: int, megapixels: float,
              extension: str, thread_counts: list[int]) -> tuple[list[str], list[dict]]:
    from cdcore.io import storage
    from jobs.stylize.manifest import Row
    from jobs.stylize.worker import Stylizer, WorkerConfig

    lines, records = [], []
    with tempfile.TemporaryDirectory() as tmp, row_storage(Path(tmp)) as (prefix, where):
        rgb = content_of(shared, megapixels)
        canvas = images.Canvas(*rgb.shape[:2])
        canvas.rgb[...] = rgb
        jpeg = canvas.encode("in.jpg")
        for i in range(rows):  # distinct files, so nothing is cached between rows
            storage.write_bytes(f"{prefix}/in/{i}.jpg", jpeg)
        storage.write_bytes(f"{prefix}/style.jpg", (shared / STYLE).read_bytes())
        for threads in thread_counts:
            config = WorkerConfig(models=models, stages=Recipe().stages, device=str(device), overwrite=True,
                                  io_threads=threads)
            actor = Stylizer("gpu-check", config)
            batch = [Row(i, f"{prefix}/in/{i}.jpg", f"{prefix}/style.jpg", f"{prefix}/out/{threads}-{i}{extension}",
                         "wct", Recipe()) for i in range(rows)]
            actor.process_batch(batch[:1], 1e9)  # warm-up: models on the device, the style prepared
            started = time.monotonic()
            results = actor.process_batch(batch, 1e9)["results"]
            wall = time.monotonic() - started
            ok = sum(r["status"] == "ok" for r in results)
            sums = {p: sum(r[p] for r in results) for p in ("read_s", "decode_s", "stylize_s", "encode_s", "write_s")}
            busy = sums["stylize_s"] / wall
            records.append({"io_threads": threads, "rows": rows, "ok": ok, "wall": wall, "busy": busy, **sums})
            lines.append(f"| {threads} | {ok}/{rows} | {wall:.2f} | {rows / wall:.2f} | "
                         + " | ".join(f"{sums[p] / rows:.3f}" for p in sums) + f" | {busy:.0%} |")
    return [f"rows from {where}, {megapixels:g} MP JPEG in, {extension} out"] + lines, records


def check_at_scale(shared: Path, device: torch.device, models: str, sections: list[str], quick: bool) -> list[dict]:
    """The issue-28 sections (`gpu_scale`), printed as they come; returns the scale records."""
    style_rgb = np.array(Image.open(shared / STYLE).convert("RGB"))  # writable: torch warns otherwise
    records = []
    if "scale" in sections:
        sizes, tile = ([0.02], 128) if quick else ([200, 1000], None)
        print("\n| MP | mode (buffers) | seconds | MP/s | vs whole MP/s | PSNR vs whole | host peak GB |\n"
              "|---|---|---|---|---|---|---|")
        records = gpu_scale.check_scale(lambda mp: content_of(shared, mp), psnr, device, models, sizes, tile,
                                        style_rgb, emit=emit)
    if "streamed" in sections:
        print("\n| streamed | seconds | MP/s | host RSS during the call GB | resident before GB |\n|---|---|---|---|---|")
        print("\n".join(gpu_scale.check_streamed(shared, device, models, 0.02 if quick else 1000, str(shared / STYLE))),
              flush=True)
    if "variants" in sections:
        import dataset_rate
        import gpu_variants

        print("\n| eigendecomposition | on the device | on the host | |\n|---|---|---|---|")
        print("\n".join(gpu_variants.check_eigh(device, (32, 128) if quick else (32, 64, 128),
                                                (1, 4) if quick else (1, 16, 64))), flush=True)
        side = 48 if quick else 224
        batch = 4 if quick else dataset_rate.auto_batch(Stylist(models, device).models, side, side)
        workloads = {f"{side} px x{batch}": dataset_rate.contents(shared, side, side, batch),
                     f"{0.02 if quick else 42} MP whole": [content_of(shared, 0.02 if quick else 42)]}
        offered = [name for name in PRECISIONS if precision.resolve(name, device)[0] == name]
        print("\n| variant: workload | precision | settings | seconds | MP/s | x today | PSNR vs today |\n"
              "|---|---|---|---|---|---|---|")
        gpu_variants.check_variants(models, device, offered, workloads, style_rgb, psnr, emit=emit)
    if "profile" in sections:
        rgb = content_of(shared, 0.02 if quick else 42)
        print("\nprofile (torch.profiler" + (", CUDA activity)" if device.type == "cuda" else ", CPU)"))
        print("\n".join(gpu_scale.profile_cascade(device, models, rgb, style_rgb, 128 if quick else 2048)), flush=True)
    return records


def check_dataset(shared: Path, device: torch.device, models: str, sides: list[int], precisions: list[str],
                  seconds: float, limit: int | None = None) -> list[dict]:
    """Bare images/s at each side (square contents), batch 1 against the automatic batch (at most
    `limit` images): a table row for each, printed as it comes (a run cut off keeps the sides it
    finished); returns the records."""
    import dataset_rate

    records = []
    for side in sides:
        rgbs = None
        for name in precisions:
            stylist = Stylist(models, device, precision=name)  # the models' layout for this precision
            batch = min(dataset_rate.auto_batch(stylist.models, side, side), limit or 1 << 30)
            if rgbs is None or len(rgbs) < 2 * batch:
                rgbs = dataset_rate.contents(shared, side, side, 2 * batch)
            style = dataset_rate.style_of(stylist.models, shared, device)
            measured = dataset_rate.rates(stylist.models, rgbs, style, sorted({1, batch}), seconds, name)
            with precision.networks(device, name):
                single = dataset_rate.run(stylist.models, rgbs[:batch], style, 1)
                batched = dataset_rate.run(stylist.models, rgbs[:batch], style, batch)
            quality = min(psnr(a, b) for a, b in zip(single, batched))
            for b in sorted({1, batch}):
                rate = measured[b][0]
                records.append({"side": side, "precision": name, "batch": b, "images_per_s": rate,
                                "mp_per_s": rate * side * side / 1e6, "batched_vs_single_db": quality})
                emit(f"| {side}x{side} | {name} | {b} | {rate:.1f} | {rate * side * side / 1e6:.1f} | "
                     f"{rate / measured[1][0]:.2f}x | {quality:.1f} |")
            del stylist
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def check_dataset_job(shared: Path, device: torch.device, models: str, rows: int, side: int, precision_name: str,
                      bare: float) -> tuple[list[str], dict]:
    """The job's actor on rows of side x side JPEGs (distinct photos) from the local S3 server,
    JPEG out, stylizing them in batches: rows/s against the bare batched rate `bare`."""
    import dataset_rate
    from cdcore.io import storage
    from jobs.stylize.manifest import Row
    from jobs.stylize.worker import Stylizer, WorkerConfig

    with tempfile.TemporaryDirectory() as tmp, row_storage(Path(tmp)) as (prefix, where):
        for i, rgb in enumerate(dataset_rate.contents(shared, side, side, rows)):
            canvas = images.Canvas(side, side)
            canvas.rgb[...] = rgb
            storage.write_bytes(f"{prefix}/in/{i}.jpg", canvas.encode("in.jpg"))
        storage.write_bytes(f"{prefix}/style.jpg", (shared / STYLE).read_bytes())
        config = WorkerConfig(models=models, stages=Recipe().stages, device=str(device), overwrite=True,
                              precision=precision_name, io_threads=8)
        actor = Stylizer("gpu-check", config)
        batch = [Row(i, f"{prefix}/in/{i}.jpg", f"{prefix}/style.jpg", f"{prefix}/out/{i}.jpg", "wct", Recipe())
                 for i in range(rows)]
        actor.process_batch(batch[:2], 1e9)  # warm-up: the style prepared, this size's kernels
        calls = actor.counters["device_calls"]
        started = time.monotonic()
        results = actor.process_batch(batch, 1e9)["results"]
        wall = time.monotonic() - started
    ok = sum(r["status"] == "ok" for r in results)
    busy = sum(r["stylize_s"] for r in results) / wall
    record = {"side": side, "precision": precision_name, "rows": rows, "ok": ok, "wall": wall, "rows_per_s": rows / wall,
              "bare_images_per_s": bare, "busy": busy, "device_calls": actor.counters["device_calls"] - calls}
    line = (f"| {side}x{side} | {precision_name} | {ok}/{rows} | {record['device_calls']} | {rows / wall:.1f} | "
            f"{bare:.1f} | {rows / wall / bare:.0%} | {busy:.0%} |")
    return [f"rows from {where}, {side}x{side} JPEG in and out, 8 io threads", line], record


# ------------------------------------------------------------------------------------ main

def _numbers(kind):
    return lambda text: [kind(t) for t in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--quick", action="store_true", help="small sizes and few rows (what the tests run)")
    p.add_argument("--shared", type=Path, default=None, help="the shared folder (models, images, golden)")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    p.add_argument("--sections", default="exactness,speed,codecs,job,dataset,scale,streamed,variants,profile",
                   help="which checks to run (default all)")
    p.add_argument("--dataset-sides", type=_numbers(int), default=None, help="dataset section's sides (224,512,1024)")
    p.add_argument("--sizes", type=_numbers(float), default=None, help="megapixels to time (default 4,16,42)")
    p.add_argument("--tile", type=int, default=None, help="tile size of the tiled runs (default 2048)")
    p.add_argument("--io-threads", type=_numbers(int), default=[0, 2], help="the job's io threads to compare")
    p.add_argument("--formats", type=lambda t: t.split(","), default=[".jpg", ".png"], help="the job's outputs")
    args = p.parse_args(argv)
    sections = args.sections.split(",")
    shared = args.shared or next((s for s in SHARED_CANDIDATES if s.is_dir()), None)
    if shared is None:
        p.error("no shared folder found: pass --shared")
    device = pick_device(args.device)
    models = str(shared / "models" / "cd16x")
    sizes = args.sizes or ([0.04, 0.1] if args.quick else [4, 16, 42])
    tile = args.tile or (256 if args.quick else 2048)
    precisions = [name for name in PRECISIONS if precision.resolve(name, device)[0] == name]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"# gpu_check on {name} ({device}), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"precisions offered here: {', '.join(precisions)}\n")

    speed, job = [], {}
    if "exactness" in sections:
        print("| exactness | PSNR | goal |\n|---|---|---|")
        print("\n".join(check_exactness(shared, device, models)), flush=True)
    if "speed" in sections:
        print("\n| MP | mode | precision | seconds | MP/s | peak device memory | PSNR vs fp32 whole (dB) | auto tile |")
        print("|---|---|---|---|---|---|---|---|")
        speed_lines, speed = check_speed(shared, device, models, sizes, tile, precisions)
        print("\n".join(speed_lines), flush=True)
    rows, mp = (2, 0.1) if args.quick else (16, 4)
    if "codecs" in sections:
        print(f"\n| codec ({mp:g} MP) | by | MP/s | result | |\n|---|---|---|---|---|")
        print("\n".join(check_codecs(shared, device, mp)), flush=True)
        print("\n".join(check_batched_decode(shared, device, 32 if args.quick else 512, 224)), flush=True)
    for extension in args.formats if "job" in sections else []:
        lines, job[extension] = check_job(shared, device, models, rows, mp, extension, args.io_threads)
        print(f"\njob: {lines[0]}")
        print("| io threads | ok | wall s | rows/s | read s/row | decode s/row | stylize s/row | encode s/row | "
              "write s/row | device busy |\n|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines[1:]), flush=True)
    dataset = {}
    if "dataset" in sections:
        sides = args.dataset_sides or ([48] if args.quick else [224, 512, 1024])
        print("\n| dataset content | precision | batch | images/s | MP/s | x batch 1 | batched vs single (dB) |")
        print("|---|---|---|---|---|---|---|")
        dataset["bare"] = check_dataset(shared, device, models, sides, precisions, 0.0 if args.quick else 6.0,
                                        4 if args.quick else None)
        side, fastest = sides[0], precisions[-1]
        bare = max(r["images_per_s"] for r in dataset["bare"] if r["side"] == side and r["precision"] == fastest)
        lines, dataset["job"] = check_dataset_job(shared, device, models, 6 if args.quick else 2048, side, fastest, bare)
        print(f"\ndataset job: {lines[0]}")
        print("| content | precision | ok | device calls | rows/s | bare images/s | of bare | device busy |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(lines[1:]), flush=True)
    scale = check_at_scale(shared, device, models, sections, args.quick)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "speed": speed, "job": job, "dataset": dataset,
                                         "scale": scale}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
