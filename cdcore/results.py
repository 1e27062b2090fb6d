"""What a stylization returns and raises, for every front end: below the pipeline and the streamed
path alike, which both return a `Stylized` and raise a `StylizeError`."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

from .timings import Timings


class StylizeError(ValueError):
    """A content/style pair could not be stylized; the message names the input at fault (the
    cause may still be no fault of the input, such as storage that did not answer)."""


@contextlib.contextmanager
def naming(name: str) -> Iterator[None]:
    """Re-raise any error inside as a one-line StylizeError that names `name` (once)."""
    try:
        yield
    except StylizeError:
        raise
    except Exception as e:  # decoding, storage, torch: each ends this image, never the caller
        text = " ".join(str(e).split()) or type(e).__name__
        raise StylizeError(text if name in text else f"{name}: {text}") from e


@dataclass(frozen=True)
class Stylized:
    """What `stylize_file` wrote: the output's size, and where the time went."""

    width: int
    height: int
    timings: Timings = field(default_factory=Timings)
