"""The readiness gate: when a new worker of a pool may take pool messages, and when it has failed.

A new worker starts quiet (on a standby queue of its own, see `drainctl.core.quiet`) and is judged
before it takes a pool message: online, answering remote control, registering every task the running
version registers (that list known: a member whose list is unknown is asked again, and the gate
waits). Only then does it consume the pool's queues (`SwitchToPool`); it is ready once the model sees
it consume all of them. A worker that does not answer remote control can be neither judged nor ever
drained: it fails the gate as soon as the model says so.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from drainctl.core.commands import Command, SwitchToPool
from drainctl.core.members import Member, PoolTarget, ask_registered, is_quiet, switch_again
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.quiet import on_standby
from drainctl.core.worker import WorkerState


def readiness(
    member: Member, pool: PoolTarget, cluster: Cluster, members: Iterable[Member], cancelled: Container[str],
    now: float, notices: list[Notice],
) -> tuple[list[Command], str | None]:
    """Judge a member on its way in: the commands to send, and why it failed (None: not failed).

    `members`: every member of the fleet (the running version's are the baseline); `cancelled`: the
    workers drainctl's journal says it drained for a rollout.
    """
    worker = cluster.worker(member.hostname)
    # The gate's deadline and its remote-control verdict apply to every worker drainctl started, and to
    # an adopted one still on its standby queue; not to one found serving (it may be paused on purpose).
    judged = not member.adopted or is_quiet(member, worker)
    if worker is not None and worker.not_answering and judged:
        return [], ("does not answer remote control (is worker_enable_remote_control off?): "
                    "the readiness gate cannot judge it, and drainctl could never drain it")
    online = worker is not None and worker.state is WorkerState.ONLINE
    queues = worker.queues if worker is not None else None
    consuming = queues is not None and set(pool.queues) <= set(queues)
    if member.hostname in cancelled and online:
        # Adopted mid-drain: it served before; its drain is resumed, not gated.
        member.ready_at = now
        return [], None
    commands: list[Command] = []
    if online and consuming:
        # Switched (the gate passed before add_consumer), or found consuming: then judged now.
        passed = member.switch_asked_at is not None
        if not passed:
            passed, commands, failure = _registers_enough(member, members, cluster, now)
            if failure is not None:
                return commands, failure
        if passed:
            member.ready_at = now
            notices.append(Notice("worker-ready", member.hostname, f"{member.pool} {member.version} consuming "
                                  f"{', '.join(pool.queues)} after {now - member.started_at:.1f}s"))
            return commands, None
    elif online and on_standby(queues):
        commands, failure = _judge_quiet(member, pool, cluster, members, now, notices)
        if failure is not None:
            return commands, failure
    if judged and now - member.started_at > pool.ready_timeout_s:
        unanswered = f", remote-control questions unanswered: {len(worker.unanswered)}" if (
            worker is not None and worker.unanswered) else ""
        return commands, (
            f"not ready after {pool.ready_timeout_s:g}s (online: {online}, on standby: {on_standby(queues)}, "
            f"consuming all of {', '.join(pool.queues)}: {consuming}, tasks registered: "
            f"{member.registered is not None}{unanswered})")
    return commands, None


def _judge_quiet(
    member: Member, pool: PoolTarget, cluster: Cluster, members: Iterable[Member], now: float, notices: list[Notice]
) -> tuple[list[Command], str | None]:
    """A worker on its standby queue: once it passed the gate, add the pool's queues (again, if unconfirmed)."""
    if member.switch_asked_at is not None:
        return switch_again(member, pool, now), None
    passed, commands, failure = _registers_enough(member, members, cluster, now)
    if passed:
        member.switch_asked_at = now
        commands.append(SwitchToPool(member.hostname, pool.queues))
        notices.append(Notice("worker-judged", member.hostname, f"{member.pool} {member.version} passed the "
                              f"gate after {now - member.started_at:.1f}s: adding {', '.join(pool.queues)}"))
    return commands, failure


def _registers_enough(
    member: Member, members: Iterable[Member], cluster: Cluster, now: float
) -> tuple[bool, list[Command], str | None]:
    """Does it register every task the running version registers? Both lists known, or no verdict yet.

    Whether it passed, the commands to send, and why it failed (None: not failed).
    """
    commands = ask_registered(member, now) if member.registered is None else []
    baseline, unknown = _baseline(member, members, cluster)
    for other in unknown:
        worker = cluster.worker(other.hostname)
        if worker is not None and worker.state is WorkerState.ONLINE:
            commands.extend(ask_registered(other, now))
    if member.registered is None or unknown:
        return False, commands, None
    missing = sorted(baseline - member.registered)
    if missing:
        return False, commands, (f"does not register {', '.join(missing)}, which the running version registers: "
                                 "Celery would discard their messages")
    return True, commands, None


def _baseline(member: Member, members: Iterable[Member], cluster: Cluster) -> tuple[frozenset[str], list[Member]]:
    """What the running members of the pool register (the union), and the members whose list is unknown.

    Running: the other versions' members, and this version's members that passed the gate. A member
    whose list is unknown makes the gate wait (it is asked again), unless its worker is gone or
    shutting down: a lost reply is never read as "nothing to compare".
    """
    known: list[frozenset[str]] = []
    unknown: list[Member] = []
    for other in members:
        if other is member or other.pool != member.pool or other.failed is not None:
            continue
        if other.version == member.version and other.ready_at is None:
            continue  # being judged too
        if other.registered is not None:
            known.append(other.registered)
            continue
        worker = cluster.worker(other.hostname)
        if worker is not None and worker.state is not WorkerState.OFFLINE:
            unknown.append(other)
    return frozenset().union(*known), unknown
