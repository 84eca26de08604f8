"""A live fleet of simulated Celery workers, paced in real time, published with py-amqp (`fleet.py`'s load).

Each simulated worker behaves on the wire as a Celery 5.x prefork worker does (see celery_wire.py for the
format): a `worker-heartbeat` every `freq` seconds (staggered over the fleet), and task events buffered per
worker and published as one JSON list under `task.multi` once per loop iteration (here: once per tick),
with one Lamport clock per worker shared by heartbeats and task events. The heartbeat's `active` is the
worker's running count, and the worker's task buffer is flushed before its heartbeat, as Celery's event
loop does, so the two agree.

Tasks arrive at `rate` per second on workers picked at random: `task-received`, then `task-started` (in
the same message for half of them, as when the pool takes the task in the same loop iteration; in the next
tick otherwise), then after an exponentially distributed runtime `task-succeeded` or, for `fail_ratio` of
them, `task-failed`. Every event's `timestamp` is the wall time at which its message is built, right before
it is published, so `applied - timestamp` in the controller is broker + controller time.

Counts are kept per wall-clock second (`int(time.time())`), so the parent can take the rate over exactly
its measurement window.
"""

from __future__ import annotations

import heapq
import json
import random
import signal
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from celery_wire import SW_INFO, TASK_NAMES

EXCHANGE = "celeryev"
STARTED = 0
ENDED = 1


@dataclass(slots=True)
class SimWorker:
    hostname: str
    pid: int
    clock: int
    running: int = 0
    processed: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Counts:
    """Per wall-clock second: what was published."""

    tasks: dict[int, int] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)
    messages: dict[int, int] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)

    def add(self, second: int, events: int, nbytes: int) -> None:
        self.events[second] = self.events.get(second, 0) + events
        self.messages[second] = self.messages.get(second, 0) + 1
        self.bytes[second] = self.bytes.get(second, 0) + nbytes


