"""The live model: the task states it tells apart from event sequences, and the life of a worker."""

from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.commands import EnableEvents, Reconcile
from drainctl.core.model import Cluster
from drainctl.core.ordering import Tombstones
from drainctl.core.worker import TaskEvents, WorkerState
from tests.core.factories import ETA, HOST, feed, online, states, task_event, worker_event

# --- tasks: every state the model distinguishes, from event sequences -------------------------------------

@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("received", "a", 2, {})], {"a": "reserved"}),
        ([("received", "a", 2, {"eta": ETA})], {"a": "scheduled"}),
        ([("received", "a", 2, {}), ("started", "a", 3, {})], {"a": "running"}),
        ([("received", "a", 2, {"eta": ETA}), ("started", "a", 3, {})], {"a": "running"}),
        ([("started", "a", 3, {})], {"a": "running"}),  # received was missed
        ([("received", "a", 2, {}), ("started", "a", 3, {}), ("succeeded", "a", 4, {})], {}),
        ([("received", "a", 2, {}), ("started", "a", 3, {}), ("failed", "a", 4, {})], {}),
        ([("received", "a", 2, {}), ("revoked", "a", 3, {})], {}),
        ([("received", "a", 2, {}), ("rejected", "a", 3, {})], {}),
        ([("received", "a", 2, {}), ("started", "a", 3, {}), ("retried", "a", 4, {})], {}),
        # retried then received again on the same worker: alive again
        ([("started", "a", 3, {}), ("retried", "a", 4, {}), ("received", "a", 5, {"eta": ETA})], {"a": "scheduled"}),
        # out of order inside the stream: started arrives after succeeded -> no resurrection
        ([("received", "a", 2, {}), ("succeeded", "a", 4, {}), ("started", "a", 3, {})], {}),
        # duplicated events are idempotent
        ([("received", "a", 2, {}), ("received", "a", 2, {}), ("started", "a", 3, {}), ("started", "a", 3, {})],
         {"a": "running"}),
        # a late received after started does not demote the task
        ([("started", "a", 3, {}), ("received", "a", 2, {})], {"a": "running"}),
        ([("received", "a", 2, {}), ("received", "b", 3, {"eta": ETA}), ("started", "a", 4, {})],
         {"a": "running", "b": "scheduled"}),
    ],
)
def test_task_sequences(events: list[tuple[str, str, int, dict[str, Any]]], expected: dict[str, str]) -> None:
    cluster = Cluster()
    online(cluster)
    feed(cluster, [task_event(kind, uuid, clock, **extra) for kind, uuid, clock, extra in events])
    assert states(cluster) == expected


def test_late_events_are_counted() -> None:
    cluster = Cluster()
    online(cluster)
    feed(cluster, [task_event("succeeded", "a", 5), task_event("started", "a", 4), task_event("received", "a", 3)])
    assert cluster.late_events == 2
    assert states(cluster) == {}


def test_tombstones_are_bounded() -> None:
    cluster = Cluster(max_tombstones=3)
    online(cluster)
    feed(cluster, [task_event("succeeded", f"t{i}", 10 + i) for i in range(10)])
    assert cluster.tombstones() == 3
    assert cluster.task_outcomes == {"task-succeeded": 10}


def test_a_task_buried_again_keeps_its_tombstone_as_long_as_a_new_one() -> None:
    store = Tombstones(limit=3)
    store.bury(("w", "a"), 1, 7)
    store.revive(("w", "a"))  # a retry: alive again
    assert store.get(("w", "a")) is None
    store.bury(("w", "a"), 5, 7)  # and finished again
    store.bury(("w", "b"), 6, 7)
    store.bury(("w", "c"), 7, 7)  # a's first burial goes out of the queue; its new tombstone stays
    assert store.get(("w", "a")) == store.by_key[("w", "a")] and store.by_key[("w", "a")].clock == 5
    assert len(store) == 3
    store.bury(("w", "d"), 8, 7)  # now a's second burial is the oldest
    assert store.get(("w", "a")) is None
    assert sorted(k for _, k in store.by_key) == ["b", "c", "d"]


def test_task_sent_is_counted_but_creates_no_worker() -> None:
    cluster = Cluster()
    feed(cluster, [task_event("sent", "a", 1, host="client@x", queue="q")])
    assert cluster.workers == {}
    assert cluster.events_by_type == {"task-sent": 1}


def test_events_by_type_count_everything() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), worker_event("heartbeat", 2), task_event("received", "a", 3)])
    assert cluster.events_by_type == {"worker-online": 1, "worker-heartbeat": 1, "task-received": 1}


# --- workers --------------------------------------------------------------------------------------------

def test_online_asks_for_a_targeted_reconcile_and_task_events() -> None:
    cluster = Cluster()
    commands, notices = feed(cluster, [worker_event("online", 1)])
    assert commands == [Reconcile(HOST, "worker-online"), EnableEvents(HOST)]
    assert [n.kind for n in notices] == ["worker-discovered", "worker-online"]
    worker = cluster.worker(HOST)
    assert worker is not None
    assert (worker.state, worker.sw_ver, worker.pid) == (WorkerState.ONLINE, "5.7.0", 100)


def test_first_sight_through_a_heartbeat_also_reconciles() -> None:
    cluster = Cluster()
    commands, _ = feed(cluster, [worker_event("heartbeat", 5)])
    assert commands == [Reconcile(HOST, "worker-heartbeat"), EnableEvents(HOST)]
    commands, _ = feed(cluster, [worker_event("heartbeat", 6)])
    assert commands == []


