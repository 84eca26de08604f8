"""Scenes the drain, remote-control and scaling tests share: a few workers on their queues, a drain brought to its
waiting phase, a worker that heartbeats but never answers remote control, the tasks a worker holds and how long
tasks ran before."""

from __future__ import annotations

from typing import Any

from drainctl.core.drain import DrainBook, DrainPolicy, Phase
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from tests.core.factories import feed, task_event, worker_event

A, B, C = "a@h", "b@h", "c@h"
POLICY = DrainPolicy(retire_grace_s=10, retry_s=5)
# no_remote_control_after_s of the deaf worker's cluster.
AFTER = 20.0


def fleet(*workers: tuple[str, tuple[str, ...]]) -> Cluster:
    cluster = Cluster()
    for pid, (host, queues) in enumerate(workers, start=1):
        feed(cluster, [worker_event("online", 1, host=host, pid=pid)])
        cluster.set_queues(host, queues)
    return cluster


def started(cluster: Cluster, book: DrainBook, host: str = A, **kw: Any) -> list[Any]:
    _, commands = book.start(cluster, host, 0.0, policy=kw.pop("policy", POLICY), managed=kw.pop("managed", True),
                             **kw)
    return commands


def drained_to_waiting(cluster: Cluster, book: DrainBook, *, managed: bool = True) -> None:
    started(cluster, book, managed=managed)
    assert book.cancel_replied(A, {"q": True}, 1) == []
    assert book.get(A).phase is Phase.WAITING  # type: ignore[union-attr]


def heartbeat(cluster: Cluster, now: float, host: str = A, pid: int = 1) -> None:
    feed(cluster, [worker_event("heartbeat", int(now * 10) + 2, host=host, pid=pid)], now)


def deaf_worker(*, questions: int = 3, every: float = 10.0, host: str = A) -> tuple[Cluster, list[Notice]]:
    """A worker that heartbeats every second and leaves `questions` questions unanswered, `every` s apart."""
    cluster = Cluster(no_remote_control_after_s=AFTER)
    feed(cluster, [worker_event("online", 1, host=host, pid=1)], 0.0)
    notices: list[Notice] = []
    now = 0.0
    for index in range(questions):
        asked = index * every
        while now < asked + 1:
            now += 1
            heartbeat(cluster, now, host)
        notices += cluster.note_unanswered(host, asked, now)
    return cluster, notices


def learnt(cluster: Cluster, name: str | None, *runtimes: float) -> None:
    """The model has seen tasks of `name` run these many seconds."""
    for runtime in runtimes:
        cluster.runtimes.record(name, runtime)


def holding(
    cluster: Cluster, host: str, uuid: str, *, name: str = "app.sleep", started_at: float | None = None,
    received_at: float = 0.0, eta: str | None = None,
) -> None:
    """`host` (its current process) received task `uuid` at `received_at` (held for `eta` if given) and, if
    `started_at` is given, started it then."""
    worker = cluster.worker(host)
    pid = worker.pid if worker is not None and worker.pid is not None else 1
    feed(cluster, [task_event("received", uuid, 10, host=host, pid=pid, name=name, eta=eta)], received_at)
    if started_at is not None:
        feed(cluster, [task_event("started", uuid, 11, host=host, pid=pid)], started_at)
