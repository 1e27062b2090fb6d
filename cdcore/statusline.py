"""Progress a person sees: one line rewritten in place on a terminal, a new line now and then in a log."""
from __future__ import annotations

import sys
import time
from typing import TextIO

_ERASE = "\r\033[K"  # to the line's start, and clear it


class StatusLine:
    """Shows progress text on `out` (stderr by default).

    On a terminal each `show` rewrites one line, at most every `every_tty` seconds; elsewhere (a
    file, a pipe, `ray job submit`'s log) each makes a new line, at most every `every_log` seconds,
    so a log gets periodic lines and no carriage returns. `say` prints a message above the status
    line; `end` leaves the last status on its own line.
    """

    def __init__(self, out: TextIO | None = None, every_tty: float = 0.5, every_log: float = 10.0):
        self.out = out or sys.stderr
        isatty = getattr(self.out, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = every_tty if self.tty else every_log
        self._last = time.monotonic()
        self._shown = False  # a status is on the terminal's current line

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def show(self, text: str, force: bool = False) -> None:
        """Show `text` if the last one is old enough (or `force`)."""
        if not (force or self.due()):
            return
        self._last = time.monotonic()
        if self.tty:
            self.out.write(_ERASE + text)
            self.out.flush()
            self._shown = True
        else:
            print(text, file=self.out, flush=True)

    def clear(self) -> None:
        """Take the status off the terminal's line, so a message can take its place; the next
        `show` draws it again (force it to draw at once)."""
        if self._shown:
            self.out.write(_ERASE)
            self.out.flush()
            self._shown = False
            self._last = 0.0  # redraw at the next chance

    def say(self, message: str) -> None:
        self.clear()
        print(message, file=self.out, flush=True)

    def end(self) -> None:
        if self._shown:
            self.out.write("\n")
            self.out.flush()
            self._shown = False