class Fleet:
    """The simulated workers of one publisher process and the events they owe, on a clock."""

    def __init__(self, first: int, count: int, total: int, rate: float, *, seed: int, freq: float = 2.0,
                 task_mean_s: float = 0.25, fail_ratio: float = 0.05, publish: Any = None) -> None:
        self.rng = random.Random(seed)
        self.workers = [SimWorker(f"celery@sim{i:04d}", 100_000 + i, self.rng.randrange(1_000, 100_000))
                        for i in range(first, first + count)]
        self.rate = rate
        self.freq = freq
        self.task_mean_s = task_mean_s
        self.fail_ratio = fail_ratio
        self.publish = publish  # (routing_key, hostname, body bytes, events) -> None
        self.pending: list[tuple[float, int, int, int, str, float]] = []  # (due, seq, kind, worker, uuid, started)
        self.heartbeats: list[tuple[float, int]] = []
        self.seq = 0
        self.counts = Counts()
        self.carry = 0.0
        self.touched: set[int] = set()
        self.first = first
        self.total = total

    def start(self, now: float, ramp_s: float = 0.0) -> None:
        """Worker i of the whole fleet joins (its first heartbeat) at now + i/total * max(ramp_s, freq): the
        fleet grows evenly over the ramp, and tasks go to the workers that have joined."""
        spread = max(ramp_s, self.freq)
        for index, _ in enumerate(self.workers):
            heapq.heappush(self.heartbeats, (now + (self.first + index) / self.total * spread, index))
        self.joined: list[int] = []
        self.seen = [False] * len(self.workers)
        self.last = now

    def _event(self, worker: SimWorker, etype: str, fields: dict[str, Any]) -> None:
        worker.clock += 1
        worker.buffer.append({"hostname": worker.hostname, "utcoffset": 0, "pid": worker.pid,
                              "clock": worker.clock, **fields, "timestamp": 0.0, "type": etype})

    def _receive(self, index: int, now: float) -> None:
        worker = self.workers[index]
        rng = self.rng
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = TASK_NAMES[rng.randrange(len(TASK_NAMES))]
        self._event(worker, "task-received", {
            "uuid": task_id, "name": name, "args": f"({rng.randrange(100_000)}, '{name.rsplit('.', 1)[-1]}')",
            "kwargs": f"{{'priority': {rng.randrange(10)}}}", "root_id": task_id, "parent_id": None,
            "retries": 0, "eta": None, "expires": None,
        })
        if rng.random() < 0.5:
            self._start(index, task_id, now)
        else:
            self._push(now + rng.uniform(0.0005, 0.003), STARTED, index, task_id, 0.0)

    def _start(self, index: int, task_id: str, now: float) -> None:
        worker = self.workers[index]
        worker.running += 1
        self._event(worker, "task-started", {"uuid": task_id})
        runtime = min(10.0, max(0.002, self.rng.expovariate(1.0 / self.task_mean_s)))
        self._push(now + runtime, ENDED, index, task_id, now)

    def _end(self, index: int, task_id: str, started: float, now: float) -> None:
        worker = self.workers[index]
        worker.running -= 1
        worker.processed += 1
        if self.rng.random() < self.fail_ratio:
            self._event(worker, "task-failed", {
                "uuid": task_id, "exception": "ValueError('upstream said no')",
                "traceback": 'Traceback (most recent call last):\n  File "tasks.py", line 42, in run\n'
                             "ValueError: upstream said no\n"})
        else:
            self._event(worker, "task-succeeded", {"uuid": task_id, "result": "'ok'",
                                                   "runtime": round(now - started, 6)})

    def _push(self, due: float, kind: int, index: int, task_id: str, started: float) -> None:
        self.seq += 1
        heapq.heappush(self.pending, (due, self.seq, kind, index, task_id, started))

    def step(self, now: float) -> None:
        """Everything due by `now`: new tasks, task transitions, heartbeats; then flush every touched buffer."""
        touched = self.touched
        joined = self.joined
        due = self.carry + self.rate * len(joined) / len(self.workers) * (now - self.last)
        self.last = now
        arrivals = int(due)
        self.carry = due - arrivals
        for _ in range(arrivals):
            index = joined[self.rng.randrange(len(joined))]
            self._receive(index, now)
            touched.add(index)
        second = int(now)
        self.counts.tasks[second] = self.counts.tasks.get(second, 0) + arrivals
        pending = self.pending
        while pending and pending[0][0] <= now:
            _, _, kind, index, task_id, started = heapq.heappop(pending)
            if kind == STARTED:
                self._start(index, task_id, now)
            else:
                self._end(index, task_id, started, now)
            touched.add(index)
        heartbeats = self.heartbeats
        while heartbeats and heartbeats[0][0] <= now:
            at, index = heapq.heappop(heartbeats)
            if not self.seen[index]:
                self.seen[index] = True
                joined.append(index)
            self._flush(index)
            touched.discard(index)
            self._heartbeat(index)
            heapq.heappush(heartbeats, (max(at + self.freq, now), index))
        for index in touched:
            self._flush(index)
        touched.clear()

    def _flush(self, index: int) -> None:
        worker = self.workers[index]
        if not worker.buffer:
            return
        batch, worker.buffer = worker.buffer, []
        stamp = time.time()
        for event in batch:
            event["timestamp"] = stamp
        self._send("task.multi", worker.hostname, batch, len(batch), stamp)

    def _heartbeat(self, index: int) -> None:
        worker = self.workers[index]
        worker.clock += 1
        stamp = time.time()
        self._send("worker.heartbeat", worker.hostname, {
            "hostname": worker.hostname, "utcoffset": 0, "pid": worker.pid, "clock": worker.clock,
            "freq": self.freq, "active": worker.running, "processed": worker.processed,
            "loadavg": [round(self.rng.uniform(0.1, 2.0), 2) for _ in range(3)], **SW_INFO,
            "timestamp": stamp, "type": "worker-heartbeat"}, 1, stamp)

    def _send(self, routing_key: str, hostname: str, payload: Any, events: int, stamp: float) -> None:
        body = json.dumps(payload).encode("utf-8")  # as kombu's json serializer
        self.publish(routing_key, hostname, body)
        self.counts.add(int(stamp), events, len(body))


