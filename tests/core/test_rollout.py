"""The rollout planner, driven through a small simulated world: time and every reply are data."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    CancelStandby,
    DeleteStandby,
    JournalCancel,
    JournalRollout,
    QueryRegistered,
    Reconcile,
    ShutdownWorker,
    StartWorker,
    StopWorker,
    SwitchToPool,
)
from drainctl.core.drain import DrainBook, Outcome
from drainctl.core.events import parse_event
from drainctl.core.model import Cluster, WorkerState
from drainctl.core.quiet import standby_queue
from drainctl.core.rollout import Fleet, PoolTarget
from tests.core.factories import worker_event

TASKS = frozenset({"t.a", "t.b"})


class World:
    """Executes the planner's commands the way real workers would answer them, instantly."""

    def __init__(self, replicas: int = 3, version: str = "v1") -> None:
        ids = itertools.count(1)
        self.cluster = Cluster()
        self.drains = DrainBook()
        self.fleet = Fleet(new_id=lambda: f"{next(ids):04d}")
        self.pool = PoolTarget("p", ("q",), replicas, cap=replicas + 1, version=version, ready_timeout_s=30)
        self.now = 0.0
        self.pids = itertools.count(100)
        self.registered: dict[str, frozenset[str]] = {}
        self.crashing: set[str] = set()
        self.never_consuming: set[str] = set()
        self.journal: list[Any] = []
        self.log: list[Any] = []
        self.max_alive = 0
        self.min_consumers: int | None = None
        self.slow_drain: set[str] = set()
        # Workers that were given the pool's queue, and those stopped through the runtime.
        self.consumed: set[str] = set()
        self.stopped: set[str] = set()

    def consumers(self) -> int:
        return sum(1 for w in self.cluster if w.state is WorkerState.ONLINE and w.queues and "q" in w.queues)

    def step(self, dt: float = 1.0) -> None:
        self.now += dt
        commands, _ = self.fleet.plan({"p": self.pool}, self.cluster, self.drains, self.now)
        more, _ = self.drains.evaluate(self.cluster, self.now)
        for command in [*commands, *more]:
            self.execute(command)
        self.max_alive = max(self.max_alive, len(self.fleet.of_pool("p")))
        if any(m.ready_at is not None for m in self.fleet.members.values()):
            consumers = self.consumers()
            self.min_consumers = consumers if self.min_consumers is None else min(self.min_consumers, consumers)

    def version_of(self, host: str) -> str:
        return host.split("-")[1]

    def execute(self, command: Any) -> None:
        self.log.append(command)
        if isinstance(command, StartWorker):
            if command.version in self.crashing:
                self.fleet.exited(command.hostname, 1, self.now)
                return
            self.cluster.apply(parse_event(worker_event("online", 1, host=command.hostname, pid=next(self.pids))),
                               self.now)
            if command.quiet:
                self.cluster.set_queues(command.hostname, (standby_queue(command.hostname),))
            elif command.version not in self.never_consuming:
                self.consumed.add(command.hostname)
                self.cluster.set_queues(command.hostname, ("q",))
            else:
                self.cluster.set_queues(command.hostname, ())
        elif isinstance(command, SwitchToPool):
            if self.version_of(command.hostname) not in self.never_consuming:
                self.consumed.add(command.hostname)
                self.cluster.set_queues(command.hostname, ("q", standby_queue(command.hostname)))
        elif isinstance(command, CancelStandby):
            worker = self.cluster.worker(command.hostname)
            assert worker is not None and worker.queues is not None and "q" in worker.queues
            self.cluster.set_queues(command.hostname, ("q",))
        elif isinstance(command, StopWorker):
            self.stopped.add(command.hostname)
            self.fleet.exited(command.hostname, 0, self.now)
            self.cluster.forget(command.hostname)
        elif isinstance(command, QueryRegistered):
            self.fleet.registered(command.hostname, self.registered.get(self.version_of(command.hostname), TASKS),
                                  self.now)
        elif isinstance(command, CancelConsumers):
            self.cluster.set_queues(command.hostname, ())
            self.drains.cancel_replied(command.hostname, dict.fromkeys(command.queues, True), self.now)
        elif isinstance(command, AddConsumers):
            self.cluster.set_queues(command.hostname, ("q",))
        elif isinstance(command, Reconcile):
            if command.hostname in self.slow_drain:
                return
            for more in self.drains.confirm_done(self.cluster, command.hostname, True, self.now):
                self.execute(more)
        elif isinstance(command, ShutdownWorker):
            self.drains.exited(self.cluster, command.hostname, 0, False, self.now)
            self.fleet.exited(command.hostname, 0, self.now)
            self.cluster.forget(command.hostname)
        elif isinstance(command, JournalCancel | JournalRollout):
            self.journal.append(command)
        elif isinstance(command, DeleteStandby):
            worker = self.cluster.worker(command.hostname)
            assert worker is None or worker.state is not WorkerState.ONLINE

    def run(self, done: Any, steps: int = 200) -> None:
        for _ in range(steps):
            self.step()
            if done():
                return
        raise AssertionError("the world did not settle")

    def versions(self) -> list[str]:
        return sorted(m.version for m in self.fleet.of_pool("p"))

    def settled(self, version: str) -> bool:
        return (self.versions() == [version] * self.pool.replicas and not self.fleet.rollouts
                and all(m.ready_at is not None for m in self.fleet.of_pool("p")) and not self.drains.active)


