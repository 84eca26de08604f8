"""Remote control: does a worker answer the questions drainctl asks it over its pidbox?

A worker that keeps heartbeating while several questions in a row (reconcile, active_queues,
enable_events, registered, cancel_consumer) go unanswered over a span of time does not answer remote
control (`worker_enable_remote_control = False`, or a pidbox consumer that died). drainctl cannot stop
such a worker consuming, so it refuses to drain it and says so once. Any answer clears the verdict.
"""

from __future__ import annotations

import bisect
from typing import Final

from drainctl.core.notices import Notice
from drainctl.core.worker import Worker, WorkerState

# Unanswered remote-control questions it takes (at least, and over `no_remote_control_after_s`)
# to call a heartbeating worker one that does not answer remote control.
UNANSWERED_QUESTIONS: Final = 3
# Ask times kept per worker: the first (where the span starts) and the latest ones.
MAX_UNANSWERED_KEPT: Final = 10
REMOTE_CONTROL_CHECK: Final = "remote-control-check"


def answered(worker: Worker, now: float) -> list[Notice]:
    """The worker answered a question: it answers remote control (said if it had been judged not to)."""
    worker.unanswered.clear()
    worker.answered_at = now
    if worker.not_answering_since is None:
        return []
    worker.not_answering_since = None
    return [Notice("remote-control-answered", worker.hostname, "it answers remote-control commands again")]


def unanswered(worker: Worker, asked_at: float) -> None:
    """A question asked at `asked_at` got no reply in time."""
    # Replies to questions asked at once arrive in any order; keep the list sorted.
    bisect.insort(worker.unanswered, asked_at)
    if len(worker.unanswered) > MAX_UNANSWERED_KEPT:
        del worker.unanswered[1]  # the first stays: the span starts there


def judge(worker: Worker, now: float, after_s: float) -> Notice | None:
    """Call an online worker one that does not answer remote control, once the proof is in (said once)."""
    if worker.not_answering_since is not None or worker.state is not WorkerState.ONLINE:
        return None
    proof = worker.unanswered_proof()
    if len(proof) < UNANSWERED_QUESTIONS:
        return None
    span = now - proof[0]
    if span < after_s:
        return None
    worker.not_answering_since = now
    return Notice("remote-control-unanswered", worker.hostname, (
        f"{len(proof)} remote-control questions went unanswered over {span:.0f}s while it heartbeats: "
        "is worker_enable_remote_control off? drainctl cannot drain it"))


def ask_again_after(worker: Worker, after_s: float, min_interval_s: float) -> float | None:
    """How long after the last question to ask the worker again; None: no need to.

    A worker whose last question went unanswered is asked again at a third of `after_s` while
    undecided; once decided (or when it answers but its queues are still unknown), every
    `min_interval_s`, so a worker whose remote control comes back is noticed.
    """
    if worker.state is not WorkerState.ONLINE or (worker.queues is not None and not worker.unanswered):
        return None
    interval = after_s / UNANSWERED_QUESTIONS
    if worker.not_answering_since is not None or not worker.unanswered:
        # Decided, or it answers but without its queues: no hurry.
        interval = max(interval, min_interval_s)
    return interval
