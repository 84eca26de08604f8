"""The drain refusal rules: why a drain is not started, whether --force overrides it, whether it is temporary."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drainctl.core.commands import CancelConsumers
from drainctl.core.drain import DrainBook, DrainPolicy, DrainRefused
from drainctl.core.model import Cluster
from tests.core.factories import feed, worker_event
from tests.core.scenes import deaf_worker

A, B = "a@h", "b@h"
POLICY = DrainPolicy(retire_grace_s=10, retry_s=5)


def fleet(*workers: tuple[str, tuple[str, ...] | None], cluster: Cluster | None = None) -> Cluster:
    """Workers online (pids from 1); None: its queues not answered yet."""
    cluster = cluster if cluster is not None else Cluster()
    for pid, (host, queues) in enumerate(workers, start=1):
        feed(cluster, [worker_event("online", 1, host=host, pid=pid)])
        if queues is not None:
            cluster.set_queues(host, queues)
    return cluster


PIDS = {A: 1, B: 2}  # as fleet((A, ...), (B, ...)) numbers them


def _silent(host: str, book: DrainBook) -> Cluster:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    other = B if host == A else A
    feed(cluster, [worker_event("heartbeat", 2, host=other, pid=PIDS[other])], now=100)
    cluster.tick(100)  # `host` last heard at 0: silent
    return cluster


def _collision(host: str, book: DrainBook) -> Cluster:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [worker_event("heartbeat", 2, host=host, pid=77)])  # a second live process under that name
    return cluster


def _offline(book: DrainBook) -> Cluster:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    feed(cluster, [worker_event("offline", 2, host=A, pid=PIDS[A])])
    return cluster


def _other_draining(book: DrainBook) -> Cluster:
    cluster = fleet((A, ("q",)), (B, ("q",)))
    book.start(cluster, B, 0.0, policy=POLICY, managed=True)
    return cluster


def _other_deaf_queues_unknown(book: DrainBook) -> Cluster:
    cluster, _ = deaf_worker(host=B)  # never answered: queues unknown, and it never will say
    return fleet((A, ("q",)), cluster=cluster)


def _other_silent_queues_unknown(book: DrainBook) -> Cluster:
    cluster = fleet((A, ("q",)), (B, None))
    feed(cluster, [worker_event("heartbeat", 2, host=A, pid=PIDS[A])], now=100)
    cluster.tick(100)  # B last heard at 0: silent
    return cluster


SETUPS: dict[str, Callable[[DrainBook], Cluster]] = {
    "alone": lambda book: fleet((A, ("q",))),
    "unknown": lambda book: fleet((A, ("q",)), (B, ("q",))),
    "queues-unknown": lambda book: fleet((B, ("q",)), (A, None)),
    "collision": lambda book: _collision(A, book),
    "offline": _offline,
    "not-answering": lambda book: fleet((B, ("q",)), cluster=deaf_worker()[0]),
    "silent": lambda book: _silent(A, book),
    "other-silent": lambda book: _silent(B, book),
    "other-draining": _other_draining,
    "other-collision": lambda book: _collision(B, book),
    "other-queues-unknown": lambda book: fleet((A, ("q",)), (B, None)),
    "others-queues-unknown": lambda book: fleet((A, ("q",)), (B, None), ("c@h", None)),
    "other-deaf-queues-unknown": _other_deaf_queues_unknown,
    "other-silent-queues-unknown": _other_silent_queues_unknown,
}


@pytest.mark.parametrize(
    ("setup", "host", "force", "fragment", "overridable", "temporary"),
    [
        # permanent: they stay until someone changes something
        ("alone", A, False, "queue 'q' would have no consumer: 'a@h' is the only online worker", True, False),
        ("collision", A, False, "used by two live processes", False, False),
        ("collision", A, True, "used by two live processes", False, False),  # --force never overrides a collision
        ("offline", A, False, "already shutting down", False, False),
        ("not-answering", A, False, "does not answer remote control", False, False),
        ("not-answering", A, True, "does not answer remote control", False, False),
        ("silent", A, False, "is silent", True, False),
        ("other-silent", A, False, "would have no consumer", True, False),
        ("other-draining", A, False, "would have no consumer", True, False),
        ("other-collision", A, False, "would have no consumer", True, False),
        # the other worker's queues are unknown, but it will never say (deaf), or is not online
        ("other-deaf-queues-unknown", A, False, "Start another worker on it first", True, False),
        ("other-silent-queues-unknown", A, False, "Start another worker on it first", True, False),
        # temporary: only something not known yet
        ("unknown", "nobody@h", False, "unknown worker 'nobody@h': drainctl has not seen it (yet", False, True),
        ("queues-unknown", A, False, "queues of 'a@h' are not known yet", False, True),
        ("queues-unknown", A, True, "queues of 'a@h' are not known yet", False, True),
        ("other-queues-unknown", A, False, "as far as drainctl knows yet: the queues of 'b@h' are not known yet",
         True, True),
        ("others-queues-unknown", A, False, "the queues of 'b@h', 'c@h' are not known yet", True, True),
    ],
)
def test_refusals(setup: str, host: str, force: bool, fragment: str, overridable: bool, temporary: bool) -> None:
    book = DrainBook()
    cluster = SETUPS[setup](book)
    with pytest.raises(DrainRefused) as info:
        book.start(cluster, host, 0.0, policy=POLICY, managed=True, force=force)
    assert fragment in info.value.reason
    assert (info.value.overridable, info.value.temporary) == (overridable, temporary)
    assert info.value.hostname == host


@pytest.mark.parametrize(
    ("b_consumes", "accepted"),
    [
        (("q",), True),  # B turns out to consume q: the retry is accepted
        (("r",), False),  # it does not: A really is q's last consumer, now a permanent refusal
    ],
)
def test_a_refusal_for_another_workers_unknown_queues_is_settled_by_its_answer(
    b_consumes: tuple[str, ...], accepted: bool
) -> None:
    cluster = fleet((A, ("q",)), (B, None))
    book = DrainBook()
    with pytest.raises(DrainRefused) as first:
        book.start(cluster, A, 0.0, policy=POLICY, managed=True)
    assert first.value.temporary
    cluster.set_queues(B, b_consumes)
    if accepted:
        assert book.start(cluster, A, 1.0, policy=POLICY, managed=True)[1] == [CancelConsumers(A, ("q",))]
    else:
        with pytest.raises(DrainRefused) as second:
            book.start(cluster, A, 1.0, policy=POLICY, managed=True)
        assert not second.value.temporary and "Start another worker on it first" in second.value.reason


def test_a_worker_not_known_yet_is_drained_once_it_is() -> None:
    cluster = Cluster()
    feed(cluster, [worker_event("online", 1, host=B, pid=PIDS[B])])
    cluster.set_queues(B, ("q",))
    book = DrainBook()
    with pytest.raises(DrainRefused) as unknown:
        book.start(cluster, A, 0.0, policy=POLICY, managed=True)
    feed(cluster, [worker_event("online", 1, host=A, pid=PIDS[A])])  # known now; its queues not yet
    with pytest.raises(DrainRefused) as no_queues:
        book.start(cluster, A, 1.0, policy=POLICY, managed=True)
    cluster.set_queues(A, ("q",))
    assert [unknown.value.temporary, no_queues.value.temporary] == [True, True]
    assert book.start(cluster, A, 2.0, policy=POLICY, managed=True)[1] == [CancelConsumers(A, ("q",))]
