from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.commands import EnableEvents, Reconcile
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.reconcile import CORRECTION_GRACE_S
from drainctl.core.snapshot import TaskInfo, TaskState, WorkerSnapshot, build_snapshot
from drainctl.core.worker import TaskEvents, WorkerState
from tests.core.factories import HOST, feed, task_event, worker_event

ETA = "2030-01-01T00:00:00+00:00"


def states(cluster: Cluster, host: str = HOST) -> dict[str, str]:
    worker = cluster.worker(host)
    assert worker is not None
    return {uuid: t.state.value for uuid, t in sorted(worker.tasks.items())}


def online(cluster: Cluster, clock: int = 1, **kw: Any) -> None:
    feed(cluster, [worker_event("online", clock, **kw)])


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


# --- collisions and restarts ---------------------------------------------------------------------------

def test_two_processes_interleaving_under_one_name_collide() -> None:
    cluster = Cluster()
    _, notices = feed(cluster, [
        worker_event("online", 1, pid=1), worker_event("heartbeat", 2, pid=1),
        worker_event("online", 1, pid=2), worker_event("heartbeat", 3, pid=1),
    ], now=0)
    assert "hostname-collision" not in [n.kind for n in notices]  # pid 2 only announced itself so far
    _, notices = feed(cluster, [worker_event("heartbeat", 2, pid=2)], now=2)
    assert "hostname-collision" in [n.kind for n in notices]
    worker = cluster.worker(HOST)
    assert worker is not None and worker.collision


def test_heartbeat_from_unknown_pid_while_current_is_alive_collides() -> None:
    cluster = Cluster()
    _, notices = feed(cluster, [worker_event("online", 1, pid=1), worker_event("heartbeat", 2, pid=7)], now=0)
    assert [n.kind for n in notices][-1] == "hostname-collision"


def test_same_pid_clock_going_backwards_collides() -> None:
    # Containers: two workers with pid 1 under one name; only the clock tells them apart.
    cluster = Cluster()
    _, notices = feed(cluster, [worker_event("online", 50, pid=1), worker_event("heartbeat", 60, pid=1),
                                worker_event("heartbeat", 12, pid=1)], now=0)
    assert [n.kind for n in notices][-1] == "hostname-collision"


def test_collision_clears_when_only_one_process_remains() -> None:
    cluster = Cluster(silent_after_s=5)
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("heartbeat", 2, pid=7)], now=0)
    feed(cluster, [worker_event("heartbeat", 3, pid=1)], now=8)
    notices = cluster.tick(11)
    assert "hostname-collision-cleared" in [n.kind for n in notices]


def test_a_duplicate_that_announces_itself_and_crashes_leaves_the_first_worker_alone() -> None:
    # Celery 5.7: the second worker with a taken name sends worker-online, fails to declare its
    # (exclusive) pidbox queue and sends worker-offline within a second or two.
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("heartbeat", 2, pid=1),
                   task_event("started", "a", 3, pid=1)], now=0)
    _, notices = feed(cluster, [worker_event("online", 1, pid=2), worker_event("heartbeat", 4, pid=1),
                                worker_event("offline", 2, pid=2)], now=1.5)
    kinds = [n.kind for n in notices]
    assert "hostname-collision" not in kinds and "worker-restarted" not in kinds and "tasks-lost" not in kinds
    (left,) = [n for n in notices if n.kind == "hostname-contender-left"]
    assert "pid 2" in left.detail and "0.0s after it announced itself" in left.detail
    worker = cluster.worker(HOST)
    assert worker is not None and worker.pid == 1 and worker.state is WorkerState.ONLINE
    assert states(cluster) == {"a": "running"} and worker.contender is None
    _, notices = feed(cluster, [worker_event("heartbeat", 5, pid=1)], now=3)
    assert notices == [] and not worker.collision