def started_world(**kw: Any) -> World:
    world = World(**kw)
    world.run(lambda: world.settled("v1"))
    world.max_alive = 0
    world.min_consumers = None
    return world


def test_a_new_pool_starts_its_replicas_and_opens_no_rollout() -> None:
    world = started_world()
    assert world.versions() == ["v1"] * 3
    assert world.fleet.history == deque_of() and world.fleet.rollout_outcomes == {}


def deque_of() -> Any:
    from collections import deque
    return deque(maxlen=100)


def test_rollout_replaces_every_worker_surge_first_within_the_cap() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v2"))
    assert world.max_alive <= world.pool.cap
    assert world.min_consumers is not None and world.min_consumers >= world.pool.replicas
    (rollout,) = world.fleet.history
    assert (rollout.from_version, rollout.to_version, rollout.outcome) == ("v1", "v2", "succeeded")
    # every old worker's drain was journaled before its cancel_consumer went out
    for index, command in enumerate(world.log):
        if isinstance(command, CancelConsumers) and world.version_of(command.hostname) == "v1":
            assert JournalCancel(command.hostname, rollout.id) in world.log[:index]
    assert world.drains.outcomes["retired"] == 3


def test_surge_first_order_start_ready_then_drain() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    for _ in range(5):
        world.step()
    starts = [c for c in world.log if isinstance(c, StartWorker) and c.version == "v2"]
    assert len(starts) == 1  # cap 4 with 3 alive: one at a time
    cancels = [c for c in world.log if isinstance(c, CancelConsumers)]
    assert world.log.index(cancels[0]) > world.log.index(starts[0])


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("crash", "exited with code 1 before it was ready"),
        ("missing-task", "does not register t.b"),
        ("never-consumes", "not ready after 30s"),
    ],
)
def test_a_bad_version_aborts_and_capacity_never_drops(setup: str, reason: str) -> None:
    world = started_world()
    if setup == "crash":
        world.crashing.add("v2")
    elif setup == "missing-task":
        world.registered["v2"] = frozenset({"t.a"})
    else:
        world.never_consuming.add("v2")
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v1") and bool(world.fleet.history), steps=300)
    (rollout,) = [r for r in world.fleet.history if r.to_version == "v2"]
    assert rollout.outcome == "failed" and reason in rollout.detail
    assert world.min_consumers is not None and world.min_consumers >= world.pool.replicas
    assert world.max_alive <= world.pool.cap
    assert world.fleet.pins["p"].version == "v1"
    # pinned: further planning with the same config stays at v1
    for _ in range(10):
        world.step()
    assert world.versions() == ["v1"] * 3
    # a new config releases the pin
    world.crashing.clear()
    world.registered.clear()
    world.never_consuming.clear()
    world.pool = replace(world.pool, version="v3")
    world.run(lambda: world.settled("v3"))
    assert "p" not in world.fleet.pins


