from __future__ import annotations

import orjson
import pytest

from drainctl.core.events import (
    MAX_MESSAGE_BYTES,
    MalformedEventError,
    TaskEvent,
    WorkerEvent,
    decode_message,
    parse_event,
)
from tests.core.factories import task_event, worker_event


def test_heartbeat_parses_every_field() -> None:
    ev = parse_event(worker_event("heartbeat", 7, active=3, processed=12))
    assert ev == WorkerEvent(
        type="worker-heartbeat", hostname="w1@host", pid=100, clock=7, timestamp=1_700_000_007.0,
        freq=2.0, active=3, processed=12, sw_ver="5.7.0", sw_ident="py-celery", loadavg=(0.1, 0.2, 0.3),
    )


def test_heartbeat_without_active_means_unknown_not_zero() -> None:
    raw = worker_event("heartbeat", 7)
    del raw["active"]
    ev = parse_event(raw)
    assert isinstance(ev, WorkerEvent)
    assert ev.active is None


def test_task_received_keeps_name_eta_retries() -> None:
    ev = parse_event(task_event("received", "u1", 3, eta="2030-01-01T00:00:00+00:00", retries=2))
    assert isinstance(ev, TaskEvent)
    assert (ev.uuid, ev.name, ev.eta, ev.retries) == ("u1", "app.sleep", "2030-01-01T00:00:00+00:00", 2)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "not-an-object"),
        ("x", "not-an-object"),
        ({"hostname": "a@b"}, "missing-field"),
        ({"type": 3, "hostname": "a@b"}, "missing-field"),
        ({"type": "worker-heartbeat"}, "missing-field"),
        ({"type": "worker-heartbeat", "hostname": ""}, "missing-field"),
        ({"type": "worker-heartbeat", "hostname": 5}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "clock": "1"}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "clock": True}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "active": 1.5}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "freq": 0}, "wrong-value"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "loadavg": "high"}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "loadavg": ["x"]}, "wrong-type"),
        ({"type": "worker-heartbeat", "hostname": "a@b", "timestamp": "now"}, "wrong-type"),
        ({"type": "task-started", "hostname": "a@b"}, "missing-field"),
        ({"type": "task-started", "hostname": "a@b", "uuid": 12}, "wrong-type"),
        ({"type": "task-started", "hostname": "a" * 600, "uuid": "u"}, "oversized-field"),
        ({"type": "task-exploded", "hostname": "a@b"}, "unknown-type"),
    ],
)
def test_malformed_events_name_the_problem(raw: object, reason: str) -> None:
    with pytest.raises(MalformedEventError) as info:
        parse_event(raw)
    assert info.value.reason == reason


def test_task_multi_list_yields_each_event_and_rejects_bad_ones_alone() -> None:
    body = orjson.dumps([task_event("received", "u1", 1), {"type": "nope", "hostname": "x@y"},
                         task_event("started", "u1", 2)])
    decoded = decode_message(body)
    assert [e.type for e in decoded.events] == ["task-received", "task-started"]
    assert [r.reason for r in decoded.rejections] == ["unknown-type"]


def test_single_object_body() -> None:
    decoded = decode_message(orjson.dumps(worker_event("online", 1)))
    assert [e.type for e in decoded.events] == ["worker-online"]
    assert decoded.rejections == ()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"\xff\xfe not json", "application/json", "invalid-json"),
        (b"{", "application/json", "invalid-json"),
        (b'{"type": "worker-online"}', "application/x-python-serialize", "wrong-content-type"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "application/json", "oversized-message"),
        (orjson.dumps([1] * 10_001), "application/json", "too-many-events"),
    ],
)
def test_undecodable_messages_are_rejected_never_raised(body: bytes, content_type: str, reason: str) -> None:
    decoded = decode_message(body, content_type)
    assert decoded.events == ()
    assert [r.reason for r in decoded.rejections] == [reason]


def test_content_type_parameters_and_missing_type_are_accepted() -> None:
    body = orjson.dumps(worker_event("online", 1))
    assert len(decode_message(body, "application/json; charset=utf-8").events) == 1
    assert len(decode_message(body, None).events) == 1
    assert len(decode_message(body, "").events) == 1
