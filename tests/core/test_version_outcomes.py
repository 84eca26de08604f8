"""Task outcomes per pool and version: counted once per task end the model accepts, bounded in versions."""

from __future__ import annotations

from drainctl.core.events import TaskEvent
from drainctl.core.model import Cluster
from drainctl.core.version_outcomes import RUNTIME_BUCKETS, VersionOutcomes
from tests.core.factories import HOST, feed, online, task_event


def test_outcomes_and_runtimes_are_counted_per_pool_and_version() -> None:
    outcomes = VersionOutcomes()
    outcomes.record("p", "v1", "succeeded", 0.3)
    outcomes.record("p", "v1", "succeeded", 1.0)  # on a bucket's bound: in that bucket
    outcomes.record("p", "v1", "failed", 99999.0)  # past the last bound: +Inf
    outcomes.record("p", "v2", "retried", None)  # no runtime: counted, not timed
    outcomes.record("p", "v2", "succeeded", -1.0)  # not a runtime
    rows = {(pool, version): tasks for pool, version, tasks in outcomes}
    v1, v2 = rows["p", "v1"], rows["p", "v2"]
    assert v1.outcomes == {"succeeded": 2, "failed": 1}
    assert v1.runtime_buckets[RUNTIME_BUCKETS.index(0.5)] == 1
    assert v1.runtime_buckets[RUNTIME_BUCKETS.index(1.0)] == 1
    assert v1.runtime_buckets[-1] == 1 and v1.runtime_sum == 0.3 + 1.0 + 99999.0
    assert v2.outcomes == {"retried": 1, "succeeded": 1} and sum(v2.runtime_buckets) == 0


def test_a_pool_keeps_the_versions_that_ended_a_task_most_recently() -> None:
    outcomes = VersionOutcomes(max_versions=2)
    for version in ("v1", "v2", "v1", "v3"):  # v1 ended a task after v2 did: v2 is forgotten first
        outcomes.record("p", version, "succeeded", 1.0)
    outcomes.record("a", "v9", "failed", None)
    assert [(pool, version) for pool, version, _ in outcomes] == [("a", "v9"), ("p", "v1"), ("p", "v3")]


def test_the_model_tells_each_task_end_it_accepts_once() -> None:
    cluster = Cluster()
    ended: list[tuple[str, str]] = []

    def told(hostname: str, name: str | None, event: TaskEvent) -> None:
        ended.append((hostname, event.type))

    cluster.task_ended = told
    online(cluster)
    feed(cluster, [task_event("received", "a", 3), task_event("started", "a", 4),
                   task_event("succeeded", "a", 5, runtime=0.5),
                   task_event("succeeded", "a", 5, runtime=0.5)])  # a duplicate: late, not told again
    assert ended == [(HOST, "task-succeeded")]
