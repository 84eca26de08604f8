from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    EscalateWorker,
    QueryQueues,
    Reconcile,
    ShutdownWorker,
    StopWorker,
)
from drainctl.core.drain import CONFIRM_REASON, DrainBook, DrainPolicy, DrainRefused, Outcome, Phase
from drainctl.core.model import Cluster
from drainctl.core.snapshot import TaskInfo, TaskState, WorkerSnapshot
from tests.core.factories import feed, task_event, worker_event
from tests.core.scenes import POLICY, A, B, C, drained_to_waiting, fleet, started

# --- refusals -----------------------------------------------------------------------------------------------

# (the refusal table itself: tests/core/test_refusals.py)

def test_force_overrides_the_last_consumer_refusal() -> None:
    cluster = fleet((A, ("q",)))
    assert started(cluster, DrainBook(), force=True) == [CancelConsumers(A, ("q",))]


def test_concurrent_drains_of_a_queues_last_two_consumers_refuse_the_second() -> None:
    cluster = fleet((A, ("q", "r")), (B, ("q",)), (C, ("r",)))
    book = DrainBook()
    assert started(cluster, book, A) == [CancelConsumers(A, ("q", "r"))]
    with pytest.raises(DrainRefused, match="queue 'q' would have no consumer"):
        started(cluster, book, B)
    # C's queue r is still served by... nobody else but A, which is draining
    with pytest.raises(DrainRefused, match="queue 'r'"):
        started(cluster, book, C)


def test_a_repeated_request_joins_the_drain_under_way() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    started(cluster, book)
    drain, commands = book.start(cluster, A, 1.0, policy=POLICY, managed=True)
    assert commands == [] and drain.started_at == 0.0 and book.started_total == 1


# --- the happy path ------------------------------------------------------------------------------------------

def test_full_drain_waits_for_running_and_prefetched_but_not_eta() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "run", 2, host=A, pid=1), task_event("received", "pre", 3, host=A, pid=1),
                   task_event("received", "eta", 4, host=A, pid=1, eta="2030-01-01T00:00:00")])
    book = DrainBook()
    drained_to_waiting(cluster, book)
    assert book.evaluate(cluster, 2) == ([], [])
    feed(cluster, [task_event("succeeded", "run", 5, host=A, pid=1)], now=3)
    assert book.evaluate(cluster, 3) == ([], [])  # "pre" still prefetched
    feed(cluster, [task_event("started", "pre", 6, host=A, pid=1), task_event("succeeded", "pre", 7, host=A, pid=1)],
         now=4)
    commands, _ = book.evaluate(cluster, 4)
    assert commands == [Reconcile(A, CONFIRM_REASON)]
    assert book.get(A).phase is Phase.VERIFYING  # type: ignore[union-attr]
    # the confirming inspect agrees: retire
    assert book.confirm_done(cluster, A, True, 4.02) == [ShutdownWorker(A)]
    drain = book.get(A)
    assert drain is not None and drain.phase is Phase.RETIRING
    assert drain.reaction_s == pytest.approx(0.02)
    assert book.evaluate(cluster, 10) == ([], [])  # within the retire grace
    notices = book.exited(cluster, A, 0, False, 5)
    assert [n.kind for n in notices] == ["drain-retired"]
    assert drain.outcome is Outcome.RETIRED and book.outcomes["retired"] == 1 and A not in book.active


def test_heartbeat_active_vetoes_an_empty_model() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    feed(cluster, [worker_event("heartbeat", 2, host=A, pid=1, active=1)])
    drained_to_waiting(cluster, book)
    assert book.evaluate(cluster, 2) == ([], [])
    feed(cluster, [worker_event("heartbeat", 3, host=A, pid=1, active=0)])
    assert book.evaluate(cluster, 3)[0] == [Reconcile(A, CONFIRM_REASON)]


def test_a_stale_heartbeat_active_does_not_veto() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    feed(cluster, [task_event("started", "t", 2, host=A, pid=1), worker_event("heartbeat", 3, host=A, pid=1, active=1),
                   task_event("succeeded", "t", 4, host=A, pid=1)])
    drained_to_waiting(cluster, book)
    assert book.evaluate(cluster, 2)[0] == [Reconcile(A, CONFIRM_REASON)]


