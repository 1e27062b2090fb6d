"""The job's record: results streamed as Parquet parts under one prefix, and the run's summary.

Every run adds parts `part-<run>-<n>.parquet` under the results prefix while it runs (every
`every_rows` rows or `every_s` seconds, and at the end), so a driver that is killed loses at most
the records of the last interval (never outputs), and `pyarrow.parquet.read_table(prefix)` reads
the union of every run. A row appears once per run that ran it; the `run` column orders them.
At its end a run adds its summary, `_summary-<run>.json` (a leading "_" keeps it out of
pyarrow's reading of the prefix), for tools such as `jobs.report`.
"""
from __future__ import annotations

import datetime as dt
import io
import json
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
    ("finished", pa.timestamp("ms", tz="UTC")),  # when the driver recorded the row's result
])
SUMMARY_PREFIX = "_summary-"
MAX_REASONS = 100  # distinct failure reasons a summary counts; the rest count as "other reasons"


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
        self._buffer.append({**record, "run": self.run, "finished": int(time.time() * 1000)})
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

def reason(record: dict) -> str:
    """The error without the URI it names, so rows that failed alike group together."""
    text = record["error"] or "unknown"
    for uri in (record["content"], record["style"], record["output"]):
        if uri and text.startswith(f"{uri}: "):
            return text[len(uri) + 2:]
    return text


@dataclass
class Tally:
    """What a run did, counted as the records pass (a million rows are not kept)."""

    counts: Counter = field(default_factory=Counter)
    failures_by_class: Counter = field(default_factory=Counter)  # transient | permanent
    retried_rows: int = 0  # rows that needed transient retries, however they ended
    megapixels: float = 0.0
    phases: Counter = field(default_factory=Counter)  # seconds per phase (PHASES), summed over rows
    failures: list[dict] = field(default_factory=list)  # the first few, for the summary
    reasons: Counter = field(default_factory=Counter)  # failed rows by reason (MAX_REASONS of them)
    keep_failures: int = 10

    def add(self, record: dict) -> None:
        self.counts[record["status"]] += 1
        self.retried_rows += bool(record.get("retries"))
        if record["status"] == "failed":
            self.failures_by_class[record.get("failure") or "permanent"] += 1
            why = reason(record)
            self.reasons[why if why in self.reasons or len(self.reasons) < MAX_REASONS else "other reasons"] += 1
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
    run: str = ""  # the run id of the parts

    def count(self, status: str) -> int:
        return self.tally.counts[status]


def device_seconds(phases: Counter) -> float:
    """Seconds the devices worked: stylizing, and preparing styles (encoding them on the device)."""
    return phases["style_s"] + phases["stylize_s"]


def busy_share(report: Report) -> float:
    """The devices' busy share over the run: device seconds over actors x run seconds."""
    return device_seconds(report.tally.phases) / (max(len(report.actors), 1) * max(report.seconds, 1e-9))


def _time_lines(phases: Counter, report: Report) -> list[str]:
    """Where the actors' time went, by phase, and how busy their devices were."""
    total = sum(phases.values())
    if not total:
        return []
    shares = ", ".join(f"{name[:-2]} {phases[name]:.1f} s ({phases[name] / total:.0%})" for name in PHASES)
    lines = [f"  time in the actors: {shares}"]
    actors = max(len(report.actors), 1)
    device = device_seconds(phases)
    lines.append(f"  devices busy {busy_share(report):.0%} of the run "
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


def summary_record(report: Report, model_id: str | None) -> dict:
    """The summary as data: what `summary` prints, for tools (jobs.report, dashboards, scripts)."""
    tally = report.tally
    phase_total = sum(tally.phases.values())
    return {
        "run": report.run, "model_id": model_id, "seconds": report.seconds,
        "rows": {s: tally.counts[s] for s in STATUSES}, "earlier": report.earlier,
        "megapixels": tally.megapixels, "megapixels_per_s": tally.megapixels / max(report.seconds, 1e-9),
        "phase_seconds": {p[:-2]: tally.phases[p] for p in PHASES},
        "phase_shares": {p[:-2]: tally.phases[p] / phase_total if phase_total else 0.0 for p in PHASES},
        "device_busy_share": busy_share(report),
        "actors": report.actors, "actors_started": report.started, "actors_replaced": report.replaced,
        "failures": {"permanent": tally.failures_by_class["permanent"],
                     "transient": tally.failures_by_class["transient"]},
        "failure_reasons": dict(tally.reasons.most_common()),
        "transient_failures": report.transient_failures, "retried_rows": tally.retried_rows,
        "parts": report.parts,
    }


def write_summary(report: Report, model_id: str | None, tries: int = 8) -> str:
    """Write the run's summary record as JSON beside its parts, trying transient failures again
    over a few minutes as the last part is; returns its URI."""
    uri = storage.join(report.results, f"{SUMMARY_PREFIX}{report.run}.json")
    data = json.dumps(summary_record(report, model_id), indent=1).encode()
    for attempt in range(tries):
        try:
            storage.write_bytes(uri, data)
            return uri
        except storage.StorageError as e:
            if not e.transient or attempt == tries - 1:
                raise
            time.sleep(min(2.0 ** attempt, 60.0))


def read_summaries(prefix: str) -> list[dict]:
    """The summaries of every run under `prefix`, oldest first."""
    found = [uri for uri in storage.list_files(prefix, [".json"]) if uri.rsplit("/", 1)[-1].startswith(SUMMARY_PREFIX)]
    return [json.loads(storage.read_bytes(uri)) for uri in sorted(found)]
