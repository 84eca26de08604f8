from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drainctl.core.drain import ESTIMATE_ERROR_BUCKETS, DrainBook, Phase
from drainctl.core.model import Cluster
from drainctl.core.runtimes import RuntimeHistory
from drainctl.core.scaling import (
    PoolLoad,
    QueueLoad,
    ScaleInPick,
    ScalingPolicy,
    Sizing,
    desired_replicas,
    drain_estimate,
    in_hand,
    pick_scale_in,
)
from tests.core.factories import ETA
from tests.core.scenes import POLICY, A, B, C, drained_to_waiting, fleet, holding, learnt

# Runtimes of app.sleep in these scenes: 2, 4, 6, 8 and 10 seconds.
SLEEPS = (2.0, 4.0, 6.0, 8.0, 10.0)


def pool_of_three() -> Cluster:
    cluster = fleet((A, ("q",)), (B, ("q",)), (C, ("q",)))
    learnt(cluster, "app.sleep", *SLEEPS)
    return cluster


# --- which worker leaves -------------------------------------------------------------------------------------

def test_the_worker_with_fewest_running_tasks_leaves_even_with_more_prefetched() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)
    for uuid in ("b1", "b2", "b3"):
        holding(cluster, B, uuid)  # prefetched, not started
    holding(cluster, C, "c1", started_at=0.0)
    holding(cluster, C, "c2", started_at=0.0)
    pick = pick_scale_in([A, B, C], cluster, 1.0)
    assert pick is not None and (pick.hostname, pick.running, pick.reserved) == (B, 0, 3)


def test_with_as_many_running_the_one_with_fewer_prefetched_leaves() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)
    holding(cluster, A, "a2")
    holding(cluster, B, "b1", started_at=0.0)
    assert pick_scale_in([A, B], cluster, 1.0) == ScaleInPick(B, 1, 0, remaining_s=5.0, estimated_end_at=6.0)


def test_then_the_one_whose_running_tasks_end_first_and_an_unknown_one_last() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)  # ran 5 s: 6, 8 or 10 -> 3 s left
    holding(cluster, B, "b1", started_at=4.0)  # ran 1 s: 2..10 -> 5 s left
    holding(cluster, C, "c1", started_at=-20.0, name="app.never-seen")  # ran 25 s: longer than any runtime
    assert pick_scale_in([C, B, A], cluster, 5.0) == ScaleInPick(A, 1, 0, remaining_s=3.0, estimated_end_at=8.0)
    assert pick_scale_in([C, B], cluster, 5.0) == ScaleInPick(B, 1, 0, remaining_s=5.0, estimated_end_at=10.0)


def test_ties_go_to_the_first_hostname_and_unknown_candidates_never_leave() -> None:
    cluster = pool_of_three()
    pick = pick_scale_in(["zz@h", C, B], cluster, 0.0)
    assert pick == ScaleInPick(B, 0, 0, remaining_s=0.0, estimated_end_at=0.0)
    assert pick_scale_in(["zz@h"], cluster, 0.0) is None
    assert pick_scale_in([], cluster, 0.0) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0, 20)), min_size=1, max_size=4),
       st.lists(st.floats(0.1, 30), max_size=6))
def test_property_never_a_worker_with_more_running_tasks_than_another_candidate(
    loads: list[tuple[int, int, float]], runtimes: list[float]
) -> None:
    hosts = [f"w{i}@h" for i in range(len(loads))]
    cluster = fleet(*((host, ("q",)) for host in hosts))
    learnt(cluster, "app.sleep", *runtimes)
    for host, (running, reserved, ran) in zip(hosts, loads, strict=True):
        for n in range(running):
            holding(cluster, host, f"{host}-r{n}", started_at=-ran)
        for n in range(reserved):
            holding(cluster, host, f"{host}-p{n}")
    pick = pick_scale_in(hosts, cluster, 0.0)
    assert pick is not None
    assert pick.running == min(running for running, _, _ in loads)
    assert pick.reserved == min(reserved for running, reserved, _ in loads if running == pick.running)


# --- when a drain ends ---------------------------------------------------------------------------------------

