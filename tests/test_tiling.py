"""The tiled engine against the whole-image path: stage by stage, whole cascades, style statistics,
buffers on disk vs in RAM, bounded memory, stroke scale, and the Canvas writer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cdcore import memory, tiling
from cdcore.io.images import Canvas
from cdcore.tiling import TiledEngine, passes, planning
from cdcore.tiling import buffers
from cdcore.tiling.buffers import PLACEMENTS, Buffers, ImageBuffer, RowRing
from cdcore.io.images import ImageError, read_image
from cdcore.models.modelset import load_model_set
from cdcore.transfer.stylize import run_stage, style_statistics, stylize, to_tensor, to_uint8
from shared import CONTENT, MODELS, STYLE, psnr

ROOT = Path(__file__).resolve().parents[1]
H, W = 333, 517  # not multiples of 16 (nor of 2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on two cores shared with other work, a second OpenMP thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    return load_model_set(MODELS)


@pytest.fixture(scope="module")
def content():
    """(333, 517, 3) uint8: a real photo, widened by mirroring (it is 512 wide)."""
    rgb = read_image(str(CONTENT / "bridge_512.jpg")).rgb
    return np.ascontiguousarray(np.concatenate([rgb, rgb[:, ::-1]], axis=1)[:H, :W])


@pytest.fixture(scope="module")
def style_rgb():
    return read_image(str(STYLE / "style_c_591x800.jpg")).rgb  # 800 x 591: not multiples of 16


@pytest.fixture(scope="module")
def wct(models, style_rgb):
    return style_statistics(models, to_tensor(style_rgb), "wct")


@pytest.fixture(scope="module")
def adain(models, style_rgb):
    return style_statistics(models, to_tensor(style_rgb), "adain", (4,))  # AdaIN at relu4_1 alone


@pytest.mark.parametrize("grid,halo,side", [((80, 200), 5, 64), ((21, 33), 5, 6), ((333, 517), 1, 100),
                                             ((4096, 10240), 1, 1024), ((7, 300), 3, 16), ((50, 50), 2, 200)])
def test_plan_tiles_own_every_pixel_once_and_far_from_cut_edges(grid, halo, side):
    tiles = tiling.plan_tiles(grid, halo, side)
    shapes = {(t.rows.stop - t.rows.start, t.cols.stop - t.cols.start) for t in tiles}
    assert len(shapes) == 1  # one shape per pass: oneDNN builds kernels per shape
    (h, w), = shapes
    assert h * w <= max(side, 4 * halo) ** 2 or (h, w) == grid
    owned = np.zeros(grid, int)
    for t in tiles:
        assert 0 <= t.rows.start and t.rows.stop <= grid[0] and 0 <= t.cols.start and t.cols.stop <= grid[1]
        owned[t.keep_rows, t.keep_cols] += 1
        for window, keep, size in ((t.rows, t.keep_rows, grid[0]), (t.cols, t.keep_cols, grid[1])):
            assert window.start <= keep.start < keep.stop <= window.stop
            assert window.start == 0 or keep.start - window.start >= halo  # a cut edge
            assert window.stop == size or window.stop - keep.stop >= halo
    assert (owned == 1).all()


def test_plan_tiles_spends_little_on_halos_of_a_wide_image():
    """Stage 5 of a 3200x1280 image in 1024^2-pixel windows: full-height windows, 20% recomputed
    (square tiles of at most 64 feature pixels plus halos recomputed 50%)."""
    tiles = tiling.plan_tiles((80, 200), 5, 64)
    assert all(t.rows == slice(0, 80) for t in tiles)
    area = sum((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) for t in tiles)
    assert area <= 1.2 * 80 * 200


def test_a_stage_wide_at_full_resolution_gets_smaller_windows(models):
    """The 16x set's stage 1 is 24 channels wide at full resolution, the others 16: its windows
    shrink by sqrt(16/24), so that a window of every stage holds about the same activations."""
    assert [planning.window_side(models, k, 1024) for k in (1, 2, 3, 4, 5)] == [836, 1024, 1024, 1024, 1024]
    plan = planning.plan_stage(models, 1, 4096, 10240, 1024)
    assert max(span_area(t) for t in plan.statistics + plan.render) <= 836 * 836
    assert max(span_area(t) for t in plan.render) > 0.9 * 836 * 836
    alone = load_model_set(MODELS, stages=(1,))  # no narrower stage to hold it to
    assert planning.window_side(alone, 1, 1024) == 1024


def span_area(tile: tiling.Tile) -> int:
    return (tile.rows.stop - tile.rows.start) * (tile.cols.stop - tile.cols.start)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("stage", [5, 4, 3, 2, 1])
def test_tiled_stage_equals_whole_image_stage(models, content, wct, stage, placement):
    """Floats, one stage, a tile size (100) that neither divides the image nor is a multiple of 16,
    with the buffers in each placement (on the CPU, "device" and "pinned" are torch tensors)."""
    whole = run_stage(models, to_tensor(content), stage, wct, 0.8)
    tiled = TiledEngine(models, 100, placement=placement).stylize(content, wct, 0.8, (stage,),
                                                                  out=np.empty((H, W, 3), np.float32))
    np.testing.assert_allclose(tiled, whole[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("stage", [5, 2])
@pytest.mark.parametrize("halo", ["encoder_halo", "decoder_halo"])
def test_halos_are_the_smallest_exact_ones(models, content, wct, monkeypatch, stage, halo):
    """One feature pixel less of either halo and tiles no longer match the whole image."""
    whole = run_stage(models, to_tensor(content), stage, wct, 1.0)[0].permute(1, 2, 0).numpy()
    exact = getattr(planning, halo)
    for module in (planning, passes):  # every module that looked the halo up
        if hasattr(module, halo):
            monkeypatch.setattr(module, halo, lambda k: exact(k) - 1)
    short = TiledEngine(models, 100).stylize(content, wct, 1.0, (stage,), out=np.empty((H, W, 3), np.float32))
    assert np.abs(short - whole).max() > 1e-4  # 10x the tolerance of the exact halos


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("method,tile_size", [("wct", 96), ("wct", 200), ("adain", 96), ("adain", 136)])
def test_tiled_cascade_matches_whole_image(models, content, method, tile_size, request, placement):
    style = request.getfixturevalue(method)
    whole = to_uint8(stylize(models, to_tensor(content), style, 1.0))
    tiled = TiledEngine(models, tile_size, placement=placement).stylize(content, style, 1.0)
    assert tiled.shape == (H, W, 3) and tiled.dtype == np.uint8
    assert psnr(tiled, whole) >= 45.0


def test_tiled_style_statistics_match_whole_style(models, style_rgb):
    """The style is not padded: its odd-sized edge tiles must pool and reflect as the whole one."""
    whole = style_statistics(models, to_tensor(style_rgb), "wct")
    tiled = TiledEngine(models, 176).style_statistics(style_rgb, "wct")
    assert tiled.model_id == whole.model_id and tiled.stages.keys() == whole.stages.keys()
    for k, stage in whole.stages.items():
        torch.testing.assert_close(tiled.stages[k].mean, stage.mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tiled.stages[k].colour, stage.colour, rtol=1e-5, atol=1e-5)


def test_disk_and_memory_buffers_give_the_same_image(models, content, adain, tmp_path):
    on_disk = TiledEngine(models, 128, disk_buffer=True, temp_dir=str(tmp_path)).stylize(content, adain)
    in_ram = TiledEngine(models, 128, disk_buffer=False).stylize(content, adain)
    np.testing.assert_array_equal(on_disk, in_ram)
    assert list(tmp_path.iterdir()) == []  # the temporary directory went with the run
    for placement in ("device", "pinned"):
        as_tensors = TiledEngine(models, 128, placement=placement).stylize(content, adain)
        np.testing.assert_array_equal(as_tensors, in_ram)


@pytest.mark.parametrize("placement", ["device", "pinned"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_tensor_buffers_are_freed_on_errors_and_interrupts(models, content, wct, placement, error):
    """An interrupt mid-cascade (stage 3's render, with stage 2's features and stage 3's output
    allocated) frees every device or pinned buffer, though the traceback still holds the frames."""
    held = []

    def progress(p):
        held.append(buffers.live_tensor_bytes())
        if (p.stage, p.step, p.tile) == (3, "render", 2):
            raise error("stop")

    assert buffers.live_tensor_bytes() == 0
    with pytest.raises(error) as caught:
        TiledEngine(models, 96, placement=placement, progress=progress).stylize(content, wct)
    assert caught.traceback and max(held) > 0
    assert buffers.live_tensor_bytes() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_buffers_on_a_gpu_equal_the_whole_image_and_are_freed(content, wct):
    """On a GPU: tiled with device and pinned buffers equals the whole image there, and an
    interrupt gives every byte of device memory back."""
    gpu = load_model_set(MODELS).to("cuda")
    style = style_statistics(gpu, to_tensor(read_image(str(STYLE / "style_c_591x800.jpg")).rgb, "cuda"), "wct")
    whole = to_uint8(stylize(gpu, to_tensor(content, "cuda"), style, 1.0))
    for placement in ("device", "pinned"):
        assert psnr(TiledEngine(gpu, 128, placement=placement).stylize(content, style), whole) >= 45.0
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()

    def stop(p):
        if p.stage == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TiledEngine(gpu, 128, placement="device", progress=stop).stylize(content, style)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


def test_placement_follows_free_memory(models):
    """On the CPU: RAM for small runs, disk for large ones (or as asked); buffers in memory are
    planned whole, so they need more than the same run's files."""
    from cdcore.tiling import placement

    levels = (5, 4, 3, 2, 1)
    assert placement.choose(models, levels, 1000, 1000, 512) == ("ram", frozenset())
    assert placement.choose(models, levels, 4096, 4096, 512) == ("disk", frozenset())
    assert placement.choose(models, levels, 4096, 4096, 512, disk_buffer=False)[0] == "ram"
    assert placement.choose(models, levels, 1000, 1000, 512, disk_buffer=True)[0] == "disk"
    files = planning.buffer_bytes(models, levels, 4096, 4096, 512)
    assert planning.buffer_bytes(models, levels, 4096, 4096, 512, files=False) > files


