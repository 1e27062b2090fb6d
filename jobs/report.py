"""`python -m jobs.report RESULTS -o report.html`: one self-contained HTML page about a job's results.

The page holds the summary numbers, the latest run's charts (rows per minute, from each row's
finish time, and where the actors' time went, from the run's summary JSON), the failures grouped
by reason with the URIs that hit each, and a contact sheet (content | style | output) for a
sample of the rows that succeeded. Thumbnails and charts are made here and embedded as data URIs,
so the file can be mailed or opened anywhere. Where several runs recorded one output (a failure,
then a success on a rerun), the latest counts.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import sys
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from cdcore.io import images, storage
from cdcore.timings import PHASES

from . import charts
from .stylize.results import STATUSES, read_results, read_summaries, reason

URIS_PER_REASON = 20


def latest(table: pa.Table) -> pa.Table:
    """One record per output (per row where there is no output), the latest run's, in row order.
    Done in Arrow: a million records as Python dicts would take gigabytes."""
    table = table.sort_by([("run", "ascending")])
    key = pc.coalesce(table["output"], pc.cast(table["row"], pa.string()))
    positions = pa.table({"key": key, "at": pa.array(range(table.num_rows), pa.int64())})
    newest = positions.group_by("key").aggregate([("at", "max")])["at_max"]
    return table.take(newest).sort_by([("row", "ascending")])


def _data_uri(img: Image.Image, fmt: str, **save) -> str:
    data = io.BytesIO()
    img.save(data, fmt, **save)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(data.getvalue()).decode()


def thumbnail(uri: str, side: int) -> str:
    """A data URI of a JPEG at most side x side, or "" when the image cannot be read."""
    try:
        img = Image.open(io.BytesIO(storage.read_bytes(uri)))
        img.draft("RGB", (side, side))  # JPEG decodes at a fraction of its size: fast on big images
        img = img.convert("RGB")
        img.thumbnail((side, side))
    except Exception:  # a report shows what it can; the row's status says the rest
        return ""
    return _data_uri(img, "JPEG", quality=80)


def sample(table: pa.Table, count: int) -> list[dict]:
    """`count` ok rows spread evenly over the table (the same ones every time)."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    step = max(1, ok.num_rows // max(count, 1))
    return ok.take(pa.array(range(0, ok.num_rows, step))[:count]).to_pylist()


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; vertical-align: top; }
th { border-bottom: 1px solid #aaa; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.failed { color: #a00; } .uris { font: 12px monospace; color: #555; }
.sheet td { padding: 4px; } .sheet img { display: block; max-width: 100%; }
.caption { font: 11px monospace; color: #555; max-width: 520px; overflow-wrap: anywhere; }
.charts img { display: block; margin: 8px 0; max-width: 100%; }
"""


def _sum(array) -> float:
    return pc.sum(array).as_py() or 0.0


def summary_rows(table: pa.Table, runs: int) -> list[tuple[str, str]]:
    counts = Counter(table["status"].to_pylist())
    ok = table.filter(pc.equal(table["status"], "ok"))
    megapixels = _sum(pc.multiply(pc.cast(ok["width"], pa.int64()), pc.cast(ok["height"], pa.int64()))) / 1e6
    rows = [("rows", f"{table.num_rows:,}")] + [(s, f"{counts[s]:,}") for s in STATUSES]
    rows += [("runs", str(runs)), ("megapixels stylized", f"{megapixels:,.1f}"),
             ("actor seconds", f"{_sum(table['seconds']):,.1f}"),
             ("seconds per ok row", f"{_sum(ok['seconds']) / max(ok.num_rows, 1):.2f}")]
    # Where an ok row's time went (results of runs before these columns existed have none).
    rows += [(f"{phase[:-2]} seconds per ok row", f"{_sum(ok[phase]) / max(ok.num_rows, 1):.3f}")
             for phase in PHASES if phase in table.column_names]
    return rows


def run_started(run: str) -> float | None:
    """When a run started (its id is its start time, UTC), in seconds since the epoch."""
    try:
        return dt.datetime.strptime(run, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def run_section(records: pa.Table, summary: dict | None) -> list[str]:
    """The latest run: its summary's figures, rows per minute and the phase breakdown. `records`
    are that run's records; without a summary (runs before summaries) the phases come from them."""
    e = html.escape
    if summary is not None:
        phases = summary["phase_seconds"]
        rows = summary["rows"]
        line = (f"{sum(rows.values()):,} rows in {summary['seconds']:,.1f} s ("
                + ", ".join(f"{rows[s]:,} {s}" for s in STATUSES)
                + f"), {summary['megapixels_per_s']:.3f} MP/s, devices busy {summary['device_busy_share']:.0%}, "
                f"{summary['actors_started']} actors started, {summary['actors_replaced']} replaced, "
                f"{summary['transient_failures']:,} transient failures retried")
    else:
        phases = {p[:-2]: _sum(records[p]) for p in PHASES if p in records.column_names}
        line = f"{records.num_rows:,} rows"
    finished = records.filter(pc.is_valid(records["finished"])) if "finished" in records.column_names else None
    times = [t.timestamp() for t in finished["finished"].to_pylist()] if finished is not None else []
    statuses = finished["status"].to_pylist() if finished is not None else []
    run = records["run"][0].as_py() if records.num_rows and "run" in records.column_names else "?"
    started = run_started(run)
    return [f"<h2>Latest run {e(run)}</h2><p>{e(line)}</p><div class='charts'>",
            f"<img src='{_data_uri(charts.rows_per_minute(times, statuses, started), 'PNG')}' alt='rows per minute'>",
            f"<img src='{_data_uri(charts.phase_breakdown(phases), 'PNG')}' alt='phase breakdown'>", "</div>"]


def render(table: pa.Table, runs: int, source: str, count: int, side: int, last_run: pa.Table | None = None,
           summary: dict | None = None) -> str:
    """The page: `table` holds the latest record of each row, `last_run` the latest run's records."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>jobs.stylize report</title>"
           f"<style>{CSS}</style></head><body><h1>jobs.stylize results: {e(source)}</h1>", "<table>"]
    out += [f"<tr><th>{e(k)}</th><td class='num'>{e(v)}</td></tr>" for k, v in summary_rows(table, runs)]
    out.append("</table>")
    if last_run is not None:
        out += run_section(last_run, summary)
    failures = defaultdict(list)
    for r in table.filter(pc.equal(table["status"], "failed")).to_pylist():
        failures[reason(r)].append(r["content"] or f"row {r['row']}")
    if failures:
        out.append("<h2>Failures by reason</h2><table><tr><th class='num'>rows</th><th>reason</th></tr>")
        for why, uris in sorted(failures.items(), key=lambda kv: -len(kv[1])):
            each = Counter(uris)  # a content paired with several styles fails once per pair
            shown = "<br>".join(e(u) + (f" ({n} rows)" if n > 1 else "")
                                for u, n in each.most_common(URIS_PER_REASON))
            more = f"<br>and {len(each) - URIS_PER_REASON:,} more" if len(each) > URIS_PER_REASON else ""
            out.append(f"<tr><td class='num failed'>{len(uris):,}</td><td>{e(why)}"
                       f"<div class='uris'>{shown}{more}</div></td></tr>")
        out.append("</table>")
    picked = sample(table, count)
    if picked:
        out.append(f"<h2>Contact sheet: {len(picked)} of the ok rows</h2><table class='sheet'>"
                   "<tr><th>content</th><th>style</th><th>output</th></tr>")
        for r in picked:
            cells = "".join(f"<td><img src='{thumbnail(uri, side)}' alt=''></td>"
                            for uri in (r["content"], r["style"], r["output"]))
            out.append(f"<tr>{cells}</tr><tr><td colspan='3' class='caption'>{e(r['output'])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def latest_run(table: pa.Table, prefix: str) -> tuple[pa.Table, dict | None]:
    """The records of the latest run, and its summary where it wrote one."""
    if "run" not in table.column_names:
        return table, None
    run = pc.max(table["run"]).as_py()
    summary = next((s for s in read_summaries(prefix) if s.get("run") == run), None)
    return table.filter(pc.equal(table["run"], run)), summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.splitlines()[0])
    p.add_argument("results", help="the results prefix of jobs.stylize (local, file:// or s3://)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write (local, file:// or s3://)")
    p.add_argument("--sample", type=int, default=12, help="rows on the contact sheet (default 12)")
    p.add_argument("--thumbnail", type=int, default=200, help="thumbnail side in pixels (default 200)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        table = read_results(args.results)
        if not table.num_rows:
            raise ValueError(f"{args.results}: no results parts there")
        runs = len(pc.unique(table["run"])) if "run" in table.column_names else 1
        page = render(latest(table), runs, args.results, args.sample, args.thumbnail, *latest_run(table, args.results))
        storage.write_bytes(args.output, page.encode())
    except (storage.StorageError, images.ImageError, ValueError) as e:
        print(f"jobs.report: error: {e}", file=sys.stderr)
        return 2
    print(f"jobs.report: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
