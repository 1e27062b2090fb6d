"""The planned job: every manifest row resolved, held column by column.

A million rows as Python objects would cost the driver gigabytes; as Arrow columns (content,
style, output, method, an index into the few distinct recipes, error) they cost tens of MB, and
`Row` objects are made only for the rows being sent to an actor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from cdcore.options import Recipe

from .manifest import Options, Row, plan_row

CHUNK = 65_536  # manifest rows planned per batch
NO_RECIPE = -1


@dataclass
class Plan:
    """Planned rows: `table` has columns row, content, style, output, method, recipe (an index
    into `recipes`, NO_RECIPE for refused rows) and error (why a row cannot run, else null)."""

    table: pa.Table
    recipes: list[Recipe]

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self, indices: Iterable[int]) -> list[Row]:
        """Row objects for plan positions `indices` (which are also their manifest indices)."""
        picked = self.table.take(pa.array(np.asarray(indices, dtype=np.int64)))
        return [Row(r["row"], r["content"], r["style"], r["output"], r["method"],
                    self.recipes[r["recipe"]] if r["recipe"] != NO_RECIPE else None, r["error"])
                for r in picked.to_pylist()]

    def refused(self) -> np.ndarray:
        """Positions of rows refused while planning."""
        return np.flatnonzero(self.table["error"].is_valid().to_numpy(zero_copy_only=False))

    def runnable(self) -> np.ndarray:
        return np.flatnonzero(self.table["error"].is_null().to_numpy(zero_copy_only=False))

    def stages(self) -> tuple[int, ...]:
        """Every stage a runnable row needs, deepest first."""
        used = np.unique(self.table["recipe"].to_numpy())
        return tuple(sorted({k for i in used if i != NO_RECIPE for k in self.recipes[i].stages}, reverse=True))

    def output_hashes(self) -> np.ndarray:
        """hash() of every output URI (int64): the driver's compact key for a row's output."""
        return _hashes(self.table["output"])

    def style_groups(self, positions: np.ndarray) -> list[np.ndarray]:
        """`positions` split by what a prepared style depends on (style URI and recipe.style_key),
        each group in manifest order."""
        keys: dict[tuple, int] = {}
        styles = self.table["style"].take(pa.array(positions, type=pa.int64())).to_pylist()
        recipe_ids = self.table["recipe"].to_numpy()[positions]
        group = np.fromiter((keys.setdefault((s, self.recipes[r].style_key), len(keys))
                             for s, r in zip(styles, recipe_ids)), dtype=np.int64, count=len(positions))
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        return np.split(positions[order], bounds) if len(positions) else []


def _hashes(column: pa.ChunkedArray) -> np.ndarray:
    out = np.empty(len(column), dtype=np.int64)
    i = 0
    for chunk in column.chunks:
        values = chunk.to_pylist()
        out[i: i + len(values)] = [hash(v) for v in values]
        i += len(values)
    return out


def plan(batches: Iterable[list[dict]], options: Options, source: str = "manifest") -> Plan:
    """Plan manifest records, given in batches of dicts, into a Plan; then refuse every row whose
    output an earlier row already writes (so no output is written twice by one job)."""
    recipes: dict[Recipe, int] = {}
    cache: dict = {}
    parts, index = [], 0
    for records in batches:
        rows = [plan_row(index + i, record, options, source, cache) for i, record in enumerate(records)]
        index += len(rows)
        parts.append(pa.record_batch({
            "row": pa.array([r.index for r in rows], pa.int64()),
            "content": pa.array([r.content for r in rows], pa.string()),
            "style": pa.array([r.style for r in rows], pa.string()),
            "output": pa.array([r.output for r in rows], pa.string()),
            "method": pa.array([r.method for r in rows], pa.string()),
            "recipe": pa.array([recipes.setdefault(r.recipe, len(recipes)) if r.recipe else NO_RECIPE
                                for r in rows], pa.int32()),
            "error": pa.array([r.error for r in rows], pa.string()),
        }))
    schema = parts[0].schema if parts else None
    table = pa.Table.from_batches(parts, schema) if parts else _empty()
    return _refuse_duplicates(Plan(table, list(recipes)), source)


def _empty() -> pa.Table:
    return pa.table({"row": pa.array([], pa.int64()), **{c: pa.array([], pa.string()) for c in
                     ("content", "style", "output", "method")}, "recipe": pa.array([], pa.int32()),
                     "error": pa.array([], pa.string())})


def _refuse_duplicates(planned: Plan, source: str) -> Plan:
    runnable = planned.runnable()
    hashes = planned.output_hashes()[runnable]
    order = np.argsort(hashes, kind="stable")  # stable: within equal hashes, manifest order
    starts = np.r_[True, np.diff(hashes[order]) != 0]
    if starts.all():
        return planned
    first_of_run = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    outputs, errors = planned.table["output"], planned.table["error"].to_pylist()
    recipe = planned.table["recipe"].to_numpy().copy()
    for j in np.flatnonzero(~starts):
        first, later = int(runnable[order[first_of_run[j]]]), int(runnable[order[j]])
        output = outputs[later].as_py()
        if outputs[first].as_py() == output:  # equal hashes almost surely mean equal URIs: check
            errors[later] = f"{source} row {later}: output {output} is also the output of row {first}"
            recipe[later] = NO_RECIPE
    table = planned.table
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    table = table.set_column(table.schema.get_field_index("recipe"), "recipe", pa.array(recipe, pa.int32()))
    return Plan(table, planned.recipes)


def plan_rows(records: list[dict], options: Options, source: str = "manifest") -> list[Row]:
    """Every record planned, as Row objects: for small manifests and tests."""
    return plan([records], options, source).rows(range(len(records)))


def plan_table(table: pa.Table, options: Options, source: str = "manifest") -> Plan:
    """Plan a manifest table CHUNK rows at a time."""
    return plan(_batches(table), options, source)


def _batches(table: pa.Table) -> Iterator[list[dict]]:
    for batch in table.to_batches(max_chunksize=CHUNK):
        yield batch.to_pylist()
