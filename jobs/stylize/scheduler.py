"""The driver's side of the pool: rows handed to actors by style, results as they come, actors
that die replaced.

Why a driver-side queue over plain actors rather than Ray Data's `map_batches` with an actor pool:
each promise of the job is one line here and would be a workaround there. Rows of one style go to
the actor that already holds the style's statistics (Ray Data hands blocks to whichever actor is
free); a dead actor's in-flight rows are known by name and retried exactly once (Ray Data retries
whole blocks, or tasks forever, and cannot say which rows ran twice); and every finished row comes
back at once for progress and the results table (Ray Data yields a batch when it is done). The
rows are small dicts of URIs and the images move through object storage, so Ray Data's streaming
of large blocks through the object store, its main strength, would carry nothing here.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

import ray
from ray.exceptions import RayActorError, RayTaskError

from .manifest import Row
from .results import failed, row_fields

IN_FLIGHT_PER_ACTOR = 2  # one running and one waiting, so an actor never idles on the driver
MAX_ATTEMPTS = 2  # a row whose actor dies is retried once; a second death fails the row
MAX_START_FAILURES = 3  # actors failing to start this many times in a row end the job


class PoolError(RuntimeError):
    """The pool cannot run at all (its actors keep failing to start)."""


class StyleQueue:
    """Rows waiting to run, grouped by style; an actor keeps taking rows of the style it holds.

    When its style runs out, an actor takes the largest group that no other actor holds, and when
    every group is held, it joins the largest one: keeping every actor busy costs one more encoding
    of that style, which is cheap next to an idle actor.
    """

    def __init__(self, rows: list[Row]):
        self._groups: dict[Hashable, deque[Row]] = {}
        for row in rows:
            self._groups.setdefault(row.style_key, deque()).append(row)
        self._held: dict[str, Hashable] = {}  # actor name -> style key it holds

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def take(self, actor: str) -> Row | None:
        """The next row for `actor`, or None when no row is waiting."""
        key = self._held.get(actor)
        if key not in self._groups:
            key = self._pick()
            if key is None:
                return None
            self._held[actor] = key
        group = self._groups[key]
        row = group.popleft()
        if not group:
            del self._groups[key]
        return row

    def _pick(self) -> Hashable | None:
        held = set(self._held.values())
        candidates = [k for k in self._groups if k not in held] or list(self._groups)
        return max(candidates, key=lambda k: len(self._groups[k]), default=None)

    def put_back(self, row: Row) -> None:
        """Return a row that must run again; it goes first in its group."""
        self._groups.setdefault(row.style_key, deque()).appendleft(row)

    def release(self, actor: str) -> None:
        self._held.pop(actor, None)


@dataclass(eq=False)
class _Actor:
    name: str
    handle: ray.actor.ActorHandle
    label: str | None = None  # "<name>@<host>:<pid>", known once the actor answers `ready`
    rows: dict[ray.ObjectRef, Row] = field(default_factory=dict)  # in flight


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Dispatcher:
    """Run rows on a pool of `size` actors made by `new_actor(name)` (an ActorHandle of a
    `jobs.worker.Stylizer`), calling `on_result(record)` with the results record of every row."""

    def __init__(self, rows: list[Row], new_actor: Callable[[str], ray.actor.ActorHandle], size: int,
                 on_result: Callable[[dict], None], on_wait: Callable[["Dispatcher"], None] = lambda d: None,
                 wait_seconds: float = 5.0):
        self.queue = StyleQueue(rows)
        self.new_actor = new_actor
        self.size = size
        self.on_result = on_result
        self.on_wait = on_wait  # called after each wait: progress reporting
        self.wait_seconds = wait_seconds
        self.attempts: Counter[int] = Counter()  # row index -> times dispatched
        self.counters: dict[str, dict] = {}  # actor label -> the counters it last reported
        self.actors: list[_Actor] = []  # alive
        self.started = 0
        self.replaced = 0
        self._probes: dict[ray.ObjectRef, _Actor] = {}  # `ready` calls in flight
        self._start_failures = 0

    @property
    def ready_actors(self) -> int:
        return sum(a.label is not None for a in self.actors)

    def run(self) -> None:
        """Until every row has a result; raises PoolError when actors cannot start."""
        try:
            for _ in range(min(self.size, len(self.queue))):
                self._start()
            while self._probes or any(a.rows for a in self.actors):
                done, _ = ray.wait([*self._probes, *self._row_refs()], num_returns=1,
                                   timeout=self.wait_seconds)
                for ref in done:
                    self._collect(ref)
                self.on_wait(self)
        finally:
            for actor in self.actors:
                ray.kill(actor.handle)
            self.actors.clear()

    def _row_refs(self) -> list[ray.ObjectRef]:
        return [ref for a in self.actors for ref in a.rows]

    def _start(self) -> None:
        name = f"w{self.started}"
        self.started += 1
        actor = _Actor(name, self.new_actor(name))
        self.actors.append(actor)
        # No rows until it answers: a row must not be charged an attempt for an actor that never
        # started (bad node, no GPU driver).
        self._probes[actor.handle.ready.remote()] = actor

    def _collect(self, ref: ray.ObjectRef) -> None:
        if ref in self._probes:
            actor, row = self._probes.pop(ref), None
        else:
            actor = next((a for a in self.actors if ref in a.rows), None)
            if actor is None:  # its actor died and its rows were dealt with already
                return
            row = actor.rows.pop(ref)
        try:
            value = ray.get(ref)
        except RayActorError as e:
            self._replace(actor, e, row)
            return
        except RayTaskError as e:
            if row is None:  # `ready` itself failed: as good as dead
                self._replace(actor, e, None)
                return
            # `process` turns every row error into a status, so this is a bug in the job: the
            # row fails, the actor carries on.
            value = {"status": "failed", "error": f"{row.content}: {_one_line(e)}", "actor": actor.label}
        if row is None:
            actor.label = value["actor"]
            self._start_failures = 0
        else:
            if "counters" in value:
                self.counters[value["actor"]] = value["counters"]
            self.on_result({**row_fields(row), **value, "attempts": self.attempts[row.index]})
        self._feed(actor)

    def _feed(self, actor: _Actor) -> None:
        while len(actor.rows) < IN_FLIGHT_PER_ACTOR:
            row = self.queue.take(actor.name)
            if row is None:
                break
            self.attempts[row.index] += 1
            actor.rows[actor.handle.process.remote(row)] = row
        if not actor.rows:  # nothing left for it: give its CPU or GPU back to the cluster now
            self._retire(actor)

    def _retire(self, actor: _Actor) -> None:
        ray.kill(actor.handle)
        self.actors.remove(actor)
        self.queue.release(actor.name)

    def _replace(self, actor: _Actor, error: RayActorError, row: Row | None) -> None:
        """An actor died: retry its in-flight rows once, on a new actor."""
        reason = _one_line(error)
        lost = [r for r in (row, *actor.rows.values()) if r is not None]
        self._probes = {ref: a for ref, a in self._probes.items() if a is not actor}
        actor.rows.clear()
        self._retire(actor)  # dead already, or unreachable: kill it so it cannot come back
        if actor.label is None:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise PoolError(f"actors fail to start ({self._start_failures} in a row); last: {reason}")
        for r in lost:
            if self.attempts[r.index] >= MAX_ATTEMPTS:
                self.on_result(failed(r, f"{r.content}: not done: the actors running it died "
                                         f"{self.attempts[r.index]} times (last: {reason})",
                                      self.attempts[r.index], actor.label))
            else:
                self.queue.put_back(r)
        if len(self.queue):
            self.replaced += 1
            self._start()
