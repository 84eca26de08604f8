"""The entrypoint's readiness: ready once the worker says it consumes, never again once the drain started."""

from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.readiness import Next, Readiness, ReadinessWatch

NAME = "w1@box"
CONSUMING = [{"name": "default", "exchange": {"name": "default"}}, {"name": "high"}]


def test_it_asks_when_its_worker_is_heard_one_question_at_a_time() -> None:
    watch = ReadinessWatch(NAME)
    assert watch.heard("other@box") is Next.WAIT  # another worker's event
    assert watch.heard(NAME) is Next.ASK
    assert watch.asking
    assert watch.answered(None) is Next.WAIT  # no reply in time, and nothing heard meanwhile
    assert watch.state is Readiness.STARTING and not watch.asking
    assert watch.heard(NAME) is Next.ASK  # the next heartbeat asks again


def test_heard_while_a_question_is_out_it_asks_once_more_right_after() -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    assert watch.heard(NAME) is Next.WAIT  # its worker-online, while the first question is out
    assert watch.heard(NAME) is Next.WAIT
    assert watch.answered(None) is Next.ASK  # once, not twice
    assert watch.asking and not watch.heard_meanwhile
    assert watch.answered(None) is Next.WAIT


def test_it_becomes_ready_when_the_worker_names_a_queue_it_consumes() -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    watch.heard(NAME)
    assert watch.answered(CONSUMING) is Next.READY
    assert watch.state is Readiness.READY
    assert watch.queues == ("default", "high")
    assert watch.heard(NAME) is Next.WAIT  # ready: it never asks again
    assert watch.answered(CONSUMING) is Next.WAIT  # a late duplicate answer changes nothing


@pytest.mark.parametrize("reply", [[], "not a list", [{"no": "name"}], {"name": "default"}])
def test_an_answer_without_a_queue_is_not_ready(reply: Any) -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    assert watch.answered(reply) is Next.WAIT
    assert watch.state is Readiness.STARTING
    assert watch.heard(NAME) is Next.ASK


def test_a_lost_session_leaves_no_question_out() -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    watch.heard(NAME)
    watch.lost()
    assert not watch.asking and not watch.heard_meanwhile
    assert watch.heard(NAME) is Next.ASK  # the next session starts by asking


def test_once_stopped_it_is_never_ready_again() -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    watch.heard(NAME)
    watch.stop()  # SIGTERM while the question was out
    assert watch.answered(CONSUMING) is Next.WAIT
    assert watch.state is Readiness.STOPPED
    assert watch.heard(NAME) is Next.WAIT


def test_a_ready_worker_stops_being_ready_when_the_drain_starts() -> None:
    watch = ReadinessWatch(NAME)
    watch.heard(NAME)
    watch.answered(CONSUMING)
    watch.stop()
    assert watch.state is Readiness.STOPPED
