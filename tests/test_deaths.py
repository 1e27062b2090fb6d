"""Why actors died, from Ray's structured record, and which rows their deaths are charged to: the
classification on Ray's own protobufs and errors, real SIGKILLs and segfaults on a local Ray, and
a whole job in which one row segfaults every actor that runs it."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from ray.core.generated import common_pb2
from ray.exceptions import OutOfMemoryError, RayActorError

from jobs.stylize.deaths import UNEXPLAINED, Death, death_of, from_record
from jobs.stylize import driver
from jobs.stylize.driver import build_parser, prepare, run
from jobs.stylize.manifest import Options
from jobs.stylize.plan import plan_rows
from jobs.stylize.scheduler import Dispatcher, StyleQueue
from jobs.stylize.worker import Stylizer
from shared import CONTENT, MODELS, STYLE

# What Ray 2.60 says of any actor process that went away, whatever killed it.
GENERIC = ("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
           "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes "
           "include: (1) the process was killed by the OOM killer due to high memory usage, (2) ray stop --force "
           "was called, or (3) the worker crashed unexpectedly due to SIGSEGV or another unexpected error.")


def died(reason: str, message: str = GENERIC, **fields) -> common_pb2.ActorDeathCause:
    context = common_pb2.ActorDiedErrorContext(error_message=message, **fields)
    context.reason = common_pb2.ActorDiedErrorContext.Reason.Value(reason)
    return common_pb2.ActorDeathCause(actor_died_error_context=context)


def test_causes_come_from_the_record_not_from_the_words_of_its_message():
    exited = from_record(died("WORKER_DIED"))
    assert exited == Death("exited", UNEXPLAINED) and exited.blames_rows
    assert "memory" not in exited.reason.lower() and "oom" not in exited.reason.lower()
    oom = from_record(common_pb2.ActorDeathCause(oom_context=common_pb2.OomContext(
        error_message="Task was killed due to the node running low on memory.")))
    assert oom.cause == "memory" and oom.reason.startswith("killed by Ray's memory monitor") and oom.blames_rows
    node = from_record(died("NODE_DIED", "The actor died because its node has died."))
    assert node.cause == "node" and not node.blames_rows
    assert from_record(died("RAY_KILL", "killed by `ray.kill`")).cause == "killed"
    assert from_record(None) == Death("exited", UNEXPLAINED)  # no record: Ray knows no more
    # The error's own type and fields come first; its text decides nothing.
    assert death_of(OutOfMemoryError("Task was killed due to the node running low on memory.")).cause == "memory"
    assert death_of(RayActorError(error_msg=GENERIC)).cause == "exited"
    assert death_of(RayActorError(error_msg=GENERIC), node_alive=False).cause == "node"
    assert death_of(RayActorError(error_msg=GENERIC, preempted=True)).cause == "node"


def rows(count: int):
    return plan_rows([{"content": f"/in/c{i}.jpg", "style": "/s.jpg"} for i in range(count)], Options("/out"))


def test_a_death_is_charged_only_to_a_row_that_ran_alone():
    """The dispatcher's bookkeeping without actors: two rows running together are charged nothing
    and each runs alone next; a row whose actor dies twice while it runs alone fails, saying so."""
    batch = rows(3)
    results: list[dict] = []
    pool = Dispatcher(StyleQueue([np.arange(3)]), lambda positions: [batch[p] for p in positions],
                      lambda name: None, 1, results.append)
    pool.queue.take("w0", 3)  # all three out, as if sent to w0
    pool.overlapped = True
    death = Death("exited", UNEXPLAINED)
    pool._settle(death, [[batch[0], batch[1]], [batch[2]]], "w0@h:1")  # three running together
    assert results == [] and pool.deaths == {} and pool.alone == {0, 1, 2}
    assert [pool.queue.take("w1", 5) for _ in range(3)] == [[0], [1], [2]]  # each alone
    pool._settle(death, [[batch[0]]], "w1@h:2")  # alone: charged, and alone again
    assert results == [] and len(pool.deaths[0]) == 1 and pool.queue.take("w2", 5) == [0]
    pool._settle(Death("node", "its node died"), [[batch[0]]], "w2@h:3")  # a lost node blames no row
    assert results == [] and len(pool.deaths[0]) == 1 and pool.queue.take("w3", 5) == [0]
    pool._settle(death, [[batch[0]]], "w3@h:4")
    assert [r["row"] for r in results] == [0] and results[0]["status"] == "failed"
    assert results[0]["error"] == (f"/in/c0.jpg: not done: 2 actors died while running it alone "
                                   f"(w1@h:2: {UNEXPLAINED}; w3@h:4: {UNEXPLAINED})")
    assert results[0]["attempts"] == 3  # started again twice after deaths that blame rows (a lost node's is free)


# ---------------------------------------------------------------------------------- on a real Ray

@ray.remote(max_restarts=0)
class Victim:
    def pid(self) -> int:
        return os.getpid()

    def wait(self) -> None:
        time.sleep(60)

    def crash(self) -> None:
        ctypes.string_at(0)  # SIGSEGV


def death_during(local_ray, act) -> Death:
    victim = Victim.remote()
    pid = ray.get(victim.pid.remote())
    call = victim.crash.remote() if act == "segfault" else victim.wait.remote()
    time.sleep(0.5)  # running
    if act == "SIGKILL":
        os.kill(pid, signal.SIGKILL)
    elif act == "ray.kill":
        ray.kill(victim)
    with pytest.raises(RayActorError) as caught:
        ray.get(call, timeout=30)
    return death_of(caught.value, node_alive=True)


@pytest.mark.parametrize("act,cause", [("SIGKILL", "exited"), ("segfault", "exited"), ("ray.kill", "killed")])
def test_a_killed_actor_is_not_named_a_memory_kill(local_ray, act, cause):
    death = death_during(local_ray, act)
    assert death.cause == cause, death
    assert "memory" not in death.reason.lower() and "oom" not in death.reason.lower(), death
    if cause == "exited":
        assert death.reason == UNEXPLAINED


class Segfaulting(Stylizer):
    """The job's actor, except that a row whose content is named "crash..." segfaults it."""

    def process_batch(self, rows, budget_s):
        if any(Path(row.content).name.startswith("crash") for row in rows):
            ctypes.string_at(0)
        return super().process_batch(rows, budget_s)


