"""The job's output table: one row per manifest row, written as Parquet, and its text summary."""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from cdcore import storage

from .manifest import Row

STATUSES = ("ok", "skipped", "failed")
SCHEMA = pa.schema([
    ("row", pa.int64()),          # position in the manifest, from 0
    ("content", pa.string()),
    ("style", pa.string()),
    ("output", pa.string()),
    ("method", pa.string()),
    ("alpha", pa.float64()),
    ("levels", pa.string()),      # the stages run, e.g. "5,4,3,2,1"
    ("stroke_scale", pa.float64()),
    ("content_size", pa.int32()),  # 0: the content as it is
    ("status", pa.string()),      # ok | skipped | failed
    ("error", pa.string()),       # why it failed, naming the URI at fault
    ("width", pa.int32()),        # of the content and output; null unless ok
    ("height", pa.int32()),
    ("seconds", pa.float64()),    # in the actor: download, stylize, upload
    ("model_id", pa.string()),
    ("actor", pa.string()),       # "<name>@<host>:<pid>" of the actor that ran it
    ("attempts", pa.int32()),     # 2 when an actor died with the row in flight and it ran again
])


@dataclass
class Report:
    """What a run did."""

    records: list[dict]  # one per manifest row, as in SCHEMA (plus "pid", "counters" from actors)
    actors: dict[str, dict]  # actor label -> the counters it last reported (rows, styles_encoded, busy_seconds)
    started: int  # actors started, replacements included
    replaced: int
    seconds: float
    results: str  # URI of the table written

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)


def failed(row: Row, error: str, attempts: int = 0, actor: str | None = None) -> dict:
    """A results record for a row that did not run to the end, with the reason."""
    return {**row_fields(row), "status": "failed", "error": error, "attempts": attempts, "actor": actor}


def row_fields(row: Row) -> dict:
    """What the row asked for (the recipe's fields are null for a row refused while planning)."""
    fields = {"row": row.index, "content": row.content, "style": row.style, "output": row.output,
              "method": row.method}
    if row.recipe is None:
        return {**fields, "alpha": None, "levels": None, "stroke_scale": None, "content_size": None}
    r = row.recipe
    return {**fields, "alpha": r.alpha, "levels": ",".join(map(str, r.stages)), "stroke_scale": r.stroke_scale,
            "content_size": r.content_size}


def results_uri(target: str, now: dt.datetime | None = None) -> str:
    """`target` itself when it names a .parquet file; otherwise a new part file inside it, so every
    run adds one file and `pq.read_table(target)` reads the history of runs."""
    if target.endswith(".parquet"):
        return target
    now = now or dt.datetime.now(dt.timezone.utc)
    return storage.join(target, f"part-{now:%Y%m%dT%H%M%S.%f}Z.parquet")


def write_results(uri: str, records: list[dict]) -> None:
    """Write the records, in manifest order, as one Parquet file; atomically, through storage
    (a local temp file + rename, or one S3 PUT), so a reader never sees half a table."""
    table = pa.Table.from_pylist(sorted(records, key=lambda r: r["row"]), schema=SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())


# ---------------------------------------------------------------------------------------- summary

def summary(report: Report, model_id: str | None, max_errors: int = 10) -> str:
    """A plain-text table: rows by status, throughput, what each actor did, the first failures."""
    records = sorted(report.records, key=lambda r: r["row"])
    megapixels = sum(r["width"] * r["height"] for r in records if r["status"] == "ok") / 1e6
    lines = [
        f"jobs.stylize: {len(records)} rows in {report.seconds:.1f} s: "
        + ", ".join(f"{report.count(s)} {s}" for s in STATUSES),
        f"  {megapixels:.2f} MP stylized, {megapixels / max(report.seconds, 1e-9):.3f} MP/s; "
        f"models {model_id or '-'}; {report.started} actors started, {report.replaced} replaced",
    ]
    if report.actors:
        lines.append(f"  {'actor':<40} {'rows':>6} {'styles encoded':>15} {'busy s':>8}")
        for name, c in sorted(report.actors.items()):
            lines.append(f"  {name:<40} {c['rows']:>6} {c['styles_encoded']:>15} {c['busy_seconds']:>8.1f}")
    errors = [r for r in records if r["status"] == "failed"]
    if errors:
        lines.append(f"  failed rows ({min(len(errors), max_errors)} of {len(errors)} shown):")
        lines += [f"    row {r['row']}: {r['error']}" for r in errors[:max_errors]]
    lines.append(f"  results: {report.results}")
    return "\n".join(lines)
