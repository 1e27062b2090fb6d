"""Why an actor died, from what Ray records about the death, never from the words of its message.

Ray's message for an actor process that went away lists "the OOM killer", "ray stop --force" and
"SIGSEGV" as *possible* causes of any unexpected exit: matching words in it named every SIGKILL
a memory kill. The cause is read from structure instead, the most specific first:

- the error's type: Ray raises `OutOfMemoryError` to the caller of a call that its memory
  monitor stopped, and `ActorUnavailableError` when contact was lost before any death was
  declared; an error from the actor's creation (`actor_init_failed`) means it never started;
- the node: Ray no longer counts the actor's node alive, or the node was preempted;
- the death cause in the GCS's actor table (protobuf `ActorDeathCause`): an `oom_context` from
  the memory monitor, or an `actor_died_error_context` whose `reason` is NODE_DIED, RAY_KILL,
  WORKER_DIED...

WORKER_DIED with nothing more is all Ray knows of a SIGKILL, a segfault and the kernel's OOM
killer alike: the death then says "exited unexpectedly (signal 9?)" and nothing it cannot know.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ray.exceptions import ActorUnavailableError, OutOfMemoryError, RayActorError, RayTaskError

DEFAULT_MAX_ROW_DEATHS = 2  # deaths of actors running a row alone before the row fails
RECORD_WAIT_S = 2.0  # for the GCS to mark a dead actor DEAD, should the error arrive first
UNEXPLAINED = "exited unexpectedly (signal 9?)"

# cause -> (what the driver says of the actor, whether the rows it was running may be to blame)
CAUSES = {
    "node": ("its node is gone", False),
    "memory": ("killed by the memory monitor", True),
    "exited": ("died", True),
    "killed": ("killed with ray.kill", False),  # by someone else: the job retires only idle actors
    "lost": ("lost contact; waiting to learn whether its node died", True),
    "start": ("failed to start", True),
}


@dataclass(frozen=True)
class Death:
    cause: str  # a key of CAUSES
    reason: str  # one line, for people

    @property
    def what(self) -> str:
        return CAUSES[self.cause][0]

    @property
    def blames_rows(self) -> bool:
        return CAUSES[self.cause][1]


def one_line(error: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def memory_kill(message: str) -> Death:
    return Death("memory", f"killed by Ray's memory monitor: the node ran low on memory ({one_line(message, 200)})")


def death_of(error: BaseException, node_alive: bool | None = None) -> Death:
    """The death of the actor whose call raised `error`; `node_alive`: whether Ray counts the
    actor's node alive (None: unknown)."""
    if isinstance(error, OutOfMemoryError):
        return memory_kill(str(error))
    if node_alive is False or getattr(error, "preempted", False):
        return Death("node", f"its node died ({one_line(error, 200)})")
    if isinstance(error, ActorUnavailableError):
        return Death("lost", one_line(error))
    if isinstance(error, RayTaskError) or getattr(error, "actor_init_failed", False):
        return Death("start", one_line(error))  # the error of its own code, or of `ready`
    if isinstance(error, RayActorError):
        return from_record(recorded_cause(error.actor_id))
    return Death("exited", f"{UNEXPLAINED}: {one_line(error, 200)}")


def from_record(cause) -> Death:
    """A Death from an `ActorDeathCause` protobuf (None: Ray has no record)."""
    context = cause.WhichOneof("context") if cause is not None else None
    if context == "oom_context":
        return memory_kill(cause.oom_context.error_message)
    if context in ("creation_task_failure_context", "runtime_env_failed_context", "actor_unschedulable_context"):
        detail = getattr(cause, context)
        return Death("start", one_line(getattr(detail, "error_message", "") or context))
    if context != "actor_died_error_context":
        return Death("exited", UNEXPLAINED)
    died = cause.actor_died_error_context
    reason = type(died).Reason.Name(died.reason)
    if reason == "NODE_DIED" or died.HasField("node_death_info"):
        return Death("node", f"its node died ({one_line(died.node_death_info.reason_message or reason, 200)})")
    if reason == "RAY_KILL":
        return Death("killed", "killed with ray.kill")
    if reason in ("WORKER_DIED", "UNSPECIFIED"):  # the process went away, and that is all Ray knows
        return Death("exited", UNEXPLAINED)
    return Death("exited", f"died: Ray records {reason}")


def recorded_cause(actor_id: str | None, wait_s: float = RECORD_WAIT_S):
    """The actor's `ActorDeathCause` from the GCS actor table once the actor is DEAD; None when
    Ray has no record, the actor is not marked dead within `wait_s` or the table cannot be read.

    Read from the GCS (ray._private.state, Ray 2.60) rather than `ray.util.state.get_actor`, which
    asks the dashboard: a cluster need not run one, and the tests' Ray does not."""
    if not actor_id:
        return None
    from ray._private import state

    deadline = time.monotonic() + wait_s
    while True:
        try:
            record = state.actors(actor_id)
        except Exception:  # the GCS not answering is no verdict on the actor
            return None
        if record.get("State") == "DEAD":
            return record.get("DeathCause")
        if not record or time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
