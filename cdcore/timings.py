"""Where one stylized file's time goes, phase by phase (no torch here: the job's driver and report
read these names without loading the networks)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

PHASES = ("read_s", "decode_s", "style_s", "stylize_s", "encode_s", "write_s")


@dataclass
class Timings:
    """Seconds one file spent in each phase of `Stylist.stylize_file`: reading the content's bytes,
    decoding (and resizing) it, preparing the style (0 when the cache had it), stylizing on the
    device, encoding the result and writing it. The job's results table has a column for each."""

    read_s: float = 0.0
    decode_s: float = 0.0
    style_s: float = 0.0
    stylize_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - started)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PHASES}