def test_a_gpu_keeps_a_gigapixel_on_the_device_where_encoding_stage_2_again_makes_it_fit(models):
    """The rule on a GPU, planned here without one: 1 GP in tiles of 2048 needs 50 GB of buffers in
    memory, 28 GB when stage 2 encodes again; an 80 GB card takes the second, a 40 GB card sends
    them to pinned host memory where the host has room, else to disk."""
    from cdcore.tiling import placement

    def where(device_gb, host_gb):
        return placement.choose(models, (5, 4, 3, 2, 1), 25000, 40000, 2048, device="cuda",
                                device_free=device_gb * 10**9, host_free=host_gb * 10**9)

    assert where(79, 100) == ("device", frozenset({2}))
    assert where(200, 100) == ("device", frozenset())
    assert where(40, 400) == ("pinned", frozenset())
    assert where(40, 100) == ("disk", frozenset())
    with pytest.raises(ValueError, match="placement must be one of"):
        TiledEngine(models, 128, placement="gpu")


def test_a_failed_buffer_write_fails_the_run_and_leaves_no_scratch(models, content, adain, tmp_path):
    """Writes run on a helper thread (tiling.overlap): their error must still reach the caller."""
    out = tiling.ImageBuffer.on_disk(str(tmp_path), (*content.shape[:2], 3), np.uint8)
    os.close(out._fd)
    out._fd = os.open(out.path, os.O_RDONLY)  # a real EBADF from every pwrite of the result
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(OSError):
        TiledEngine(models, 128, disk_buffer=True, temp_dir=str(scratch)).stylize(content, adain, out=out)
    out.close()
    assert list(scratch.iterdir()) == []