def test_a_contender_that_heartbeats_while_the_current_process_is_quiet_is_a_restart() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1), task_event("started", "a", 2, pid=1)], now=0)
    _, notices = feed(cluster, [worker_event("online", 1, pid=2), worker_event("online", 1, pid=2)], now=3)
    assert notices == []  # undecided
    commands, notices = feed(cluster, [worker_event("heartbeat", 2, pid=2)], now=5)
    assert [n.kind for n in notices] == ["worker-restarted", "tasks-lost"]
    assert commands == [Reconcile(HOST, "worker-online"), EnableEvents(HOST)]  # its online was held back
    worker = cluster.worker(HOST)
    assert worker is not None and worker.pid == 2 and not worker.collision and worker.tasks == {}


def test_a_contender_that_heartbeats_after_the_current_process_spoke_is_a_collision() -> None:
    # Celery <= 5.6 lets two workers share a name: both heartbeat.
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("online", 1, pid=2),
                   task_event("received", "a", 2, pid=1), task_event("started", "b", 2, pid=2)], now=0)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.collision and worker.contender is None
    assert "pids 1 and 2" in (worker.collision_reason or "")


def test_a_twin_stopping_clears_the_collision_two_windows_after_its_last_word() -> None:
    cluster = Cluster(silent_after_s=4)
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("online", 1, pid=2),
                   worker_event("heartbeat", 2, pid=1), worker_event("heartbeat", 2, pid=2)], now=0)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.collision
    _, notices = feed(cluster, [worker_event("heartbeat", 3, pid=2), worker_event("offline", 4, pid=2)], now=2)
    assert notices == []  # a known twin: no contender notice
    for t in (4, 6, 8):
        feed(cluster, [worker_event("heartbeat", 3 + t, pid=1)], now=t)
        assert cluster.tick(t) == []
    # the twin's last word came at 2 with its heartbeat; it sent worker-offline (its pidbox is closed)
    assert "hostname-collision-cleared" in [n.kind for n in cluster.tick(10.5)]
    assert worker.pid == 1 and worker.state is WorkerState.ONLINE


def test_when_the_current_twin_stops_the_other_takes_the_name_and_the_collision_clears() -> None:
    cluster = Cluster(silent_after_s=4)
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("online", 1, pid=2),
                   worker_event("heartbeat", 2, pid=1), task_event("started", "a", 3, pid=1),
                   worker_event("heartbeat", 2, pid=2)], now=0)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.collision and worker.pid == 1
    feed(cluster, [worker_event("offline", 4, pid=1)], now=1)
    assert worker.state is WorkerState.OFFLINE
    _, notices = feed(cluster, [worker_event("heartbeat", 3, pid=2)], now=2)
    assert [n.kind for n in notices] == ["worker-restarted"]  # the stopping one's task is kept: it runs on
    assert worker.pid == 2 and worker.state is WorkerState.ONLINE and states(cluster) == {"a": "running"}
    feed(cluster, [task_event("succeeded", "a", 5, pid=1)], now=3)
    assert states(cluster) == {}
    for t in (4, 6, 8):
        feed(cluster, [worker_event("heartbeat", t, pid=2)], now=t)
    assert "hostname-collision-cleared" in [n.kind for n in cluster.tick(8.5)]


def test_an_unknown_process_shutting_down_under_a_live_name_is_reported_not_a_collision() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1)], now=0)
    _, notices = feed(cluster, [worker_event("offline", 3, pid=9)], now=1)
    (notice,) = notices
    assert notice.kind == "hostname-contender-left" and "after it announced" not in notice.detail
    worker = cluster.worker(HOST)
    assert worker is not None and not worker.collision and worker.state is WorkerState.ONLINE


def test_a_contender_never_heard_of_again_is_forgotten() -> None:
    cluster = Cluster(silent_after_s=4)
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("online", 1, pid=2)], now=0)
    for t in range(2, 20, 2):
        feed(cluster, [worker_event("heartbeat", t, pid=1)], now=t)
        cluster.tick(t)
    worker = cluster.worker(HOST)
    assert worker is not None and worker.contender is None and set(worker.pids) == {1} and not worker.collision


