"""The rarer branches of the core, each pinned by a case of its own."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from drainctl.core.commands import AddConsumers, CancelConsumers, JournalCancel, QueryRegistered, Reconcile, StartWorker
from drainctl.core.drain import DURATION_BUCKETS, DrainBook, DrainPolicy, Outcome, Phase
from drainctl.core.events import parse_event
from drainctl.core.model import Cluster
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import WorkerState
from tests.core.factories import ETA, feed, states, task_event, worker_event

A, B = "a@h", "b@h"


def two_workers() -> Cluster:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, host=A, pid=1), worker_event("online", 1, host=B, pid=2)])
    cluster.set_queues(A, ("q",))
    cluster.set_queues(B, ("q",))
    return cluster


def test_parse_event_without_loadavg_and_model_queries() -> None:
    raw = worker_event("heartbeat", 2)
    del raw["loadavg"]
    cluster = Cluster()
    cluster.apply(parse_event(raw), 0)
    feed(cluster, [task_event("started", "t", 3)])
    worker = cluster.worker("w1@host")
    assert worker is not None and worker.loadavg is None
    assert worker.task_ids(TaskState.RUNNING) == ["t"] and cluster.in_flight() == 1
    assert [w.hostname for w in cluster] == ["w1@host"]
    assert cluster.forget("w1@host") is worker and cluster.worker("w1@host") is None
    cluster.set_queues("nobody@h", ("q",))  # unknown worker: nothing to set


def test_events_without_pid_and_new_pids_through_task_events() -> None:
    cluster = Cluster()
    raw = worker_event("online", 1)
    del raw["pid"]
    cluster.apply(parse_event(raw), 0)
    worker = cluster.worker("w1@host")
    assert worker is not None and worker.pid is None
    # a task event from a process the model never heard of, while the current one is alive: collision
    feed(cluster, [worker_event("heartbeat", 2, pid=5), task_event("started", "t", 3, pid=6)], now=1)
    assert worker.collision


def test_task_events_from_a_previous_incarnation_finishing_its_shutdown() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, pid=1), worker_event("offline", 2, pid=1),
                   worker_event("online", 1, pid=2), worker_event("heartbeat", 2, pid=1)])
    worker = cluster.worker("w1@host")
    assert worker is not None and worker.pid == 2 and not worker.collision


def test_drain_book_iteration_lookups_and_repeated_inputs() -> None:
    cluster = two_workers()
    book = DrainBook()
    drain, _ = book.start(cluster, A, 0, policy=DrainPolicy(), managed=True)
    assert list(book) == [drain] and book.get(A) is drain and book.get(B) is None
    assert book.resume(cluster, A, ("q",), 1, policy=DrainPolicy(), managed=True, requested_by="x") is drain
    assert book.cancel_replied(B, {"q": True}, 1) == []  # no drain of B
    book.cancel_replied(A, {"q": True}, 1)
    assert book.cancel_replied(A, {"q": True}, 2) == []  # no longer cancelling
    assert book.queues_replied(cluster, A, ("q",), 2) == []  # not confirming
    assert book.confirm_done(cluster, A, True, 2) == []  # not verifying
    assert book.exited(cluster, B, 0, False, 3) == []  # not draining
    assert book.evaluate(cluster, 3)[0] == [Reconcile(A, "drain-confirm")]


def test_drain_of_a_worker_the_model_forgot() -> None:
    for phase_retiring in (False, True):
        cluster = two_workers()
        book = DrainBook()
        drain, _ = book.start(cluster, A, 0, policy=DrainPolicy(), managed=False)
        if phase_retiring:
            drain.phase = Phase.RETIRING
            drain.shutdown_at = 0
        cluster.forget(A)
        book.evaluate(cluster, 1)
        assert drain.outcome is (Outcome.SHUTDOWN_REQUESTED if phase_retiring else Outcome.LOST)


def test_managed_drain_replaced_while_retiring_and_unmanaged_restarted_while_retiring() -> None:
    for managed, expected in ((False, Outcome.RESTARTED_BY_SUPERVISOR), (True, Outcome.LOST)):
        cluster = two_workers()
        book = DrainBook()
        drain, _ = book.start(cluster, A, 0, policy=DrainPolicy(), managed=managed)
        drain.phase = Phase.RETIRING
        drain.shutdown_at = 0
        feed(cluster, [worker_event("offline", 5, host=A, pid=1), worker_event("online", 1, host=A, pid=9)], now=1)
        if managed:
            drain.phase = Phase.WAITING
        book.evaluate(cluster, 1)
        assert drain.outcome is expected


def test_long_drains_land_in_the_last_bucket() -> None:
    cluster = two_workers()
    book = DrainBook()
    book.start(cluster, A, 0, policy=DrainPolicy(), managed=True)
    book.exited(cluster, A, 0, False, DURATION_BUCKETS[-1] + 1)
    assert book.duration_buckets[-1] == 1


def pool(**kw: Any) -> PoolTarget:
    return PoolTarget(**{"name": "p", "queues": ("q",), "replicas": 1, "cap": 2, "version": "v1", **kw})


def fleet() -> Fleet:
    ids = itertools.count()
    return Fleet(new_id=lambda: str(next(ids)))


def test_fleet_lookups_and_inputs_for_unknown_workers() -> None:
    f = fleet()
    f.registered("nobody@h", ["t"], 0)
    assert f.exited("nobody@h", 0, 0) == ([], [])
    assert f.start_failed("nobody@h", "boom", 0) == []
    assert f.rollout("nope") is None
    cluster = Cluster()
    commands, _ = f.plan({"p": pool()}, cluster, DrainBook(), 0)
    (start,) = commands
    assert isinstance(start, StartWorker)
    notices = f.start_failed(start.hostname, "image missing", 1)
    assert "could not be started: image missing" in notices[0].detail
    assert f.consecutive_failures["p"] == 1


def test_registered_reply_missing_is_asked_again_later() -> None:
    f = fleet()
    cluster = Cluster()
    commands, _ = f.plan({"p": pool()}, cluster, DrainBook(), 0)
    host = commands[0].hostname  # type: ignore[union-attr]
    feed(cluster, [worker_event("online", 1, host=host)], now=0)
    cluster.set_queues(host, ("q",))
    assert QueryRegistered(host) in f.plan({"p": pool()}, cluster, DrainBook(), 1)[0]
    f.registered(host, None, 1)
    assert QueryRegistered(host) not in f.plan({"p": pool()}, cluster, DrainBook(), 1.5)[0]
    assert QueryRegistered(host) in f.plan({"p": pool()}, cluster, DrainBook(), 3.5)[0]
    f.registered(host, ["t"], 3.5)
    f.plan({"p": pool()}, cluster, DrainBook(), 4)
    assert f.members[host].ready_at == 4


def ready_pool(f: Fleet, cluster: Cluster, target: PoolTarget, now: float = 0) -> list[str]:
    hosts = []
    for command in f.plan({"p": target}, cluster, DrainBook(), now)[0]:
        if isinstance(command, StartWorker):
            feed(cluster, [worker_event("online", 1, host=command.hostname, pid=len(hosts) + 10)], now=now)
            cluster.set_queues(command.hostname, target.queues)
            f.registered(command.hostname, ["t"], now)
            hosts.append(command.hostname)
    f.plan({"p": target}, cluster, DrainBook(), now + 1)
    return hosts


def test_lowering_replicas_drains_the_newest() -> None:
    f = fleet()
    cluster = Cluster()
    target = pool(replicas=2, cap=3)
    hosts = ready_pool(f, cluster, target)
    book = DrainBook()
    commands, _ = f.plan({"p": pool(replicas=1, cap=2)}, cluster, book, 5)
    assert CancelConsumers(hosts[1], ("q",)) in commands


def test_lowering_replicas_drains_the_worker_that_will_be_free_first_and_only_it() -> None:
    f = fleet()
    cluster = Cluster()
    hosts = ready_pool(f, cluster, pool(replicas=3, cap=4))
    # The newest runs a task and the middle one holds one prefetched; the oldest is idle.
    feed(cluster, [task_event("received", "busy", 5, host=hosts[2], pid=12),
                   task_event("started", "busy", 6, host=hosts[2], pid=12),
                   task_event("received", "held", 5, host=hosts[1], pid=11)], now=2)
    smaller = pool(replicas=1, cap=2)
    book = DrainBook()
    commands, _ = f.plan({"p": smaller}, cluster, book, 5)
    drained = [c.hostname for c in commands if isinstance(c, CancelConsumers)]
    assert drained == [hosts[0], hosts[1]]
    assert set(book.active) == set(drained)
    commands, _ = f.plan({"p": smaller}, cluster, book, 6)  # those draining count: nothing more
    assert not [c for c in commands if isinstance(c, CancelConsumers)]


def test_old_worker_unknown_to_the_model_is_not_drained_yet_and_refusals_wait() -> None:
    f = fleet()
    cluster = Cluster()
    target = pool(replicas=1, cap=2)
    (old,) = ready_pool(f, cluster, target)
    # the new version's worker is ready, but the model has not seen the old one's queues
    cluster.workers[old].queues = None
    v2 = pool(replicas=1, cap=2, version="v2")
    commands, _ = f.plan({"p": v2}, cluster, DrainBook(), 5)
    new = next(c.hostname for c in commands if isinstance(c, StartWorker))
    feed(cluster, [worker_event("online", 1, host=new, pid=99)], now=5)
    cluster.set_queues(new, ("other",))  # consumes the wrong queue: never ready
    f.registered(new, ["t"], 5)
    f.members[new].ready_at = 5  # pretend ready to reach the drain
    commands, _ = f.plan({"p": v2}, cluster, DrainBook(), 6)
    assert not any(isinstance(c, CancelConsumers) for c in commands)
    cluster.set_queues(old, ("q",))
    book = DrainBook()
    commands, notices = f.plan({"p": v2}, cluster, book, 7)
    assert any(n.kind == "rollout-blocked" for n in notices)  # q would have no other consumer


@pytest.mark.parametrize("silent", [False, True])
def test_a_reverted_drain_of_a_never_ready_member_counts_it_ready(silent: bool) -> None:
    f = fleet()
    cluster = Cluster(silent_after_s=5)
    target = pool(replicas=1, cap=2)
    (host,) = ready_pool(f, cluster, target)
    book = DrainBook()
    feed(cluster, [worker_event("online", 1, host="x@h", pid=50)])
    cluster.set_queues("x@h", ("q",))
    book.start(cluster, host, 10, policy=DrainPolicy(), managed=True, requested_by="rollout:r")
    f.cancelled[host] = "r"  # the rollout's own record of the drain
    cluster.set_queues(host, ())  # cancelled
    now = 11.0
    if silent:
        now = 100.0
        cluster.tick(now)  # no heartbeat since: silent, so the readiness check does not count it ready
    f.members[host].ready_at = None
    commands, _ = f.plan({"p": target}, cluster, book, now)
    assert AddConsumers(host, ("q",)) in commands
    assert f.members[host].ready_at == now


def test_resume_of_a_worker_the_model_does_not_know_and_rollout_lookup() -> None:
    book = DrainBook()
    drain = book.resume(Cluster(), A, ("q",), 0, policy=DrainPolicy(), managed=True, requested_by="r")
    assert drain.held == () and drain.pid is None and drain.phase is Phase.WAITING
    f = fleet()
    cluster = Cluster()
    ready_pool(f, cluster, pool())
    f.plan({"p": pool(version="v2")}, cluster, DrainBook(), 5)
    (rollout,) = f.rollouts.values()
    assert f.rollout(rollout.id) is rollout


def test_worker_events_that_say_little_and_say_it_twice() -> None:
    cluster = Cluster()
    bare = {k: v for k, v in worker_event("online", 5).items()
            if k not in ("pid", "sw_ver", "sw_ident", "processed", "loadavg")}
    feed(cluster, [bare])
    worker = cluster.worker("w1@host")
    assert worker is not None and (worker.sw_ver, worker.sw_ident, worker.processed, worker.loadavg) == (None,) * 4
    # the clock going backwards twice: one collision, said once
    _, notices = feed(cluster, [dict(bare, type="worker-heartbeat", clock=3), dict(bare, type="worker-heartbeat", clock=2)])
    assert [n.kind for n in notices] == ["hostname-collision"]
    # worker-offline twice, from a process of unknown pid: said once, no pid to remember
    _, notices = feed(cluster, [dict(bare, type="worker-offline", clock=6), dict(bare, type="worker-offline", clock=7)])
    assert [n.kind for n in notices] == ["worker-offline"] and worker.offline_pids == set()


def test_a_newer_task_received_for_a_running_task_leaves_it_running() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1), task_event("started", "a", 3), task_event("received", "a", 4, eta=ETA)])
    assert states(cluster) == {"a": "running"}


def test_an_active_mismatch_on_a_worker_with_task_events_asks_for_a_reconcile_only() -> None:
    cluster = Cluster(reconcile_min_interval_s=0)
    feed(cluster, [worker_event("online", 1), task_event("received", "a", 2)], now=0)
    commands, _ = feed(cluster, [worker_event("heartbeat", 3, active=1), worker_event("heartbeat", 4, active=1)], now=1)
    assert commands == [Reconcile("w1@host", "heartbeat-active-mismatch")]


def test_a_managed_drain_outlives_the_models_memory_of_its_worker() -> None:
    cluster = two_workers()
    feed(cluster, [task_event("started", "t", 2, host=A, pid=1)])
    book = DrainBook()
    drain, _ = book.start(cluster, A, 0, policy=DrainPolicy(), managed=True)
    book.cancel_replied(A, {"q": True}, 1)
    cluster.forget(A)
    assert book.evaluate(cluster, 2) == ([], [])  # the runtime says when it exits
    assert drain.active and drain.held == ("t",)
    book.exited(cluster, A, 1, False, 3)
    assert drain.outcome is Outcome.LOST and drain.lost_tasks == ("t",)  # what it held when last seen
    # a drain called off for a worker the model forgot: the worker is asked to consume again all the same
    other = two_workers()
    book.start(other, B, 4, policy=DrainPolicy(), managed=True)
    other.forget(B)
    assert book.cancel(other, B, 5, "called off") == [AddConsumers(B, ("q",))] and other.worker(B) is None


def test_lowering_replicas_leaves_a_drain_under_way_alone() -> None:
    f = fleet()
    cluster = Cluster()
    hosts = ready_pool(f, cluster, pool(replicas=2, cap=3))
    book = DrainBook()
    book.start(cluster, hosts[1], 5, policy=DrainPolicy(), managed=True)
    commands, _ = f.plan({"p": pool(replicas=1, cap=2)}, cluster, book, 6)
    assert not any(isinstance(c, JournalCancel) for c in commands) and hosts[1] not in f.cancelled


@pytest.mark.parametrize("old_worker", ["silent", "gone"])
def test_an_old_worker_whose_task_list_is_unknown(old_worker: str) -> None:
    f = fleet()
    cluster = Cluster()
    (old,) = ready_pool(f, cluster, pool())
    f.members[old].registered = None  # as after a controller restart
    if old_worker == "gone":
        cluster.forget(old)
    else:
        cluster.workers[old].state = WorkerState.SILENT
    v2 = pool(version="v2")
    commands, _ = f.plan({"p": v2}, cluster, DrainBook(), 5)
    new = next(c.hostname for c in commands if isinstance(c, StartWorker))
    feed(cluster, [worker_event("online", 1, host=new, pid=99)], now=5)
    cluster.set_queues(new, ("q",))
    f.registered(new, ["t"], 5)
    commands, _ = f.plan({"p": v2}, cluster, DrainBook(), 10)
    if old_worker == "gone":
        assert f.members[new].ready_at == 10  # nothing left to compare with
    else:
        # a silent worker is not asked (it would not answer), but its list is awaited: the gate waits
        assert f.members[new].ready_at is None and QueryRegistered(old) not in commands


def test_a_rollout_is_found_by_its_id_among_others() -> None:
    f = fleet()
    cluster = Cluster()
    ready_pool(f, cluster, pool())
    f.plan({"p": pool(version="v2")}, cluster, DrainBook(), 5)
    f.plan({"p": pool(version="v3")}, cluster, DrainBook(), 6)  # supersedes: one in history, one under way
    (first,) = f.history
    assert f.rollout(first.id) is first and f.rollout("nope") is None
