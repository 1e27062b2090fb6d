"""Temporary directories of runs, and the sweep of those left by runs that were killed.

A run removes its scratch when it ends, also on an error or SIGTERM, but a process killed with
SIGKILL (the OOM killer, a Ray actor torn down with its node, `kill -9`) cannot, and a gigapixel
run's scratch is tens of GB. So every directory made here holds a small OWNER file naming its host,
process and that process's start time, and making one first removes the directories beside it,
with these prefixes, whose owner was on this host and is gone. A pid that was reused by another
process since is told apart by its start time (on Linux), so a live run's scratch is never taken.
Directories without an owner file (being made, or from another program) are left alone.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STREAM, TILES = "cdcore-stream-", "cdcore-tiles-"  # a streamed run's scratch; the tiled engine's buffers
PREFIXES = (STREAM, TILES)
OWNER = ".cdcore-owner"


def _start_time(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot ('' where /proc is missing, or the
    process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22; the name may hold spaces
    except (OSError, IndexError):
        return ""


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}"


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _start_time(pid)
    return not (started and now and now != started)


def _stale(directory: Path) -> bool:
    try:
        host, pid, *started = (directory / OWNER).read_text().split()
        return host == socket.gethostname() and not _alive(int(pid), "".join(started))
    except (OSError, ValueError):
        return False


def sweep(parent: str | None = None) -> list[str]:
    """Remove the run directories in `parent` (default the system's temporary directory) whose
    owner process on this host is gone. Returns their paths."""
    parent_dir = Path(parent or tempfile.gettempdir())
    try:
        candidates = [p for p in parent_dir.iterdir()
                      if p.name.startswith(PREFIXES) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    removed = []
    for directory in candidates:
        if _stale(directory):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(str(directory))
    return removed


def make(prefix: str, parent: str | None = None) -> str:
    """A new directory for this process's run, after sweeping those of dead runs beside it."""
    sweep(parent)
    directory = tempfile.mkdtemp(prefix=prefix, dir=parent)
    Path(directory, OWNER).write_text(_owner())
    return directory


@contextmanager
def run_directory(prefix: str, parent: str | None = None) -> Iterator[str]:
    """`make`, removed on leaving, also on failure."""
    directory = make(prefix, parent)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
