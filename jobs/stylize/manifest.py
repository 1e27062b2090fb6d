"""The job's input: a manifest table read from storage, planned into rows that actors can run.

A manifest (CSV, Parquet or JSON Lines, chosen by extension) has one row per content/style pair:
`content` and `style` URIs, and optionally `output` and the per-row options `method`, `alpha`,
`levels`, `stroke_scale`, `content_size` (`options.ROW_FIELDS`), which override the job's options
for that row. Planning fills in the defaults, derives missing outputs, resolves relative local
paths and turns a row that cannot run (bad alpha, duplicate output, an output name that would
leave the output prefix, ...) into a row with an `error` instead of failing the job. No Ray and
no image decoding here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from cdcore.io import images, paths, storage
from cdcore.options import ROW_FIELDS, Recipe

REQUIRED_COLUMNS = ("content", "style")
OPTIONAL_COLUMNS = ("output", *ROW_FIELDS)
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_OUTPUT_EXT = ".png"


class ManifestError(ValueError):
    """The manifest cannot be read as a whole; the message names it and says why."""


@dataclass(frozen=True)
class Options:
    """Job-wide settings: where derived outputs go, and the recipe that manifest rows build on."""

    output_prefix: str
    recipe: Recipe = Recipe()

    def __post_init__(self):
        why = paths.s3_key_problem(self.output_prefix)
        if why is not None:
            raise paths.UnsafePath(f"--output-prefix {self.output_prefix!r}: {why} (S3-compatible stores "
                                   "resolve or drop such segments, so no key is written under it)")


@dataclass(frozen=True)
class Row:
    """One manifest row, resolved: everything an actor needs to run it, or why it cannot run (then
    `recipe` is None and the other fields are as the manifest gave them)."""

    index: int  # position in the manifest, from 0
    content: str | None
    style: str | None
    output: str | None
    method: str | None
    recipe: Recipe | None = None
    error: str | None = None

    @property
    def style_key(self) -> tuple:
        """What a prepared style depends on: rows sharing it can share one preparation."""
        return (self.style, self.recipe.style_key if self.recipe else None)


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
    strings = {name: pa.string() for name in (*REQUIRED_COLUMNS, "output", "method", "levels")}
    options = pc.ConvertOptions(column_types=strings, null_values=[""], strings_can_be_null=True)
    return pc.read_csv(source, convert_options=options)


def read_manifest(uri: str) -> pa.Table:
    """The manifest's known columns (others are ignored); missing cells are null."""
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
    return table.select(known)


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
    finds (and skips) what an earlier run wrote. The content's format is kept when we can write it.
    Raises paths.UnsafePath when the inputs' names make an unsafe name (a backslash, a newline)."""
    content_stem, ext = _name(content)
    style_stem, _ = _name(style)
    ext = ext.lower() if ext.lower() in images.FORMATS else DEFAULT_OUTPUT_EXT
    strength = "" if method == "gatys" else f"_a{alpha:g}"  # gatys has no alpha
    name = f"{content_stem}+{style_stem}_{method}{strength}{ext}"
    refused = paths.refusal(name, "output name")  # the names are the inputs' own: a backslash, a newline
    if refused:
        raise paths.UnsafePath(f"{content!r} with style {style!r}: {refused}")
    return storage.join(prefix, name)


class _RowProblem(ValueError):
    """Why one manifest row cannot run; it becomes that row's error, not the job's."""


def _text(value, column: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _RowProblem(f"{column} {value!r} is not a string")
    return value.strip()


def _recipe(record: dict, base: Recipe, cache: dict) -> Recipe:
    """The job's recipe with the row's own values (blank cells keep the job's). Rows mostly share
    a few combinations of values, so each combination is checked once (`cache`)."""
    given = tuple(record.get(name) for name in ROW_FIELDS)
    if given not in cache:
        values = {name: value.strip() if isinstance(value, str) else value for name, value in zip(ROW_FIELDS, given)}
        try:
            cache[given] = base.replace(**{name: value for name, value in values.items() if value != ""})
        except ValueError as e:
            cache[given] = _RowProblem(str(e))
    if isinstance(cache[given], _RowProblem):
        raise cache[given]
    return cache[given]


def _plan(index: int, record: dict, options: Options, cache: dict) -> Row:
    if record.get("refused"):  # by dataset.expand, which knows the key's path below --contents
        raise _RowProblem(record["refused"])
    content, style = _text(record.get("content"), "content"), _text(record.get("style"), "style")
    if content is None or style is None:
        raise _RowProblem(f"no {'content' if content is None else 'style'} URI")
    recipe = _recipe(record, options.recipe, cache)
    content, style = resolve(content), resolve(style)
    given = _text(record.get("output"), "output")
    output = resolve(given) if given else derived_output(options.output_prefix, content, style, recipe.method,
                                                         recipe.alpha)
    why = paths.s3_key_problem(output)
    if why is not None:
        raise _RowProblem(f"output {output!r} is refused: {why} (S3-compatible stores resolve or drop such "
                          "segments)")
    images.check_output(output)  # an extension we cannot write fails here, before any work
    return Row(index, content, style, output, recipe.method, recipe)


def plan_row(index: int, record: dict, options: Options, source: str = "manifest",
             cache: dict | None = None) -> Row:
    """Resolve one manifest record against the job's options; a problem becomes `Row.error`
    (naming the manifest `source` and the row), and the row keeps its values as given so the
    results table shows what was asked for. `cache` keeps checked recipes between calls."""
    try:
        return _plan(index, record, options, {} if cache is None else cache)
    except (_RowProblem, paths.UnsafePath, images.ImageError) as e:
        given = {c: None if record.get(c) is None else str(record[c])
                 for c in ("content", "style", "output", "method")}
        return Row(index, **given, error=f"{source} row {index}: {e}")