def test_abort_puts_drained_old_workers_back_to_work() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2", cap=5)  # surge 2: two new workers at once
    # old workers drain slowly (long tasks): one is still draining when the second v2 worker fails
    olds = [m.hostname for m in world.fleet.of_pool("p")]
    world.slow_drain.update(olds)
    world.never_consuming.add("v2")
    world.step()
    first = next(m.hostname for m in world.fleet.of_pool("p") if m.version == "v2")
    world.cluster.set_queues(first, ("q",))
    for _ in range(5):
        world.step()
    draining = set(world.drains.active)
    assert draining and draining <= set(olds)
    unready = [m for m in world.fleet.of_pool("p") if m.version == "v2" and m.ready_at is None]
    assert unready
    world.fleet.exited(unready[0].hostname, 1, world.now)
    world.slow_drain.clear()
    world.run(lambda: world.settled("v1") and bool(world.fleet.history))
    assert any(isinstance(c, AddConsumers) and c.hostname in draining for c in world.log)
    assert world.drains.outcomes["cancelled"] >= 1
    assert sorted(m.hostname for m in world.fleet.of_pool("p")) == sorted(olds)


def test_a_newer_target_supersedes_a_rollout_in_progress() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    for _ in range(4):
        world.step()
    assert "v2" in world.versions()
    world.pool = replace(world.pool, version="v3")
    world.run(lambda: world.settled("v3"))
    outcomes = [(r.to_version, r.outcome) for r in world.fleet.history]
    assert outcomes[0] == ("v2", "superseded") and outcomes[-1] == ("v3", "succeeded")
    assert world.max_alive <= world.pool.cap


def test_rollback_pins_the_previous_version_until_the_config_changes() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v2"))
    world.fleet.rollback(world.pool, "v1", "cli:ops")
    world.run(lambda: world.settled("v1"))
    for _ in range(5):
        world.step()
    assert world.versions() == ["v1"] * 3  # the config still says v2: no surprise roll-forward
    world.pool = replace(world.pool, version="v4")
    world.run(lambda: world.settled("v4"))


def test_a_worker_confirmed_gone_is_replaced_a_silent_one_is_not() -> None:
    world = started_world()
    victim = world.fleet.of_pool("p")[0].hostname
    world.fleet.exited(victim, -9, world.now)
    world.cluster.forget(victim)
    world.run(lambda: world.settled("v1"))
    assert victim not in world.fleet.members and len(world.fleet.members) == 3
    quiet = world.fleet.of_pool("p")[0].hostname
    worker = world.cluster.worker(quiet)
    assert worker is not None
    worker.state = WorkerState.SILENT
    starts = sum(isinstance(c, StartWorker) for c in world.log)
    for _ in range(10):
        world.step()
    assert sum(isinstance(c, StartWorker) for c in world.log) == starts


def test_crash_looping_steady_pool_backs_off() -> None:
    world = World()
    world.crashing.add("v1")
    for _ in range(40):
        world.step()
    starts = [c for c in world.log if isinstance(c, StartWorker)]
    assert 5 <= len(starts) <= 40  # exponential backoff: 1, 2, 4, 8, 16 s ...
    assert world.fleet.consecutive_failures["p"] >= 5


