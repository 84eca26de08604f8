"""Property tests: the decoder, the model and the snapshot merge never crash on any input."""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from drainctl.core.events import MalformedEventError, decode_message, parse_event
from drainctl.core.model import Cluster
from drainctl.core.snapshot import build_snapshot

# CI runs 10k generated inputs; `DRAINCTL_FUZZ_SCALE=10` (the long run, 100k) or more for a soak.
SCALE = int(os.environ.get("DRAINCTL_FUZZ_SCALE", "1"))

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
TYPES = ["worker-online", "worker-heartbeat", "worker-offline", "task-received", "task-started",
         "task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected", "task-sent"]
events = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES), "hostname": st.sampled_from(["a@h", "b@h"])},
    optional={
        "uuid": st.sampled_from(["t1", "t2", "t3"]),
        "pid": st.integers(min_value=1, max_value=4),
        "clock": st.integers(min_value=0, max_value=50),
        "timestamp": st.floats(min_value=0, max_value=2e9),
        "active": st.integers(min_value=0, max_value=5),
        "freq": st.sampled_from([2.0, 5.0]),
        "eta": st.none() | st.just("2030-01-01T00:00:00+00:00"),
        "retries": st.integers(min_value=0, max_value=3),
    },
)


@settings(max_examples=3000 * SCALE, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["application/json", "text/plain", None, ""]))
def test_decoder_never_raises_on_bytes(body: bytes, content_type: str | None) -> None:
    decoded = decode_message(body, content_type)
    assert len(decoded.events) + len(decoded.rejections) >= 1 or body.strip() in (b"[]",)


@settings(max_examples=3000 * SCALE, deadline=None)
@given(json_values)
def test_decoder_rejects_any_json_value_cleanly(value: Any) -> None:
    decoded = decode_message(orjson.dumps(value))
    for rejection in decoded.rejections:
        assert rejection.reason and len(rejection.detail) < 300


@settings(max_examples=2000 * SCALE, deadline=None)
@given(st.lists(events, max_size=40), st.lists(st.floats(min_value=0, max_value=100), max_size=5))
def test_model_stays_consistent_under_any_event_order(raws: list[dict[str, Any]], ticks: list[float]) -> None:
    cluster = Cluster(silent_after_s=5, offline_retention_s=1)
    now = 0.0
    for raw in raws:
        try:
            event = parse_event(raw)
        except MalformedEventError:
            continue
        now += 0.5
        cluster.apply(event, now)
    for tick in sorted(ticks):
        cluster.tick(now + tick)
    for worker in cluster:
        assert all(task.uuid == uuid for uuid, task in worker.tasks.items())
    assert cluster.in_flight() == sum(len(w.tasks) for w in cluster)


@settings(max_examples=2000 * SCALE, deadline=None)
@given(st.dictionaries(st.sampled_from(["clock", "active", "reserved", "scheduled", "active_queues"]),
                       json_values, max_size=5))
def test_snapshot_merge_accepts_any_reply(replies: dict[str, Any]) -> None:
    cluster = Cluster()
    snapshot = build_snapshot("a@h", replies)
    cluster.merge(snapshot, 1.0)
    worker = cluster.worker("a@h")
    assert worker is not None
