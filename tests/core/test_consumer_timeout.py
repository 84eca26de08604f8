"""RabbitMQ's consumer_timeout: a draining worker's long-held deliveries are reported, once per task."""

from __future__ import annotations

from drainctl.core.consumer_timeout import DEFAULT_CONSUMER_TIMEOUT_S, ConsumerTimeout
from drainctl.core.drain import DrainBook, Outcome
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.snapshot import TaskInfo, TaskState, WorkerSnapshot
from tests.core.factories import feed, task_event
from tests.core.scenes import A, B, drained_to_waiting, fleet

KIND = "consumer-timeout-near"


def warnings(notices: list[Notice]) -> list[Notice]:
    return [n for n in notices if n.kind == KIND]


def test_the_default_is_rabbitmqs_thirty_minutes_warned_at_eighty_percent() -> None:
    assert DrainBook().consumer_timeout == ConsumerTimeout(DEFAULT_CONSUMER_TIMEOUT_S, 0.8)
    assert ConsumerTimeout().warn_after_s == 1440.0


def test_a_long_running_task_on_a_draining_worker_is_reported_once() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("received", "long", 2, host=A, pid=1)], now=0)
    feed(cluster, [task_event("started", "long", 3, host=A, pid=1)], now=0.5)
    book = DrainBook()
    drained_to_waiting(cluster, book)
    assert book.consumer_timeout_warnings == 0
    assert warnings(book.evaluate(cluster, 1439.9)[1]) == []
    # The age counts from the delivery (received), not from the start.
    [notice] = warnings(book.evaluate(cluster, 1440.0)[1])
    assert notice.hostname == A
    detail = notice.detail
    for fragment in ("task long (app.sleep)", "running (unacknowledged until it ends if it uses acks_late",
                     "delivered 1440.0s ago", "80% of consumer_timeout 1800s", "about 360.0s from now",
                     "may run twice", "Raise consumer_timeout", "split the task"):
        assert fragment in detail, (fragment, detail)
    # Once per task, not once per tick.
    for now in (1441.0, 1700.0, 1900.0):
        assert warnings(book.evaluate(cluster, now)[1]) == []
    assert book.consumer_timeout_warnings == 1
    assert book.get(A).timeout_warned == {"long"}  # type: ignore[union-attr]


def test_prefetched_and_eta_tasks_are_unacknowledged_too_each_reported_oldest_first() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("received", "eta", 2, host=A, pid=1, eta="2030-01-01T00:00:00")], now=0)
    feed(cluster, [task_event("received", "pre", 3, host=A, pid=1)], now=5)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, book)
    [eta] = warnings(book.evaluate(cluster, 5.0)[1])
    assert "task eta (app.sleep), held for its ETA (unacknowledged)" in eta.detail
    assert "of consumer_timeout 10s" in eta.detail
    [pre] = warnings(book.evaluate(cluster, 10.0)[1])
    assert "task pre (app.sleep), prefetched, not started (unacknowledged)" in pre.detail
    assert book.consumer_timeout_warnings == 2
    # Both at once when found late: in order of delivery.
    late = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, late)
    assert [n.detail.split(" ")[1] for n in warnings(late.evaluate(cluster, 11.0)[1])] == ["eta", "pre"]


def test_a_task_found_past_the_timeout_says_the_channel_may_be_closed_already() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "nameless", 2, host=A, pid=1)], now=0)  # no task-received seen
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=60, warn_at=1.0))
    drained_to_waiting(cluster, book)
    assert warnings(book.evaluate(cluster, 59.9)[1]) == []
    [notice] = warnings(book.evaluate(cluster, 61.0)[1])
    assert "task nameless (name unknown)" in notice.detail
    assert "102% of consumer_timeout 60s" in notice.detail
    assert "any moment now, if it has not already" in notice.detail


def test_a_task_learnt_from_a_reconcile_counts_from_the_reconcile() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    cluster.merge(WorkerSnapshot(A, 50, (TaskInfo("seen-late", "t", TaskState.RUNNING),), ("q",)), 100.0)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.8))
    drained_to_waiting(cluster, book)
    assert warnings(book.evaluate(cluster, 107.9)[1]) == []
    assert len(warnings(book.evaluate(cluster, 108.0)[1])) == 1