def test_a_restarted_controller_finishes_from_what_it_sees_and_its_journal() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    olds = [m.hostname for m in world.fleet.of_pool("p")]
    world.slow_drain.update(olds)
    for _ in range(5):
        world.step()
    draining = sorted(world.drains.active)
    assert draining
    # crash: the fleet and the drains are gone; the workers, the model and the journal remain
    journal = {c.hostname: c.rollout_id for c in world.journal if isinstance(c, JournalCancel)}
    members = [(m.hostname, m.pool, m.version) for m in world.fleet.of_pool("p")]
    ids = itertools.count(100)
    world.fleet = Fleet(new_id=lambda: f"{next(ids):04d}")
    world.drains = DrainBook()
    world.fleet.cancelled.update(journal)
    for host, pool, version in members:
        world.fleet.adopt(host, pool, version, world.now)
    world.slow_drain.clear()
    world.run(lambda: world.settled("v2"))
    # the drains were taken up (resumed), not started again with a new cancel_consumer
    assert world.drains.outcomes["retired"] >= 1
    assert world.max_alive <= world.pool.cap


def test_an_operator_paused_worker_is_left_alone_after_a_restart() -> None:
    world = started_world()
    paused = world.fleet.of_pool("p")[0].hostname
    world.cluster.set_queues(paused, ())  # paused by hand: no consumers, no journal entry
    members = [(m.hostname, m.pool, m.version) for m in world.fleet.of_pool("p")]
    world.fleet = Fleet(new_id=lambda: "x")
    world.drains = DrainBook()
    for host, pool, version in members:
        world.fleet.adopt(host, pool, version, world.now)
    for _ in range(60):
        world.step()
    assert paused in world.fleet.members and not world.drains.active
    assert Outcome.RETIRED.value not in {k for k, v in world.drains.outcomes.items() if v}


def crash_and_restart(world: World) -> None:
    """The controller dies: the fleet and drains go; workers, the model and the journal remain."""
    journal = {c.hostname: c.rollout_id for c in world.journal if isinstance(c, JournalCancel)}
    members = [(m.hostname, m.pool, m.version) for m in world.fleet.of_pool("p")]
    ids = itertools.count(500)
    world.fleet = Fleet(new_id=lambda: f"{next(ids):04d}")
    world.drains = DrainBook()
    world.fleet.cancelled.update({h: r for h, r in journal.items() if h in dict.fromkeys(m[0] for m in members)})
    for host, pool, version in members:
        world.fleet.adopt(host, pool, version, world.now)


@pytest.mark.parametrize("crash_at", range(0, 16))
@pytest.mark.parametrize("slow", [False, True])
def test_recovery_from_a_crash_at_any_step_of_a_rollout(crash_at: int, slow: bool) -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    if slow:
        world.slow_drain.update(m.hostname for m in world.fleet.of_pool("p"))
    for _ in range(crash_at):
        world.step()
    crash_and_restart(world)
    world.slow_drain.clear()
    world.run(lambda: world.settled("v2"))
    assert world.max_alive <= world.pool.cap
    assert world.min_consumers is not None and world.min_consumers >= 1


def test_recovery_when_the_crash_fell_between_the_journal_and_the_cancel() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2")
    original = world.execute

    def crash_after_journal(command: Any) -> None:
        if isinstance(command, CancelConsumers) and any(isinstance(c, JournalCancel) for c in world.journal):
            raise _Crash
        original(command)

    world.execute = crash_after_journal  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        world.run(lambda: False, steps=50)
    world.execute = original  # type: ignore[method-assign]
    crash_and_restart(world)
    world.run(lambda: world.settled("v2"))
    assert world.max_alive <= world.pool.cap


class _Crash(Exception):
    pass


# --------------------------------------------------------------------------- quiet start and the gate


