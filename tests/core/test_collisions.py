"""One name, several processes: restarts, duplicates that could not start, and collisions."""

from __future__ import annotations

from drainctl.core.commands import EnableEvents, Reconcile
from drainctl.core.model import Cluster
from drainctl.core.worker import WorkerState
from tests.core.factories import HOST, feed, states, task_event, worker_event


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
