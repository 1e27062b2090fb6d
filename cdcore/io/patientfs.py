"""A pyarrow filesystem that waits out storage outages instead of failing.

Ray Train writes its run state (checkpoint_manager_snapshot.json, a storage marker) and reads
checkpoints back through the pyarrow filesystem a run is given, and one failed call fails the
whole training run. pyarrow's own S3 retries ride out seconds of an outage (6 tries: about 14 s),
and in Ray Train's controller and workers, which get the filesystem pickled, less: an unpickled
S3FileSystem has lost its retry strategy and gives up after 3 tries, in 2 to 3 s (pyarrow 26). `patient(fs)` wraps a filesystem so that every call failing transiently (classified as
cdcore.io.storage classifies S3 answers: no answer, 5xx, "slow down") is tried again, with backoff,
for up to `patience_s` seconds; the wrapper survives pickling.

Transfers are whole, so that a retry never continues half of one: a file is read into memory in
one call, and a written stream is held in memory and sent in one piece when it is closed. That
suits run state and checkpoints (kilobytes to some hundred megabytes), not terabyte files.
"""
from __future__ import annotations

import io
import logging
import re
import time
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from cdcore.io import storage

log = logging.getLogger(__name__)
T = TypeVar("T")

PATIENCE_S = 300.0  # how long one call keeps trying through an outage before its error stands
FIRST_DELAY_S = 1.0  # backoff between tries: doubling from this ...
MAX_DELAY_S = 30.0  # ... up to this

# pyarrow reports S3 failures as "AWS Error SLOW_DOWN during PutObject operation: ..." or, for
# an answer the SDK has no name for, "AWS Error UNKNOWN (HTTP status 503) during ...".
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
# The SDK's names for getting no answer at all (refused, reset or closed connections, timeouts)
# and for a server-side failure it reports without a status.
_NO_ANSWER = {"NETWORK_CONNECTION", "REQUEST_TIMEOUT", "INTERNAL_FAILURE"}


def arrow_error(error: OSError) -> storage.StorageError:
    """`error`, raised by a pyarrow filesystem, as a StorageError that says whether it is transient.
    The S3 SDK's error names are S3's error codes in upper snake case (SLOW_DOWN is SlowDown), so
    cdcore.io.storage's list of transient codes decides; errors that are not S3 answers are not."""
    if isinstance(error, storage.StorageError):
        return error
    text = " ".join(str(error).split())
    found = _AWS_ERROR.search(text)
    if isinstance(error, FileNotFoundError) or not found:
        return storage.StorageError(text)
    name, status = found.group(1), int(found.group(2)) if found.group(2) else None
    code = name.title().replace("_", "")
    return storage.StorageError(text, name in _NO_ANSWER or storage.transient_answer(code, status))


def patiently(action: Callable[[], T], patience_s: float = PATIENCE_S) -> T:
    """`action()`, tried again with backoff while it fails transiently (cdcore.io.storage's
    StorageErrors, or pyarrow's errors as `arrow_error` classifies them), for up to `patience_s`
    seconds; any other error, or a transient one past the deadline, is raised as it came."""
    delay, deadline = FIRST_DELAY_S, time.monotonic() + patience_s
    while True:
        try:
            return action()
        except OSError as e:
            if not storage.is_transient(arrow_error(e)) or time.monotonic() + delay > deadline:
                raise
            log.warning("storage did not answer (%s); trying again in %.0f s", " ".join(str(e).split()), delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)


class _WholeWrite(io.BytesIO):
    """A written file held in memory and sent to the filesystem in one patient call on close().

    A stream dropped without close() sends nothing: unlike pyarrow's own S3 streams, which close,
    and so complete, an upload when they are destroyed, a write that was not finished is not
    committed."""

    def __init__(self, send: Callable[[bytes], None]):
        super().__init__()
        self._send = send

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()  # closed even if sending fails, so a retried close cannot send twice
            self._send(data)

    def __del__(self) -> None:
        io.BytesIO.close(self)  # garbage, not a commit: see the class docstring


class PatientHandler(pafs.FileSystemHandler):
    """Delegates every call to `fs`, trying transient failures again for up to `patience_s`
    seconds (see the module docstring). Use through `patient()`."""

    def __init__(self, fs: pafs.FileSystem, patience_s: float = PATIENCE_S):
        self.fs = fs
        self.patience_s = patience_s

    def _try(self, action: Callable[[], T]) -> T:
        return patiently(action, self.patience_s)

    def __eq__(self, other) -> bool:
        return isinstance(other, PatientHandler) and self.fs.equals(other.fs)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return f"patient+{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._try(lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._try(lambda: self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self._try(lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self._try(lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._try(lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        self._try(lambda: self.fs.delete_dir_contents("", accept_root_dir=True))

    def delete_file(self, path: str) -> None:
        self._try(lambda: self.fs.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        self._try(lambda: self.fs.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        self._try(lambda: self.fs.copy_file(src, dest))

    def _read(self, path: str) -> pa.BufferReader:
        def whole() -> pa.Buffer:
            # A random-access file reads the rest in one GET; an input stream asks for many small
            # ranges, each a chance for the whole read to start again.
            with self.fs.open_input_file(path) as file:
                return file.read_buffer()
        return pa.BufferReader(self._try(whole))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._read(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._read(path)

    def open_output_stream(self, path: str, metadata) -> pa.NativeFile:
        def send(data: bytes) -> None:
            def put() -> None:
                with self.fs.open_output_stream(path, metadata=metadata) as out:
                    out.write(data)
            self._try(put)
        return pa.PythonFile(_WholeWrite(send), mode="w")

    def open_append_stream(self, path: str, metadata) -> pa.NativeFile:
        # An append cannot be made whole (S3 has none anyway): only opening it waits out an outage.
        return self._try(lambda: self.fs.open_append_stream(path, metadata=metadata))


def patient(fs: pafs.FileSystem, patience_s: float = PATIENCE_S) -> pafs.FileSystem:
    """`fs`, waiting out storage outages of up to `patience_s` seconds per call."""
    return pafs.PyFileSystem(PatientHandler(fs, patience_s))