def test_a_drain_ends_when_the_running_tasks_and_then_the_prefetched_ones_have_run() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "run-new", started_at=10.0)  # just started: 6 s left
    holding(cluster, A, "run-out", started_at=0.0)  # ran 10 s: as long as the longest runtime, so unknown
    worker = cluster.worker(A)
    assert drain_estimate(worker, cluster.runtimes, 10.0) is None
    holding(cluster, B, "b-run", started_at=8.0)  # ran 2 s: 4, 6, 8 or 10 -> 5 s left
    holding(cluster, B, "b-pre1", received_at=1.0)  # each prefetched one runs the median, 6 s
    holding(cluster, B, "b-pre2", received_at=2.0)
    holding(cluster, B, "b-eta", received_at=3.0, eta=ETA)
    # one slot (it runs one task): 15 + 6 + 6 = 27; the ETA task does not hold the drain
    assert drain_estimate(cluster.worker(B), cluster.runtimes, 10.0) == 27.0
    # two slots: b-pre1 starts at once (ends 16), b-pre2 when b-run ends (15 + 6 = 21)
    assert drain_estimate(cluster.worker(B), cluster.runtimes, 10.0, concurrency=2) == 21.0


def test_an_idle_worker_drains_at_once_and_an_unknown_one_is_unknown() -> None:
    cluster = pool_of_three()
    assert drain_estimate(cluster.worker(A), cluster.runtimes, 3.0) == 3.0
    assert drain_estimate(None, cluster.runtimes, 3.0) is None


def test_a_prefetched_task_without_a_history_makes_the_end_unknown() -> None:
    cluster = fleet((A, ("q",)))
    holding(cluster, A, "pre")
    assert drain_estimate(cluster.worker(A), RuntimeHistory(), 1.0) is None


def test_a_drain_records_its_estimated_end_next_to_its_actual_end() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)
    book = DrainBook()
    drain, _ = book.start(cluster, A, 1.0, policy=POLICY, managed=True)
    assert drain.estimated_end_at == 6.0 and drain.finished_at is None
    resumed = book.resume(cluster, B, ("q",), 2.0, policy=POLICY, managed=True, requested_by="journal")
    assert resumed.estimated_end_at == 2.0
    unknown = book.resume(cluster, "gone@h", ("q",), 2.0, policy=POLICY, managed=True, requested_by="journal")
    assert unknown.estimated_end_at is None


def test_a_finished_drain_counts_how_far_its_end_was_from_the_estimate() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)
    book = DrainBook()
    book.start(cluster, A, 1.0, policy=POLICY, managed=True)  # estimated to end at 6.0
    book.cancel(cluster, A, 9.0, "test")  # 3 s late
    book.start(cluster, B, 1.0, policy=POLICY, managed=True)  # idle: estimated to end at once
    book.cancel(cluster, B, 4000.0, "test")  # far past every bucket
    book.resume(cluster, "gone@h", ("q",), 2.0, policy=POLICY, managed=True, requested_by="journal")
    book.cancel(cluster, "gone@h", 3.0, "test")  # no estimate: not counted
    assert book.estimate_error_sum == 3.0 + 3999.0
    assert book.estimate_error_buckets[ESTIMATE_ERROR_BUCKETS.index(5.0)] == 1
    assert book.estimate_error_buckets[-1] == 1
    assert sum(book.estimate_error_buckets) == 2


def test_an_estimate_adds_how_long_retired_workers_took_to_exit() -> None:
    cluster = pool_of_three()
    book = DrainBook()
    drained_to_waiting(cluster, book)  # A, idle
    book.evaluate(cluster, 2.0)
    book.confirm_done(cluster, A, True, 2.0)  # nothing held: the remote shutdown goes out
    assert book.get(A).phase is Phase.RETIRING  # type: ignore[union-attr]
    book.exited(cluster, A, 0, False, 3.5)  # exited 1.5 s after it
    assert list(book.retire_times) == [1.5]
    drain, _ = book.start(cluster, B, 4.0, policy=POLICY, managed=True)
    assert drain.estimated_end_at == 4.0 + 1.5


def test_in_hand_counts_what_the_pools_workers_run_and_hold_prefetched() -> None:
    cluster = pool_of_three()
    holding(cluster, A, "a1", started_at=0.0)
    holding(cluster, A, "a2")
    holding(cluster, B, "b1", started_at=0.0)
    assert in_hand(cluster, [A, B, C, "gone@h"]) == (2, 1)


# --- how many workers ----------------------------------------------------------------------------------------

SCALING = ScalingPolicy(min_replicas=1, max_replicas=6, concurrency=4, target_backlog_per_slot=2.0,
                        scale_out_cooldown_s=30.0, scale_in_cooldown_s=300.0, hysteresis=0.25)


