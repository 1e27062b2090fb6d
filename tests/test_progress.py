"""Progress a person sees: one line rewritten on a terminal, periodic lines in a log."""
import io

from cdcore.statusline import StatusLine
from jobs.stylize.progress import JobProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_rewritten_and_messages_go_above_it():
    out = Terminal()
    line = StatusLine(out, every_tty=0.0)
    line.show("3/10 rows")
    line.show("4/10 rows")
    line.say("w0: died")  # the status steps aside for the message ...
    line.show("5/10 rows")  # ... and comes back below it
    line.end()
    assert out.getvalue() == "\r\033[K3/10 rows\r\033[K4/10 rows\r\033[Kw0: died\n\r\033[K5/10 rows\n"


def test_in_a_log_lines_come_at_most_every_interval():
    out = io.StringIO()
    line = StatusLine(out, every_log=3600.0)
    line.show("too soon")
    line.show("forced", force=True)
    line.say("a message")
    line.end()
    assert out.getvalue() == "forced\na message\n"  # no carriage returns, no escape codes


def test_job_progress_on_a_terminal_ends_with_its_last_line():
    out = Terminal()
    progress = JobProgress(2, out=out)
    for status in ("ok", "failed"):
        progress.add({"status": status, "width": 10, "height": 10, "actor": "w0", "failure": "permanent",
                      "error": "x: broken", "content": "x", "style": "s", "output": "o", "row": 0})
    progress.maybe_print(force=True)
    text = out.getvalue()
    assert text.startswith("\r\033[K") and text.endswith("\n") and text.count("\n") == 1
    assert "2/2 rows (1 ok, 0 skipped, 1 failed)" in text and "ETA 0 s" in text
    assert progress.eta_seconds() == 0