def test_restart_after_sigkill_is_a_new_incarnation_not_a_collision() -> None:
    cluster = Cluster(silent_after_s=5)
    feed(cluster, [worker_event("online", 100, pid=1), task_event("started", "a", 101, pid=1)], now=0)
    cluster.tick(20)
    _, notices = feed(cluster, [worker_event("online", 3, pid=2), worker_event("heartbeat", 4, pid=2)], now=21)
    kinds = [n.kind for n in notices]
    assert "hostname-collision" not in kinds
    assert "worker-restarted" in kinds and "tasks-lost" in kinds
    worker = cluster.worker(HOST)
    assert worker is not None and worker.state is WorkerState.ONLINE and worker.tasks == {}


def test_warm_shutdown_then_restart_keeps_old_tasks_until_they_end() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1), task_event("started", "a", 2, pid=1),
                   worker_event("offline", 3, pid=1), worker_event("online", 1, pid=2)], now=0)
    assert states(cluster) == {"a": "running"}
    _, notices = feed(cluster, [task_event("succeeded", "a", 4, pid=1)], now=1)
    assert notices == []
    assert states(cluster) == {}


# --- snapshots -----------------------------------------------------------------------------------------

def merge(cluster: Cluster, snapshot: WorkerSnapshot, now: float) -> list[Notice]:
    return cluster.merge(snapshot, now)[1]


def snap(clock: int | None, *tasks: TaskInfo, queues: tuple[str, ...] | None = ("default",)) -> WorkerSnapshot:
    return WorkerSnapshot(HOST, clock, tuple(tasks), queues)


def test_snapshot_fills_in_what_events_never_told() -> None:
    cluster = Cluster()
    online(cluster)
    merge(cluster, snap(10, TaskInfo("a", "t", TaskState.RUNNING), TaskInfo("b", "t", TaskState.RESERVED),
                       TaskInfo("c", "t", TaskState.SCHEDULED, ETA)), now=5)
    assert states(cluster) == {"a": "running", "b": "reserved", "c": "scheduled"}
    worker = cluster.worker(HOST)
    assert worker is not None and worker.queues == ("default",)


def test_snapshot_removes_tasks_it_no_longer_lists_when_older() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 5)])
    assert merge(cluster, snap(10), now=1) == []
    assert states(cluster) == {}
    assert cluster.tick(1 + CORRECTION_GRACE_S) == [Notice("reconcile-corrected", HOST, "added 0, removed 1")]


def test_a_correction_is_reported_only_once_its_grace_passed() -> None:
    cluster = Cluster()
    online(cluster)
    merge(cluster, snap(10, TaskInfo("a", "t", TaskState.RESERVED), TaskInfo("b", "t", TaskState.RUNNING)), now=1)
    assert cluster.tick(1 + CORRECTION_GRACE_S - 0.1) == []
    assert cluster.tick(1 + CORRECTION_GRACE_S) == [Notice("reconcile-corrected", HOST, "added 2, removed 0")]
    assert cluster.tick(2 + CORRECTION_GRACE_S) == []


def test_events_sent_before_the_snapshot_and_arriving_after_it_explain_its_changes() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("received", "gone", 4)])
    # The worker received `new` and finished `gone` before answering; those events are still on their way.
    merge(cluster, snap(10, TaskInfo("new", "t", TaskState.RESERVED)), now=1)
    feed(cluster, [task_event("received", "new", 6), task_event("succeeded", "gone", 8)], now=1.01)
    assert states(cluster) == {"new": "reserved"}
    assert cluster.tick(1 + CORRECTION_GRACE_S) == []


def test_tasks_of_a_worker_met_mid_life_are_news_until_its_first_snapshot() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("heartbeat", 1)])  # running before drainctl listened
    merge(cluster, snap(10, TaskInfo("old", "t", TaskState.RUNNING)), now=1)
    assert cluster.tick(1 + CORRECTION_GRACE_S) == []
    merge(cluster, snap(20, TaskInfo("old", "t", TaskState.RUNNING), TaskInfo("missed", "t", TaskState.RESERVED)),
          now=10)
    assert cluster.tick(10 + CORRECTION_GRACE_S)[0] == Notice("reconcile-corrected", HOST, "added 1, removed 0")


