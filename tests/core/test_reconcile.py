"""A reconcile reply merged into the model: snapshots against events, and the corrections they make."""

from __future__ import annotations

from drainctl.core.commands import EnableEvents
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.reconcile import CORRECTION_GRACE_S
from drainctl.core.snapshot import TaskInfo, TaskState, WorkerSnapshot
from drainctl.core.worker import WorkerState
from tests.core.factories import ETA, HOST, feed, online, states, task_event, worker_event


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
