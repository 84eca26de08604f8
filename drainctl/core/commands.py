"""What the pure core asks the shell to do. The shell runs each and feeds the result back as an input."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Ask workers what they hold (`clock`, `active`, `reserved`, `scheduled`, `active_queues`).

    `hostname=None` is the one broadcast made when the controller starts; every other reconcile
    targets one worker.
    """

    hostname: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class EnableEvents:
    """Turn task events on for a worker (Airflow's workers run without them)."""

    hostname: str


@dataclass(frozen=True, slots=True)
class CancelConsumers:
    """`cancel_consumer` for each queue, targeted at one worker: it stops taking new work."""

    hostname: str
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AddConsumers:
    """`add_consumer` for each queue: a drained worker takes work again (a drain cancelled, a rollout aborted)."""

    hostname: str
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryQueues:
    """A targeted `active_queues`: confirms what a missing `cancel_consumer` reply left unknown."""

    hostname: str


@dataclass(frozen=True, slots=True)
class ShutdownWorker:
    """The remote `shutdown` command (a warm shutdown; Celery sends no reply)."""

    hostname: str


@dataclass(frozen=True, slots=True)
class StopWorker:
    """The runtime's stop (SIGTERM / docker stop), the backstop when `shutdown` did not end the worker."""

    hostname: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class EscalateWorker:
    """A drain past its deadline under the `escalate` policy: SIGQUIT (Celery's cold shutdown; a soft
    shutdown first where the worker runs Celery >= 5.5 with `worker_soft_shutdown_timeout` set)."""

    hostname: str


DrainCommand = CancelConsumers | AddConsumers | QueryQueues | ShutdownWorker | StopWorker | EscalateWorker


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Start a worker of `pool` at `version` under the Celery node name `hostname`.

    `quiet`: it consumes only its standby queue until the readiness gate has judged it.
    """

    pool: str
    version: str
    hostname: str
    quiet: bool = True
    # A pool spread over several Docker engines: the one to start it on.
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class SwitchToPool:
    """A worker that passed the gate: `add_consumer` for each pool queue (declared as `-Q` would), then a
    targeted `active_queues` whose answer comes back as a `QueuesRepliedIn`."""

    hostname: str
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelStandby:
    """`cancel_consumer` for the standby queue of a worker that consumes its pool's queues, confirmed with
    `active_queues`; the standby queue is deleted once nothing consumes it."""

    hostname: str


@dataclass(frozen=True, slots=True)
class DeleteStandby:
    """Delete the standby queue (and its exchange) of a worker that has gone, if nothing consumes it."""

    hostname: str


@dataclass(frozen=True, slots=True)
class QueryRegistered:
    """A targeted `registered`: the readiness gate compares a new version's tasks with the old one's."""

    hostname: str


@dataclass(frozen=True, slots=True)
class JournalCancel:
    """Record, before `cancel_consumer` is sent, that drainctl is draining this worker for a rollout:
    after a restart, a worker without consumers is drainctl's to finish only if this says so."""

    hostname: str
    rollout_id: str


@dataclass(frozen=True, slots=True)
class JournalRollout:
    """Record a rollout's state (history: who, when, from -> to, outcome) and the pool's pin."""

    rollout_id: str


@dataclass(frozen=True, slots=True)
class JournalCanary:
    """Record the canary rollouts' steps and promotions (a restarted controller resumes each hold there)."""


@dataclass(frozen=True, slots=True)
class JournalEngines:
    """Record which engines are cordoned or being evacuated."""


PoolCommand = (
    StartWorker | SwitchToPool | CancelStandby | DeleteStandby | QueryRegistered | JournalCancel | JournalRollout
    | JournalCanary | JournalEngines
)
Command = Reconcile | EnableEvents | DrainCommand | PoolCommand
