"""A restarted controller finishes a rollout from what it sees and its journal, whenever it crashed."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from drainctl.core.commands import CancelConsumers, JournalCancel
from drainctl.core.drain import DrainBook, Outcome
from drainctl.core.rollout import Fleet
from tests.core.world import crash_and_restart, started_world


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
