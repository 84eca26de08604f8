"""Workers that heartbeat but never answer remote control (`worker_enable_remote_control = False`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from drainctl.core.commands import CancelConsumers, Reconcile, StartWorker, StopWorker
from drainctl.core.drain import DrainBook, DrainPolicy, DrainRefused
from drainctl.core.members import STOP_RETRY_S
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.remote_control import MAX_UNANSWERED_KEPT, REMOTE_CONTROL_CHECK
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.snapshot import WorkerSnapshot
from drainctl.core.worker import WorkerState
from tests.core.factories import feed, worker_event
from tests.core.scenes import AFTER, A, B, deaf_worker, heartbeat

# --- the model ---------------------------------------------------------------------------------------------

def test_three_unanswered_questions_over_the_span_while_it_heartbeats_mark_it_once() -> None:
    cluster, notices = deaf_worker()
    worker = cluster.worker(A)
    assert worker is not None and worker.not_answering and worker.not_answering_since == 21
    (notice,) = notices
    assert notice.kind == "remote-control-unanswered" and "worker_enable_remote_control" in notice.detail
    assert "3 remote-control questions" in notice.detail
    # judged again on every tick: said once
    heartbeat(cluster, 30)
    assert cluster.recheck(30)[1] == []
    assert cluster.note_unanswered(A, 29, 31) == []


@pytest.mark.parametrize(("questions", "every"), [(2, 20.0), (3, 5.0)])
def test_too_few_questions_or_too_short_a_span_is_not_enough(questions: int, every: float) -> None:
    cluster, notices = deaf_worker(questions=questions, every=every)
    worker = cluster.worker(A)
    assert notices == [] and worker is not None and not worker.not_answering


def test_a_worker_without_heartbeats_after_the_question_proves_nothing() -> None:
    # -P solo busy with a long task: no heartbeat, no reply; not evidence against its remote control
    cluster = Cluster(no_remote_control_after_s=AFTER)
    feed(cluster, [worker_event("online", 1, pid=1, host=A)], 0.0)
    notices = [n for t in (1.0, 11.0, 21.0) for n in cluster.note_unanswered(A, t, t + 1)]
    worker = cluster.worker(A)
    assert notices == [] and worker is not None and worker.unanswered_proof() == []
    # heartbeats resume: the questions it was alive for now count, judged on the next tick
    heartbeat(cluster, 23)
    assert [n.kind for n in cluster.recheck(23)[1]] == ["remote-control-unanswered"]


def test_a_silent_or_offline_worker_is_not_judged() -> None:
    cluster, _ = deaf_worker(questions=2, every=20)
    cluster.tick(40)  # silent
    worker = cluster.worker(A)
    assert worker is not None and worker.state is WorkerState.SILENT
    assert cluster.note_unanswered(A, 39, 40) == []
    assert cluster.recheck(41) == ([], [])


def test_any_answer_clears_it_with_a_notice_and_resets_the_count() -> None:
    cluster, _ = deaf_worker()
    (notice,) = cluster.note_answered(A, 22)
    assert notice.kind == "remote-control-answered"
    worker = cluster.worker(A)
    assert worker is not None and not worker.not_answering and worker.unanswered == [] and worker.answered_at == 22
    assert cluster.note_answered(A, 23) == []


def test_a_reconcile_reply_is_an_answer() -> None:
    cluster, _ = deaf_worker()
    _, notices = cluster.merge(WorkerSnapshot(A, 5, (), ("q",)), 22)
    assert [n.kind for n in notices] == ["remote-control-answered"]


def test_questions_of_unknown_workers_are_ignored() -> None:
    cluster = Cluster()
    assert cluster.note_unanswered("nobody@h", 0, 1) == []
    assert cluster.note_answered("nobody@h", 1) == []


def test_replies_out_of_order_keep_the_ask_times_sorted_and_bounded() -> None:
    cluster = Cluster(no_remote_control_after_s=1000)
    feed(cluster, [worker_event("online", 1, pid=1, host=A)], 0.0)
    cluster.note_unanswered(A, 5, 6)
    cluster.note_unanswered(A, 3, 6)
    worker = cluster.worker(A)
    assert worker is not None and worker.unanswered == [3, 5]
    for t in range(10, 30):
        cluster.note_unanswered(A, t, t)
    assert len(worker.unanswered) == MAX_UNANSWERED_KEPT and worker.unanswered[0] == 3  # the span's start stays


def test_a_new_process_under_the_name_starts_with_a_clean_slate() -> None:
    cluster, _ = deaf_worker()
    feed(cluster, [worker_event("offline", 300, pid=1, host=A), worker_event("online", 1, pid=2, host=A)], 23)
    worker = cluster.worker(A)
    assert worker is not None and worker.pid == 2
    assert not worker.not_answering and worker.unanswered == [] and worker.answered_at is None


def test_recheck_asks_again_while_undecided_then_slowly() -> None:
    cluster = Cluster(no_remote_control_after_s=AFTER, reconcile_min_interval_s=30)
    _, _ = feed(cluster, [worker_event("online", 1, pid=1, host=A)], 0.0)  # asked at discovery
    check = Reconcile(A, REMOTE_CONTROL_CHECK)
    assert cluster.recheck(5) == ([], [])  # queues unknown, but asked 5 s ago
    heartbeat(cluster, 6)
    cluster.note_unanswered(A, 0, 6)
    assert cluster.recheck(6.5)[0] == []  # a third of the span has not passed
    assert cluster.recheck(7)[0] == [check]
    assert cluster.recheck(8)[0] == []
    heartbeat(cluster, 14)
    cluster.note_unanswered(A, 7, 14)
    assert cluster.recheck(14.5)[0] == [check]
    heartbeat(cluster, 21)
    cluster.note_unanswered(A, 14.5, 21)  # the third, 21 s after the first
    worker = cluster.worker(A)
    assert worker is not None and worker.not_answering
    # decided: asked every reconcile_min_interval_s, to notice remote control coming back
    assert cluster.recheck(21.5)[0] == []
    heartbeat(cluster, 44)
    assert cluster.recheck(44)[0] == []
    assert cluster.recheck(44.5)[0] == [check]


def test_recheck_leaves_alone_workers_that_answered_with_their_queues_and_asks_slowly_for_missing_queues() -> None:
    cluster = Cluster(no_remote_control_after_s=AFTER, reconcile_min_interval_s=30)
    feed(cluster, [worker_event("online", 1, pid=1, host=A), worker_event("online", 1, pid=2, host=B)], 0.0)
    cluster.merge(WorkerSnapshot(A, 5, (), ("q",)), 1)
    cluster.merge(WorkerSnapshot(B, 5, (), None), 1)  # answered, but without active_queues
    for t in range(2, 40, 2):
        heartbeat(cluster, t, A, 1)
        heartbeat(cluster, t, B, 2)
    assert cluster.recheck(29)[0] == []
    assert cluster.recheck(30)[0] == [Reconcile(B, REMOTE_CONTROL_CHECK)]


# --- drains --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_a_drain_of_a_worker_that_does_not_answer_is_refused_saying_what_to_do(force: bool) -> None:
    cluster, _ = deaf_worker()
    feed(cluster, [worker_event("online", 1, pid=2, host=B)], 21)
    cluster.set_queues(A, ("q",))  # answered once, long ago: known queues do not help
    cluster.set_queues(B, ("q",))
    with pytest.raises(DrainRefused) as info:
        DrainBook().start(cluster, A, 22, policy=DrainPolicy(), managed=False, force=force)
    reason = info.value.reason
    assert not info.value.overridable
    assert "does not answer remote control" in reason and "worker_enable_remote_control" in reason
    assert "SIGTERM" in reason and "warm shutdown" in reason


def test_unknown_queues_say_how_many_questions_went_unanswered_so_far() -> None:
    cluster, _ = deaf_worker(questions=2)
    with pytest.raises(DrainRefused, match=r"not known yet \(no active_queues reply; 2 remote-control question"):
        DrainBook().start(cluster, A, 22, policy=DrainPolicy(), managed=False)
    fresh = Cluster()
    feed(fresh, [worker_event("online", 1, pid=1, host=A)], 0)
    with pytest.raises(DrainRefused, match=r"no active_queues reply\); retry in a few seconds"):
        DrainBook().start(fresh, A, 1, policy=DrainPolicy(), managed=False)


# --- rollouts ------------------------------------------------------------------------------------------------

POOL = PoolTarget("p", ("q",), 1, cap=2, version="v1", ready_timeout_s=60)


class Pool:
    """One pool driven by hand: every worker answers, unless the test makes one deaf."""

    def __init__(self) -> None:
        self.cluster = Cluster(no_remote_control_after_s=AFTER)
        self.drains = DrainBook()
        ids = iter(range(1, 100))
        self.fleet = Fleet(new_id=lambda: f"{next(ids):02d}")
        self.pids = iter(range(10, 100))
        self.pool = POOL
        self.now = 0.0

    def plan(self, dt: float = 1.0) -> tuple[list[Any], list[Notice]]:
        self.now += dt
        return self.fleet.plan({"p": self.pool}, self.cluster, self.drains, self.now)

    def start(self, host: str, *, answers: bool = True) -> None:
        feed(self.cluster, [worker_event("online", 1, host=host, pid=next(self.pids))], self.now)
        if answers:
            self.cluster.set_queues(host, ("q",))
            self.fleet.registered(host, ["t"], self.now)

    def deafen(self, host: str) -> None:
        """Heartbeats for AFTER seconds while three questions go unanswered."""
        start = self.now
        for t in range(int(AFTER) + 2):
            heartbeat(self.cluster, start + t + 0.5, host, self.cluster.workers[host].pid or 0)
            if t % 10 == 0:
                self.cluster.note_unanswered(host, start + t, start + t + 0.5)
        self.now = start + AFTER + 2
        self.cluster.recheck(self.now)
        assert self.cluster.workers[host].not_answering


def ready_v1() -> tuple[Pool, str]:
    pool = Pool()
    commands, _ = pool.plan()
    (old,) = [c.hostname for c in commands if hasattr(c, "version")]
    pool.start(old)
    pool.plan()
    assert pool.fleet.members[old].ready_at is not None
    return pool, old


def test_a_new_worker_that_does_not_answer_fails_the_gate_and_the_rollout_aborts_saying_why() -> None:
    pool, old = ready_v1()
    # Started consuming (quiet start off): it may hold pool messages, so it is never just stopped.
    pool.pool = replace(POOL, version="v2", quiet_start=False)
    commands, _ = pool.plan()
    (new,) = [c.hostname for c in commands if hasattr(c, "version")]
    pool.start(new, answers=False)
    pool.plan()
    assert pool.fleet.members[new].ready_at is None
    pool.deafen(new)
    _, notices = pool.plan()
    (rollout,) = pool.fleet.history
    assert rollout.outcome == "failed"
    assert "does not answer remote control" in rollout.detail and "readiness gate" in rollout.detail
    assert pool.fleet.pins["p"].version == "v1"
    # the failed worker cannot be drained: blocked, said once, never stopped; the old one keeps serving
    assert [n.kind for n in notices if n.kind == "rollout-blocked"] == ["rollout-blocked"]
    assert "SIGTERM" in pool.fleet.blocked[new]
    commands, notices = pool.plan()
    assert not [n for n in notices if n.kind == "rollout-blocked"]
    assert not any(isinstance(c, CancelConsumers) for c in commands)
    assert old not in pool.drains.active and new not in pool.drains.active
    # its operator stops it: it leaves the pool and the report
    pool.fleet.exited(new, 0, pool.now)
    assert new not in pool.fleet.blocked


def test_a_quiet_new_worker_that_does_not_answer_is_stopped_it_holds_no_pool_message() -> None:
    pool, old = ready_v1()
    pool.pool = replace(POOL, version="v2")
    commands, _ = pool.plan()
    (start,) = [c for c in commands if isinstance(c, StartWorker)]
    assert start.quiet
    new = start.hostname
    pool.start(new, answers=False)
    pool.plan()
    pool.deafen(new)
    commands, notices = pool.plan()
    (rollout,) = pool.fleet.history
    assert rollout.outcome == "failed" and "does not answer remote control" in rollout.detail
    assert StopWorker(new, POOL.drain_policy.stop_timeout_s) in commands
    assert not [n for n in notices if n.kind == "rollout-blocked"] and new not in pool.drains.active
    # asked once per STOP_RETRY_S, not on every plan
    commands, _ = pool.plan()
    assert not any(isinstance(c, StopWorker) for c in commands)
    commands, _ = pool.plan(dt=STOP_RETRY_S)
    assert StopWorker(new, POOL.drain_policy.stop_timeout_s) in commands
    assert old not in pool.drains.active


def test_an_old_worker_that_stops_answering_is_left_running_and_reported_blocked() -> None:
    pool, old = ready_v1()
    pool.deafen(old)
    pool.pool = replace(POOL, version="v2")
    commands, _ = pool.plan()
    (new,) = [c.hostname for c in commands if hasattr(c, "version")]
    pool.start(new)
    commands, notices = pool.plan()
    assert pool.fleet.members[new].ready_at is not None
    assert not any(isinstance(c, CancelConsumers) for c in commands)
    (blocked,) = [n for n in notices if n.kind == "rollout-blocked"]
    assert blocked.hostname == old and "does not answer remote control" in blocked.detail
    assert pool.fleet.rollouts["p"].outcome is None  # still under way: it waits for the operator
    # remote control comes back: unblocked, drained
    pool.cluster.note_answered(old, pool.now)
    commands, _ = pool.plan()
    assert CancelConsumers(old, ("q",)) in commands
    assert old not in pool.fleet.blocked


def test_old_workers_that_can_be_drained_go_first() -> None:
    pool = Pool()
    pool.pool = replace(POOL, replicas=2, cap=3)
    commands, _ = pool.plan()
    olds = sorted(c.hostname for c in commands if hasattr(c, "version"))
    for host in olds:
        pool.start(host)
    pool.plan()
    pool.deafen(olds[0])
    pool.pool = replace(pool.pool, version="v2")
    commands, _ = pool.plan()
    (new,) = [c.hostname for c in commands if hasattr(c, "version")]
    pool.start(new)
    commands, notices = pool.plan()
    assert CancelConsumers(olds[1], ("q",)) in commands
    assert not [n for n in notices if n.kind == "rollout-blocked"]


def test_an_adopted_old_worker_that_never_answered_is_reported_blocked() -> None:
    pool = Pool()
    pool.fleet.adopt("p-v1-aa@localhost", "p", "v1", 0)
    pool.start("p-v1-aa@localhost", answers=False)
    pool.deafen("p-v1-aa@localhost")
    pool.plan()
    assert pool.fleet.members["p-v1-aa@localhost"].failed is None  # adopted: never failed by the gate
    pool.pool = replace(POOL, version="v2")
    _, notices = pool.plan()
    assert [n.hostname for n in notices if n.kind == "rollout-blocked"] == ["p-v1-aa@localhost"]


def test_the_readiness_timeout_says_how_many_questions_went_unanswered() -> None:
    pool, _ = ready_v1()
    pool.pool = replace(POOL, version="v2")
    commands, _ = pool.plan()
    (new,) = [c.hostname for c in commands if hasattr(c, "version")]
    pool.start(new, answers=False)
    pool.cluster.note_unanswered(new, pool.now, pool.now)
    pool.plan(dt=61)
    (rollout,) = pool.fleet.history
    assert "remote-control questions unanswered: 1" in rollout.detail