def test_workers_not_being_drained_and_finished_drains_are_not_reported() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "a-long", 2, host=A, pid=1), task_event("started", "b-long", 2, host=B, pid=2)],
         now=0)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, book)
    assert [n.detail.split(" ")[1] for n in warnings(book.evaluate(cluster, 6.0)[1])] == ["a-long"]  # not b-long
    # A later task on the drained worker (a prefetched one that started) gets its own notice.
    feed(cluster, [task_event("received", "second", 3, host=A, pid=1)], now=6.0)
    assert warnings(book.evaluate(cluster, 10.9)[1]) == []
    assert len(warnings(book.evaluate(cluster, 11.0)[1])) == 1
    # The drain ends (the worker died): nothing more is reported for it.
    feed(cluster, [task_event("received", "third", 4, host=A, pid=1)], now=11.0)
    book.exited(cluster, A, 1, False, 12.0)
    assert book.get(A).outcome is Outcome.LOST  # type: ignore[union-attr]
    assert warnings(book.evaluate(cluster, 100.0)[1]) == []
    assert book.consumer_timeout_warnings == 2


def test_an_empty_cluster_has_nothing_to_report() -> None:
    assert DrainBook().evaluate(Cluster(), 1e9) == ([], [])


def test_a_warned_task_another_worker_receives_is_reported_as_redelivered_once() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("received", "long", 2, host=A, pid=1), task_event("started", "long", 3, host=A, pid=1),
                   task_event("received", "short", 4, host=A, pid=1)], now=0)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, book)
    # Another worker holding a task not yet warned about is no redelivery (yet).
    feed(cluster, [task_event("received", "long", 2, host=B, pid=2)], now=1)
    assert book.evaluate(cluster, 4.9) == ([], [])
    assert [n.kind for n in book.evaluate(cluster, 5.0)[1]] == [KIND, KIND, "consumer-timeout-redelivered"]
    _, notices = book.evaluate(cluster, 9.0)
    assert notices == []  # once per task
    drain = book.get(A)
    assert drain is not None and drain.redelivered == {"long"} and book.consumer_timeout_redeliveries == 1
    # The worker stops (Celery exits when RabbitMQ closes its channel): the loss names the warned tasks.
    feed(cluster, [task_event("succeeded", "long", 5, host=A, pid=1), task_event("succeeded", "short", 6, host=A, pid=1)],
         now=9.5)
    [lost] = book.exited(cluster, A, 1, False, 10.0)
    assert lost.kind == "drain-lost"
    assert "held long, short past the consumer_timeout warning" in lost.detail
    assert "may have closed its channel" in lost.detail


def test_the_redelivery_notice_names_both_workers_and_the_consequence() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "long", 2, host=A, pid=1)], now=0)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, book)
    book.evaluate(cluster, 6.0)
    feed(cluster, [task_event("received", "long", 2, host=B, pid=2)], now=9.0)
    [notice] = book.evaluate(cluster, 9.0)[1]
    assert notice.kind == "consumer-timeout-redelivered" and notice.hostname == A
    for fragment in (f"task long, held by {A}", f"delivered again to {B}", "runs twice", "same timeout"):
        assert fragment in notice.detail, (fragment, notice.detail)


def test_a_retry_elsewhere_after_the_task_ended_is_no_redelivery() -> None:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [task_event("started", "long", 2, host=A, pid=1)], now=0)
    book = DrainBook(consumer_timeout=ConsumerTimeout(timeout_s=10, warn_at=0.5))
    drained_to_waiting(cluster, book)
    assert len(book.evaluate(cluster, 6.0)[1]) == 1
    # It ended on the drained worker (a retry raised), and its retry (same id) went to the other one.
    feed(cluster, [task_event("retried", "long", 3, host=A, pid=1),
                   task_event("received", "long", 2, host=B, pid=2, retries=1)], now=7.0)
    assert [n.kind for n in book.evaluate(cluster, 7.0)[1]] == []
    assert book.consumer_timeout_redeliveries == 0
