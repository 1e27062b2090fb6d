"""The job's record: results streamed as Parquet parts under one prefix, and the run's summary.

Every run adds parts `part-<run>-<n>.parquet` under the results prefix while it runs (every
`every_rows` rows or `every_s` seconds, and at the end), so a driver that is killed loses at most
the records of the last interval (never outputs), and `pyarrow.parquet.read_table(prefix)` reads
the union of every run. A row appears once per run that ran it; the `run` column orders them.
"""
from __future__ import annotations

import datetime as dt
import io
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cdcore.io import storage
from cdcore.timings import PHASES

from .manifest import Row

STATUSES = ("ok", "skipped", "failed")
DONE = ("ok", "skipped")  # the output exists: a rerun need not ask again
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
    ("failure", pa.string()),     # transient (storage did not answer in time) | permanent | null
    ("width", pa.int32()),        # of the output; null unless ok
    ("height", pa.int32()),
    ("seconds", pa.float64()),    # in the actor, from its first read to its last write
    # Where those seconds went (cdcore.pipeline.Timings); an overlapping actor runs the phases of
    # different rows at once, so they add up to more than `seconds` per actor.
    ("read_s", pa.float64()),     # the content's bytes from storage
    ("decode_s", pa.float64()),   # decoding and resizing it
    ("style_s", pa.float64()),    # reading and preparing the style; 0 when the actor had it
    ("stylize_s", pa.float64()),  # on the device
    ("encode_s", pa.float64()),
    ("write_s", pa.float64()),    # the output to storage
    ("model_id", pa.string()),
    ("actor", pa.string()),       # "<name>@<host>:<pid>" of the actor that ran it
    ("attempts", pa.int32()),     # 2 when an actor died with the row in flight and it ran again
    ("retries", pa.int32()),      # runs again after transient failures
    ("run", pa.string()),         # the run that wrote the record: its start time, UTC
])


def failed(row: Row, error: str, attempts: int = 0, actor: str | None = None) -> dict:
    """A results record for a row that did not run to the end, with the reason."""
    return {**row_fields(row), "status": "failed", "error": error, "failure": "permanent", "attempts": attempts,
            "actor": actor}


def row_fields(row: Row) -> dict:
    """What the row asked for (the recipe's fields are null for a row refused while planning)."""
    fields = {"row": row.index, "content": row.content, "style": row.style, "output": row.output,
              "method": row.method}
    if row.recipe is None:
        return {**fields, "alpha": None, "levels": None, "stroke_scale": None, "content_size": None}
    r = row.recipe
    return {**fields, "alpha": r.alpha, "levels": ",".join(map(str, r.stages)), "stroke_scale": r.stroke_scale,
            "content_size": r.content_size}


def new_run_id(now: dt.datetime | None = None) -> str:
    return f"{now or dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}Z"


class ResultsWriter:
    """Buffers records and writes them as a new part every `every_rows` rows or `every_s` seconds
    (checked as records arrive and on `tick`), and on `close`. While storage does not answer,
    the records stay buffered and the part is tried again later; only `close` gives up, after
    `close_tries` tries spread over a few minutes."""

    def __init__(self, prefix: str, run: str, every_rows: int = 50_000, every_s: float = 60.0,
                 close_tries: int = 8):
        self.prefix, self.run = prefix, run
        self.every_rows, self.every_s, self.close_tries = every_rows, every_s, close_tries
        self.parts: list[str] = []
        self._buffer: list[dict] = []
        self._flushed = time.monotonic()

    def add(self, record: dict) -> None:
        self._buffer.append({**record, "run": self.run})
        if len(self._buffer) >= self.every_rows:
            self._try_flush()

    def tick(self) -> None:
        if self._buffer and time.monotonic() - self._flushed >= self.every_s:
            self._try_flush()

    def _try_flush(self) -> None:
        try:
            self.flush()
        except storage.StorageError as e:
            if not e.transient:
                raise
            self._flushed = time.monotonic() - self.every_s + min(self.every_s, 5.0)  # again in 5 s

    def flush(self) -> None:
        """Write the buffered records as one part, atomically (a reader never sees half a part)."""
        self._flushed = time.monotonic()
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=SCHEMA)
        data = io.BytesIO()
        pq.write_table(table, data)
        uri = storage.join(self.prefix, f"part-{self.run}-{len(self.parts):05d}.parquet")
        storage.write_bytes(uri, data.getvalue())
        self.parts.append(uri)
        self._buffer.clear()

    def close(self) -> None:
        for attempt in range(self.close_tries):
            try:
                self.flush()
                return
            except storage.StorageError as e:
                if not e.transient or attempt == self.close_tries - 1:
                    raise
                time.sleep(min(2.0 ** attempt, 60.0))