def test_a_version_that_lacks_a_task_never_consumes_the_pool_queue_and_is_stopped() -> None:
    world = started_world()
    world.registered["v2"] = frozenset({"t.a"})
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v1") and bool(world.fleet.history), steps=300)
    bad = [c.hostname for c in world.log if isinstance(c, StartWorker) and c.version == "v2"]
    assert bad and all(c.quiet for c in world.log if isinstance(c, StartWorker))
    assert not [h for h in world.consumed if world.version_of(h) == "v2"]
    assert not any(isinstance(c, SwitchToPool) and c.hostname in bad for c in world.log)
    assert set(bad) <= world.stopped  # stopped, not drained: it never held a pool message
    assert not any(isinstance(c, CancelConsumers) and c.hostname in bad for c in world.log)


class LosingWorld(World):
    """`registered` replies of the given versions are lost (no answer) a number of times each."""

    def __init__(self, lost: dict[str, int], **kw: Any) -> None:
        super().__init__(**kw)
        self.lost = dict(lost)

    def execute(self, command: Any) -> None:
        version = self.version_of(getattr(command, "hostname", "x-none"))
        if isinstance(command, QueryRegistered) and self.lost.get(version, 0) > 0:
            self.lost[version] -= 1
            self.log.append(command)
            self.fleet.registered(command.hostname, None, self.now)
            return
        super().execute(command)


@pytest.mark.parametrize("lost_version", ["v1", "v2"])
def test_lost_registered_replies_make_the_gate_wait_and_ask_again(lost_version: str) -> None:
    world = LosingWorld({})
    world.run(lambda: world.settled("v1"))
    for member in world.fleet.of_pool("p"):
        member.registered = None  # as after a controller restart: the old version's list is unknown
    world.lost = {lost_version: 4}
    world.registered["v2"] = frozenset({"t.a"})  # lacks t.b: only a known baseline can tell
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v1") and bool(world.fleet.history), steps=300)
    (rollout,) = world.fleet.history
    assert rollout.outcome == "failed" and "does not register t.b" in rollout.detail
    assert world.lost[lost_version] == 0  # every loss was followed by another question
    assert not [h for h in world.consumed if world.version_of(h) == "v2"]


def test_an_old_version_that_never_answers_registered_keeps_the_new_worker_quiet_until_its_timeout() -> None:
    world = LosingWorld({})
    world.run(lambda: world.settled("v1"))
    for member in world.fleet.of_pool("p"):
        member.registered = None
    world.lost = {"v1": 10_000}
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: world.settled("v1") and bool(world.fleet.history), steps=300)
    (rollout,) = world.fleet.history
    assert rollout.outcome == "failed" and "not ready after 30s" in rollout.detail
    assert "on standby: True" in rollout.detail and "tasks registered: True" in rollout.detail
    assert not [h for h in world.consumed if world.version_of(h) == "v2"]


def test_a_switch_and_a_standby_cancel_not_confirmed_are_sent_again() -> None:
    class Sticky(World):
        def __init__(self) -> None:
            super().__init__(replicas=1)
            self.ignore: dict[type, int] = {SwitchToPool: 1, CancelStandby: 1}

        def execute(self, command: Any) -> None:
            if self.ignore.get(type(command), 0) > 0:
                self.ignore[type(command)] -= 1
                self.log.append(command)
                return
            super().execute(command)

    world = Sticky()
    world.run(lambda: world.settled("v1"))
    for _ in range(4):
        world.step()
    host = world.fleet.of_pool("p")[0].hostname
    assert [type(c) for c in world.log if getattr(c, "hostname", None) == host].count(SwitchToPool) == 2
    assert [type(c) for c in world.log if getattr(c, "hostname", None) == host].count(CancelStandby) == 2
    worker = world.cluster.worker(host)
    assert worker is not None and worker.queues == ("q",)


def test_after_a_restart_a_worker_found_on_its_standby_queue_is_judged_again() -> None:
    world = World(replicas=1)
    world.step()
    (member,) = world.fleet.of_pool("p")
    host = member.hostname
    assert member.ready_at is None
    # crash before the gate's verdict: the worker stays on standby; a new fleet adopts it
    world.fleet = Fleet(new_id=lambda: "x")
    world.fleet.adopt(host, "p", "v1", world.now)
    world.registered["v1"] = frozenset({"t.a"})
    world.run(lambda: world.settled("v1"))
    assert world.fleet.members[host].adopted and world.fleet.members[host].ready_at is not None
    assert any(isinstance(c, SwitchToPool) and c.hostname == host for c in world.log)