def test_the_image_between_stages_is_a_band_of_rows_where_the_next_stage_stores_features(models, content, wct,
                                                                                        tmp_path):
    """At a gigapixel the float image between stages is 12 GB of scratch and page cache. A stage's
    render runs fused with the next stage's statistics pass, so where that stage stores its
    features, only a band of the image's rows is ever kept (`RowRing`); a stage that stores frees
    its input before rendering. Seen at each stage's first render tile: (files, whole images)."""
    files, whole = {}, 12 * H * W

    def progress(p):
        if p.step == "render":
            sizes = [f.stat().st_size for f in tmp_path.rglob("*.raw")]
            files.setdefault(p.stage, (len(sizes), sizes.count(whole)))

    TiledEngine(models, 128, disk_buffer=True, temp_dir=str(tmp_path), progress=progress).stylize(content, wct)
    # 5: its features, its output (whole: a band of stage 4's windows is all 333 rows), stage 4's features
    assert files[5] == (3, 1)
    # 4, 3: their features, a band of their output's rows, the next stage's features
    assert files[4] == files[3] == (3, 0)
    assert files[2] == (2, 1)  # its features and its whole output: stage 1 reads it twice
    assert files[1] == (1, 1)  # stage 1 encodes again from its input; its output is the caller's


def test_a_row_ring_keeps_the_last_rows_written_and_refuses_the_rest(tmp_path):
    image = np.random.default_rng(0).random((50, 7, 3), dtype=np.float32)
    ring = Buffers(str(tmp_path)).rows(50, 12, (7, 3))
    assert isinstance(ring, RowRing) and ring.shape == (50, 7, 3)
    assert os.path.getsize(ring.backing.path) == 12 * 7 * 3 * 4
    with pytest.raises(RuntimeError, match="rows 0-5 are not in the ring, which holds rows 0-0"):
        ring.read(slice(0, 5), slice(0, 7))  # not written yet
    for y in range(0, 50, 5):  # bands of 5 rows, wrapping around the ring's 12
        ring.write(slice(y, y + 5), slice(0, 7), image[y: y + 5])
        top = max(0, y + 5 - 12)
        np.testing.assert_array_equal(ring.read(slice(top, y + 5), slice(2, 6)), image[top: y + 5, 2:6])
    with pytest.raises(RuntimeError, match="rows 30-40 are not in the ring, which holds rows 38-50"):
        ring.read(slice(30, 40), slice(0, 7))  # written over
    ring.close()
    assert list(tmp_path.iterdir()) == []
    assert not isinstance(Buffers(None).rows(10, 12, (7, 3)), RowRing)  # no smaller than the image