def test_confirming_inspect_that_finds_tasks_goes_back_to_waiting() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    drained_to_waiting(cluster, book)
    book.evaluate(cluster, 2)
    cluster.merge(WorkerSnapshot(A, 50, (TaskInfo("hidden", "t", TaskState.RUNNING),), ("default",)), 2.5)
    assert book.confirm_done(cluster, A, True, 3) == []
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]


def test_unanswered_confirmation_is_asked_again_never_assumed() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    drained_to_waiting(cluster, book)
    book.evaluate(cluster, 2)
    assert book.confirm_done(cluster, A, False, 3) == []
    assert book.evaluate(cluster, 6.9) == ([], [])
    assert book.evaluate(cluster, 7.1)[0] == [Reconcile(A, CONFIRM_REASON)]


def test_missing_cancel_reply_is_confirmed_with_active_queues() -> None:
    cluster = fleet((A, ("q", "r")), (B, ("q", "r")))
    book = DrainBook()
    started(cluster, book)
    assert book.cancel_replied(A, {"q": True, "r": None}, 1) == [QueryQueues(A)]
    assert book.get(A).phase is Phase.CONFIRMING_QUEUES  # type: ignore[union-attr]
    # no answer either: ask again after retry_s
    assert book.queues_replied(cluster, A, None, 2) == []
    assert book.evaluate(cluster, 5.9) == ([], [])
    assert book.evaluate(cluster, 6.1)[0] == [QueryQueues(A)]
    # it still consumes r: cancel again
    assert book.queues_replied(cluster, A, ("r",), 7) == [CancelConsumers(A, ("r",))]
    assert book.cancel_replied(A, {"r": True}, 8) == []
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]


def test_active_queues_showing_nothing_left_proceeds() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    started(cluster, book)
    book.cancel_replied(A, {"q": None}, 1)
    assert book.queues_replied(cluster, A, (), 2) == []
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]
    assert cluster.worker(A).queues == ()  # type: ignore[union-attr]


def test_unanswered_cancel_is_resent() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    started(cluster, book)
    assert book.evaluate(cluster, 4.9) == ([], [])
    assert book.evaluate(cluster, 5.1)[0] == [CancelConsumers(A, ("q",))]


def retiring(cluster: Cluster, book: DrainBook, *, managed: bool) -> None:
    drained_to_waiting(cluster, book, managed=managed)
    book.evaluate(cluster, 2)
    assert book.confirm_done(cluster, A, True, 3) == [ShutdownWorker(A)]


def test_managed_worker_still_alive_after_shutdown_gets_the_runtime_stop() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    retiring(cluster, book, managed=True)
    assert book.evaluate(cluster, 12.9) == ([], [])
    assert book.evaluate(cluster, 13.1)[0] == [StopWorker(A, 600.0)]
    assert book.get(A).phase is Phase.STOPPING  # type: ignore[union-attr]
    notices = book.exited(cluster, A, -9, True, 20)
    assert "SIGTERM had no effect" in notices[0].detail


def test_worker_not_started_by_drainctl_ends_shutdown_requested_then_restarted() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    retiring(cluster, book, managed=False)
    assert book.evaluate(cluster, 100) == ([], [])  # no runtime stop for a worker we did not start
    feed(cluster, [worker_event("offline", 5, host=A, pid=1)], now=101)
    _, notices = book.evaluate(cluster, 101)
    assert [n.kind for n in notices] == ["drain-shutdown-requested"]
    feed(cluster, [worker_event("online", 1, host=A, pid=99)], now=110)
    _, notices = book.evaluate(cluster, 110)
    assert [n.kind for n in notices] == ["drain-restarted-by-supervisor"]
    assert book.get(A).outcome is Outcome.RESTARTED_BY_SUPERVISOR  # type: ignore[union-attr]
    assert book.outcomes["shutdown-requested"] == 0 and book.outcomes["restarted-by-supervisor"] == 1


