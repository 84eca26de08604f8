from __future__ import annotations

import math

import pytest

from drainctl.core.model import Cluster
from drainctl.core.runtimes import RuntimeHistory
from tests.core.factories import feed, task_event
from tests.core.scenes import A, fleet, holding

# --- what a query answers ------------------------------------------------------------------------------------

def test_quantiles_of_a_name_interpolate_between_runtimes() -> None:
    history = RuntimeHistory()
    for runtime in (1.0, 2.0, 3.0, 4.0, 5.0):
        history.record("app.x", runtime)
    assert history.p50("app.x") == 3.0
    assert history.p90("app.x") == pytest.approx(4.6)
    assert history.quantile("app.x", 0.0) == 1.0
    assert history.quantile("app.x", 2.0) == 5.0  # q clamped to 0..1


def test_remaining_is_the_median_of_the_runtimes_longer_than_what_it_ran() -> None:
    history = RuntimeHistory()
    for runtime in (1.0, 2.0, 10.0, 20.0, 30.0):
        history.record("app.x", runtime)
    assert history.remaining("app.x", 0.0) == 10.0  # not started: its median
    assert history.remaining("app.x", 5.0) == 15.0  # one of 10, 20, 30: 5, 15 or 25 left
    assert history.remaining("app.x", 25.0) == 5.0
    assert history.remaining("app.x", -3.0) == 10.0  # a clock step back counts as not started


def test_a_task_that_outran_its_whole_history_is_unknown() -> None:
    history = RuntimeHistory()
    for runtime in (1.0, 2.0, 3.0):
        history.record("app.x", runtime)
    assert history.remaining("app.x", 3.0) is None


def test_a_name_with_too_few_runtimes_falls_back_to_all_tasks_then_to_unknown() -> None:
    history = RuntimeHistory(min_samples=3)
    assert history.p50("app.x") is None and history.remaining("app.x", 0.0) is None
    history.record("app.x", 100.0)
    history.record(None, 1.0)  # task-failed without a name the model knew: global history only
    assert history.p50("app.x") is None  # two runtimes in all: too few anywhere
    history.record("app.y", 3.0)
    assert history.p50("app.x") == 3.0  # 1, 3, 100 of all tasks
    assert history.p50(None) == 3.0
    assert history.samples("app.unknown") == (100.0, 1.0, 3.0)
    assert "app.x" in history and "app.unknown" not in history and len(history) == 2


def test_impossible_runtimes_are_not_learnt() -> None:
    history = RuntimeHistory(min_samples=1)
    for runtime in (-1.0, math.nan, math.inf):
        history.record("app.x", runtime)
    assert history.learnt == 0 and history.p50("app.x") is None
    history.record("app.x", 0.0)
    assert history.learnt == 1 and history.p50("app.x") == 0.0


# --- bounded memory ------------------------------------------------------------------------------------------

def test_each_name_keeps_its_last_runtimes_only() -> None:
    history = RuntimeHistory(per_name=3, global_size=4, min_samples=1)
    for runtime in (100.0, 1.0, 2.0, 3.0):
        history.record("app.x", runtime)
    assert history.samples("app.x") == (1.0, 2.0, 3.0)
    history.record("app.y", 4.0)
    assert history.samples(None) == (1.0, 2.0, 3.0, 4.0)


def test_the_name_updated_least_recently_is_forgotten_first() -> None:
    history = RuntimeHistory(max_names=2, min_samples=1, global_size=1)
    history.record("app.a", 1.0)
    history.record("app.b", 2.0)
    history.record("app.a", 1.0)  # a is now the most recent
    history.record("app.c", 3.0)
    assert "app.b" not in history and "app.a" in history and "app.c" in history
    assert history.evicted == 1 and len(history) == 2


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RuntimeHistory(per_name=0)


# --- learnt by the model -------------------------------------------------------------------------------------

def test_the_model_learns_runtimes_under_the_name_task_received_gave() -> None:
    cluster = fleet((A, ("q",)))
    for uuid in ("t1", "t2", "t3"):
        holding(cluster, A, uuid, name="app.report", started_at=1.0)
    feed(cluster, [task_event("succeeded", "t1", 12, host=A, pid=1, runtime=4.0),
                   task_event("failed", "t2", 13, host=A, pid=1, runtime=6.0, exception="boom"),
                   task_event("succeeded", "t3", 14, host=A, pid=1, runtime=5.0)], 7.0)
    assert cluster.runtimes.samples("app.report") == (4.0, 6.0, 5.0)


def test_only_succeeded_and_failed_runtimes_are_learnt() -> None:
    cluster = fleet((A, ("q",)))
    holding(cluster, A, "t1", started_at=1.0)
    feed(cluster, [task_event("revoked", "t1", 12, host=A, pid=1, runtime=4.0)], 2.0)
    # an end the model did not see begin: no name but the event's own (none on task-succeeded)
    feed(cluster, [task_event("succeeded", "t2", 13, host=A, pid=1, runtime=2.0),
                   task_event("failed", "t3", 14, host=A, pid=1, name="app.named")], 3.0)
    assert cluster.runtimes.learnt == 1 and len(cluster.runtimes) == 0


def test_a_late_end_is_not_learnt_twice() -> None:
    cluster = Cluster()
    holding(cluster, A, "t1", started_at=1.0)
    for now in (2.0, 3.0):
        feed(cluster, [task_event("succeeded", "t1", 12, host=A, pid=1, runtime=1.0)], now)
    assert cluster.late_events == 1 and cluster.runtimes.learnt == 1
