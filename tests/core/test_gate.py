"""Quiet start and the readiness gate: a new worker takes no pool message before it is judged."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from drainctl.core.commands import CancelConsumers, CancelStandby, QueryRegistered, StartWorker, SwitchToPool
from drainctl.core.rollout import Fleet
from tests.core.world import World, started_world


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