def test_discarded_rows_give_their_disk_blocks_back(tmp_path):
    buffer = ImageBuffer.on_disk(str(tmp_path), (64, 1024, 3))
    buffer.write(slice(0, 64), slice(0, 1024), np.ones((64, 1024, 3), np.float32))
    os.fsync(buffer._fd)
    before = os.stat(buffer.path).st_blocks
    buffer.discard(slice(0, 48))
    assert os.stat(buffer.path).st_blocks <= before // 4 + 8
    np.testing.assert_array_equal(buffer.read(slice(40, 64), slice(0, 1024))[:8], 0)  # a hole reads as zeros
    np.testing.assert_array_equal(buffer.read(slice(48, 64), slice(0, 1024)), 1)
    buffer.close()


def test_scratch_disk_peaks_where_planning_says(models, content, wct, tmp_path):
    """`planning.buffer_bytes` is what the streamed path checks free disk against: the blocks the
    run's files take, seen after every tile, must reach it (a few tiles' writes may be in flight)
    and never pass it."""
    used = []

    def progress(p):
        used.append(sum(f.stat().st_blocks * 512 for f in tmp_path.rglob("*.raw")))

    TiledEngine(models, 128, disk_buffer=True, temp_dir=str(tmp_path), progress=progress).stylize(content, wct)
    need = planning.buffer_bytes(models, (5, 4, 3, 2, 1), H, W, 128)
    assert 0.9 * need <= max(used) <= need + 4 * 4096  # at most a block more per file


def test_each_pass_after_a_render_starts_on_a_trimmed_heap(models, content, wct, monkeypatch):
    """A pass that starts once a render is over (stage 1 after stage 2, which are not fused) must
    not run its first window on the render's free blocks: the heap is trimmed in between."""
    events = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: events.append("trim"))
    hook = models.encoder(1).register_forward_pre_hook(lambda *_: events.append("encode 1"))
    try:
        TiledEngine(models, 128, progress=lambda p: events.append((p.stage, p.step))).stylize(content, wct)
    finally:
        hook.remove()
    last_of_stage_2 = max(i for i, e in enumerate(events) if e == (2, "render"))
    first_of_stage_1 = events.index("encode 1")
    assert last_of_stage_2 < first_of_stage_1
    assert "trim" in events[last_of_stage_2 + 1: first_of_stage_1]


def test_progress_reports_every_tile_with_a_finite_eta(models, content, adain):
    reports = []
    TiledEngine(models, 128, progress=reports.append).stylize(content, adain)
    render = [p for p in reports if p.step == "render"]
    assert [p.tile for p in render] == list(range(1, render[0].tiles + 1))
    assert all(p.stage == 4 and p.mp_per_s > 0 and np.isfinite(p.eta_s) for p in reports)
    assert reports[-1].eta_s == 0 and "stage 4 render: tile" in str(reports[-1])