FRAME = struct.Struct(">BHI")  # type, channel, payload size; the payload and the frame-end octet 0xCE follow
FRAME_END = b"\xce"
BASIC_PUBLISH = struct.Struct(">HHH")  # class 60 (basic), method 40 (publish), reserved
CONTENT_HEADER = struct.Struct(">HHQ")  # class 60, weight 0, body size
# content-type, content-encoding, headers, delivery-mode, priority: the properties kombu sets on an event.
PROPERTY_FLAGS = (1 << 15) | (1 << 14) | (1 << 13) | (1 << 12) | (1 << 11)


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def _longstr(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


class FramePublisher:
    """`basic.publish` as pre-encoded AMQP 0-9-1 frames, every message of a tick written in one `sendall`.

    py-amqp opens the connection and the channel and declares the exchange; publishing through it costs a
    `sendall`, a non-blocking read and the serialisation of every property for each message (about 80 µs a
    message here: 40 % of a core at 5,000 messages/s, on the controller's 2 cores). The bytes on the wire
    are the same: method frame, content header (content_type application/json, content_encoding utf-8, the
    header `hostname`, delivery_mode 1, priority 0, as kombu sends events), one body frame.
    """

    def __init__(self, connection: Any, channel: Any, exchange: str) -> None:
        self.write = connection.transport.write
        self.channel_id = channel.channel_id
        self.max_body = connection.frame_max - 8
        self.exchange = exchange
        self.methods: dict[str, bytes] = {}
        self.properties: dict[str, bytes] = {}
        self.pending: list[bytes] = []

    def _method(self, routing_key: str) -> bytes:
        payload = BASIC_PUBLISH.pack(60, 40, 0) + _shortstr(self.exchange) + _shortstr(routing_key) + b"\x00"
        frame = FRAME.pack(1, self.channel_id, len(payload)) + payload + FRAME_END
        self.methods[routing_key] = frame
        return frame

    def _properties(self, hostname: str) -> bytes:
        table = _shortstr("hostname") + b"S" + _longstr(hostname)
        encoded = (struct.pack(">H", PROPERTY_FLAGS) + _shortstr("application/json") + _shortstr("utf-8")
                   + struct.pack(">I", len(table)) + table + bytes([1, 0]))
        self.properties[hostname] = encoded
        return encoded

    def publish(self, routing_key: str, hostname: str, body: bytes) -> None:
        assert len(body) <= self.max_body, "one body frame per message"
        method = self.methods.get(routing_key) or self._method(routing_key)
        properties = self.properties.get(hostname) or self._properties(hostname)
        header = CONTENT_HEADER.pack(60, 0, len(body)) + properties
        channel = self.channel_id
        self.pending += (method, FRAME.pack(2, channel, len(header)), header, FRAME_END,
                         FRAME.pack(3, channel, len(body)), body, FRAME_END)

    def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.write(data)


def connect(url: str) -> Any:
    import amqp

    parts = urlsplit(url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}", userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"), virtual_host=unquote(parts.path[1:]) or "/",
        connect_timeout=10)
    connection.connect()
    return connection


def publisher_main(url: str, first: int, count: int, total: int, rate: float, seconds: float, tick_s: float,
                   seed: int, task_mean_s: float, ramp_s: float) -> dict[str, Any]:
    """Publish the fleet's events for `seconds` (or until SIGTERM), paced on the wall clock in ticks of `tick_s`."""
    import resource

    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    connection = connect(url)
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
    # Under RabbitMQ's flow control a write blocks; a Celery worker's would too. Wait, never time out
    # (the late ticks say how long it was held back).
    connection.transport.sock.settimeout(None)
    frames = FramePublisher(connection, channel, EXCHANGE)
    fleet = Fleet(first, count, total, rate, seed=seed, task_mean_s=task_mean_s, publish=frames.publish)
    started = time.time()
    fleet.start(started, ramp_s)
    lateness: list[float] = []
    next_tick = time.monotonic()
    end = next_tick + seconds
    for _ in range(int(seconds / tick_s) + 10):  # bounded in count as well as in time
        if stop or time.monotonic() >= end:
            break
        next_tick += tick_s
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            lateness.append(-delay)
        fleet.step(time.time())
        frames.flush()
    channel.close()
    connection.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lateness.sort()
    ticks = int((time.time() - started) / tick_s)
    return {
        "first": first, "workers": count, "started": started, "ended": time.time(),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "late_ticks": len(lateness), "ticks": ticks,
        "late_ms_max": round(1000 * lateness[-1], 1) if lateness else 0.0,
        "counts": {k: {str(s): n for s, n in getattr(fleet.counts, k).items()}
                   for k in ("tasks", "events", "messages", "bytes")},
        "in_flight_at_end": len(fleet.pending),
    }