def load(replicas: int, depth: int = 0, *, running: int = 0, reserved: int = 0, consumers: int = 1) -> PoolLoad:
    return PoolLoad(queues=(QueueLoad("q", depth, consumers),), running=running, reserved=reserved,
                    replicas=replicas)


def test_a_backlog_scales_out_by_as_many_workers_as_it_needs_up_to_max() -> None:
    # 8 running + 24 waiting / 2 per slot = 20 slots = 5 workers of 4
    sizing = desired_replicas(load(2, 20, running=8, reserved=4), SCALING, 100.0)
    assert sizing == Sizing(5, "scale out: 20.0 slots needed, 8 in the pool")
    assert desired_replicas(load(2, 200, running=8), SCALING, 100.0).replicas == 6


def test_a_scale_out_waits_for_its_cooldown() -> None:
    sizing = desired_replicas(load(2, 20, running=8), SCALING, 100.0, last_scale_out_at=80.0)
    assert sizing == Sizing(2, "scale-out cooling down (10s left); 18.0 slots needed, 8 in the pool")
    assert desired_replicas(load(2, 20, running=8), SCALING, 110.0, last_scale_out_at=80.0).replicas == 5


def test_scale_in_one_worker_at_a_time_once_below_target_by_the_hysteresis_margin() -> None:
    # 4 workers, 16 slots; one fewer leaves 12, of which 75 % is 9
    assert desired_replicas(load(4, 2, running=9), SCALING, 1000.0) == Sizing(
        4, "within target: 10.0 slots needed, 16 in the pool")
    assert desired_replicas(load(4, 0, running=9), SCALING, 1000.0) == Sizing(
        3, "scale in: 9.0 slots needed, 16 in the pool")
    assert desired_replicas(load(4), SCALING, 1000.0).replicas == 3  # idle: still one step


def test_scale_in_waits_for_the_cooldown_since_any_scaling_and_for_the_drain_under_way() -> None:
    idle = load(4)
    assert desired_replicas(idle, SCALING, 1000.0, last_scale_out_at=900.0) == Sizing(
        4, "scale-in cooling down (200s left); 0.0 slots needed, 16 in the pool")
    assert desired_replicas(idle, SCALING, 1000.0, last_scale_out_at=100.0, last_scale_in_at=800.0).replicas == 4
    assert desired_replicas(idle, SCALING, 1000.0, last_scale_in_at=700.0).replicas == 3
    assert desired_replicas(idle, SCALING, 1000.0, draining=1) == Sizing(
        4, "a scale-in drain is under way; 0.0 slots needed, 16 in the pool")


def test_bounds_hold_whatever_the_load_and_a_rollout_holds_the_size() -> None:
    assert desired_replicas(load(0, 500), SCALING, 0.0) == Sizing(1, "below min_replicas 1")
    assert desired_replicas(load(9), SCALING, 0.0) == Sizing(6, "above max_replicas 6")
    assert desired_replicas(load(1), SCALING, 0.0) == Sizing(1, "within target: 0.0 slots needed, 4 in the pool")
    assert desired_replicas(load(3, 500), SCALING, 0.0, rollout_active=True) == Sizing(
        3, "a rollout is in progress: size held")


def test_from_zero_a_backlog_without_a_consumer_says_so() -> None:
    policy = ScalingPolicy(min_replicas=0, max_replicas=3, concurrency=2)
    assert desired_replicas(load(0, 3, consumers=0), policy, 0.0) == Sizing(
        2, "scale out: 3.0 slots needed, 0 in the pool; no consumer on q")
    assert desired_replicas(load(0), policy, 0.0).replicas == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas <= max_replicas"),
    ({"min_replicas": -1}, "min_replicas <= max_replicas"),
    ({"concurrency": 0}, "concurrency"),
    ({"target_backlog_per_slot": 0.0}, "target_backlog_per_slot"),
    ({"hysteresis": 1.0}, "hysteresis"),
    ({"scale_in_cooldown_s": -1.0}, "cooldowns"),
])
def test_a_policy_that_cannot_hold_is_refused(kwargs: dict[str, float], message: str) -> None:
    values = {"min_replicas": 1, "max_replicas": 2, "concurrency": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        ScalingPolicy(**values)  # type: ignore[arg-type]
