"""RabbitMQ's `consumer_timeout`, as it bears on a draining worker's long-held deliveries.

RabbitMQ closes the channel of a consumer that keeps a delivery unacknowledged for longer than
`consumer_timeout` (and redelivers all it held): a long acks_late task on a draining worker may then
run twice. The broker's value cannot be read over AMQP, so the operator states it (`ConsumerTimeout`)
and every task a draining worker holds for long produces one `consumer-timeout-near` notice (and one
`consumer-timeout-redelivered` if another worker then receives it while the draining one still holds
it). README.md and docs/airflow.md say what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from drainctl.core.notices import Notice
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import Task, Worker

# RabbitMQ's default consumer_timeout since 3.8.15: 30 minutes.
DEFAULT_CONSUMER_TIMEOUT_S: Final = 1800.0


@dataclass(frozen=True, slots=True)
class ConsumerTimeout:
    """RabbitMQ's `consumer_timeout` as the operator configured it; warn once a delivery reaches `warn_at` of it."""

    timeout_s: float = DEFAULT_CONSUMER_TIMEOUT_S
    warn_at: float = 0.8

    @property
    def warn_after_s(self) -> float:
        return self.timeout_s * self.warn_at


_UNACKED_AS: Final = {
    # drainctl cannot see a task's acks_late: a running task is unacknowledged only with it (Airflow's default).
    TaskState.RUNNING: "running (unacknowledged until it ends if it uses acks_late)",
    TaskState.RESERVED: "prefetched, not started (unacknowledged)",
    TaskState.SCHEDULED: "held for its ETA (unacknowledged)",
}


def _near_detail(task: Task, age: float, limit: ConsumerTimeout) -> str:
    # The age is as far as drainctl saw, and RabbitMQ checks the timeout only periodically: "about".
    remaining = limit.timeout_s - age
    when = f"about {remaining:.1f}s from now" if remaining > 0 else "any moment now, if it has not already"
    return (f"task {task.uuid} ({task.name or 'name unknown'}), {_UNACKED_AS[task.state]}, was delivered "
            f"{age:.1f}s ago, {age / limit.timeout_s:.0%} of consumer_timeout {limit.timeout_s:g}s: RabbitMQ may "
            f"deliver it again {when}, so it may run twice. Raise consumer_timeout or split the task")


def near_timeout(worker: Worker, warned: set[str], limit: ConsumerTimeout, now: float) -> list[Notice]:
    """One notice per task the draining worker has held unacknowledged for `warn_at` of the timeout.

    `warned` holds the tasks already reported, and gains the ones reported now. The age counts from
    when drainctl learnt of the delivery (task-received, or the reconcile that listed it): a lower
    bound, which is why the warning comes before the timeout, not at it.
    """
    due = [t for t in worker.tasks.values()
           if now - t.received_at >= limit.warn_after_s and t.uuid not in warned]
    notices: list[Notice] = []
    for task in sorted(due, key=lambda t: (t.received_at, t.uuid)):
        warned.add(task.uuid)
        notices.append(Notice("consumer-timeout-near", worker.hostname, _near_detail(task, now - task.received_at,
                                                                                    limit)))
    return notices


def redelivered(worker: Worker, warned: set[str], seen: set[str], others: Iterable[Worker]) -> list[Notice]:
    """A warned task another worker received while the draining one still holds it: the broker delivered
    it again, most likely because the consumer_timeout closed the draining worker's channel. Said once per
    task (`seen` gains it), never hidden. (A retry keeps the task id but comes after the first run ended:
    not counted.)"""
    notices: list[Notice] = []
    host = worker.hostname
    for uuid in sorted(warned - seen):
        if uuid not in worker.tasks:
            continue
        elsewhere = sorted(w.hostname for w in others if w.hostname != host and uuid in w.tasks)
        if not elsewhere:
            continue
        seen.add(uuid)
        notices.append(Notice("consumer-timeout-redelivered", host, (
            f"task {uuid}, held by {host}, was delivered again to {', '.join(elsewhere)} (consumer_timeout?): "
            f"if it still runs on {host}, it now runs twice and meets the same timeout there")))
    return notices
