"""A streamed run's temporary directory: its free space checked first, removed afterwards."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..io import storage, tempdirs
from ..io.images import ImageError
from .headers import extension


class Scratch:
    """A run's temporary directory, made by `scratch_space`."""

    def __init__(self, directory: str):
        self.directory = directory

    def require(self, need: int, what: str, directory: str | None = None) -> None:
        """Raise an ImageError naming the path and the bytes when `directory` (default this one) has
        less than `need` bytes free."""
        require_space(directory or self.directory, need, what)

    def local_input(self, uri: str) -> Path:
        """A local path of `uri`: the file itself, or a download of the object into this directory
        (after checking that it fits)."""
        if storage.is_local(uri):
            path = storage.local_path(uri)
            if not path.exists():
                raise ImageError(f"{uri}: no such file or object")
            return path
        size = storage.read_head(uri, 1).size
        self.require(size, f"downloading {uri}")
        path = Path(self.directory, "input" + extension(uri))
        storage.download(uri, path)
        return path


def free_bytes(directory: str) -> int:
    return shutil.disk_usage(directory).free


def require_space(directory: str, need: int, what: str) -> None:
    free = free_bytes(directory)
    if free < need:
        raise ImageError(f"not enough space in {directory} for {what}: it needs about {need / 1e9:.2f} GB "
                         f"({need} bytes), {free} bytes are free (point TMPDIR at a larger disk)")


@contextmanager
def scratch_space(parent: str | None = None) -> Iterator[Scratch]:
    """A run's scratch under `parent` (default the system's: $TMPDIR), removed when the run ends,
    also on failure; making it removes the scratch of runs that were killed (`tempdirs`)."""
    with tempdirs.run_directory(tempdirs.STREAM, parent) as directory:
        yield Scratch(directory)
