"""The rollout planner: surge-first rollouts, aborts, supersedes, rollbacks and backoff, in a simulated world."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from drainctl.core.commands import AddConsumers, CancelConsumers, JournalCancel, StartWorker
from drainctl.core.worker import WorkerState
from tests.core.world import World, started_world


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


def test_a_drain_a_caller_labelled_as_a_rollout_is_not_the_rollouts_to_revert() -> None:
    world = started_world(replicas=2)
    host = world.fleet.of_pool("p")[0].hostname
    world.pool = replace(world.pool, replicas=2)
    drain, _ = world.drains.start(world.cluster, host, world.now, policy=world.pool.drain_policy, managed=True,
                                  force=True, requested_by="rollout:made-up")
    commands, _ = world.fleet.plan({"p": world.pool}, world.cluster, world.drains, world.now + 1)
    assert not any(isinstance(c, AddConsumers) and c.hostname == host for c in commands)
    assert world.drains.active[host] is drain
