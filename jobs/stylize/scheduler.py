"""The driver's side of the pool: rows handed to actors in batches, by style; results as they
come; actors that die replaced.

Why a driver-side queue over plain actors rather than Ray Data's `map_batches` with an actor pool:
each promise of the job is one line here and would be a workaround there. Rows of one style go to
the actor that already holds the style's statistics (Ray Data hands blocks to whichever actor is
free); a dead actor's rows are known by name and run again alone, so a row fails from deaths
only on evidence, actors that died while it ran alone (Ray Data retries whole blocks, or tasks
forever, and cannot say which rows ran twice, nor which row of a block killed its actor); and
every finished batch comes back at once for progress and the results table. The rows are small
dicts of URIs and the images move through object storage, so Ray Data's streaming of large
blocks through the object store, its main strength, would carry nothing here.

Rows travel in batches so that the driver's cost per row stays tiny (a Ray call costs about as
much as skipping a row whose output exists). A batch holds as many rows as its actor got through
in about BATCH_SECONDS lately, and the actor stops early when a batch takes longer than that and
sends the rest back, so a batch of cheap rows never hides an expensive one for long.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray
from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

from .deaths import DEFAULT_MAX_ROW_DEATHS, Death, death_of, one_line
from .manifest import Row
from .results import failed, row_fields
from .retries import Breaker, Retries

IN_FLIGHT_PER_ACTOR = 2  # one batch running and one waiting, so an actor never idles on the driver
MAX_START_FAILURES = 3  # actors failing to start this many times in a row end the job
BATCH_SECONDS = 1.0  # of an actor's work per batch
MAX_BATCH = 512
# When contact with an actor is lost without Ray saying it died (its node's raylet is gone, or
# going), its rows wait this long for Ray to declare the node dead before they are charged as if
# they had killed it. Ray declares a node dead after about 15 s of failed health checks.
NODE_VERDICT_S = 30.0


class PoolError(RuntimeError):
    """The pool cannot run at all (its actors keep failing to start)."""


@dataclass
class _Group:
    """The rows of one style group still to run: `pending[cursor:]`, rows sent back unstarted
    (`again`, served first) and rows whose actor died (`suspects`, served one at a time)."""

    pending: np.ndarray
    cursor: int = 0
    again: deque = field(default_factory=deque)
    suspects: deque = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.pending) - self.cursor + len(self.again) + len(self.suspects)

    def take(self, n: int) -> list[int]:
        if self.suspects:
            return [self.suspects.popleft()]
        taken = [self.again.popleft() for _ in range(min(n, len(self.again)))]
        more = min(n - len(taken), len(self.pending) - self.cursor)
        taken += self.pending[self.cursor: self.cursor + more].tolist()
        self.cursor += more
        return taken


class StyleQueue:
    """Rows waiting to run (plan positions), grouped by style; an actor keeps taking rows of the
    style it holds.

    When its style runs out, an actor takes the largest group that no other actor holds, and when
    every group is held, it joins the largest one: keeping every actor busy costs one more encoding
    of that style, which is cheap next to an idle actor. Free groups sit in a heap by size, so a
    million rows over tens of thousands of styles are handed out without scanning the groups.
    """

    def __init__(self, groups: list[np.ndarray]):
        self._groups = [_Group(g) for g in groups]
        self._group_of = np.zeros(max((int(g.max()) + 1 for g in groups if len(g)), default=0), np.int32)
        for gid, g in enumerate(groups):
            self._group_of[g] = gid
        self._free = [(-len(g), i) for i, g in enumerate(self._groups)]
        heapq.heapify(self._free)
        self._held: dict[str, int] = {}  # actor name -> group it holds
        self._size = sum(len(g) for g in groups)

    def __len__(self) -> int:
        return self._size

    def take(self, actor: str, n: int = 1) -> list[int]:
        """Up to `n` positions for `actor` (one when it is a retried row), [] when none is waiting."""
        gid = self._held.get(actor)
        if gid is None or not len(self._groups[gid]):
            gid = self._pick(actor)
            if gid is None:
                return []
        taken = self._groups[gid].take(n)
        self._size -= len(taken)
        return taken

    def _pick(self, actor: str) -> int | None:
        self.release(actor)
        held = set(self._held.values())
        while self._free:
            size, gid = heapq.heappop(self._free)
            if gid not in held and -size == len(self._groups[gid]) and size:
                self._held[actor] = gid
                return gid
        busy = [gid for gid in held if len(self._groups[gid])]
        if not busy:
            return None
        gid = max(busy, key=lambda g: len(self._groups[g]))
        self._held[actor] = gid
        return gid

    def put_back(self, positions: list[int], suspect: bool = False) -> None:
        """Rows to run again: unstarted ones first in their group, suspects one at a time."""
        for position in reversed(positions):
            group = self._groups[self._group_of[position]]
            (group.suspects.append if suspect else group.again.appendleft)(position)
            self._size += 1
        for gid in {int(self._group_of[p]) for p in positions}:
            if gid not in self._held.values():
                heapq.heappush(self._free, (-len(self._groups[gid]), gid))

    def release(self, actor: str) -> None:
        gid = self._held.pop(actor, None)
        if gid is not None and len(self._groups[gid]) and gid not in self._held.values():
            heapq.heappush(self._free, (-len(self._groups[gid]), gid))


@dataclass
class _Undecided:
    """The rows of an actor that was lost without a cause, until its node's fate is known."""

    until: float  # monotonic
    node: str
    in_flight: list[list[Row]]
    death: Death
    label: str | None