def test_an_adopted_worker_on_standby_that_never_passes_the_gate_is_failed_by_the_timeout() -> None:
    world = World(replicas=1)
    world.never_consuming.add("v1")
    world.step()
    (member,) = world.fleet.of_pool("p")
    world.fleet = Fleet(new_id=lambda: "x")
    world.fleet.adopt(member.hostname, "p", "v1", world.now)
    for _ in range(40):
        world.step()
    assert any(f.hostname == member.hostname and "not ready after 30s" in f.reason
               for f in world.fleet.failures["p"])


def test_a_drain_a_caller_labelled_as_a_rollout_is_not_the_rollouts_to_revert() -> None:
    world = started_world(replicas=2)
    host = world.fleet.of_pool("p")[0].hostname
    world.pool = replace(world.pool, replicas=2)
    drain, _ = world.drains.start(world.cluster, host, world.now, policy=world.pool.drain_policy, managed=True,
                                  force=True, requested_by="rollout:made-up")
    commands, _ = world.fleet.plan({"p": world.pool}, world.cluster, world.drains, world.now + 1)
    assert not any(isinstance(c, AddConsumers) and c.hostname == host for c in commands)
    assert world.drains.active[host] is drain


def test_a_failed_worker_started_consuming_is_drained_not_stopped() -> None:
    world = started_world()
    world.pool = replace(world.pool, version="v2", quiet_start=False)
    world.registered["v2"] = frozenset({"t.a"})
    world.run(lambda: world.settled("v1") and bool(world.fleet.history), steps=300)
    bad = [c.hostname for c in world.log if isinstance(c, StartWorker) and c.version == "v2"]
    assert bad and not any(c.quiet for c in world.log if isinstance(c, StartWorker) and c.version == "v2")
    assert not set(bad) & world.stopped
    assert any(isinstance(c, CancelConsumers) and c.hostname in bad for c in world.log)


@pytest.mark.parametrize("quiet", [True, False])
def test_a_member_shows_its_phase(quiet: bool) -> None:
    world = World(replicas=1)
    world.pool = replace(world.pool, quiet_start=quiet)
    world.step()
    (member,) = world.fleet.of_pool("p")
    seen = [member.status]
    while member.ready_at is None:
        world.step()
        seen.append(member.status)
    assert seen[0] == ("standby" if quiet else "starting") and seen[-1] == "ready"
    member.failed = "x"
    assert member.status == "failed"
    member.failed, member.ready_at, member.switch_asked_at = None, None, 1.0
    assert member.status == "switching"


def test_a_switched_worker_that_lost_its_pool_queue_is_given_it_again() -> None:
    world = started_world(replicas=1)
    (member,) = world.fleet.of_pool("p")
    world.cluster.set_queues(member.hostname, ())  # a consumer restart of Celery < 5.7 forgot it
    member.switch_asked_at = world.now
    before = len(world.log)
    world.step(0.5)  # asked again only after SWITCH_RETRY_S
    assert not any(isinstance(c, SwitchToPool) for c in world.log[before:])
    for _ in range(4):
        world.step()
    worker = world.cluster.worker(member.hostname)
    assert worker is not None and worker.queues == ("q",)
    # a worker drainctl did not switch (found serving after a restart) is left as its operator set it
    world.fleet = Fleet(new_id=lambda: "x")
    world.fleet.adopt(member.hostname, "p", "v1", world.now)
    world.fleet.members[member.hostname].ready_at = world.now
    world.cluster.set_queues(member.hostname, ())
    for _ in range(4):
        world.step()
    assert worker.queues == ()
