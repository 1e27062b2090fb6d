"""Run directories carry their owner, and making one sweeps those of killed runs (cdcore.io.tempdirs)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from cdcore.io import tempdirs
from cdcore.streaming.scratch import scratch_space
from cdcore.tiling.buffers import Buffers

ROOT = Path(__file__).resolve().parents[1]


def _killed_run(parent: Path, prefix: str = tempdirs.STREAM) -> Path:
    """A real process that makes a run directory, writes a buffer into it and dies by SIGKILL."""
    code = ("import os, signal, sys; from cdcore.io import tempdirs; "
            f"d = tempdirs.make({prefix!r}, sys.argv[1]); open(os.path.join(d, 'x.raw'), 'wb').write(bytes(4096)); "
            "print(d, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(parent)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    left = Path(proc.stdout.strip())
    assert (left / "x.raw").exists()  # SIGKILL leaves it: nothing in the process could run
    return left


def test_a_killed_runs_scratch_is_swept_by_the_next_run(tmp_path):
    stream, tiles = _killed_run(tmp_path), _killed_run(tmp_path, tempdirs.TILES)
    with scratch_space(str(tmp_path)) as scratch:
        assert not stream.exists() and not tiles.exists()
        assert Path(scratch.directory).exists()
    assert list(tmp_path.iterdir()) == []


def test_the_engine_buffers_sweep_too(tmp_path):
    left = _killed_run(tmp_path, tempdirs.TILES)
    with Buffers.placed("disk", str(tmp_path)) as buffers:
        buffers.new((8, 8, 3), np.float32).close()
        assert not left.exists()
    assert list(tmp_path.iterdir()) == []


def test_live_foreign_and_unowned_directories_stay(tmp_path):
    """A live run's (this process), another host's (a shared disk) and one without an owner file
    (being made, or not ours) are never taken."""
    live = Path(tempdirs.make(tempdirs.STREAM, str(tmp_path)))
    foreign = tmp_path / "cdcore-stream-foreign"
    foreign.mkdir()
    (foreign / tempdirs.OWNER).write_text(f"not-{socket.gethostname()} 999999999 1")
    unowned = tmp_path / "cdcore-tiles-unowned"
    unowned.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    assert tempdirs.sweep(str(tmp_path)) == []
    assert all(p.exists() for p in (live, foreign, unowned, other))


def test_a_reused_pid_does_not_keep_a_dead_runs_directory(tmp_path):
    """The owner's pid now belongs to another process (here: this one, started at another time)."""
    reused = tmp_path / "cdcore-stream-reused"
    reused.mkdir()
    (reused / tempdirs.OWNER).write_text(f"{socket.gethostname()} {os.getpid()} 1")
    assert tempdirs.sweep(str(tmp_path)) == [str(reused)]
    assert not reused.exists()