@dataclass(eq=False)
class _Actor:
    name: str
    handle: ray.actor.ActorHandle
    label: str | None = None  # "<name>@<host>:<pid>", known once the actor answers `ready`
    node: str | None = None  # its Ray node id, from `ready`
    batches: dict[ray.ObjectRef, list[Row]] = field(default_factory=dict)  # in flight, oldest first
    batch: int = 1  # rows per batch, from its recent pace


class Dispatcher:
    """Run the queued rows on a pool of `size` actors made by `new_actor(name)` (an ActorHandle of a
    `jobs.stylize.worker.Stylizer`), calling `on_result(record)` with the results record of every
    row. `rows(positions)` makes the Row objects of plan positions. Rows that fail transiently run
    again later (`retries`); `probe()` says whether storage answers while the breaker is open."""

    def __init__(self, queue: StyleQueue, rows: Callable[[list[int]], list[Row]],
                 new_actor: Callable[[str], ray.actor.ActorHandle], size: int,
                 on_result: Callable[[dict], None], on_wait: Callable[["Dispatcher"], None] = lambda d: None):
        self.queue, self.rows, self.new_actor, self.size = queue, rows, new_actor, size
        self.on_result, self.on_wait = on_result, on_wait  # on_wait: after each wait, for progress
        self.wait_seconds = 5.0
        self.retries, self.breaker = Retries(), Breaker()
        self.probe: Callable[[], bool] = lambda: True
        self.say: Callable[[str], None] = lambda message: None
        self.transient_failures = 0  # every transient failure, retried or not
        # Actors that overlap I/O run both their batches at once (jobs.stylize.worker): when one
        # dies, every row it held was running, and a suspect must be the only row it holds.
        self.overlapped = False
        self._undecided: list[_Undecided] = []
        self.attempts: dict[int, int] = {}  # position -> times started, for rows started twice only
        # A death is charged to a row only when the row ran alone on the actor: after a death with
        # several rows running, each of them runs alone once (`alone`) before it can be charged.
        self.max_row_deaths = DEFAULT_MAX_ROW_DEATHS
        self.deaths: dict[int, list[str]] = {}  # position -> the deaths charged to it, as "<actor>: <reason>"
        self.alone: set[int] = set()  # positions to run alone next
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
            while len(self.queue) or len(self.retries) or self._undecided or any(a.batches for a in self.actors):
                self._tick()
                refs = [*self._probes, *(ref for a in self.actors for ref in a.batches)]
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=self._timeout())
                else:  # paused, or every row waiting for its retry
                    time.sleep(self._timeout())
                    done = []
                for ref in done:
                    self._collect(ref)
                self.on_wait(self)
        finally:
            for actor in self.actors:
                ray.kill(actor.handle)
            self.actors.clear()

    def _timeout(self) -> float:
        now, until = time.monotonic(), [self.wait_seconds]
        if self.retries.next_due() is not None:
            until.append(self.retries.next_due() - now)
        if self.breaker.open:
            until.append(self.breaker.next_probe - now)
        return max(0.05, min(until))

    def _tick(self) -> None:
        """Probe storage while the breaker is open; requeue rows whose retry is due; keep actors fed."""
        if self.breaker.open and time.monotonic() >= self.breaker.next_probe:
            if self.probe():
                self.say(f"storage answers again after {time.time() - self.breaker.since:.0f} s: resuming")
                self.breaker.answered()
            else:
                self.breaker.probe_failed()
                self._say_paused()
        for lost in list(self._undecided):
            alive = self._node_alive(lost.node)
            if alive is False or time.monotonic() >= lost.until:
                self._undecided.remove(lost)
                verdict = "its node is gone: its rows go back uncharged" if alive is False else \
                    "its node lives on: the rows it was running may be to blame"
                self.say(f"{lost.label}: {verdict}")
                death = Death("node", "its node died") if alive is False else lost.death
                self._settle(death, lost.in_flight, lost.label)
        due = self.retries.due()
        if due:
            self.queue.put_back(due)
        if self.breaker.open:
            return
        for actor in list(self.actors):
            if actor.label is not None:
                self._feed(actor)
        if len(self.queue) and not self.actors:  # all retired while rows waited for their retry
            for _ in range(min(self.size, len(self.queue))):
                self._start()

    def _say_paused(self) -> None:
        since = time.strftime("%H:%M:%S", time.localtime(self.breaker.since))
        self.say(f"storage unreachable since {since}, paused, next probe in {self.breaker.delay:.0f} s")

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
            actor, batch = self._probes.pop(ref), None
        else:
            actor = next((a for a in self.actors if ref in a.batches), None)
            if actor is None:  # its actor died and its rows were dealt with already
                return
            batch = actor.batches[ref]
        try:
            value = ray.get(ref)
        except (RayActorError, OutOfMemoryError) as e:
            # Ray's memory monitor killing the actor mid-call raises OutOfMemoryError, which is no
            # RayActorError; the actor is dead all the same (it is never restarted).
            self._replace(actor, e)
            return
        except RayTaskError as e:
            if batch is None:  # `ready` itself failed: as good as dead
                self._replace(actor, e)
                return
            # `process_batch` turns every row error into a status, so this is a bug in the job:
            # the batch's rows fail, the actor carries on.
            value = {"results": [{"status": "failed", "error": f"{row.content}: {one_line(e)}",
                                  "actor": actor.label} for row in batch]}
        if batch is None:
            actor.label, actor.node = value["actor"], value.get("node")
            self._start_failures = 0
        else:
            del actor.batches[ref]
            self._batch_done(actor, batch, value)
        self._feed(actor)

    def _batch_done(self, actor: _Actor, batch: list[Row], value: dict) -> None:
        results = value["results"]
        if value.get("counters"):
            self.counters[value["actor"]] = value["counters"]
        unstarted = {row.index: row for row in batch}  # an overlapping actor finishes rows out of order
        for result in results:
            row = unstarted.pop(result["row"])
            self.alone.discard(row.index)  # it ran, alone if it had to, and did not kill its actor
            if result.get("failure") == "transient":
                self._transient(row, result)
                continue
            self.breaker.answered()
            self.deaths.pop(row.index, None)
            self.on_result({**row_fields(row), **result, "attempts": self.attempts.pop(row.index, 1),
                            "retries": self.retries.done(row.index)})
        self._put_back(list(unstarted.values()))  # sent back unstarted
        # The call's own wall time where the actor reports it: rows stylized together each wait for
        # their whole group, so the sum of their seconds would shrink the next batch below a group.
        seconds = value.get("wall_s") or sum(r.get("seconds") or 0.0 for r in results)
        per_row = seconds / max(len(results), 1)
        actor.batch = int(np.clip(BATCH_SECONDS / max(per_row, 1e-4), 1, MAX_BATCH))

    def _transient(self, row: Row, result: dict) -> None:
        """Retry later, or, past the row's deadline, fail it with how long it was retried."""
        self.transient_failures += 1
        if self.breaker.failed():
            self._say_paused()
        given_up = self.retries.failed(row.index)
        if given_up is not None:
            self.deaths.pop(row.index, None)
            seconds, retries = given_up
            self.on_result({**row_fields(row), **result, "error": f"{result['error']} (retried for {seconds:.0f} s)",
                            "attempts": self.attempts.pop(row.index, 1), "retries": retries})

    def _feed(self, actor: _Actor) -> None:
        if self.breaker.open:
            return  # storage is down: hand out nothing, keep the actor
        while len(actor.batches) < IN_FLIGHT_PER_ACTOR:
            if self.overlapped and any(map(self._suspect, actor.batches.values())):
                break
            positions = self.queue.take(actor.name, actor.batch)
            if not positions:
                break
            batch = self.rows(positions)
            if self.overlapped and actor.batches and self._suspect(batch):  # it waits until the actor is idle
                self.queue.put_back(positions, suspect=True)
                break
            actor.batches[actor.handle.process_batch.remote(batch, BATCH_SECONDS)] = batch
        if not actor.batches and not len(self.retries) and not self._undecided:  # nothing left: give it back
            self._retire(actor)

    def _suspect(self, batch: list[Row]) -> bool:
        """A row that was running when an actor died, run again alone."""
        return len(batch) == 1 and batch[0].index in self.alone

    def _retire(self, actor: _Actor) -> None:
        ray.kill(actor.handle)
        self.actors.remove(actor)
        self.queue.release(actor.name)

    def _replace(self, actor: _Actor, error: BaseException) -> None:
        """An actor died: say why (jobs.stylize.deaths), settle the rows it held, and start a
        replacement; where the cluster has no room for it, it waits for the autoscaler, and the
        other actors take the rows meanwhile."""
        death = death_of(error, self._node_alive(actor.node))
        in_flight = list(actor.batches.values())
        self._probes = {ref: a for ref, a in self._probes.items() if a is not actor}
        actor.batches.clear()
        self._retire(actor)  # dead already, or unreachable: kill it so it cannot come back
        if actor.label is None and death.cause != "node":
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise PoolError(f"actors fail to start ({self._start_failures} in a row); last: {death.reason}")
        undecided = death.cause == "lost" and actor.node  # its node may be going away: wait for Ray's verdict
        self.say(f"{actor.label or actor.name}: {death.what}, with {sum(map(len, in_flight))} rows in flight "
                 f"({death.reason})")
        if undecided:
            self._undecided.append(_Undecided(time.monotonic() + NODE_VERDICT_S, actor.node, in_flight, death,
                                              actor.label))
        else:
            self._settle(death, in_flight, actor.label)
        if len(self.queue) or len(self.retries) or self._undecided:
            self.replaced += 1
            self._start()

    def _settle(self, death: Death, in_flight: list[list[Row]], label: str | None) -> None:
        """A dead actor's rows go back. When the death blames no row (its node died, ray.kill), all
        go back as they were. Otherwise the rows it was running (the oldest batch: an actor runs
        its calls in order; every row it held, for an overlapping actor) are started again: a row
        that ran alone is charged the death, and rows that ran together each run alone once
        before a death can be charged to them. Rows it had not started go back as they were."""
        if not death.blames_rows:
            self._put_back([row for batch in in_flight for row in batch])
            return
        if self.overlapped:
            in_flight = [[row for batch in in_flight for row in batch]]
        running = in_flight[0] if in_flight else []
        self._put_back([row for batch in in_flight[1:] for row in batch])
        for row in running:
            tries = self.attempts.get(row.index, 1)
            if len(running) == 1 and self._charge(row, death, label, tries):
                continue
            self.attempts[row.index] = tries + 1
            self.alone.add(row.index)
            self.queue.put_back([row.index], suspect=True)

    def _charge(self, row: Row, death: Death, label: str | None, tries: int) -> bool:
        """Charge a death to a row that ran alone; True when that fails it (`max_row_deaths`)."""
        deaths = self.deaths.setdefault(row.index, [])
        deaths.append(f"{label or 'an actor'}: {death.reason}")
        if len(deaths) < self.max_row_deaths:
            return False
        del self.deaths[row.index]
        self.attempts.pop(row.index, None)
        self.alone.discard(row.index)
        count = f"{len(deaths)} actor{'s' * (len(deaths) != 1)}"
        self.on_result(failed(row, f"{row.content}: not done: {count} died while running it alone "
                                   f"({'; '.join(deaths)})", tries, label))
        return True

    def _put_back(self, rows: list[Row]) -> None:
        """Rows that did not run go back to the queue, those that are to run alone as such."""
        self.queue.put_back([row.index for row in rows if row.index not in self.alone])
        self.queue.put_back([row.index for row in rows if row.index in self.alone], suspect=True)

    @staticmethod
    def _node_alive(node: str | None) -> bool | None:
        """Whether Ray still counts the node alive (None: unknown)."""
        if node is None:
            return None
        try:
            return next((n["Alive"] for n in ray.nodes() if n["NodeID"] == node), None)
        except Exception:  # the GCS itself not answering is no verdict on the node
            return None