def read_results(prefix: str, columns: list[str] | None = None) -> pa.Table:
    """Every part under `prefix` (empty when there is none), `columns` only when given."""
    tables = [pq.read_table(pa.BufferReader(storage.read_bytes(part)), columns=columns)
              for part in storage.list_files(prefix, [".parquet"])]
    if not tables:
        return SCHEMA.empty_table().select(columns) if columns else SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def done_outputs(prefix: str) -> np.ndarray:
    """hash() of the outputs that earlier runs recorded as ok or skipped (sorted int64)."""
    table = read_results(prefix, ["output", "status"])
    done = [o for o, s in zip(table["output"].to_pylist(), table["status"].to_pylist()) if s in DONE]
    return np.unique(np.array([hash(o) for o in done], dtype=np.int64))


# ---------------------------------------------------------------------------------------- summary

@dataclass
class Tally:
    """What a run did, counted as the records pass (a million rows are not kept)."""

    counts: Counter = field(default_factory=Counter)
    failures_by_class: Counter = field(default_factory=Counter)  # transient | permanent
    retried_rows: int = 0  # rows that needed transient retries, however they ended
    megapixels: float = 0.0
    phases: Counter = field(default_factory=Counter)  # seconds per phase (PHASES), summed over rows
    failures: list[dict] = field(default_factory=list)  # the first few, for the summary
    keep_failures: int = 10

    def add(self, record: dict) -> None:
        self.counts[record["status"]] += 1
        self.retried_rows += bool(record.get("retries"))
        if record["status"] == "failed":
            self.failures_by_class[record.get("failure") or "permanent"] += 1
        if record["status"] == "ok":
            self.megapixels += record["width"] * record["height"] / 1e6
        elif record["status"] == "failed" and len(self.failures) < self.keep_failures:
            self.failures.append(record)
        for phase in PHASES:
            self.phases[phase] += record.get(phase) or 0.0


@dataclass
class Report:
    """What a run did."""

    tally: Tally
    earlier: int  # rows done by earlier runs, not run again
    actors: dict[str, dict]  # actor label -> the counters it last reported (rows, styles_encoded, busy_seconds)
    started: int  # actors started, replacements included
    replaced: int
    seconds: float
    results: str  # the results prefix
    parts: list[str]  # the parts this run wrote
    transient_failures: int = 0  # transient failures met on the way, retried or not

    def count(self, status: str) -> int:
        return self.tally.counts[status]


def _time_lines(phases: Counter, report: Report) -> list[str]:
    """Where the actors' time went, by phase, and how busy their devices were."""
    total = sum(phases.values())
    if not total:
        return []
    shares = ", ".join(f"{name[:-2]} {phases[name]:.1f} s ({phases[name] / total:.0%})" for name in PHASES)
    lines = [f"  time in the actors: {shares}"]
    actors = max(len(report.actors), 1)
    device = phases["style_s"] + phases["stylize_s"]
    lines.append(f"  devices busy {device / (actors * max(report.seconds, 1e-9)):.0%} of the run "
                 f"({device:.1f} s over {actors} actor{'s' * (actors != 1)} in {report.seconds:.1f} s)")
    return lines


def summary(report: Report, model_id: str | None) -> str:
    """A plain-text table: rows by status, throughput, what each actor did, the first failures."""
    tally = report.tally
    rows = sum(tally.counts.values())
    lines = [
        f"jobs.stylize: {rows} rows in {report.seconds:.1f} s: "
        + ", ".join(f"{tally.counts[s]} {s}" for s in STATUSES)
        + f"; {report.earlier} done by earlier runs",
        f"  {tally.megapixels:.2f} MP stylized, {tally.megapixels / max(report.seconds, 1e-9):.3f} MP/s; "
        f"models {model_id or '-'}; {report.started} actors started, {report.replaced} replaced",
    ]
    if report.actors:
        lines.append(f"  {'actor':<40} {'rows':>8} {'styles encoded':>15} {'row s':>8} {'device s':>9} "
                     f"{'loaders':>7}")
        for name, c in sorted(report.actors.items()):
            lines.append(f"  {name:<40} {c['rows']:>8} {c['styles_encoded']:>15} {c['busy_seconds']:>8.1f} "
                         f"{c.get('device_seconds', 0.0):>9.1f} {c.get('loaders', 0):>7}")
    lines += _time_lines(tally.phases, report)
    by_class = tally.failures_by_class
    lines.append(f"  failed: {by_class['permanent']} permanent, {by_class['transient']} transient past their deadline; "
                 f"{report.transient_failures} transient failures retried over {tally.retried_rows} rows")
    failed_rows = tally.counts["failed"]
    if failed_rows:
        lines.append(f"  failed rows ({len(tally.failures)} of {failed_rows} shown):")
        lines += [f"    row {r['row']}: {r['error']}" for r in tally.failures]
    lines.append(f"  results: {report.results} ({len(report.parts)} parts this run)")
    return "\n".join(lines)
