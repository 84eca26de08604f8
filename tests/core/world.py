"""A small simulated world for the rollout planner: time and every reply are data."""

from __future__ import annotations

import itertools
from typing import Any

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
from drainctl.core.drain import DrainBook
from drainctl.core.events import parse_event
from drainctl.core.model import Cluster
from drainctl.core.quiet import standby_queue
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.worker import WorkerState
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
