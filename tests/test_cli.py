"""The `cdcore` command, run in-process through `main(argv)` and once as a real subprocess."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cdcore.cli import main
from cdcore.io.images import read_image
from cdcore.models.nets import Decoder, student_widths
from shared import CONTENT, MODELS, STYLE

STYLE_IMG = str(STYLE / "style_a_570.jpg")


@pytest.fixture
def small_content(tmp_path):
    path = tmp_path / "content.png"
    rgb = np.array(Image.open(CONTENT / "harbor_420.jpg").resize((70, 53)))
    alpha = np.tile(np.linspace(0, 255, 70).astype(np.uint8), (53, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return str(path)


def stylize(*args, models=MODELS):
    return main(["stylize", *map(str, args), "--models", str(models), "--style-size", "128"])


def test_stylize_writes_same_size_output_and_keeps_alpha(small_content, tmp_path):
    out = tmp_path / "nested" / "out.png"
    assert stylize(small_content, STYLE_IMG, "-o", out, "--alpha", "0.7", "--levels", "3,2,1") == 0
    pic = read_image(str(out))
    assert pic.size == (70, 53)
    np.testing.assert_array_equal(pic.alpha, read_image(small_content).alpha)
    assert [p.name for p in out.parent.iterdir()] == ["out.png"]  # no temporary files left


@pytest.mark.parametrize("method", ["adain", "gatys"])
def test_other_methods(small_content, tmp_path, method):
    out = tmp_path / "out.jpg"
    assert stylize(small_content, STYLE_IMG, "-o", out, "--method", method, "--iterations", "3") == 0
    assert read_image(str(out)).size == (70, 53)


def bad_files(tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((CONTENT / "bridge_512.jpg").read_bytes()[:20000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (64, 64)).save(lab)
    return {"missing": (tmp_path / "nope.jpg", "no such file"), "truncated": (truncated, "truncated"),
            "not an image": (text, "not a readable image"), "mode": (lab, "unsupported image mode LAB")}


@pytest.mark.parametrize("case", ["missing", "truncated", "not an image", "mode"])
@pytest.mark.parametrize("role", ["content", "style"])
def test_bad_inputs_exit_2_naming_the_file(tmp_path, capsys, case, role):
    bad, reason = bad_files(tmp_path)[case]
    out = tmp_path / "out.png"
    args = (bad, STYLE_IMG) if role == "content" else (CONTENT / "harbor_420.jpg", bad)
    assert stylize(*args, "-o", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and reason in err
    assert not out.exists()


def test_too_many_pixels(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert stylize(CONTENT / "harbor_420.jpg", STYLE_IMG, "-o", out, "--max-pixels", "100000") == 2
    assert "harbor_420.jpg: 420x420 = 0.2 MP is more than the limit" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def model_copy(tmp_path):
    dest = tmp_path / "models"
    shutil.copytree(MODELS, dest)
    for f in dest.iterdir():
        f.chmod(0o644)
    return dest


@pytest.mark.parametrize("damage,reason", [
    ("missing", "model file missing"),
    ("garbage", "not a readable model file"),
    ("swapped", "layers do not match stage 3"),
    ("narrow", "do not invert encoder3.pth"),
])
def test_broken_model_directory(model_copy, tmp_path, capsys, damage, reason):
    target = model_copy / ("decoder3.pth" if damage == "narrow" else "encoder3.pth")
    if damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"PK\x03\x04 not a zip archive")
    elif damage == "swapped":
        shutil.copy(model_copy / "encoder2.pth", target)
    else:  # the decoder of a narrower stage-3 student
        torch.save({"model": Decoder(3, student_widths(8)).state_dict()}, target)
    out = tmp_path / "out.png"
    assert stylize(CONTENT / "harbor_420.jpg", STYLE_IMG, "-o", out, models=model_copy) == 2
    err = capsys.readouterr().err
    assert str(target) in err and reason in err, err
    assert not out.exists()


@pytest.mark.integration  # a subprocess
def test_real_process_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "CDCORE_MODELS": str(MODELS)}
    proc = subprocess.run([sys.executable, "-m", "cdcore.cli", "stylize", str(tmp_path / "none.jpg"), STYLE_IMG,
                           "-o", str(tmp_path / "o.png")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("cdcore: error: ") and "Traceback" not in proc.stderr


def test_models_fetch_verifies_checksums(tmp_path, capsys):
    dest = tmp_path / "fetched"
    assert main(["models", "fetch", "--dest", str(dest), "--source", MODELS.as_uri()]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in MODELS.iterdir())
    assert main(["models", "info", str(dest)]) == 0
    assert "stages   1,2,3,4,5" in capsys.readouterr().out


def test_models_fetch_rejects_a_corrupted_file(model_copy, tmp_path, capsys):
    data = bytearray((model_copy / "encoder4.pth").read_bytes())
    data[-100] ^= 0xFF
    (model_copy / "encoder4.pth").write_bytes(bytes(data))
    dest = tmp_path / "fetched"
    assert main(["models", "fetch", "--dest", str(dest), "--source", str(model_copy)]) == 2
    assert "encoder4.pth: sha256 mismatch" in capsys.readouterr().err
    assert not (dest / "encoder4.pth").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_tiled_and_whole_image_agree(small_content, tmp_path):
    whole, tiled, strokes = tmp_path / "whole.png", tmp_path / "tiled.png", tmp_path / "strokes.png"
    assert stylize(small_content, STYLE_IMG, "-o", whole, "--tile-size", "0") == 0
    assert stylize(small_content, STYLE_IMG, "-o", tiled, "--tile-size", "32") == 0
    assert stylize(small_content, STYLE_IMG, "-o", strokes, "--stroke-scale", "1.5") == 0
    a, b = read_image(str(whole)), read_image(str(tiled))
    assert np.abs(a.rgb.astype(int) - b.rgb).max() <= 1
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert read_image(str(strokes)).size == a.size


def test_s3_inputs_and_output(s3_bucket):
    from cdcore.io import storage

    content, style, out = (f"{s3_bucket}/in/content.jpg", f"{s3_bucket}/in/style.jpg",
                           f"{s3_bucket}/out/result.webp")
    storage.upload(str(CONTENT / "harbor_420.jpg"), content)
    storage.upload(STYLE_IMG, style)
    assert stylize(content, style, "-o", out, "--content-size", "96") == 0
    assert read_image(out).size == (96, 96)


def test_local_output_gets_ordinary_permissions(small_content, tmp_path):
    out = tmp_path / "out.jpg"
    assert stylize(small_content, STYLE_IMG, "-o", out, "--levels", "1") == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.integration  # a subprocess
def test_sigterm_removes_the_runs_scratch_files(tmp_path):
    """`kill` or a scheduler stops a streamed run: its scratch directory goes, and no output."""
    big = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4500), (90, 120, 150)).save(big)  # 27 MP: streamed through scratch files
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out.jpg"
    env = {**os.environ, "CDCORE_MODELS": str(MODELS), "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "cdcore.cli", "stylize", str(big), STYLE_IMG, "-o", str(out),
                             "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(scratch.glob("cdcore-stream-*/*.raw")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert any(scratch.glob("cdcore-stream-*/*.raw")), "the run never made its scratch files"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    assert list(scratch.glob("cdcore-*")) == []  # (torch may keep a cache of its own there)
    assert not out.exists()
