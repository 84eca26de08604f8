"""A pool spread over several Docker engines: each new worker goes where the pool has fewest, within the
per-engine cap, and its hostname names its engine."""

from __future__ import annotations

from dataclasses import replace

from drainctl.core.commands import StartWorker
from drainctl.core.members import Member
from drainctl.core.placement import engine_of, place
from tests.core.world import World

ENGINES = ("a", "b", "c")


def members(*hosts: str) -> list[Member]:
    return [Member(f"p-v1-{i}@{host}", "p", "v1", started_at=0.0) for i, host in enumerate(hosts)]


def test_the_engine_with_fewest_of_the_pools_workers_is_chosen_first_in_order_among_equals() -> None:
    assert place(ENGINES, None, []) == "a"
    assert place(ENGINES, None, members("a", "a", "b")) == "c"
    assert place(ENGINES, None, members("a", "b", "c")) == "a"
    assert place(ENGINES, 2, members("a", "a", "b", "b", "c")) == "c"
    assert place(ENGINES, 2, members("a", "a", "b", "b", "c", "c")) is None  # every engine at its cap
    assert place(ENGINES, None, members("a"), closed={"b"}) == "c"
    assert place(ENGINES, None, [], closed=set(ENGINES)) is None
    assert engine_of("p-v1-0001@b") == "b"


def test_a_pool_spreads_over_its_engines_within_their_caps_and_rolls_out_so() -> None:
    world = World(replicas=5)
    world.pool = replace(world.pool, engines=ENGINES, per_engine_cap=2, cap=6)
    world.run(lambda: world.settled("v1"))
    hosts = sorted(engine_of(m.hostname) for m in world.fleet.of_pool("p"))
    assert hosts == ["a", "a", "b", "b", "c"]
    starts = [c for c in world.log if isinstance(c, StartWorker)]
    assert [c.engine for c in starts] == ["a", "b", "c", "a", "b"]
    assert all(c.hostname.endswith(f"@{c.engine}") for c in starts)
    world.pool = replace(world.pool, version="v2")
    peak: dict[str, int] = {}

    def settled() -> bool:
        for engine in ENGINES:
            alive = sum(1 for m in world.fleet.of_pool("p") if engine_of(m.hostname) == engine)
            peak[engine] = max(peak.get(engine, 0), alive)
        return world.settled("v2")

    world.run(settled)
    assert max(peak.values()) <= 2 and world.min_consumers is not None and world.min_consumers >= 1


def test_an_evacuated_engine_is_emptied_surge_first_and_a_cordoned_one_gets_no_new_worker() -> None:
    world = World(replicas=4)
    world.pool = replace(world.pool, engines=ENGINES, per_engine_cap=2, cap=5)
    world.run(lambda: world.settled("v1"))
    assert world.fleet.engines.request("z", "cordon", ENGINES) == "no pool spreads over an engine named 'z' " \
                                                                   "(engines: a, b, c)"
    assert world.fleet.engines.request("a", "evacuate", ENGINES) is None
    peak: dict[str, int] = {}

    def evacuated() -> bool:
        for engine in ENGINES:
            alive = sum(1 for m in world.fleet.of_pool("p") if engine_of(m.hostname) == engine)
            peak[engine] = max(peak.get(engine, 0), alive)
        return not world.fleet.engines.workers_on("a", world.fleet.of_pool("p")) and world.settled("v1")

    world.run(evacuated)
    assert sorted(engine_of(m.hostname) for m in world.fleet.of_pool("p")) == ["b", "b", "c", "c"]
    assert max(peak.values()) <= 2 and world.min_consumers is not None and world.min_consumers >= 3
    assert world.drains.outcomes["retired"] == 2  # each drained, never just stopped
    assert world.fleet.engines.request("a", "cordon", ENGINES) is None
    assert world.fleet.engines.states == {"a": "evacuating"}  # cordoning an evacuated engine changes nothing
    assert world.fleet.engines.request("b", "cordon", ENGINES) is None
    assert world.fleet.engines.request("a", "uncordon", ENGINES) is None
    world.pool = replace(world.pool, replicas=5, cap=6)
    world.run(lambda: world.settled("v1"))
    assert sorted(engine_of(m.hostname) for m in world.fleet.of_pool("p")) == ["a", "b", "b", "c", "c"]
    assert world.fleet.engines.closed() == frozenset({"b"}) and world.fleet.engines.leaving() == frozenset()


def test_while_an_engine_cannot_be_reached_its_workers_are_not_capacity_and_the_pool_drains_nothing() -> None:
    world = World(replicas=4)
    world.pool = replace(world.pool, engines=ENGINES, per_engine_cap=2, cap=5)
    world.run(lambda: world.settled("v1"))
    world.pool = replace(world.pool, version="v2")
    world.run(lambda: any(m.version == "v2" and m.ready_at is not None for m in world.fleet.of_pool("p")))
    assert world.fleet.engines.reachable("c", False, "connection refused")
    assert not world.fleet.engines.reachable("c", False, "connection refused")  # no change
    on_c = {m.hostname for m in world.fleet.of_pool("p") if engine_of(m.hostname) == "c"}
    draining = set(world.drains.active)
    for _ in range(30):
        world.step()
        assert set(world.drains.active) <= draining  # no new drain while c is away
        assert {m.hostname for m in world.fleet.of_pool("p") if engine_of(m.hostname) == "c"} <= on_c
    assert world.fleet.engines.closed() == frozenset({"c"})
    assert world.fleet.engines.reachable("c", True, "")
    world.run(lambda: world.settled("v2"))
    assert world.fleet.history[-1].outcome == "succeeded"


def test_with_every_engine_closed_or_full_no_worker_starts() -> None:
    world = World(replicas=2)
    world.pool = replace(world.pool, engines=ENGINES, per_engine_cap=1, cap=3)
    world.run(lambda: world.settled("v1"))
    for engine in ENGINES:
        assert world.fleet.engines.request(engine, "cordon", ENGINES) is None
    world.pool = replace(world.pool, replicas=3, cap=4)
    started = sum(1 for c in world.log if isinstance(c, StartWorker))
    for _ in range(5):
        world.step()
    assert sum(1 for c in world.log if isinstance(c, StartWorker)) == started
    assert len(world.fleet.of_pool("p")) == 2