# The child stylizes a 12.6 MP image (4096 x 3072, the photo repeated) at stage 1 only, to stay
# fast on two cores (about 10 s): stage 1 works at full resolution with 24 channels, so a
# whole-image run peaks at 3.3 GB there (measured), the tiled one at 0.8 GB (0.55 GB is torch).
MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from cdcore import tiling
    from cdcore.io.images import read_image
    from cdcore.models.modelset import load_model_set
    from cdcore.transfer.stylize import style_statistics, to_tensor
    models = load_model_set(sys.argv[1], stages=(1,))
    photo = read_image(sys.argv[2]).rgb
    style = style_statistics(models, to_tensor(photo), "wct", (1,))
    content = np.tile(photo, (6, 8, 1))
    out = tiling.TiledEngine(models, 512, disk_buffer=True).stylize(content, style, 1.0, (1,))
    # VmHWM, not ru_maxrss: after a fork+exec from a big parent (pytest), ru_maxrss reports the
    # parent's peak, which Linux carries across exec.
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"shape": out.shape, "peak": hwm * 1024}))
""")


@pytest.mark.integration  # a subprocess
def test_tiled_memory_stays_bounded_on_a_12_megapixel_image():
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(MODELS), str(CONTENT / "bridge_512.jpg")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["shape"] == [3072, 4096, 3]
    assert result["peak"] < 1.2e9, f"peak RSS {result['peak'] / 1e9:.2f} GB"


def test_stroke_scale_runs_coarse_levels_small_and_fine_levels_full_size(models, content, wct):
    """Reference: coarse levels whole-image on the Lanczos-downscaled content, bilinear upsampling
    (torch's), fine levels whole-image at full size."""
    small_size = (round(W / 2.5), round(H / 2.5))
    small = np.array(Image.fromarray(content).resize(small_size, Image.Resampling.LANCZOS))
    coarse = stylize(models, to_tensor(small), wct, 1.0, (5, 4, 3))
    upsampled = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    expected = to_uint8(stylize(models, upsampled, wct, 1.0, (2, 1)))
    for tile_size in (0, 112):
        got = TiledEngine(models, tile_size).stylize(content, wct, 1.0, stroke_scale=2.5)
        assert psnr(got, expected) >= 45.0


def test_stroke_scale_one_is_plain_tiling(models, content, adain):
    scaled = TiledEngine(models, 128).stylize(content, adain, stroke_scale=1)
    np.testing.assert_array_equal(scaled, TiledEngine(models, 128).stylize(content, adain))


@pytest.mark.parametrize("call,match", [
    (lambda m, c, s: TiledEngine(m, -1).stylize(c, s), "tile size"),
    (lambda m, c, s: TiledEngine(m, 64).stylize(c, s, out=np.empty((5, 5, 3))), "out must"),
    (lambda m, c, s: TiledEngine(m, 64).stylize(c[..., :2], s), "expected an"),
    (lambda m, c, s: TiledEngine(m).stylize(c, s, stroke_scale=0.5), "stroke scale"),
    (lambda m, c, s: TiledEngine(m).stylize(np.float32(c / 255), s, stroke_scale=2), "needs uint8"),
    (lambda m, c, s: TiledEngine(m).stylize(c, s, levels=(5, 4), stroke_scale=2), "fine"),
    (lambda m, c, s: TiledEngine(m).stylize(c, s, levels=(1, 5), stroke_scale=2), "coarse"),
    (lambda m, c, s: TiledEngine(m).style_statistics(c, "nst"), "method"),
    (lambda m, c, s: tiling.choose_tile_size(0, 10), "size"),
])
def test_bad_arguments_raise_value_error(models, content, wct, call, match):
    with pytest.raises(ValueError, match=match):
        call(models, content, wct)


def test_choose_tile_size_from_available_memory():
    assert tiling.choose_tile_size(1000, 1000, "cpu", available=16 << 30) == 0
    tile = tiling.choose_tile_size(10240, 4096, "cpu", available=4 << 30)
    assert 0 < tile <= tiling.MAX_CPU_TILE and tile % 64 == 0
    assert tiling.choose_tile_size(10240, 4096, "cpu", available=1 << 20) == tiling.MIN_TILE
    small = tiling.choose_tile_size(10240, 4096, "cpu", channels=64, available=1 << 30)
    assert 0 < small < tiling.choose_tile_size(10240, 4096, "cpu", channels=16, available=1 << 30)


@pytest.mark.parametrize("name", ["out.png", "out.tif", "out.jpg", "out.webp"])
def test_canvas_writes_atomically_in_every_format(tmp_path, name):
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    canvas = Canvas(37, 53)
    canvas.rgb[...] = rgb
    canvas.save(str(tmp_path / name))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    back = read_image(str(tmp_path / name))
    assert back.rgb.shape == rgb.shape and back.alpha is None
    if name.endswith((".png", ".tif")):
        np.testing.assert_array_equal(back.rgb, rgb)


def test_canvas_carries_alpha_where_the_format_keeps_it(tmp_path):
    alpha = np.tile(np.arange(53, dtype=np.uint8), (37, 1))
    canvas = Canvas(37, 53, alpha=alpha)
    canvas.rgb[...] = 200
    canvas.save(str(tmp_path / "a.png"))
    canvas.save(str(tmp_path / "a.jpg"))
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")).alpha, alpha)
    assert read_image(str(tmp_path / "a.jpg")).alpha is None
    with pytest.raises(ImageError, match="unsupported output format"):
        canvas.save(str(tmp_path / "a.bmp"))
