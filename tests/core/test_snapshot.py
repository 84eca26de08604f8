"""Celery's reconcile replies turned into one snapshot, with what was unusable in them."""

from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.snapshot import build_snapshot
from tests.core.factories import ETA, HOST


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


def test_unusable_entries_are_left_out_and_said() -> None:
    snapshot = build_snapshot(HOST, {"active": [], "reserved": ["x"], "scheduled": [{"eta": ETA, "request": {"name": "t"}}]})
    assert snapshot.tasks == ()
    assert snapshot.problems == ("clock: no usable reply", "scheduled: entry without an 'id'",
                                 "reserved: entry is not an object", "active_queues: no usable reply")
