"""Pools and rollouts: keep every pool at its size and its target version, surge-first.

Level-triggered: `Fleet.plan` looks at what is (the members drainctl started or adopted, the live
model, the drains under way, the pins) and returns what to do next. It is called after every input,
so a restarted controller recomputes what is left from what it observes plus its journal.

One rule set covers a rollout, a supersede (the target changes mid-way: workers of the
now-outdated version are simply "old"), an abort (the target is pinned back: the old version's
drained workers resume consuming, the new ones are drained) and a restart.

Invariants it keeps, per pool:
- never more than `cap` workers alive (starting, serving and draining ones together);
- a new worker starts quiet (on a standby queue of its own, see `drainctl.core.quiet`) and is judged
  before it takes a pool message: online, answering remote control, registering every task the
  running version registers (that list known: a member whose list is unknown is asked again, and the
  gate waits). Only then does it consume the pool's queues (`SwitchToPool`); it is ready once the
  model sees it consume all of them. A worker that fails before it switched is stopped (it holds no
  pool message); one that may hold pool messages is drained, never just stopped;
- an old worker is drained only when ready new + serving old workers exceed `replicas`, so every
  queue keeps its consumers.

A worker that does not answer remote control (see the model) can be neither gated nor drained:
a new one fails its readiness gate as soon as the model says so (the rollout aborts, saying why);
any member the rollout would drain is left running and reported *blocked* with the reason (once),
never killed: only a warm shutdown by its operator (SIGTERM) stops it without losing work.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from drainctl.core.commands import (
    CancelStandby,
    Command,
    DeleteStandby,
    JournalCancel,
    JournalRollout,
    QueryRegistered,
    StartWorker,
    StopWorker,
    SwitchToPool,
)
from drainctl.core.drain import DrainBook, DrainPolicy, DrainRefused, Phase
from drainctl.core.model import Cluster, Notice, Worker, WorkerState
from drainctl.core.quiet import on_standby
from drainctl.core.refusals import not_answering_reason

REGISTERED_RETRY_S = 1.0
# A switch or a standby cancel not confirmed by then is sent again (both are idempotent in Celery).
SWITCH_RETRY_S = 2.0
# A failed quiet worker still alive this long after its stop was asked is stopped again.
STOP_RETRY_S = 30.0
MAX_START_BACKOFF_S = 60.0


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


@dataclass(slots=True)
class Rollout:
    id: str
    pool: str
    from_version: str
    to_version: str
    started_at: float
    requested_by: str
    total: int
    outcome: str | None = None  # succeeded | failed | superseded
    finished_at: float | None = None
    detail: str = ""
    replaced: int = 0


@dataclass(frozen=True, slots=True)
class Pin:
    """Hold a pool at `version` while the config still asks for `config_version` (until it changes)."""

    version: str
    config_version: str
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    hostname: str
    version: str
    at: float
    reason: str


class Fleet:
    def __init__(self, *, new_id: Callable[[], str], history: int = 100) -> None:
        self.new_id = new_id
        self.members: dict[str, Member] = {}
        self.rollouts: dict[str, Rollout] = {}
        self.history: deque[Rollout] = deque(maxlen=history)
        self.pins: dict[str, Pin] = {}
        # Hosts whose consumers drainctl cancelled for a rollout (the journal of intents).
        self.cancelled: dict[str, str] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.next_start_at: dict[str, float] = {}
        self.consecutive_failures: dict[str, int] = {}
        # Members a rollout needs drained but cannot drain, and why (each reported once).
        self.blocked: dict[str, str] = {}
        self.rollout_outcomes: Counter[str] = Counter()

    # ------------------------------------------------------------------ queries
    def target(self, pool: PoolTarget) -> str:
        pin = self.pins.get(pool.name)
        if pin is not None and pin.config_version == pool.version:
            return pin.version
        return pool.version

    def of_pool(self, name: str) -> list[Member]:
        return sorted((m for m in self.members.values() if m.pool == name), key=lambda m: m.started_at)

    def rollout(self, rollout_id: str) -> Rollout | None:
        for rollout in (*self.rollouts.values(), *self.history):
            if rollout.id == rollout_id:
                return rollout
        return None

    # ------------------------------------------------------------------ inputs
    def adopt(self, hostname: str, pool: str, version: str, now: float) -> None:
        self.members.setdefault(hostname, Member(hostname, pool, version, started_at=now, adopted=True))

    def registered(self, hostname: str, tasks: Iterable[str] | None, now: float) -> None:
        member = self.members.get(hostname)
        if member is None:
            return
        if tasks is None:
            member.registered_asked_at = now  # no reply: asked again after REGISTERED_RETRY_S
        else:
            member.registered = frozenset(tasks)

    def exited(self, hostname: str, exit_code: int | None, now: float) -> tuple[list[Command], list[Notice]]:
        member = self.members.pop(hostname, None)
        self.cancelled.pop(hostname, None)
        self.blocked.pop(hostname, None)
        if member is None:
            return [], []
        commands: list[Command] = [DeleteStandby(hostname)]
        if member.ready_at is None and member.failed is None:
            code = exit_code if exit_code is not None else "unknown"
            return commands, self._fail(member, f"exited with code {code} before it was ready", now)
        return commands, []

    def start_failed(self, hostname: str, error: str, now: float) -> list[Notice]:
        member = self.members.pop(hostname, None)
        if member is None:
            return []
        return self._fail(member, f"could not be started: {error}", now)

    def rollback(self, pool: PoolTarget, version: str, now: float, requested_by: str) -> None:
        """Roll back to `version` and hold it there until the config asks for something new."""
        self.pins[pool.name] = Pin(version, pool.version, f"rollback requested by {requested_by}")

    def _fail(self, member: Member, reason: str, now: float) -> list[Notice]:
        member.failed = reason
        self.failures.setdefault(member.pool, []).append(Failure(member.hostname, member.version, now, reason))
        del self.failures[member.pool][:-20]
        count = self.consecutive_failures.get(member.pool, 0) + 1
        self.consecutive_failures[member.pool] = count
        self.next_start_at[member.pool] = now + min(MAX_START_BACKOFF_S, 2.0 ** (count - 1))
        return [Notice("worker-failed", member.hostname, f"{member.pool} {member.version}: {reason}")]

    # ------------------------------------------------------------------ the planner
    def plan(
        self, pools: Mapping[str, PoolTarget], cluster: Cluster, drains: DrainBook, now: float, *,
        requested_by: str = "config",
    ) -> tuple[list[Command], list[Notice]]:
        commands: list[Command] = []
        notices: list[Notice] = []
        for pool in pools.values():
            c, n = self._plan_pool(pool, cluster, drains, now, requested_by)
            commands.extend(c)
            notices.extend(n)
        return commands, notices

    def _plan_pool(
        self, pool: PoolTarget, cluster: Cluster, drains: DrainBook, now: float, requested_by: str
    ) -> tuple[list[Command], list[Notice]]:
        commands: list[Command] = []
        notices: list[Notice] = []
        pin = self.pins.get(pool.name)
        if pin is not None and pin.config_version != pool.version:
            del self.pins[pool.name]  # the config changed: the pin has done its job
            notices.append(Notice("pin-released", pool.name, f"config now asks for {pool.version}"))
        members = self.of_pool(pool.name)
        target = self.target(pool)

        # Readiness of every member still on its way.
        for member in members:
            if member.ready_at is None and member.failed is None:
                commands.extend(self._readiness(member, pool, cluster, now, notices))

        # Rollout bookkeeping: start, supersede, abort.
        active = self.rollouts.get(pool.name)
        if active is not None and active.to_version != target:
            self._close(active, "superseded", now, f"superseded: the target is now {target}", notices, commands)
            active = None
        others = [m for m in members if m.version != target and m.failed is None]
        if active is None and others:
            active = self._open(pool, others, target, now, requested_by, commands, notices)
        if active is not None:
            failed = [f for f in self.failures.get(pool.name, []) if f.version == active.to_version
                      and f.at >= active.started_at]
            if failed:
                reason = f"{failed[0].hostname}: {failed[0].reason}"
                self.pins[pool.name] = Pin(active.from_version, pool.version, f"rollout {active.id} failed")
                self._close(active, "failed", now, f"aborted, back to {active.from_version}: {reason}", notices,
                            commands)
                target = self.target(pool)
                active = None
                # Reverse surge from here on: the rules below now treat the new version as old.

        new = [m for m in members if m.version == target and m.failed is None]
        ready_new = [m for m in new if m.ready_at is not None]

        # 1. Target-version workers drained by a rollout that no longer wants it: consume again.
        for member in new:
            drain = drains.active.get(member.hostname)
            # A drain is the rollout's own only if the fleet's journal of intents says so: never by
            # what a caller wrote in `requested_by`.
            if (drain is not None and member.hostname in self.cancelled
                    and drain.phase not in (Phase.RETIRING, Phase.STOPPING)):
                commands.extend(drains.cancel(cluster, member.hostname, now, f"{target} is the target again"))
                self.cancelled.pop(member.hostname, None)
                if member.ready_at is None:
                    member.ready_at = now
                if member not in ready_new:
                    ready_new.append(member)
                notices.append(Notice("drain-reverted", member.hostname, f"consumes again: {target} is the target"))

        # 2. Start workers of the target version, surge-first, within the cap.
        alive = len(members)
        missing = pool.replicas - len(new)
        room = pool.cap - alive
        if missing > 0 and room > 0 and now >= self.next_start_at.get(pool.name, 0.0):
            for _ in range(min(missing, room)):
                hostname = self._hostname(pool, target)
                self.members[hostname] = Member(hostname, pool.name, target, started_at=now, quiet=pool.quiet_start)
                commands.append(StartWorker(pool.name, target, hostname, quiet=pool.quiet_start))
                notices.append(Notice("worker-starting", hostname, f"{pool.name} {target}"))

        # 3. Drain old workers, one for each ready new worker beyond the pool's size; those that can be
        # drained first.
        draining = set(drains.active)
        blocked: dict[str, str] = {}
        serving_old = sorted((m for m in members if m.version != target and m.hostname not in draining
                              and m.failed is None and m.ready_at is not None),
                             key=lambda m: self._not_answering(cluster, m.hostname))
        excess = len(ready_new) + len(serving_old) - pool.replicas
        for member in serving_old[:max(0, excess)]:
            commands.extend(self._drain(member, pool, cluster, drains, now, active, blocked))
        # An old worker that never passed the gate (adopted so) and does not answer: never drained.
        for member in members:
            if (member.version != target and member.failed is None and member.ready_at is None
                    and self._not_answering(cluster, member.hostname)):
                worker = cluster.worker(member.hostname)
                assert worker is not None
                blocked[member.hostname] = not_answering_reason(worker)
        # 4. Failed workers still alive: one that never left its standby queue holds no pool message and is
        # stopped; any other is drained, never just stopped: it may hold tasks.
        for member in members:
            if member.failed is None or member.hostname in draining:
                continue
            if self._never_consumed(member, pool, cluster):
                commands.extend(self._stop(member, pool, now))
            else:
                commands.extend(self._drain(member, pool, cluster, drains, now, active, blocked, force=True))
        # 4b. Ready workers leave their standby queue, and keep the pool's queues drainctl gave them.
        for member in members:
            if member.ready_at is not None and member.failed is None:
                commands.extend(self._leave_standby(member, cluster, now))
                if member.hostname not in draining and member.hostname not in self.cancelled:
                    commands.extend(self._keep_consuming(member, pool, cluster, now))
        # 5. More ready target workers than the pool's size (replicas lowered): drain the newest.
        if len(ready_new) > pool.replicas:
            for member in sorted(ready_new, key=lambda m: m.started_at)[pool.replicas:]:
                if member.hostname not in draining:
                    commands.extend(self._drain(member, pool, cluster, drains, now, active, blocked))
        notices.extend(self._report_blocked(members, blocked))

        if active is not None:
            active.replaced = len(ready_new)
            still_old = [m for m in self.of_pool(pool.name) if m.version != target]
            if not still_old and len(ready_new) >= pool.replicas:
                self._close(active, "succeeded", now, f"{pool.name} runs {target}", notices, commands)
        if ready_new and all(m.ready_at is not None for m in new):
            self.consecutive_failures.pop(pool.name, None)
        return commands, notices

    @staticmethod
    def _not_answering(cluster: Cluster, hostname: str) -> bool:
        worker = cluster.worker(hostname)
        return worker is not None and worker.not_answering

    def _report_blocked(self, members: list[Member], blocked: dict[str, str]) -> list[Notice]:
        """Keep `self.blocked` for this pool's members; a notice when a member becomes blocked (or why changes)."""
        notices = []
        for member in members:
            reason = blocked.get(member.hostname)
            if reason is None:
                self.blocked.pop(member.hostname, None)
            elif self.blocked.get(member.hostname) != reason:
                self.blocked[member.hostname] = reason
                notices.append(Notice("rollout-blocked", member.hostname, f"{member.pool}: {reason}"))
        return notices

    def _readiness(
        self, member: Member, pool: PoolTarget, cluster: Cluster, now: float, notices: list[Notice]
    ) -> list[Command]:
        worker = cluster.worker(member.hostname)
        # The gate's deadline and its remote-control verdict apply to every worker drainctl started, and to
        # an adopted one still on its standby queue; not to one found serving (it may be paused on purpose).
        judged = not member.adopted or self._quiet(member, worker)
        if worker is not None and worker.not_answering and judged:
            notices.extend(self._fail(member, "does not answer remote control (is worker_enable_remote_control off?): "
                                      "the readiness gate cannot judge it, and drainctl could never drain it", now))
            return []
        online = worker is not None and worker.state is WorkerState.ONLINE
        queues = worker.queues if worker is not None else None
        consuming = queues is not None and set(pool.queues) <= set(queues)
        if member.hostname in self.cancelled and online:
            # Adopted mid-drain: it served before; its drain is resumed, not gated.
            member.ready_at = now
            return []
        commands: list[Command] = []
        if online and consuming:
            # Switched (the gate passed before add_consumer), or found consuming: then judged now.
            passed = member.switch_asked_at is not None
            if not passed:
                passed, commands = self._gate(member, pool, cluster, now, notices)
            if passed:
                member.ready_at = now
                notices.append(Notice("worker-ready", member.hostname, f"{member.pool} {member.version} consuming "
                                      f"{', '.join(pool.queues)} after {now - member.started_at:.1f}s"))
                return commands
        elif online and on_standby(queues):
            commands = self._judge_quiet(member, pool, cluster, now, notices)
        if member.failed is None and judged and now - member.started_at > pool.ready_timeout_s:
            unanswered = f", remote-control questions unanswered: {len(worker.unanswered)}" if (
                worker is not None and worker.unanswered) else ""
            notices.extend(self._fail(member, (
                f"not ready after {pool.ready_timeout_s:g}s (online: {online}, on standby: {on_standby(queues)}, "
                f"consuming all of {', '.join(pool.queues)}: {consuming}, tasks registered: "
                f"{member.registered is not None}{unanswered})"), now))
        return commands

    def _judge_quiet(
        self, member: Member, pool: PoolTarget, cluster: Cluster, now: float, notices: list[Notice]
    ) -> list[Command]:
        """A worker on its standby queue: once it passed the gate, add the pool's queues (again, if unconfirmed)."""
        if member.switch_asked_at is not None:
            return self._switch_again(member, pool, now)
        passed, commands = self._gate(member, pool, cluster, now, notices)
        if passed:
            member.switch_asked_at = now
            commands.append(SwitchToPool(member.hostname, pool.queues))
            notices.append(Notice("worker-judged", member.hostname, f"{member.pool} {member.version} passed the "
                                  f"gate after {now - member.started_at:.1f}s: adding {', '.join(pool.queues)}"))
        return commands

    def _gate(
        self, member: Member, pool: PoolTarget, cluster: Cluster, now: float, notices: list[Notice]
    ) -> tuple[bool, list[Command]]:
        """Does it register every task the running version registers? Both lists known, or no verdict yet."""
        commands = self._ask_registered(member, now) if member.registered is None else []
        baseline, unknown = self._baseline(member, cluster)
        for other in unknown:
            worker = cluster.worker(other.hostname)
            if worker is not None and worker.state is WorkerState.ONLINE:
                commands.extend(self._ask_registered(other, now))
        if member.registered is None or unknown:
            return False, commands
        missing = sorted(baseline - member.registered)
        if missing:
            notices.extend(self._fail(member, f"does not register {', '.join(missing)}, which the running "
                                      "version registers: Celery would discard their messages", now))
            return False, commands
        return True, commands

    @staticmethod
    def _ask_registered(member: Member, now: float) -> list[Command]:
        if not _due(member.registered_asked_at, now, REGISTERED_RETRY_S):
            return []
        member.registered_asked_at = now
        return [QueryRegistered(member.hostname)]

    def _baseline(self, member: Member, cluster: Cluster) -> tuple[frozenset[str], list[Member]]:
        """What the running members of the pool register (the union), and the members whose list is unknown.

        Running: the other versions' members, and this version's members that passed the gate. A member
        whose list is unknown makes the gate wait (it is asked again), unless its worker is gone or
        shutting down: a lost reply is never read as "nothing to compare".
        """
        known: list[frozenset[str]] = []
        unknown: list[Member] = []
        for other in self.members.values():
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

    @staticmethod
    def _quiet(member: Member, worker: Worker | None) -> bool:
        """Started quiet, or seen on its standby queue (an adopted one)."""
        return member.quiet or (worker is not None and on_standby(worker.queues))

    def _never_consumed(self, member: Member, pool: PoolTarget, cluster: Cluster) -> bool:
        """A quiet worker that was never told to consume the pool's queues (and does not): it holds no pool message."""
        worker = cluster.worker(member.hostname)
        if member.switch_asked_at is not None or not self._quiet(member, worker):
            return False
        return worker is None or worker.queues is None or not (set(pool.queues) & set(worker.queues))

    @staticmethod
    def _stop(member: Member, pool: PoolTarget, now: float) -> list[Command]:
        if not _due(member.stop_asked_at, now, STOP_RETRY_S):
            return []
        member.stop_asked_at = now
        return [StopWorker(member.hostname, pool.drain_policy.stop_timeout_s)]

    @staticmethod
    def _keep_consuming(member: Member, pool: PoolTarget, cluster: Cluster, now: float) -> list[Command]:
        """A switched worker that lost pool queues (Celery < 5.7 forgets a queue its app defines that
        add_consumer added when its consumer restarts, e.g. after a broker reconnect): add them again."""
        worker = cluster.worker(member.hostname)
        if (member.switch_asked_at is None or worker is None or worker.state is not WorkerState.ONLINE
                or worker.queues is None or set(pool.queues) <= set(worker.queues)):
            return []
        return Fleet._switch_again(member, pool, now)

    @staticmethod
    def _switch_again(member: Member, pool: PoolTarget, now: float) -> list[Command]:
        """add_consumer again (Celery ignores a queue it already consumes), at most every SWITCH_RETRY_S."""
        if not _due(member.switch_asked_at, now, SWITCH_RETRY_S):
            return []
        member.switch_asked_at = now
        return [SwitchToPool(member.hostname, pool.queues)]

    @staticmethod
    def _leave_standby(member: Member, cluster: Cluster, now: float) -> list[Command]:
        worker = cluster.worker(member.hostname)
        if worker is None or worker.state is not WorkerState.ONLINE or not on_standby(worker.queues):
            return []
        if not _due(member.standby_cancel_asked_at, now, SWITCH_RETRY_S):
            return []
        member.standby_cancel_asked_at = now
        return [CancelStandby(member.hostname)]

    def _drain(
        self, member: Member, pool: PoolTarget, cluster: Cluster, drains: DrainBook, now: float,
        rollout: Rollout | None, blocked: dict[str, str], *, force: bool = False,
    ) -> list[Command]:
        rollout_id = rollout.id if rollout is not None else f"{pool.name}-reconcile"
        requested_by = f"rollout:{rollout_id}"
        worker = cluster.worker(member.hostname)
        if worker is not None and worker.not_answering:
            # Never killed instead: a warm shutdown by its operator is the one safe way to stop it.
            blocked[member.hostname] = not_answering_reason(worker)
            return []
        if member.hostname in self.cancelled and worker is not None and worker.queues is not None and not (
                set(pool.queues) & set(worker.queues)):
            drains.resume(cluster, member.hostname, pool.queues, now, policy=pool.drain_policy, managed=True,
                          requested_by=requested_by)
            return []
        if worker is None or worker.queues is None:
            return []  # not seen yet: drained when the model knows it
        try:
            # Journal the intent first: after a crash it tells our drained workers from paused ones.
            _, commands = drains.start(cluster, member.hostname, now, policy=pool.drain_policy, managed=True,
                                       force=force, requested_by=requested_by)
        except DrainRefused as refused:
            blocked[member.hostname] = refused.reason
            return []
        self.cancelled[member.hostname] = rollout_id
        return [JournalCancel(member.hostname, rollout_id), *commands]

    def _open(
        self, pool: PoolTarget, others: list[Member], target: str, now: float, requested_by: str,
        commands: list[Command], notices: list[Notice],
    ) -> Rollout:
        from_version = Counter(m.version for m in others).most_common(1)[0][0]
        rollout = Rollout(
            id=f"{pool.name}-{self.new_id()}", pool=pool.name, from_version=from_version, to_version=target,
            started_at=now, requested_by=requested_by, total=pool.replicas,
        )
        self.rollouts[pool.name] = rollout
        commands.append(JournalRollout(rollout.id))
        notices.append(Notice("rollout-started", pool.name, f"{rollout.id}: {from_version} -> {target}"))
        # The registered-tasks gate needs what the old version registers: ask before the new worker is up.
        for member in others:
            if member.registered is None:
                commands.extend(self._ask_registered(member, now))
        return rollout

    def _close(self, rollout: Rollout, outcome: str, now: float, detail: str, notices: list[Notice],
               commands: list[Command]) -> None:
        rollout.outcome = outcome
        rollout.finished_at = now
        rollout.detail = detail
        self.rollouts.pop(rollout.pool, None)
        self.history.append(rollout)
        self.rollout_outcomes[outcome] += 1
        commands.append(JournalRollout(rollout.id))
        notices.append(Notice(f"rollout-{outcome}", rollout.pool, f"{rollout.id}: {detail}"))

    def _hostname(self, pool: PoolTarget, version: str) -> str:
        return f"{pool.name}-{version}-{self.new_id()}@{pool.host}"


def _due(asked_at: float | None, now: float, interval: float) -> bool:
    """Never asked, or asked at least `interval` ago: time to ask (again)."""
    return asked_at is None or now - asked_at >= interval
