"""A pool's members: what drainctl knows of each worker it started or adopted, and the commands that
move one along its way (switch to the pool's queues, leave the standby queue, stop).

Each of these commands is idempotent in Celery, and sent again only once its interval has passed
without the model showing its effect (`due`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drainctl.core.canary import CanaryPolicy
from drainctl.core.commands import CancelStandby, Command, QueryRegistered, StopWorker, SwitchToPool
from drainctl.core.policy import DrainPolicy
from drainctl.core.quiet import on_standby
from drainctl.core.scaling import ScalingPolicy
from drainctl.core.worker import Worker, WorkerState

REGISTERED_RETRY_S = 1.0
# A switch or a standby cancel not confirmed by then is sent again (both are idempotent in Celery).
SWITCH_RETRY_S = 2.0
# A failed quiet worker still alive this long after its stop was asked is stopped again.
STOP_RETRY_S = 30.0


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """What the config asks of a pool (the core's view of it)."""

    name: str
    queues: tuple[str, ...]
    replicas: int
    cap: int
    version: str
    ready_timeout_s: float = 120.0
    drain_policy: DrainPolicy = field(default_factory=DrainPolicy)
    host: str = "localhost"
    quiet_start: bool = True
    # Set for an elastic pool: `replicas` is then its size now (`drainctl.core.autoscale`), `cap` the
    # cap at `max_replicas`, and `surge` what a rollout may start on top of the size.
    scaling: ScalingPolicy | None = None
    surge: int = 1
    # Set: a rollout replaces the pool in these steps, each held until the new version proves itself.
    canary: CanaryPolicy | None = None
    # Set: the pool spans these Docker engines, with at most `per_engine_cap` workers on each (None: no cap).
    engines: tuple[str, ...] = ()
    per_engine_cap: int | None = None


@dataclass(slots=True)
class Member:
    """A worker of a pool that drainctl started or adopted."""

    hostname: str
    pool: str
    version: str
    started_at: float
    ready_at: float | None = None
    failed: str | None = None
    registered: frozenset[str] | None = None
    registered_asked_at: float | None = None
    # Found running at start-up (not started by this controller process): never failed by the
    # readiness timeout — an operator may have paused it (no consumers) on purpose — unless it is
    # on its standby queue: then it is judged again like a new worker.
    adopted: bool = False
    # Started on its standby queue (quiet start).
    quiet: bool = False
    # When `add_consumer` for the pool's queues was last sent: from then on it may hold pool messages.
    switch_asked_at: float | None = None
    standby_cancel_asked_at: float | None = None
    stop_asked_at: float | None = None

    @property
    def status(self) -> str:
        """starting | standby (started quiet, being judged) | switching (passed, taking the pool's queues) |
        ready | failed."""
        if self.failed is not None:
            return "failed"
        if self.ready_at is not None:
            return "ready"
        if self.switch_asked_at is not None:
            return "switching"
        return "standby" if self.quiet else "starting"


def due(asked_at: float | None, now: float, interval: float) -> bool:
    """Never asked, or asked at least `interval` ago: time to ask (again)."""
    return asked_at is None or now - asked_at >= interval


def is_quiet(member: Member, worker: Worker | None) -> bool:
    """Started quiet, or seen on its standby queue (an adopted one)."""
    return member.quiet or (worker is not None and on_standby(worker.queues))


def never_consumed(member: Member, pool: PoolTarget, worker: Worker | None) -> bool:
    """A quiet worker that was never told to consume the pool's queues (and does not): it holds no pool message."""
    if member.switch_asked_at is not None or not is_quiet(member, worker):
        return False
    return worker is None or worker.queues is None or not (set(pool.queues) & set(worker.queues))


def ask_registered(member: Member, now: float) -> list[Command]:
    if not due(member.registered_asked_at, now, REGISTERED_RETRY_S):
        return []
    member.registered_asked_at = now
    return [QueryRegistered(member.hostname)]


def switch_again(member: Member, pool: PoolTarget, now: float) -> list[Command]:
    """add_consumer again (Celery ignores a queue it already consumes), at most every SWITCH_RETRY_S."""
    if not due(member.switch_asked_at, now, SWITCH_RETRY_S):
        return []
    member.switch_asked_at = now
    return [SwitchToPool(member.hostname, pool.queues)]


def keep_consuming(member: Member, pool: PoolTarget, worker: Worker | None, now: float) -> list[Command]:
    """A switched worker that lost pool queues (Celery < 5.7 forgets a queue its app defines that
    add_consumer added when its consumer restarts, e.g. after a broker reconnect): add them again."""
    if (member.switch_asked_at is None or worker is None or worker.state is not WorkerState.ONLINE
            or worker.queues is None or set(pool.queues) <= set(worker.queues)):
        return []
    return switch_again(member, pool, now)


def leave_standby(member: Member, worker: Worker | None, now: float) -> list[Command]:
    if worker is None or worker.state is not WorkerState.ONLINE or not on_standby(worker.queues):
        return []
    if not due(member.standby_cancel_asked_at, now, SWITCH_RETRY_S):
        return []
    member.standby_cancel_asked_at = now
    return [CancelStandby(member.hostname)]


def stop(member: Member, pool: PoolTarget, now: float) -> list[Command]:
    if not due(member.stop_asked_at, now, STOP_RETRY_S):
        return []
    member.stop_asked_at = now
    return [StopWorker(member.hostname, pool.drain_policy.stop_timeout_s)]