def test_an_event_newer_than_the_snapshot_explains_nothing() -> None:
    cluster = Cluster()
    online(cluster)
    merge(cluster, snap(10, TaskInfo("a", "t", TaskState.RESERVED)), now=1)
    feed(cluster, [task_event("started", "a", 11)], now=2)
    assert states(cluster) == {"a": "running"}
    assert cluster.tick(1 + CORRECTION_GRACE_S) == [Notice("reconcile-corrected", HOST, "added 1, removed 0")]


def test_events_newer_than_the_snapshot_win() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("received", "new", 12), task_event("started", "b", 13)])
    merge(cluster, snap(10, TaskInfo("b", "t", TaskState.RESERVED)), now=1)
    assert states(cluster) == {"b": "running", "new": "reserved"}


def test_snapshot_does_not_resurrect_a_task_that_finished_after_it() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 5), task_event("succeeded", "a", 12)])
    merge(cluster, snap(10, TaskInfo("a", "t", TaskState.RUNNING)), now=1)
    assert states(cluster) == {}


def test_snapshot_overrides_older_event_knowledge() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("received", "a", 5)])
    merge(cluster, snap(10, TaskInfo("a", "t", TaskState.RUNNING)), now=1)
    assert states(cluster) == {"a": "running"}


def test_snapshot_without_clock_trusts_the_snapshot() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("received", "a", 5)])
    merge(cluster, snap(None, TaskInfo("b", "t", TaskState.RUNNING)), now=1)
    assert states(cluster) == {"b": "running"}


def test_partial_snapshot_changes_no_tasks() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("received", "a", 5)])
    merge(cluster, WorkerSnapshot(HOST, 10, None, ("q",)), now=1)
    assert states(cluster) == {"a": "reserved"}
    assert cluster.snapshots_merged == 0


def test_snapshot_of_unknown_worker_creates_it_and_revives_silent_ones() -> None:
    cluster = Cluster(silent_after_s=1)
    commands, notices = cluster.merge(snap(3, TaskInfo("a", "t", TaskState.RUNNING)), now=0)
    assert [n.kind for n in notices] == ["worker-discovered"]
    assert commands == [EnableEvents(HOST)]
    assert [n.kind for n in cluster.tick(10)] == ["worker-silent"]  # its tasks were news, not a correction
    worker = cluster.worker(HOST)
    assert worker is not None and worker.state is WorkerState.SILENT
    commands, notices = cluster.merge(snap(4, TaskInfo("a", "t", TaskState.RUNNING)), now=11)
    assert [n.kind for n in notices] == ["worker-recovered"]
    assert commands == []  # task events were asked for once, on discovery


def test_build_snapshot_from_celery_replies() -> None:
    replies = {
        "clock": {"clock": 42},
        "active": [{"id": "a", "name": "t.a", "time_start": 1.0}],
        "reserved": [{"id": "b", "name": "t.b"}, {"id": "a", "name": "t.a"}],
        "scheduled": [{"eta": ETA, "priority": 6, "request": {"id": "c", "name": "t.c"}}],
        "active_queues": [{"name": "q2"}, {"name": "default"}],
    }
    s = build_snapshot(HOST, replies)
    assert s.clock == 42 and s.queues == ("default", "q2") and s.problems == ()
    assert s.tasks is not None
    assert {t.uuid: (t.state.value, t.eta) for t in s.tasks} == {
        "a": ("running", None), "b": ("reserved", None), "c": ("scheduled", ETA)}


@pytest.mark.parametrize(
    ("replies", "problem"),
    [
        ({}, "clock: no usable reply"),
        ({"active": "nope", "reserved": [], "scheduled": []}, "active: no usable reply"),
        ({"active": [3], "reserved": [], "scheduled": []}, "running: entry is not an object"),
        ({"active": [{"name": "x"}], "reserved": [], "scheduled": []}, "running: entry without an 'id'"),
        ({"active": [], "reserved": [], "scheduled": ["x"]}, "scheduled: entry is not an object"),
        ({"active_queues": [{"x": 1}]}, "active_queues: entry without a 'name'"),
    ],
)
def test_build_snapshot_reports_unusable_parts(replies: dict[str, Any], problem: str) -> None:
    assert problem in build_snapshot(HOST, replies).problems


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
