"""The job's input: a manifest table read from storage, planned into rows that actors can run.

A manifest (CSV, Parquet or JSON Lines, chosen by extension) has one row per content/style pair:
`content` and `style` URIs, and optionally `output`, `method` and `alpha`, which override the
job's options for that row. Planning fills in the defaults, derives missing outputs, resolves
relative local paths and turns a row that cannot run (bad alpha, duplicate output, ...) into a
row with an `error` instead of failing the job. No Ray and no image decoding here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import pyarrow as pa

from cdcore import images, storage
from cdcore.stylize import DEFAULT_LEVELS

METHODS = ("wct", "adain", "gatys")
REQUIRED_COLUMNS = ("content", "style")
OPTIONAL_COLUMNS = ("output", "method", "alpha")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_OUTPUT_EXT = ".png"
GATYS_LEVELS = (5,)  # gatys uses encoder 5 as its loss network


class ManifestError(ValueError):
    """The manifest cannot be read as a whole; the message names it and says why."""


@dataclass(frozen=True)
class Options:
    """Job-wide settings that a manifest row may override (method, alpha) or build on."""

    output_prefix: str
    method: str = "wct"
    alpha: float = 1.0
    levels: tuple[int, ...] | None = None  # None: each method's default cascade


@dataclass(frozen=True)
class Row:
    """One manifest row, resolved: everything an actor needs to run it, or why it cannot run."""

    index: int  # position in the manifest, from 0
    content: str | None
    style: str | None
    output: str | None
    method: str | None
    alpha: float | None
    levels: tuple[int, ...] = ()
    error: str | None = None

    @property
    def style_key(self) -> tuple:
        """What style statistics depend on: rows sharing it can share one encoding of the style."""
        return (self.style, self.method, self.levels)


# ---------------------------------------------------------------------------------------- reading

def manifest_format(uri: str) -> str:
    ext = os.path.splitext(str(uri))[1].lower()
    if ext not in FORMATS:
        raise ManifestError(f"{uri}: unsupported manifest format {ext or '(no extension)'} "
                            f"(use {', '.join(sorted(FORMATS))})")
    return FORMATS[ext]


def _parse(data: bytes, fmt: str) -> pa.Table:
    source = pa.BufferReader(data)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.read_table(source)
    if fmt == "jsonl":
        import pyarrow.json as pj
        return pj.read_json(source)
    import pyarrow.csv as pc
    # URIs stay strings however they look, and only an empty cell is missing: "NA" or "null"
    # could be file names.
    strings = {name: pa.string() for name in (*REQUIRED_COLUMNS, "output", "method")}
    options = pc.ConvertOptions(column_types=strings, null_values=[""], strings_can_be_null=True)
    return pc.read_csv(source, convert_options=options)


def read_manifest(uri: str) -> list[dict]:
    """The manifest's rows as dicts of the known columns (others are ignored); missing cells are None."""
    fmt = manifest_format(uri)
    try:
        data = storage.read_bytes(uri)
    except storage.NotFound:
        raise ManifestError(f"{uri}: manifest not found") from None
    except storage.StorageError as e:
        raise ManifestError(f"cannot read manifest: {e}") from None
    try:
        table = _parse(data, fmt)
    except (pa.ArrowException, ValueError, OSError) as e:
        reason = " ".join(str(e).split())
        raise ManifestError(f"{uri}: not a readable {fmt} manifest ({reason})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{uri}: missing column(s) {', '.join(missing)} "
                            f"(found: {', '.join(table.column_names) or 'none'})")
    known = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.column_names]
    return table.select(known).to_pylist()


# --------------------------------------------------------------------------------------- planning

def resolve(uri: str) -> str:
    """Relative local paths are relative to the driver's working directory: make them absolute,
    since actors run elsewhere (another directory, another machine with shared storage)."""
    uri = str(uri)
    if storage.is_local(uri) and not uri.startswith("file://"):
        return os.path.abspath(uri)
    return uri


def _name(uri: str) -> tuple[str, str]:
    """(stem, extension) of the last path component of a local path, file:// or s3:// URI."""
    return os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])


def derived_output(prefix: str, content: str, style: str, method: str, alpha: float) -> str:
    """`<prefix>/<content-stem>+<style-stem>_<method>[_a<alpha>]<ext>`, deterministic so a rerun
    finds (and skips) what an earlier run wrote. The content's format is kept when we can write it."""
    content_stem, ext = _name(content)
    style_stem, _ = _name(style)
    ext = ext.lower() if ext.lower() in images.FORMATS else DEFAULT_OUTPUT_EXT
    strength = "" if method == "gatys" else f"_a{alpha:g}"  # gatys has no alpha
    return storage.join(prefix, f"{content_stem}+{style_stem}_{method}{strength}{ext}")


def levels_for(method: str, levels: tuple[int, ...] | None) -> tuple[int, ...]:
    """The stages a method runs, mirroring `cdcore stylize`: --levels applies to wct and adain."""
    if method == "gatys":
        return GATYS_LEVELS
    return levels or DEFAULT_LEVELS[method]


class _RowProblem(ValueError):
    """Why one manifest row cannot run; it becomes that row's error, not the job's."""


def _text(value, column: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _RowProblem(f"{column} {value!r} is not a string")
    return value.strip()


def _alpha(value, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise _RowProblem(f"alpha {value!r} is not a number") from None
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise _RowProblem(f"alpha {alpha} is outside [0, 1]")
    return alpha


def _plan(index: int, record: dict, options: Options) -> Row:
    content, style = _text(record.get("content"), "content"), _text(record.get("style"), "style")
    if content is None or style is None:
        raise _RowProblem(f"no {'content' if content is None else 'style'} URI")
    method = _text(record.get("method"), "method") or options.method
    if method not in METHODS:
        raise _RowProblem(f"method {method!r} is not one of {', '.join(METHODS)}")
    alpha = _alpha(record.get("alpha"), options.alpha)
    content, style = resolve(content), resolve(style)
    given = _text(record.get("output"), "output")
    output = resolve(given) if given else derived_output(options.output_prefix, content, style, method, alpha)
    images.output_format(output)  # an extension we cannot write fails here, before any work
    return Row(index, content, style, output, method, alpha, levels_for(method, options.levels))


def plan_row(index: int, record: dict, options: Options, source: str = "manifest") -> Row:
    """Resolve one manifest record against the job's options; a problem becomes `Row.error`
    (naming the manifest `source` and the row), and the row keeps its values as given so the
    results table shows what was asked for."""
    try:
        return _plan(index, record, options)
    except (_RowProblem, images.ImageError) as e:
        given = {c: None if record.get(c) is None else str(record[c])
                 for c in ("content", "style", "output", "method")}
        return Row(index, **given, alpha=None, error=f"{source} row {index}: {e}")


def plan_rows(records: list[dict], options: Options, source: str = "manifest") -> list[Row]:
    """Plan every record; a row whose output an earlier row already writes gets an error, so no
    output is written twice by one job (whichever row ran last would silently win)."""
    rows = [plan_row(i, record, options, source) for i, record in enumerate(records)]
    first_writer: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row.error:
            continue
        if row.output in first_writer:
            rows[i] = dataclasses.replace(row, levels=(), error=(
                f"{source} row {row.index}: output {row.output} is also the output of row "
                f"{first_writer[row.output]}"))
        else:
            first_writer[row.output] = row.index
    return rows
