"""jobs.report: a self-contained HTML page from a job's results parts."""
import base64
import io
import re

from PIL import Image

from jobs.report import main
from jobs.stylize.results import ResultsWriter


def image(path, size, colour):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def record(row, content, style, output, status, error=None):
    ok = status == "ok"
    return {"row": row, "content": content, "style": style, "output": output, "method": "wct", "alpha": 1.0,
            "status": status, "error": error, "width": 900 if ok else None, "height": 600 if ok else None,
            "seconds": 2.0 if ok else 0.1, "stylize_s": 1.5 if ok else None, "attempts": 1}


def test_report_summarises_groups_failures_and_shows_thumbnails(tmp_path):
    style = image(tmp_path / "style.jpg", (640, 480), (200, 30, 30))
    contents = [image(tmp_path / f"c{i}.jpg", (900, 600), (0, 40 * i, 90)) for i in range(4)]
    outputs = [image(tmp_path / f"o{i}.jpg", (900, 600), (90, 40 * i, 0)) for i in range(4)]
    results = str(tmp_path / "results")
    first = ResultsWriter(results, "20260101T000000000000Z")
    first.add(record(0, contents[0], style, outputs[0], "ok"))
    for i in (1, 2):
        first.add(record(i, contents[i], style, outputs[i], "failed", f"{contents[i]}: truncated or corrupt image data"))
    first.add(record(3, contents[3], style, outputs[3], "failed", f"{style}: no such file or object"))
    first.close()
    rerun = ResultsWriter(results, "20260102T000000000000Z")  # a later run did row 1
    rerun.add(record(1, contents[1], style, outputs[1], "ok"))
    rerun.close()

    assert main([results, "-o", str(tmp_path / "report.html"), "--thumbnail", "120"]) == 0
    page = (tmp_path / "report.html").read_text()
    numbers = dict(re.findall(r"<tr><th>([^<]+)</th><td class='num'>([^<]+)</td></tr>", page))
    assert numbers["rows"] == "4" and numbers["ok"] == "2" and numbers["failed"] == "2" and numbers["runs"] == "2"
    assert numbers["megapixels stylized"] == "1.1"  # two ok rows of 900 x 600
    assert numbers["stylize seconds per ok row"] == "1.500" and numbers["read seconds per ok row"] == "0.000"
    # Failures by reason, the URIs under each; row 1's failure was superseded by the rerun.
    assert "truncated or corrupt image data" in page and contents[2] in page and contents[1] not in page
    assert "no such file or object" in page
    thumbs = re.findall(r"src='data:image/jpeg;base64,([^']+)'", page)
    assert len(thumbs) == 6  # content, style, output for each of the two ok rows
    assert all(max(Image.open(io.BytesIO(base64.b64decode(t))).size) <= 120 for t in thumbs)
    assert "http" not in page.replace(str(tmp_path), "")  # self-contained


def test_no_results_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "none"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no results parts there" in capsys.readouterr().err


def test_report_draws_rows_per_minute_and_the_phase_breakdown(tmp_path):
    """From the finish times of the latest run's records and the phase seconds of its summary."""
    import datetime as dt
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import charts
    from jobs.stylize.results import SCHEMA

    run = "20260103T000000000000Z"
    start = dt.datetime(2026, 1, 3, tzinfo=dt.timezone.utc)
    # minute 0: 3 ok; minute 1: 1 failed; minute 2: 1 ok and 1 skipped
    at = [(0, "ok"), (10, "ok"), (50, "ok"), (70, "failed"), (130, "ok"), (150, "skipped")]
    records = [{**record(i, f"c{i}.jpg", "s.jpg", f"o{i}.jpg", status, "c.jpg: broken" if status == "failed" else None),
                "run": run, "finished": start + dt.timedelta(seconds=s)} for i, (s, status) in enumerate(at)]
    results = tmp_path / "results"
    results.mkdir()
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), results / f"part-{run}-00000.parquet")
    phases = {"read": 2.0, "decode": 1.0, "style": 0.5, "stylize": 8.0, "encode": 1.0, "write": 0.5}
    summary = {"run": run, "seconds": 150.0, "rows": {"ok": 4, "skipped": 1, "failed": 1}, "megapixels_per_s": 0.1,
               "phase_seconds": phases, "device_busy_share": 0.5, "actors_started": 2, "actors_replaced": 0,
               "transient_failures": 3}
    (results / f"_summary-{run}.json").write_text(json.dumps(summary))

    assert main([str(results), "-o", str(tmp_path / "report.html"), "--sample", "0"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert f"Latest run {run}" in page and "devices busy 50%" in page and "3 transient failures retried" in page
    per_minute, breakdown = [Image.open(io.BytesIO(base64.b64decode(p))).convert("RGB")
                             for p in re.findall(r"src='data:image/png;base64,([^']+)'", page)]

    # Bars of 5 s from the run's start (its id); rows per minute = rows in a bar x 12.
    width, rates = charts.per_minute([r["finished"].timestamp() for r in records], [s for _, s in at],
                                     start.timestamp())
    assert width == 5 and len(rates["ok"]) == 31
    assert {s: {b: v for b, v in enumerate(r) if v} for s, r in rates.items()} == {
        "ok": {0: 12, 2: 12, 10: 12, 26: 12}, "failed": {14: 12}, "skipped": {30: 12}}
    left, top, right, bottom = charts.LEFT, charts.TOP, charts.SIZE[0] - charts.RIGHT, charts.SIZE[1] - charts.BOTTOM
    step = (right - left) / 31

    def column(b: int) -> list[tuple[int, int, int]]:
        return [per_minute.getpixel((int(left + (b + 0.5) * step), y)) for y in range(top + 1, bottom)]

    ok, failed, skipped = (charts.STATUS_COLOURS[s] for s in ("ok", "failed", "skipped"))
    assert abs(column(0).count(ok) - (bottom - top)) <= 2 and abs(column(14).count(failed) - (bottom - top)) <= 2
    assert abs(column(30).count(skipped) - (bottom - top)) <= 2 and set(column(5)) == {(255, 255, 255)}

    # One bar per phase, as long as its seconds (stylize, the most, is the longest).
    rows = (bottom - top) / len(phases)
    lengths = {}
    for i, (phase, colour) in enumerate(zip(phases, charts.PHASE_COLOURS)):
        y = int(top + (i + 0.5) * rows)
        lengths[phase] = sum(breakdown.getpixel((x, y)) == colour for x in range(left, right))
    for phase, seconds in phases.items():
        assert abs(lengths[phase] / lengths["stylize"] - seconds / 8.0) < 0.01, (phase, lengths)
