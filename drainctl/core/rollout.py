"""Pools and rollouts: keep every pool at its size and its target version, surge-first.

Level-triggered: `Fleet.plan` looks at what is (the members drainctl started or adopted, the live
model, the drains under way, the pins) and returns what to do next. It is called after every input,
so a restarted controller recomputes what is left from what it observes plus its journal.

One rule set covers a rollout, a supersede (the target changes mid-way: workers of the
now-outdated version are simply "old"), an abort (the target is pinned back: the old version's
drained workers resume consuming, the new ones are drained) and a restart.

Invariants it keeps, per pool:
- never more than `cap` workers alive (starting, serving and draining ones together);
- a new worker takes no pool message before it passed the readiness gate (`drainctl.core.gate`).
  A worker that fails before it switched is stopped (it holds no pool message); one that may hold
  pool messages is drained, never just stopped;
- an old worker is drained only when ready new + serving old workers exceed `replicas`, so every
  queue keeps its consumers.

A worker that does not answer remote control (see `drainctl.core.remote_control`) can be neither
gated nor drained: a new one fails its readiness gate (the rollout aborts, saying why); any member the
rollout would drain is left running and reported *blocked* with the reason (once), never killed:
only a warm shutdown by its operator (SIGTERM) stops it without losing work.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from drainctl.core.canary import CanaryBook
from drainctl.core.commands import (
    Command,
    DeleteStandby,
    JournalCanary,
    JournalCancel,
    JournalRollout,
    StartWorker,
)
from drainctl.core.drain import DrainBook, DrainRefused, Phase
from drainctl.core.engines import EngineBook
from drainctl.core.gate import readiness
from drainctl.core.members import (
    Member,
    PoolTarget,
    ask_registered,
    keep_consuming,
    leave_standby,
    never_consumed,
    stop,
)
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.placement import engine_of, place
from drainctl.core.refusals import not_answering_reason
from drainctl.core.scaling import scale_in_order

# What code outside the core imports from here, wherever it is defined.
__all__ = ["Failure", "Fleet", "Member", "Pin", "PoolTarget", "Rollout"]

MAX_START_BACKOFF_S = 60.0


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


@dataclass(slots=True)
class _Pass:
    """One planning pass over one pool, once its rollout and target are settled: what it looks at and
    what it decided so far."""

    pool: PoolTarget
    cluster: Cluster
    drains: DrainBook
    now: float
    members: list[Member]
    target: str
    rollout: Rollout | None
    new: list[Member]  # the target version's members that have not failed
    ready_new: list[Member]
    commands: list[Command]
    notices: list[Notice]
    # Workers of the target version the pool may have now: fewer than replicas during a canary's steps.
    allowed: int = 0
    # Target-version members on an engine being evacuated: replaced and drained like old ones.
    replacing: set[str] = field(default_factory=set)
    # Members on an engine that cannot be reached: not capacity, and the pool drains nothing meanwhile.
    away: set[str] = field(default_factory=set)
    # The workers being drained when the drains of this pass began (reverted ones excluded).
    draining: set[str] = field(default_factory=set)
    # Members this pass would drain but cannot, and why.
    blocked: dict[str, str] = field(default_factory=dict)


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
        self.canary = CanaryBook()
        self.engines = EngineBook()

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

    def rollback(self, pool: PoolTarget, version: str, requested_by: str) -> None:
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
        for member in members:
            if member.ready_at is None and member.failed is None:
                commands.extend(self._judge(member, pool, cluster, now, notices))
        rollout = self._track_rollout(pool, members, now, requested_by, commands, notices)
        allowed = pool.replicas
        if rollout is not None and pool.canary is not None and pool.name not in self.pins:
            # A pinned target is a way back: it goes at once, never in steps.
            allowed, rollout = self._canary(pool, rollout, members, now, commands, notices)
        # After an abort the target is the old version again: the phases below then treat the new
        # version as old (a reverse surge).
        target = self.target(pool)
        leaving = self.engines.leaving() if pool.engines else frozenset()
        replacing = {m.hostname for m in members if engine_of(m.hostname) in leaving}
        away = {m.hostname for m in members if pool.engines and engine_of(m.hostname) in self.engines.down}
        new = [m for m in members if m.version == target and m.failed is None and m.hostname not in replacing | away]
        step = _Pass(pool, cluster, drains, now, members, target, rollout, new,
                     ready_new=[m for m in new if m.ready_at is not None], commands=commands, notices=notices,
                     allowed=allowed, replacing=replacing, away=away)
        self._revert_drains(step)
        self._surge(step)
        step.draining = set(drains.active)
        self._retire_old(step)
        self._retire_failed(step)
        self._tend_ready(step)
        self._shed_excess(step)
        notices.extend(self._report_blocked(members, step.blocked))
        self._settle(step)
        return commands, notices

    def _judge(
        self, member: Member, pool: PoolTarget, cluster: Cluster, now: float, notices: list[Notice]
    ) -> list[Command]:
        """A member on its way in goes through the readiness gate; a verdict against it fails it."""
        commands, failure = readiness(member, pool, cluster, self.members.values(), self.cancelled, now, notices)
        if failure is not None:
            notices.extend(self._fail(member, failure, now))
        return commands

    def _track_rollout(
        self, pool: PoolTarget, members: list[Member], now: float, requested_by: str,
        commands: list[Command], notices: list[Notice],
    ) -> Rollout | None:
        """Open, supersede or abort the pool's rollout; the one still under way, if any."""
        target = self.target(pool)
        active = self.rollouts.get(pool.name)
        if active is not None and active.to_version != target:
            self._close(active, "superseded", now, f"superseded: the target is now {target}", notices, commands)
            active = None
        others = [m for m in members if m.version != target and m.failed is None]
        if active is None and others:
            active = self._open(pool, others, target, now, requested_by, commands, notices)
        if active is None:
            return None
        failed = [f for f in self.failures.get(pool.name, []) if f.version == active.to_version
                  and f.at >= active.started_at]
        if not failed:
            return active
        self._abort(pool, active, f"{failed[0].hostname}: {failed[0].reason}", now, commands, notices)
        return None

    def _abort(self, pool: PoolTarget, rollout: Rollout, reason: str, now: float, commands: list[Command],
               notices: list[Notice]) -> None:
        """Back to the old version: the pool is pinned to it (its drained workers resume, the new ones are
        drained, a reverse surge restores its size) until the config asks for another version."""
        self.pins[pool.name] = Pin(rollout.from_version, pool.version, f"rollout {rollout.id} failed")
        self._close(rollout, "failed", now, f"aborted, back to {rollout.from_version}: {reason}", notices, commands)

    def _canary(self, pool: PoolTarget, rollout: Rollout, members: list[Member], now: float,
                commands: list[Command], notices: list[Notice]) -> tuple[int, Rollout | None]:
        """How many new workers the canary allows now; the rollout is None once the canary aborted it."""
        assert pool.canary is not None
        ready = sum(1 for m in members if m.version == rollout.to_version and m.ready_at is not None
                    and m.failed is None)
        gate = self.canary.allowed(pool.name, rollout.to_version, pool.canary, pool.replicas, ready, now)
        if gate.journal:
            commands.append(JournalCanary())
            notices.append(Notice("canary-step", pool.name, f"{rollout.id}: {self.canary.holds[pool.name].detail}"))
        if gate.abort is None:
            return gate.allowed, rollout
        self._abort(pool, rollout, f"canary analysis: {gate.abort}", now, commands, notices)
        return pool.replicas, None

    def _revert_drains(self, step: _Pass) -> None:
        """Target-version workers drained by a rollout that no longer wants it consume again, as many as
        the pool is short of: a drain that sheds a worker the pool has too many of stays."""
        serving = sum(1 for m in step.ready_new if m.hostname not in step.drains.active)
        for member in step.new:
            drain = step.drains.active.get(member.hostname)
            # A drain is the rollout's own only if the fleet's journal of intents says so: never by
            # what a caller wrote in `requested_by`.
            if (drain is None or member.hostname not in self.cancelled
                    or drain.phase in (Phase.RETIRING, Phase.STOPPING) or serving >= step.pool.replicas):
                continue
            serving += 1
            step.commands.extend(step.drains.cancel(step.cluster, member.hostname, step.now,
                                                    f"{step.target} is the target again"))
            self.cancelled.pop(member.hostname, None)
            if member.ready_at is None:
                member.ready_at = step.now
            if member not in step.ready_new:
                step.ready_new.append(member)
            step.notices.append(Notice("drain-reverted", member.hostname,
                                       f"consumes again: {step.target} is the target"))

    def _surge(self, step: _Pass) -> None:
        """Start workers of the target version, surge-first, within the cap and the pool's start backoff."""
        pool = step.pool
        missing = step.allowed - len(step.new)
        room = pool.cap - len(step.members)
        if missing <= 0 or room <= 0 or step.now < self.next_start_at.get(pool.name, 0.0):
            return
        for _ in range(min(missing, room)):
            engine = place(pool.engines, pool.per_engine_cap, self.of_pool(pool.name), self.engines.closed()
                           ) if pool.engines else None
            if pool.engines and engine is None:
                return  # every engine at its cap
            hostname = self._hostname(pool, step.target, engine)
            self.members[hostname] = Member(hostname, pool.name, step.target, started_at=step.now,
                                            quiet=pool.quiet_start)
            step.commands.append(StartWorker(pool.name, step.target, hostname, quiet=pool.quiet_start, engine=engine))
            step.notices.append(Notice("worker-starting", hostname, f"{pool.name} {step.target}"))

    def _retire_old(self, step: _Pass) -> None:
        """Drain old workers, one for each ready new worker beyond the pool's size; those that can be drained first."""
        if step.away:
            return
        serving_old = sorted((m for m in step.members if (m.version != step.target or m.hostname in step.replacing)
                              and m.hostname not in step.draining
                              and m.failed is None and m.ready_at is not None),
                             key=lambda m: _not_answering(step.cluster, m.hostname))
        excess = len(step.ready_new) + len(serving_old) - step.pool.replicas
        for member in serving_old[:max(0, excess)]:
            step.commands.extend(self._drain(member, step))
        # An old worker that never passed the gate (adopted so) and does not answer: never drained.
        for member in step.members:
            if (member.version != step.target and member.failed is None and member.ready_at is None
                    and _not_answering(step.cluster, member.hostname)):
                worker = step.cluster.worker(member.hostname)
                assert worker is not None
                step.blocked[member.hostname] = not_answering_reason(worker)

    def _retire_failed(self, step: _Pass) -> None:
        """Failed workers still alive: one that never left its standby queue holds no pool message and is
        stopped; any other is drained, never just stopped: it may hold tasks."""
        for member in step.members:
            if member.failed is None or member.hostname in step.draining | step.away:
                continue
            if never_consumed(member, step.pool, step.cluster.worker(member.hostname)):
                step.commands.extend(stop(member, step.pool, step.now))
            else:
                step.commands.extend(self._drain(member, step, force=True))

    def _tend_ready(self, step: _Pass) -> None:
        """Ready workers leave their standby queue, and keep the pool's queues drainctl gave them."""
        for member in step.members:
            if member.ready_at is None or member.failed is not None:
                continue
            worker = step.cluster.worker(member.hostname)
            step.commands.extend(leave_standby(member, worker, step.now))
            if member.hostname not in step.draining and member.hostname not in self.cancelled:
                step.commands.extend(keep_consuming(member, step.pool, worker, step.now))

    def _shed_excess(self, step: _Pass) -> None:
        """More ready target workers than the pool's size (replicas lowered): drain those that will be free
        first (`drainctl.core.scaling.scale_in_order`; the newest among equals). Those already draining
        count, so every pass asks for the same ones."""
        if step.away:
            return
        staying = [m for m in step.ready_new if m.hostname not in step.draining]
        wanted = len(step.ready_new) - step.pool.replicas - (len(step.ready_new) - len(staying))
        if wanted <= 0:
            return
        runtimes = step.cluster.runtimes

        def free_first(member: Member) -> tuple[float, ...]:
            worker = step.cluster.worker(member.hostname)
            known = (math.inf,) * 3 if worker is None else scale_in_order(worker, runtimes, step.now)[:3]
            return (*known, -member.started_at)

        for member in sorted(reversed(staying), key=free_first)[:wanted]:  # ties: the later member
            step.commands.extend(self._drain(member, step))

    def _settle(self, step: _Pass) -> None:
        """The rollout succeeds once no old worker is left and the pool is full; a pool whose new workers
        are all ready stops backing off its starts."""
        if step.rollout is not None:
            step.rollout.replaced = len(step.ready_new)
            still_old = [m for m in self.of_pool(step.pool.name) if m.version != step.target]
            if not still_old and len(step.ready_new) >= step.pool.replicas:
                self._close(step.rollout, "succeeded", step.now, f"{step.pool.name} runs {step.target}",
                            step.notices, step.commands)
        if step.ready_new and all(m.ready_at is not None for m in step.new):
            self.consecutive_failures.pop(step.pool.name, None)

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

    def _drain(self, member: Member, step: _Pass, *, force: bool = False) -> list[Command]:
        pool, cluster, drains, now = step.pool, step.cluster, step.drains, step.now
        rollout_id = step.rollout.id if step.rollout is not None else f"{pool.name}-reconcile"
        requested_by = f"rollout:{rollout_id}"
        worker = cluster.worker(member.hostname)
        if worker is not None and worker.not_answering:
            # Never killed instead: a warm shutdown by its operator is the one safe way to stop it.
            step.blocked[member.hostname] = not_answering_reason(worker)
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
            step.blocked[member.hostname] = refused.reason
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
                commands.extend(ask_registered(member, now))
        return rollout

    def _close(self, rollout: Rollout, outcome: str, now: float, detail: str, notices: list[Notice],
               commands: list[Command]) -> None:
        rollout.outcome = outcome
        rollout.finished_at = now
        rollout.detail = detail
        self.rollouts.pop(rollout.pool, None)
        self.canary.close(rollout.pool)
        self.history.append(rollout)
        self.rollout_outcomes[outcome] += 1
        commands.append(JournalRollout(rollout.id))
        notices.append(Notice(f"rollout-{outcome}", rollout.pool, f"{rollout.id}: {detail}"))

    def _hostname(self, pool: PoolTarget, version: str, engine: str | None) -> str:
        return f"{pool.name}-{version}-{self.new_id()}@{engine or pool.host}"


def _not_answering(cluster: Cluster, hostname: str) -> bool:
    worker = cluster.worker(hostname)
    return worker is not None and worker.not_answering