def test_known_worker_coming_back_online_reconciles_again() -> None:
    cluster = Cluster()
    online(cluster)
    commands, _ = feed(cluster, [worker_event("offline", 2), worker_event("online", 3)])
    assert commands == [Reconcile(HOST, "worker-online"), EnableEvents(HOST)]


def test_offline_keeps_tasks_until_they_end_then_leaves_after_retention() -> None:
    cluster = Cluster(offline_retention_s=60)
    online(cluster)
    feed(cluster, [task_event("started", "a", 2), worker_event("offline", 3)], now=10)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.state is WorkerState.OFFLINE
    assert cluster.tick(100) == []  # still holds a task
    feed(cluster, [task_event("succeeded", "a", 4)], now=101)
    assert cluster.tick(120) == []  # retention counts from offline, task ended
    notices = cluster.tick(170)
    assert [n.kind for n in notices] == ["worker-removed"]
    assert cluster.worker(HOST) is None


@pytest.mark.parametrize(
    ("silent_after", "freq", "quiet_for", "expected"),
    [
        (10.0, 2.0, 9.9, WorkerState.ONLINE),
        (10.0, 2.0, 10.1, WorkerState.SILENT),
        (1.0, 2.0, 3.9, WorkerState.ONLINE),  # never shorter than 2 x freq (Celery's own expiry)
        (1.0, 2.0, 4.1, WorkerState.SILENT),
        (30.0, 5.0, 29.0, WorkerState.ONLINE),
    ],
)
def test_silent_window_is_time_as_data(silent_after: float, freq: float, quiet_for: float,
                                       expected: WorkerState) -> None:
    cluster = Cluster(silent_after_s=silent_after)
    feed(cluster, [worker_event("online", 1, freq=freq), worker_event("heartbeat", 2, freq=freq)], now=100)
    cluster.tick(100 + quiet_for)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.state is expected


def test_silent_worker_keeps_its_tasks_and_recovers_on_heartbeat() -> None:
    cluster = Cluster(silent_after_s=5)
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 2), task_event("received", "b", 3)], now=0)
    notices = cluster.tick(6)
    assert [n.kind for n in notices] == ["worker-silent"]
    assert "holds 2 tasks" in notices[0].detail
    assert states(cluster) == {"a": "running", "b": "reserved"}
    assert cluster.tick(1000) == []  # never dropped silently
    _, notices = feed(cluster, [worker_event("heartbeat", 4, active=1)], now=1001)
    assert [n.kind for n in notices] == ["worker-recovered"]


def test_heartbeat_active_disagreement_twice_in_a_row_reconciles_rate_limited() -> None:
    cluster = Cluster(reconcile_min_interval_s=30)
    feed(cluster, [worker_event("online", 1)], now=0)
    assert feed(cluster, [worker_event("heartbeat", 2, active=1)], now=31)[0] == []
    commands, _ = feed(cluster, [worker_event("heartbeat", 3, active=1)], now=33)
    assert commands == [Reconcile(HOST, "heartbeat-active-mismatch"), EnableEvents(HOST)]
    # the next disagreement inside the interval does not ask again
    assert feed(cluster, [worker_event("heartbeat", 4, active=1), worker_event("heartbeat", 5, active=1)],
                now=40)[0] == []
    # agreement resets
    feed(cluster, [task_event("started", "a", 6), worker_event("heartbeat", 7, active=1)], now=41)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.active_mismatches == 0
    assert worker.task_events is TaskEvents.ON


def test_heartbeat_without_active_never_counts_as_disagreement() -> None:
    cluster = Cluster(reconcile_min_interval_s=0)
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 2)], now=0)
    hb = worker_event("heartbeat", 3, freq=5.0)
    del hb["active"]
    hb2 = dict(hb, clock=4)
    assert feed(cluster, [hb, hb2], now=1)[0] == []
    worker = cluster.worker(HOST)
    assert worker is not None and worker.heartbeat_active is None


def test_enable_events_reply_is_recorded_and_turning_them_on_reconciles() -> None:
    cluster = Cluster()
    online(cluster)
    assert cluster.note_task_events(HOST, enabled_now=True, now=1) == [Reconcile(HOST, "events-enabled")]
    worker = cluster.worker(HOST)
    assert worker is not None and worker.task_events is TaskEvents.ENABLED
    assert cluster.note_task_events(HOST, enabled_now=False, now=2) == []
    assert worker.task_events is TaskEvents.ON
    assert cluster.note_task_events("unknown@x", enabled_now=True, now=3) == []


def test_offline_worker_releases_eta_and_prefetched_tasks_once_nothing_runs() -> None:
    cluster = Cluster(offline_retention_s=0)
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 2), task_event("received", "b", 3),
                   task_event("received", "c", 4, eta=ETA), worker_event("offline", 5)], now=0)
    assert cluster.tick(10) == []  # "a" still runs: the connection stays open, b and c stay held
    feed(cluster, [task_event("succeeded", "a", 6)], now=11)
    assert cluster.tick(12) == []  # within one heartbeat window of the last sign of life
    notices = cluster.tick(15.1)
    assert [n.kind for n in notices] == ["tasks-returned", "worker-removed"]
    assert "b, c" in notices[0].detail