def test_a_row_that_segfaults_its_actor_fails_after_its_deaths_alone_and_the_rest_succeed(local_ray, tmp_path,
                                                                                           monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
    photo = Image.open(CONTENT / "bridge_512.jpg").resize((64, 48))
    lines = []
    for i in range(8):
        name = "crash.jpg" if i == 3 else f"c{i}.jpg"
        photo.rotate(i * 11).save(tmp_path / name)
        lines.append(f"{tmp_path / name},{tmp_path / 'style.jpg'}")
    Image.open(STYLE / "style_a_570.jpg").resize((64, 64)).save(tmp_path / "style.jpg")
    (tmp_path / "m.csv").write_text("content,style\n" + "\n".join(lines) + "\n")
    args = build_parser().parse_args([
        "--manifest", str(tmp_path / "m.csv"), "--output-prefix", str(tmp_path / "out"),
        "--results", str(tmp_path / "r"), "--models", str(MODELS), "--actors", "2", "--levels", "2,1"])
    job = prepare(args)
    said: list[str] = []
    segfaulting = ray.remote(Segfaulting).options(num_cpus=1, max_restarts=0, max_concurrency=2)
    monkeypatch.setattr(driver, "actor_factory",
                        lambda job, say, run_id="": lambda name: segfaulting.remote(name, job.worker))
    report = run(job, say=said.append)
    results = {Path(r["content"]).name: r for r in pq.read_table(str(tmp_path / "r")).to_pylist()}
    crashed = results.pop("crash.jpg")
    assert crashed["status"] == "failed" and crashed["failure"] == "permanent", crashed
    assert "not done: 2 actors died while running it alone" in crashed["error"], crashed["error"]
    assert crashed["error"].count(UNEXPLAINED) == 2 and "memory" not in crashed["error"]
    # "skipped": written in a batch whose actor then died, so found done when run again
    assert len(results) == 7 and all(r["status"] in ("ok", "skipped") for r in results.values()), results
    assert all(os.path.isfile(r["output"]) for r in results.values())
    assert report.count("failed") == 1 and report.replaced >= 2
    deaths = [line for line in said if "rows in flight" in line]
    assert len(deaths) >= 2 and not any("memory" in line for line in deaths), deaths
