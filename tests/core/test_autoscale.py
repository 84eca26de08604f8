"""The autoscaling loop over the planner: queue depths in, the pool's size and the planner's work out."""

from __future__ import annotations

from dataclasses import replace

from drainctl.core.autoscale import Autoscaler
from drainctl.core.scaling import QueueLoad, ScalingPolicy
from tests.core.factories import feed, task_event
from tests.core.world import World

POLICY = ScalingPolicy(min_replicas=1, max_replicas=4, concurrency=2, scale_out_cooldown_s=5,
                       scale_in_cooldown_s=10, hysteresis=0.2)


class ElasticWorld(World):
    """The simulated world with pool "p" elastic: each step the autoscaler sees the queue's depth first."""

    def __init__(self, replicas: int = 1, policy: ScalingPolicy = POLICY) -> None:
        super().__init__(replicas=replicas)
        self.pool = replace(self.pool, scaling=policy, cap=policy.max_replicas + 1)
        self.autoscaler = Autoscaler()
        self.depth = 0
        self.notices: list[str] = []
        self.sizes: list[int] = []

    def step(self, dt: float = 1.0) -> None:
        self.now += dt
        members, configured = self.fleet.members, {"p": self.pool}
        self.notices += [f"{n.kind} {n.detail}" for n in self.autoscaler.observe(
            configured, {"q": QueueLoad("q", self.depth, self.consumers())}, members, self.fleet.rollouts,
            self.cluster, self.drains, self.now)]
        targets = self.autoscaler.targets(configured, members)
        self.sizes.append(targets["p"].replicas)
        commands, _ = self.fleet.plan(targets, self.cluster, self.drains, self.now)
        more, _ = self.drains.evaluate(self.cluster, self.now)
        for command in [*commands, *more]:
            self.execute(command)
        self.max_alive = max(self.max_alive, len(self.fleet.of_pool("p")))
        if any(m.ready_at is not None for m in self.fleet.members.values()):
            consumers = self.consumers()
            self.min_consumers = consumers if self.min_consumers is None else min(self.min_consumers, consumers)

    def at(self, size: int) -> bool:
        members = self.fleet.of_pool("p")
        return (len(members) == size and all(m.ready_at is not None for m in members) and not self.drains.active)

    def serving(self) -> list[str]:
        return [m.hostname for m in self.fleet.of_pool("p")]


def test_a_backlog_scales_the_pool_out_to_max_through_the_gate_and_idle_brings_it_back_to_min() -> None:
    world = ElasticWorld()
    world.run(lambda: world.at(1))
    world.depth = 50
    world.run(lambda: world.at(4))
    assert max(world.sizes) == 4 and world.max_alive <= 4
    assert world.notices[0].startswith("pool-scaled-out 1 -> 4 workers: scale out: 50.0 slots needed, 2 in the pool")
    # Every worker came in quiet and was judged before it took the pool's queue.
    assert all(m.quiet and m.ready_at is not None for m in world.fleet.of_pool("p"))
    world.depth = 0
    world.run(lambda: world.at(1), steps=400)
    ins = [n for n in world.notices if n.startswith("pool-scaled-in")]
    assert [n.split(":")[0] for n in ins] == ["pool-scaled-in 4 -> 3 workers", "pool-scaled-in 3 -> 2 workers",
                                               "pool-scaled-in 2 -> 1 workers"]
    assert min(world.sizes) == 1 and world.min_consumers is not None and world.min_consumers >= 1


def test_scale_in_drains_a_free_worker_and_keeps_the_busy_one() -> None:
    world = ElasticWorld(replicas=2)
    world.depth = 3  # 3 slots needed of 4: within target
    world.run(lambda: world.at(2))
    world.depth = 0
    first, second = world.serving()
    worker = world.cluster.worker(first)
    assert worker is not None and worker.pid is not None
    feed(world.cluster, [task_event("received", "t1", 20, host=first, pid=worker.pid, name="t.a"),
                         task_event("started", "t1", 21, host=first, pid=worker.pid)], world.now)
    world.run(lambda: bool(world.drains.active) or len(world.fleet.of_pool("p")) == 1, steps=60)
    assert second not in world.serving() or second in world.drains.active
    assert first in world.serving() and first not in world.drains.active


def test_a_rollout_in_progress_holds_the_size() -> None:
    world = ElasticWorld(replicas=2)
    world.depth = 3
    world.run(lambda: world.at(2))
    world.pool = replace(world.pool, version="v2")
    world.step()  # the rollout opens
    world.depth = 100
    world.step()
    assert world.fleet.rollouts and world.autoscaler.sizing["p"].reason == "a rollout is in progress: size held"
    assert world.autoscaler.sizing["p"].desired == 2


def test_a_pool_starts_at_its_alive_members_and_a_queue_not_reported_holds_its_size() -> None:
    world = ElasticWorld(replicas=3)
    world.depth = 5
    world.run(lambda: world.at(3))
    later = Autoscaler()  # a restarted controller: the workers it finds are the pool's size
    assert later.targets({"p": world.pool}, world.fleet.members)["p"].replicas == 3
    assert later.sizing["p"].reason == "3 worker(s) found, within 1..4"
    fixed = replace(world.pool, name="f", scaling=None)
    assert later.observe({"p": world.pool, "f": fixed}, {}, world.fleet.members, {}, world.cluster, world.drains,
                         1.0) == []
    assert later.sizing["p"].reason == "queue depths unknown: size held"


def test_new_bounds_clamp_the_size_and_a_pool_no_longer_elastic_is_forgotten() -> None:
    autoscaler = Autoscaler()
    pool = ElasticWorld(replicas=3).pool
    assert autoscaler.targets({"p": pool}, {})["p"].replicas == 3
    narrower = replace(pool, scaling=replace(POLICY, max_replicas=2))
    target = autoscaler.targets({"p": narrower}, {})["p"]
    assert (target.replicas, target.cap) == (2, 3)
    assert autoscaler.sizing["p"].reason == "bounds changed to 1..2"
    fixed = replace(pool, scaling=None, replicas=5)
    assert autoscaler.targets({"p": fixed, "r": replace(fixed, name="r")}, {})["p"].replicas == 5
    assert autoscaler.sizing == {}
    assert autoscaler.targets({"r": replace(narrower, name="r")}, {})["r"].replicas == 2  # its start size, within 1..2


def test_an_elastic_pool_gone_from_the_config_is_forgotten() -> None:
    autoscaler = Autoscaler()
    pool = ElasticWorld().pool
    autoscaler.targets({"p": pool}, {})
    assert autoscaler.targets({}, {}) == {} and autoscaler.sizing == {}