def test_worker_dying_mid_drain_is_lost_with_exactly_the_tasks_it_held() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "t1", 2, host=A, pid=1), task_event("received", "t2", 3, host=A, pid=1),
                   task_event("received", "eta", 4, host=A, pid=1, eta="2030-01-01T00:00:00")])
    book = DrainBook()
    drained_to_waiting(cluster, book)
    notices = book.exited(cluster, A, -9, False, 5)
    drain = book.get(A)
    assert drain is not None and drain.outcome is Outcome.LOST
    assert drain.lost_tasks == ("t1", "t2")
    assert "t1, t2" in notices[0].detail and "acks-early" in notices[0].detail


def test_unmanaged_worker_replaced_mid_drain_is_lost() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "t1", 2, host=A, pid=1)])
    book = DrainBook()
    drained_to_waiting(cluster, book, managed=False)
    book.evaluate(cluster, 1)
    cluster.tick(60)
    feed(cluster, [worker_event("online", 1, host=A, pid=50)], now=61)
    _, notices = book.evaluate(cluster, 61)
    assert book.get(A).outcome is Outcome.LOST  # type: ignore[union-attr]
    assert book.get(A).lost_tasks == ("t1",)  # type: ignore[union-attr]
    assert notices[0].kind == "drain-lost"


@pytest.mark.parametrize(
    ("on_deadline", "managed", "command", "fragment"),
    [
        ("wait", True, None, "keep waiting"),
        ("escalate", True, EscalateWorker(A), "escalating"),
        ("escalate", False, None, "cannot escalate"),
    ],
)
def test_deadline_by_policy(on_deadline: str, managed: bool, command: Any, fragment: str) -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "t1", 2, host=A, pid=1)])
    book = DrainBook()
    policy = DrainPolicy(deadline_s=60, on_deadline=on_deadline)  # type: ignore[arg-type]
    started(cluster, book, policy=policy, managed=managed)
    book.cancel_replied(A, {"q": True}, 1)
    assert book.evaluate(cluster, 59) == ([], [])
    commands, notices = book.evaluate(cluster, 60)
    assert commands == ([command] if command else [])
    assert fragment in notices[0].detail and book.past_deadline() == 1
    assert book.evaluate(cluster, 61) == ([], [])  # said once
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]


def test_cancel_puts_the_worker_back_to_work() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    drained_to_waiting(cluster, book)
    cluster.set_queues(A, ())
    assert book.cancel(cluster, A, 2, "rollout aborted") == [AddConsumers(A, ("q",))]
    assert book.get(A).outcome is Outcome.CANCELLED  # type: ignore[union-attr]
    assert cluster.worker(A).queues == ("q",)  # type: ignore[union-attr]
    assert book.cancel(cluster, A, 3, "again") == []


def test_duration_histogram_buckets() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    retiring(cluster, book, managed=True)
    book.exited(cluster, A, 0, False, 4)
    assert book.duration_buckets[1] == 1 and book.duration_sum == 4


def test_worker_with_no_queues_skips_cancelling() -> None:
    cluster = fleet((A, ()), (B, ("q",)))
    book = DrainBook()
    assert started(cluster, book) == []
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]


def test_abandon_gives_the_drain_up_without_touching_the_worker() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book = DrainBook()
    started(cluster, book)
    notices = book.abandon(A, 1, "another controller holds the lease")
    assert [n.kind for n in notices] == ["drain-cancelled"]
    assert book.get(A).outcome is Outcome.CANCELLED  # type: ignore[union-attr]
    assert cluster.worker(A).queues == ("q",)  # type: ignore[union-attr]
    assert book.abandon(A, 2, "again") == []


def test_reaction_of_an_idle_worker_counts_from_the_drains_start() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "old", 2, host=A, pid=1), task_event("succeeded", "old", 3, host=A, pid=1)],
         now=1)
    book = DrainBook()
    book.start(cluster, A, 5.0, policy=POLICY, managed=True)
    book.cancel_replied(A, {"q": True}, 5.0)
    assert book.evaluate(cluster, 5.01) == ([Reconcile(A, CONFIRM_REASON)], [])
    assert book.confirm_done(cluster, A, True, 5.03) == [ShutdownWorker(A)]
    drain = book.get(A)
    assert drain is not None and drain.reaction_s == pytest.approx(0.03)  # not 4.03: it was idle since 1
