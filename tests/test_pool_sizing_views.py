"""An elastic pool's size as `/status`, `/metrics` and `drainctl status` show it, from a real autoscaling
decision over the simulated world (tests/core/world.py); no broker, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drainctl.cli_status import pool_sizing_lines
from drainctl.core.autoscale import Autoscaler, PoolSizing
from drainctl.core.drain import DrainBook, DrainPolicy
from drainctl.core.model import Cluster
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.scaling import QueueLoad, ScalingPolicy
from drainctl.core.version_outcomes import VersionOutcomes
from drainctl.metrics import registry_for
from drainctl.readmodel import Identity, IngestStats
from drainctl.status import build_status
from tests.core.world import World, started_world

IDENTITY = Identity("c1", "amqp://127.0.0.1//", "drainctl.c1")
POLICY = ScalingPolicy(min_replicas=1, max_replicas=6, concurrency=2, scale_out_cooldown_s=30,
                       scale_in_cooldown_s=300, hysteresis=0.2)


@dataclass
class View:
    """What the HTTP API, /metrics and /status read of a controller (drainctl.readmodel.ReadModel)."""

    cluster: Cluster
    fleet: Fleet
    drains: DrainBook
    pool_targets: Mapping[str, PoolTarget]
    pool_sizing: Mapping[str, PoolSizing]
    at: float
    identity: Identity = IDENTITY
    stats: IngestStats = field(default_factory=IngestStats)
    reloads: Mapping[str, int] = field(default_factory=dict)
    version_outcomes: VersionOutcomes = field(default_factory=VersionOutcomes)

    def now(self) -> float:
        return self.at

    def is_synced(self) -> bool:
        return True

    def rollout_history(self, limit: int) -> list[dict[str, Any]]:
        return []


def elastic(world: World, depth: int, *, later: float = 5.0) -> tuple[View, Autoscaler]:
    """Pool "p" of `world` made elastic, one decision taken on `depth` ready messages in its queue, and
    the view `later` seconds after it. A fixed pool "f" (no member) stands beside it."""
    configured = {"p": replace(world.pool, scaling=POLICY, cap=POLICY.max_replicas + 1),
                  "f": PoolTarget("f", ("fq",), 2, cap=3, version="v1")}
    autoscaler = Autoscaler()
    autoscaler.observe(configured, {"q": QueueLoad("q", depth, world.consumers())}, world.fleet.members,
                       world.fleet.rollouts, world.cluster, world.drains, world.now)
    targets = autoscaler.targets(configured, world.fleet.members)
    view = View(world.cluster, world.fleet, world.drains, targets, autoscaler.sizing, world.now + later)
    return view, autoscaler


def pool(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in document["pools"] if p["name"] == name)
    return found


def samples(view: View) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry_for(view)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_status_shows_the_bounds_the_desired_size_what_serves_it_and_why() -> None:
    world = started_world(replicas=2)
    view, _ = elastic(world, depth=20)
    p = pool(build_status(view), "p")
    assert (p["min_replicas"], p["max_replicas"], p["desired_replicas"], p["actual_replicas"]) == (1, 6, 6, 2)
    assert p["replicas"] == 6  # the planner works to the decided size
    scaling = p["scaling"]
    assert scaling["reason"] == "scale out: 20.0 slots needed, 4 in the pool"
    assert scaling["decided_age_s"] == 5.0
    assert scaling["last_scale_out_age_s"] == 5.0 and scaling["last_scale_in_age_s"] is None
    assert scaling["backlog_messages"] == 20 and scaling["needed_slots"] == 20.0
    assert scaling["queues"] == [{"name": "q", "depth": 20, "consumers": 2}]
    assert scaling["scale_events"] == {"out": 1, "in": 0}
    f = pool(build_status(view), "f")
    assert f["scaling"] is None and f["min_replicas"] is None and f["max_replicas"] is None
    assert (f["desired_replicas"], f["actual_replicas"]) == (2, 0)


def test_a_draining_worker_does_not_count_as_serving_the_pool() -> None:
    world = started_world(replicas=2)
    view, _ = elastic(world, depth=3)
    leaving = world.fleet.of_pool("p")[0].hostname
    world.drains.start(world.cluster, leaving, world.now, policy=DrainPolicy(), managed=True)
    p = pool(build_status(view), "p")
    assert (p["desired_replicas"], p["ready"], p["actual_replicas"]) == (2, 2, 1)
    assert p["scaling"]["reason"].startswith("within target: 3.0 slots needed, 4 in the pool")


def test_an_elastic_pool_not_decided_yet_has_its_start_size_and_no_backlog() -> None:
    world = started_world(replicas=2)
    target = replace(world.pool, scaling=POLICY, cap=POLICY.max_replicas + 1)
    view = View(world.cluster, world.fleet, world.drains, {"p": target}, {}, world.now)
    scaling = pool(build_status(view), "p")["scaling"]
    assert scaling["reason"].startswith("not decided yet")
    assert scaling["decided_age_s"] is None and scaling["backlog_messages"] is None
    got = samples(view)
    assert got[("drainctl_pool_desired_replicas", (("pool", "p"),))] == 2
    assert ("drainctl_pool_backlog_messages", (("pool", "p"),)) not in got
    assert got[("drainctl_pool_scale_events_total", (("direction", "out"), ("pool", "p")))] == 0


def test_metrics_give_elastic_pools_their_bounds_desired_size_backlog_and_scale_events() -> None:
    world = started_world(replicas=2)
    view, _ = elastic(world, depth=20)
    got = samples(view)
    p = (("pool", "p"),)
    assert got[("drainctl_pool_desired_replicas", p)] == 6
    assert got[("drainctl_pool_min_replicas", p)] == 1
    assert got[("drainctl_pool_max_replicas", p)] == 6
    assert got[("drainctl_pool_backlog_messages", p)] == 20
    assert got[("drainctl_pool_replicas", p)] == 6
    assert got[("drainctl_pool_scale_events_total", (("direction", "out"), ("pool", "p")))] == 1
    assert got[("drainctl_pool_scale_events_total", (("direction", "in"), ("pool", "p")))] == 0
    # A fixed pool has a size, and nothing of the elastic ones.
    assert got[("drainctl_pool_replicas", (("pool", "f"),))] == 2
    assert not [key for key in got if key[0].startswith(("drainctl_pool_desired", "drainctl_pool_min",
                                                         "drainctl_pool_max", "drainctl_pool_backlog",
                                                         "drainctl_pool_scale")) and ("pool", "f") in key[1]]


def test_the_cli_prints_each_elastic_pool_desired_and_actual_and_why() -> None:
    world = started_world(replicas=2)
    view, _ = elastic(world, depth=20)
    lines = pool_sizing_lines(build_status(view))
    assert lines[0] == "pool p: 2 of 6 workers (min 1, max 6) — scale out: 20.0 slots needed, 4 in the pool"
    assert lines[1] == ("  backlog 20 messages (decided 5.0s ago); scaled out 1 time(s), last 5.0s ago; "
                        "scaled in 0 time(s)")
    assert len(lines) == 2  # the fixed pool "f" is not listed
