"""A deterministic, lazily generated stream of Celery event messages in Celery's own wire format.

Shared by `ingest.py` (which materialises it once and publishes it) and `memory.py` (which feeds it
straight into the pure core, one message at a time).

What a real Celery 5.x prefork worker sends (celery/events/dispatcher.py, worker/strategy.py,
worker/request.py, worker/heartbeat.py):

- task events are buffered per worker and flushed as one JSON *list* under routing key
  ``task.multi``; here a worker flushes after 1..``max_batch`` events;
- ``worker-heartbeat`` is one JSON object under ``worker.heartbeat``, every ``freq`` seconds per
  worker (staggered), with ``active``/``processed``/``loadavg`` and the software fields;
- every event carries ``hostname``, ``utcoffset``, ``pid``, ``clock`` (one Lamport clock per worker
  process, shared by heartbeats and task events, so a buffered task event can carry a lower clock
  than a heartbeat published before it), ``timestamp`` and ``type``;
- each task goes task-received -> task-started -> task-succeeded on one worker.

Bodies are encoded like kombu's json serializer (stdlib ``json.dumps``, default separators, UTF-8).
Properties for publishing: content_type application/json, content_encoding utf-8, delivery_mode 1,
priority 0 and the header ``hostname`` (what kombu/Celery set).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TASK_NAMES = (
    "shop.tasks.process_order",
    "shop.tasks.send_receipt",
    "shop.tasks.resize_image",
    "billing.tasks.charge_card",
    "billing.tasks.refund",
    "reports.tasks.build_daily_report",
    "search.tasks.reindex_document",
    "mail.tasks.deliver",
)
SW_INFO = {"sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux"}


@dataclass(frozen=True, slots=True)
class WireMessage:
    routing_key: str
    hostname: str
    body: bytes
    events: int


@dataclass(slots=True)
class _Task:
    uuid: str
    name: str
    started: bool = False
    started_at: float = 0.0


@dataclass(slots=True)
class _Worker:
    hostname: str
    pid: int
    clock: int = 0
    processed: int = 0
    running: int = 0
    flush_at: int = 1
    buffer: list[dict[str, Any]] = field(default_factory=list)
    inflight: list[_Task] = field(default_factory=list)


@dataclass(slots=True)
class StreamStats:
    messages: int = 0
    events: int = 0
    bytes: int = 0
    task_messages: int = 0
    heartbeats: int = 0
    tasks: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class CeleryEventStream:
    """Iterate to get `WireMessage`s. Stops once `target_events` events were generated *or* `max_tasks`
    tasks were received (whichever is given / comes first), then finishes every in-flight task and
    flushes every buffer, so the stream ends with nothing in flight."""

    def __init__(
        self,
        *,
        workers: int = 50,
        target_events: int | None = 300_000,
        max_tasks: int | None = None,
        seed: int = 1,
        max_batch: int = 3,
        heartbeat_freq: float = 2.0,
        task_events_per_heartbeat: float = 8.0,
        inflight_limit: int = 8,
        start: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z: fixed, so the bytes are deterministic
    ) -> None:
        if target_events is None and max_tasks is None:
            raise ValueError("give target_events or max_tasks")
        self.workers = workers
        self.target_events = target_events
        self.max_tasks = max_tasks
        self.seed = seed
        self.max_batch = max_batch
        self.heartbeat_freq = heartbeat_freq
        self.task_events_per_heartbeat = task_events_per_heartbeat
        self.inflight_limit = inflight_limit
        self.start = start
        self.stats = StreamStats()
        # Simulated time of the message last yielded (a broker-less consumer can use it as its clock).
        self.now = start

    # ---------------------------------------------------------------- encoding
    def _emit(self, routing_key: str, hostname: str, payload: Any, events: int) -> WireMessage:
        body = json.dumps(payload).encode("utf-8")
        st = self.stats
        st.messages += 1
        st.events += events
        st.bytes += len(body)
        if routing_key == "task.multi":
            st.task_messages += 1
        else:
            st.heartbeats += 1
        return WireMessage(routing_key, hostname, body, events)

    def __iter__(self) -> Iterator[WireMessage]:
        rng = random.Random(self.seed)
        n_workers = self.workers
        workers = [
            _Worker(hostname=f"w{i:02d}@benchhost", pid=1000 + 7 * i, flush_at=rng.randint(1, self.max_batch))
            for i in range(n_workers)
        ]
        by_type = self.stats.by_type
        hb_step = self.heartbeat_freq / n_workers  # heartbeats are staggered evenly over the workers
        # task events per simulated second, so that heartbeats are 1/(1+ratio) of all events
        dt = hb_step / self.task_events_per_heartbeat
        t = self.start
        next_hb = self.start + hb_step / 2
        hb_index = 0
        generated = 0
        received = 0
        names = TASK_NAMES

        def task_event(w: _Worker, etype: str, fields: dict[str, Any], now: float) -> None:
            nonlocal generated
            w.clock += 1
            event = {"hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock, **fields,
                     "timestamp": now, "type": etype}
            w.buffer.append(event)
            by_type[etype] = by_type.get(etype, 0) + 1
            generated += 1

        def advance(w: _Worker, index: int, now: float) -> None:
            task = w.inflight[index]
            if not task.started:
                task.started = True
                task.started_at = now
                w.running += 1
                task_event(w, "task-started", {"uuid": task.uuid}, now)
            else:
                w.inflight[index] = w.inflight[-1]
                w.inflight.pop()
                w.running -= 1
                w.processed += 1
                runtime = round(now - task.started_at, 6) or 0.000731
                task_event(w, "task-succeeded", {"uuid": task.uuid, "result": "'ok'", "runtime": runtime}, now)

        def receive(w: _Worker, now: float) -> None:
            nonlocal received
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            name = names[rng.randrange(len(names))]
            w.inflight.append(_Task(task_id, name))
            received += 1
            task_event(w, "task-received", {
                "uuid": task_id, "name": name,
                "args": f"({rng.randrange(100_000)}, '{name.rsplit('.', 1)[-1]}')",
                "kwargs": f"{{'priority': {rng.randrange(10)}}}",
                "root_id": task_id, "parent_id": None, "retries": 0, "eta": None, "expires": None,
            }, now)

        def flush(w: _Worker) -> WireMessage:
            batch, w.buffer = w.buffer, []
            w.flush_at = rng.randint(1, self.max_batch)
            return self._emit("task.multi", w.hostname, batch, len(batch))

        def done() -> bool:
            if self.target_events is not None and generated >= self.target_events:
                return True
            return self.max_tasks is not None and received >= self.max_tasks

        while not done():
            t += dt
            while next_hb <= t:
                w = workers[hb_index % n_workers]
                hb_index += 1
                self.now = next_hb
                w.clock += 1
                generated += 1
                by_type["worker-heartbeat"] = by_type.get("worker-heartbeat", 0) + 1
                loadavg = [round(rng.uniform(0.1, 2.0), 2) for _ in range(3)]
                yield self._emit("worker.heartbeat", w.hostname, {
                    "hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock,
                    "freq": self.heartbeat_freq, "active": w.running, "processed": w.processed,
                    "loadavg": loadavg, **SW_INFO, "timestamp": next_hb, "type": "worker-heartbeat",
                }, 1)
                next_hb += hb_step
            self.now = t
            w = workers[rng.randrange(n_workers)]
            can_receive = len(w.inflight) < self.inflight_limit and (
                self.max_tasks is None or received < self.max_tasks)
            if can_receive and (not w.inflight or rng.random() < 1 / 3):
                receive(w, t)
            elif w.inflight:
                advance(w, rng.randrange(len(w.inflight)), t)
            else:
                continue
            if len(w.buffer) >= w.flush_at:
                yield flush(w)
        # Finish every task in flight, then flush what is still buffered.
        for w in workers:
            while w.inflight:
                t += dt
                self.now = t
                advance(w, 0, t)
                if len(w.buffer) >= w.flush_at:
                    yield flush(w)
            if w.buffer:
                yield flush(w)
        self.stats.tasks = received
