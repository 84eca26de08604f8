"""Event-ingest throughput: drainctl's real ingest path against bare consumers and Celery's own State.

    .venv/bin/python bench/ingest.py                       # default stream, 300k events, every contender once
    .venv/bin/python bench/ingest.py --stream fleet        # the fleet stream (task-sent, failures, big args)
    .venv/bin/python bench/ingest.py --stream both --repeat 3
    .venv/bin/python bench/ingest.py --only drainctl --stream fleet --messages 20000,200000   # VmHWM by backlog
    .venv/bin/python bench/ingest.py --consume-existing --url URL --queue NAME --events N

Every contender runs in its own subprocess (clean CPU seconds; peak RSS is the child's own VmHWM) and
consumes its own queue, pre-filled with the identical, deterministic stream (see celery_wire.py) in a
throwaway vhost. See bench/README.md for what each contender is and how to read the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from celery_wire import STREAMS, WireMessage, make_stream

VHOST = "drainctl-bench"
BENCH_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
CONTENDERS = ("drainctl", "aio-pika", "aiormq", "py-amqp", "celery-state")
QUEUES = {
    "drainctl": "drainctl.bench",  # drainctl.<controller id>: the name drainctl itself derives
    "aio-pika": "bench.aio-pika",
    "aiormq": "bench.aiormq",
    "py-amqp": "bench.py-amqp",
    "celery-state": "bench.celery-state",
}
BARE_AIO_PIKA = ("aio-pika", "aiormq")  # the bare asyncio baselines: drainctl is compared with the faster
PREFETCH = 2000
ACK_EVERY = 250  # the bare consumers ack with multiple=True every this many messages (and at the end)
DEFAULT_MAX_LENGTH = 200_000  # drainctl's default [events] max_length
TARGETS = {"vs_celery_state": 2.0, "vs_aio_pika": 1.2, "peak_rss_mb": 60.0}  # peak RSS: the child's VmHWM


# --------------------------------------------------------------------------- shared helpers

def bench_settings(max_length: int) -> Any:
    from drainctl.config import from_mapping

    events: dict[str, Any] = {"prefetch": PREFETCH}
    if max_length != DEFAULT_MAX_LENGTH:
        # Only when the stream has more messages than the default bound (it would drop the oldest).
        events["max_length"] = max_length
    return from_mapping({"controller": {"id": "bench"}, "events": events})


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak RSS of one process: the kernel's VmHWM from /proc/<pid>/status.

    Not `ru_maxrss`: that survives execve, so a child started by a larger parent would report the parent's
    peak. VmHWM belongs to the process image and starts afresh at exec."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def count_events(body: Any) -> int:
    return len(body) if isinstance(body, list) else 1


class Meter:
    """Wall and CPU time from the first delivery to the N-th event."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.t1: float | None = None
        self.cpu0 = 0.0
        self.cpu1 = 0.0

    def first(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
            self.cpu0 = cpu_seconds()

    def done(self) -> None:
        if self.t1 is None:
            self.t1 = time.perf_counter()
            self.cpu1 = cpu_seconds()

    def result(self, contender: str, events: int, **extra: Any) -> dict[str, Any]:
        assert self.t0 is not None and self.t1 is not None
        seconds = self.t1 - self.t0
        return {
            "contender": contender,
            "events": events,
            "seconds": round(seconds, 4),
            "events_per_s": round(events / seconds, 1),
            "cpu_s": round(self.cpu1 - self.cpu0, 4),
            "cpu_total_s": round(cpu_seconds(), 4),
            "vm_hwm_mb": round(vm_hwm_mb(), 1),
            "pid": os.getpid(),
            **extra,
        }


# --------------------------------------------------------------------------- contenders (children)

async def run_drainctl(url: str, queue: str, n: int, timeout_s: float, max_length: int) -> dict[str, Any]:
    """drainctl's real ingest path: Controller.run() (connect, declare, the event stream, reducer, acks)."""
    import anyio

    from drainctl import gc_tuning, logs
    from drainctl.app import Controller

    logs.configure("json", "info")  # as `drainctl run` does when not on a terminal (stderr)
    gc_tuning.for_a_long_lived_model()  # as `drainctl run` does before it starts the controller
    settings = bench_settings(max_length)
    controller = Controller(settings, url)
    assert controller.event_queue.name == queue, (controller.event_queue.name, queue)
    meter = Meter()
    stats = controller.stats
    async with anyio.create_task_group() as tg:
        await tg.start(controller.run)
        await controller.wait_for(lambda: stats.events > 0, timeout_s)
        meter.first()
        await controller.wait_for(lambda: stats.events >= n, timeout_s)
        meter.done()
        cluster = controller.cluster
        extra = {
            "messages": stats.messages,
            "workers": len(cluster.workers),
            "in_flight": cluster.in_flight(),
            "tombstones": cluster.tombstones(),
            "malformed": sum(stats.malformed.values()),
            "dropped": stats.dropped,
            "late_events": cluster.late_events,
            "events_by_type": dict(cluster.events_by_type),
        }
        tg.cancel_scope.cancel()
    return meter.result("drainctl", stats.events, **extra)


async def run_aio_pika(url: str, queue: str, n: int, timeout_s: float) -> dict[str, Any]:
    """Bare aio-pika, as plain as it gets: `queue.consume(cb, no_ack=False)`; `cb` does `json.loads` and
    acks with multiple=True every ACK_EVERY messages and at the end. No per-message context manager."""
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    meter = Meter()
    done = asyncio.Event()
    loads = json.loads
    count = 0
    messages = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count, messages
        if not messages:
            meter.first()
        messages += 1
        body = loads(message.body)
        count += len(body) if type(body) is list else 1
        if count >= n:
            meter.done()
            await message.ack(multiple=True)
            done.set()
        elif messages % ACK_EVERY == 0:
            await message.ack(multiple=True)

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        q = await channel.get_queue(queue, ensure=False)
        await q.consume(on_message, no_ack=False)
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await connection.close()
    return meter.result("aio-pika", count, messages=messages)


async def run_aiormq(url: str, queue: str, n: int, timeout_s: float) -> dict[str, Any]:
    """Bare aio-pika one level down: its underlay aiormq channel's `basic_consume(cb, no_ack=False)` (no
    IncomingMessage, no extra task per delivery); `cb` as in `run_aio_pika`."""
    import aio_pika
    from aiormq.abc import DeliveredMessage

    meter = Meter()
    done = asyncio.Event()
    loads = json.loads
    count = 0
    messages = 0
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        raw = await channel.get_underlay_channel()
        await raw.basic_qos(prefetch_count=PREFETCH)

        async def on_message(message: DeliveredMessage) -> None:
            nonlocal count, messages
            if not messages:
                meter.first()
            messages += 1
            body = loads(message.body)
            count += len(body) if type(body) is list else 1
            if count >= n:
                meter.done()
                await raw.basic_ack(message.delivery_tag, multiple=True)
                done.set()
            elif messages % ACK_EVERY == 0:
                await raw.basic_ack(message.delivery_tag, multiple=True)

        await raw.basic_consume(queue, on_message, no_ack=False)
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await connection.close()
    return meter.result("aiormq", count, messages=messages)


def _drain(connection: Any, until: Callable[[], bool], timeout: float, timeout_exc: type[BaseException],
           per_call: float | None = 1) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(50_000_000):  # bounded in count as well as in time
        if until():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout} s")
        with contextlib.suppress(timeout_exc):
            connection.drain_events(timeout=per_call)
    raise RuntimeError("drain loop bound reached")


def run_py_amqp(url: str, queue: str, n: int, timeout: float) -> dict[str, Any]:
    """Bare synchronous py-amqp: `basic_consume(cb)` + `drain_events`; `cb` does `json.loads` and acks with
    multiple=True every ACK_EVERY messages and at the end."""
    import amqp

    parts = urlsplit(url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    connection.connect()
    meter = Meter()
    loads = json.loads
    count = 0
    messages = 0
    try:
        channel = connection.channel()
        channel.basic_qos(0, PREFETCH, False)
        ack = channel.basic_ack

        def on_message(message: Any) -> None:
            nonlocal count, messages
            if not messages:
                meter.first()
            messages += 1
            body = loads(message.body)
            count += len(body) if type(body) is list else 1
            if count >= n:
                meter.done()
                ack(message.delivery_tag, multiple=True)
            elif messages % ACK_EVERY == 0:
                ack(message.delivery_tag, multiple=True)

        channel.basic_consume(queue, callback=on_message)
        # The socket's own timeout: `drain_events(timeout=1)` would set and restore it around every frame
        # (two system calls per frame, a third of this consumer's time).
        connection.transport.sock.settimeout(1)
        _drain(connection, lambda: count >= n, timeout, socket.timeout, per_call=None)
    finally:
        connection.close()
    return meter.result("py-amqp", count, messages=messages)


def run_celery_state(url: str, queue: str, n: int, timeout: float) -> dict[str, Any]:
    from celery import Celery
    from kombu import Connection, Consumer, Queue

    app = Celery("bench", broker=url, set_as_current=False)
    state = app.events.State()
    meter = Meter()
    count = 0
    messages = 0
    with Connection(url) as connection:
        connection.connect()
        receiver = app.events.Receiver(connection, handlers={"*": state.event})
        channel = connection.channel()

        def on_message(body: Any, message: Any) -> None:
            nonlocal count, messages
            meter.first()
            receiver._receive(body, message)  # a task.multi list: one State.event per element
            message.ack()
            messages += 1
            count += count_events(body)
            if count >= n:
                meter.done()

        consumer = Consumer(channel, queues=[Queue(queue, no_declare=True)], callbacks=[on_message],
                            accept=["json"])
        consumer.qos(prefetch_count=PREFETCH)
        consumer.consume()
        _drain(connection, lambda: count >= n, timeout, socket.timeout)
    return meter.result(
        "celery-state", count, messages=messages, workers=len(state.workers), tasks_kept=len(state.tasks),
        state_event_count=state.event_count,
    )


def child_main(args: argparse.Namespace) -> None:
    name = args.contender
    queue = args.queue or QUEUES[name]
    if name == "drainctl":
        if os.environ.get("BENCH_WITH_DEV_EXTRAS") != "1":
            # The controller as `pip install drainctl` has it: without the development extras, whose
            # rich and pygments (brought by import-linter) structlog would import, about 15 MB.
            for dev_only in ("rich", "pygments"):
                sys.modules.setdefault(dev_only, None)  # type: ignore[arg-type]
        import anyio

        result = anyio.run(run_drainctl, args.url, queue, args.events, args.timeout, args.max_length,
                           backend="asyncio")
    elif name == "aio-pika":
        result = asyncio.run(run_aio_pika(args.url, queue, args.events, args.timeout))
    elif name == "aiormq":
        result = asyncio.run(run_aiormq(args.url, queue, args.events, args.timeout))
    elif name == "py-amqp":
        result = run_py_amqp(args.url, queue, args.events, args.timeout)
    elif name == "celery-state":
        result = run_celery_state(args.url, queue, args.events, args.timeout)
    else:
        raise SystemExit(f"unknown contender {name!r}")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- --consume-existing

async def consume_existing(url: str, queue: str, n: int, timeout_s: float) -> dict[str, Any]:
    """drainctl's event stream + the controller's own reducer, on a queue someone else declared and filled."""
    import anyio

    from drainctl import broker, gc_tuning, logs
    from drainctl.app import Controller
    from drainctl.event_stream import EventStream
    from drainctl.inputs import EventsIn

    logs.configure("json", "info")
    gc_tuning.for_a_long_lived_model()
    settings = bench_settings(DEFAULT_MAX_LENGTH)
    controller = Controller(settings, url)
    spec = broker.EventQueueSpec(
        name=queue,
        expires_s=settings.events.queue_expires_s,
        max_length=settings.events.max_length,
        prefetch=PREFETCH,
    )
    stats = controller.stats
    meter = Meter()
    stream = EventStream(url, None, spec, name="drainctl bench")
    async with anyio.create_task_group() as tg:
        # Controller.run() is not started (it would connect and declare): each batch goes straight
        # through the controller's reducer, as the controller's inbox would hand it over.
        async def on_batch(batch: broker.EventBatch, nbytes: int) -> None:
            controller.apply(EventsIn(batch, nbytes, stream.applied))

        def on_batch_now(batch: broker.EventBatch, nbytes: int) -> bool:
            controller.apply(EventsIn(batch, nbytes, stream.applied))
            return True

        await tg.start(stream.run, on_batch, on_batch_now)
        await controller.wait_for(lambda: stats.events > 0, timeout_s)
        meter.first()
        await controller.wait_for(lambda: stats.events >= n, timeout_s)
        meter.done()
        tg.cancel_scope.cancel()
    full = meter.result("drainctl-consume-existing", stats.events)
    return {k: full[k] for k in ("events", "seconds", "events_per_s", "cpu_s", "vm_hwm_mb")}


# --------------------------------------------------------------------------- orchestration (parent)

def rabbitmqctl(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *argv], capture_output=True, text=True, check=check, timeout=60)


def create_vhost() -> None:
    existing = rabbitmqctl("-q", "list_vhosts", "name").stdout.split()
    if VHOST in existing:
        rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


def delete_vhost() -> None:
    rabbitmqctl("delete_vhost", VHOST, check=False)


async def fill(url: str, stream: list[WireMessage], contenders: list[str], max_length: int,
               window: int = 2000) -> tuple[float, dict[str, int]]:
    """Declare one queue per contender afresh (deleted first: a new stream may need another max_length),
    each bound to celeryev with '#', publish the stream once to celeryev (the topic exchange copies it into
    every queue) with publisher confirms. Returns the seconds it took and the depth of each queue."""
    import aio_pika

    from drainctl import broker
    from drainctl.app import Controller

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(broker.EVENT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        spec = Controller(bench_settings(max_length), url).event_queue
        queues = {}
        for name in contenders:
            await channel.queue_delete(QUEUES[name])
            if name == "drainctl":
                await channel.queue_delete(spec.dropped_queue)
                await broker.declare_event_topology(channel, spec)
                queue = await channel.declare_queue(spec.name, passive=True)
            else:
                # The same queue type and arguments as drainctl's (its dead-letter exchange aside), so the
                # broker side costs the same.
                queue = await broker.declare_event_queue(channel, dataclasses.replace(spec, name=QUEUES[name]))
            queues[name] = queue
        started = time.perf_counter()
        pending = []
        for message in stream:
            pending.append(exchange.publish(
                aio_pika.Message(
                    message.body,
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                    priority=0,
                    headers={"hostname": message.hostname},
                ),
                routing_key=message.routing_key,
            ))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
        seconds = time.perf_counter() - started
        depths = {}
        for name in contenders:
            declared = await channel.declare_queue(queues[name].name, passive=True)
            depths[name] = declared.declaration_result.message_count or 0
        return seconds, depths
    finally:
        await connection.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """One stream at one size: the unit that is filled once per round and reported with its own table."""

    stream: str
    events: int | None  # the stream ends after this many events, or
    messages: int | None  # after this many messages (the backlog queued at start)

    @property
    def label(self) -> str:
        size = f"{self.messages:,} messages" if self.messages is not None else f"{self.events:,} events"
        return f"{self.stream} stream, {size}"

    def argv(self) -> list[str]:
        size = ["--messages", str(self.messages)] if self.messages is not None else ["--events", str(self.events)]
        return ["--stream", self.stream, *size]


def fill_child_main(args: argparse.Namespace) -> None:
    """Child: generate the stream and publish it into every contender's queue (the parent never holds it,
    and each contender is a fresh process whose VmHWM is its own)."""
    started = time.perf_counter()
    messages = args.messages[0] if args.messages else None
    generator = make_stream(args.stream, events=args.events[0], messages=messages, seed=args.seed,
                            workers=args.workers, max_batch=args.max_batch)
    stream = list(generator)
    st = generator.stats
    generated_s = time.perf_counter() - started
    max_length = max(DEFAULT_MAX_LENGTH, st.messages + 1000)
    contenders = args.fill_child.split(",")
    seconds, depths = asyncio.run(fill(args.url, stream, contenders, max_length))
    print(json.dumps({
        "stream": args.stream, "events": st.events, "messages": st.messages, "bytes": st.bytes, "tasks": st.tasks,
        "heartbeats": st.heartbeats, "sent_messages": st.sent_messages, "task_messages": st.task_messages,
        "batch_sizes": dict(sorted(st.batch_sizes.items())), "by_type": st.by_type,
        "workers": generator.workers, "clients": getattr(generator, "clients", 0),
        "generated_s": round(generated_s, 2), "fill_s": round(seconds, 3), "depths": depths,
        "max_length": max_length,
    }), flush=True)


def describe_stream(info: dict[str, Any], seed: int) -> str:
    n, messages = info["events"], info["messages"]
    batches = {int(k): v for k, v in info["batch_sizes"].items()}
    task_events = sum(k * v for k, v in batches.items())
    failed = info["by_type"].get("task-failed", 0)
    clients = f", {info['clients']} clients sending task-sent" if info["clients"] else ""
    lines = [
        f"stream {info['stream']!r}: {n:,} events in {messages:,} messages ({n / messages:.2f} events/message, "
        f"{info['bytes'] / 1e6:.1f} MB of bodies, {info['bytes'] / messages:.0f} B/message), seed {seed}; "
        f"generated in {info['generated_s']:.1f} s",
        f"        {info['tasks']:,} tasks ({100 * failed / max(1, info['tasks']):.1f} % failed) on {info['workers']} "
        f"workers{clients}",
        f"        messages: {info['task_messages']:,} task.multi ({task_events / max(1, info['task_messages']):.2f} "
        f"events each, by size {json.dumps(batches)}), {info['sent_messages']:,} task.sent, "
        f"{info['heartbeats']:,} worker.heartbeat",
        f"        events by type: {json.dumps(info['by_type'])}",
    ]
    if info["max_length"] != DEFAULT_MAX_LENGTH:
        lines.append(f"        (more messages than drainctl's default max_length: queues declared with "
                     f"x-max-length {info['max_length']:,}, so nothing is dropped)")
    return "\n".join(lines)


def run_json_child(argv: list[str], what: str, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], stdout=subprocess.PIPE,
                              stderr=stderr, text=True, timeout=timeout_s, check=False)
        stderr.seek(0)
        err = stderr.read()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr_lines"] = len(err.splitlines())
    return result


def run_child(contender: str, url: str, n: int, timeout_s: float, max_length: int) -> dict[str, Any]:
    argv = ["--contender", contender, "--url", url, "--queue", QUEUES[contender], "--events", str(n),
            "--timeout", str(timeout_s), "--max-length", str(max_length)]
    return run_json_child(argv, contender, timeout_s + 60)


def fmt_table(header: tuple[str, ...], body: list[tuple[str, ...]], text_columns: int = 1) -> str:
    """Columns aligned: the first `text_columns` to the left, the numbers to the right."""
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) if i < text_columns else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (f"{r['events']:,}", f"{r['seconds']:.3f}", f"{r['events_per_s']:,.0f}", f"{r['cpu_s']:.3f}",
            f"{1e6 * r['cpu_s'] / r['events']:.2f}", f"{r['vm_hwm_mb']:.1f}")


RESULT_HEADER = ("events", "seconds", "events/s", "CPU s", "CPU µs/event", "VmHWM MB")


def fastest_bare(best: dict[str, dict[str, Any]]) -> str | None:
    present = [c for c in BARE_AIO_PIKA if c in best]
    return max(present, key=lambda c: best[c]["events_per_s"]) if present else None


def ratios(best: dict[str, dict[str, Any]]) -> dict[str, float]:
    """drainctl / celery-state and drainctl / the faster bare aio-pika consumer (events/s), where both ran."""
    out = {}
    bare = fastest_bare(best)
    if "drainctl" in best:
        if "celery-state" in best:
            out["vs_celery_state"] = best["drainctl"]["events_per_s"] / best["celery-state"]["events_per_s"]
        if bare is not None:
            out["vs_aio_pika"] = best["drainctl"]["events_per_s"] / best[bare]["events_per_s"]
    return out


def report(scenario: Scenario, best: dict[str, dict[str, Any]], n: int, repeat: int, contenders: list[str]) -> None:
    print()
    print(f"== {scenario.label}: best of {repeat} run(s), seconds from the first delivery to the {n:,}-th event; "
          f"CPU = user+sys of the consumer process over that window; VmHWM = the consumer process's peak RSS "
          f"(/proc/<pid>/status)")
    print(fmt_table(("contender", *RESULT_HEADER), [(c, *result_cells(best[c])) for c in contenders if c in best]))
    print()
    bare = fastest_bare(best)
    pairs = [("drainctl", "celery-state"), ("drainctl", bare), ("py-amqp", bare), ("aiormq", "aio-pika"),
             ("celery-state", bare)]
    both_bare = all(c in best for c in BARE_AIO_PIKA)
    lines = []
    for a, b in pairs:
        if b is not None and a != b and a in best and b in best:
            note = " (the faster bare aio-pika)" if b == bare and both_bare else ""
            lines.append(f"  {a} / {b}{note}: {best[a]['events_per_s'] / best[b]['events_per_s']:.2f}x")
    if lines:
        print("throughput ratios (events/s):")
        print("\n".join(lines))
        print()
    print("targets:")
    checks = []
    found = ratios(best)
    if "vs_celery_state" in found:
        value = found["vs_celery_state"]
        checks.append((f"drainctl >= {TARGETS['vs_celery_state']}x celery-state", value >= TARGETS["vs_celery_state"],
                       f"{value:.2f}x"))
    if "vs_aio_pika" in found:
        value = found["vs_aio_pika"]
        checks.append((f"drainctl >= {TARGETS['vs_aio_pika']}x {bare}", value >= TARGETS["vs_aio_pika"],
                       f"{value:.2f}x"))
    if "drainctl" in best:
        rss = best["drainctl"]["vm_hwm_mb"]
        checks.append((f"drainctl VmHWM <= {TARGETS['peak_rss_mb']:.0f} MB", rss <= TARGETS["peak_rss_mb"],
                       f"{rss:.1f} MB"))
    for label, ok, shown in checks:
        print(f"  {label:<36} {shown:>9}  {'MET' if ok else 'NOT MET'}")


def run_scenario(scenario: Scenario, contenders: list[str], args: argparse.Namespace,
                 ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """Fill and run every contender `args.repeat` times (alternating the order); the stream's info and the
    best run of each contender, or None after --fill-only."""
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    info: dict[str, Any] = {}
    print()
    print(f"### {scenario.label}")
    for rep in range(args.repeat):
        argv = ["--fill-child", ",".join(contenders), "--url", BENCH_URL, *scenario.argv(), "--seed", str(args.seed),
                "--workers", str(args.workers)]
        if args.max_batch is not None:
            argv += ["--max-batch", str(args.max_batch)]
        info = run_json_child(argv, "fill", 1800)
        n, messages, max_length = info["events"], info["messages"], info["max_length"]
        if rep == 0:
            print(describe_stream(info, args.seed))
        print(f"[run {rep + 1}/{args.repeat}] fill (not measured against contenders): {messages:,} messages "
              f"into {len(contenders)} queues in {info['fill_s']:.1f} s "
              f"({messages / info['fill_s']:,.0f} publishes/s, confirmed); depths {info['depths']}")
        bad = {c: d for c, d in info["depths"].items() if d != messages}
        if bad:
            raise RuntimeError(f"queues not filled with {messages} messages: {bad}")
        if args.fill_only:
            print(f"--fill-only: left filled in vhost {VHOST!r} ({n} events); `--cleanup` deletes it")
            return None
        order = contenders if rep % 2 == 0 else contenders[::-1]
        for contender in order:
            result = run_child(contender, BENCH_URL, n, args.timeout, max_length)
            results[contender].append(result)
            extra = {k: v for k, v in result.items() if k not in {
                "contender", "events", "seconds", "events_per_s", "cpu_s", "vm_hwm_mb", "pid"}}
            print(f"  {contender:<13} {result['seconds']:8.3f} s {result['events_per_s']:>10,.0f} ev/s "
                  f"cpu {result['cpu_s']:.2f} s VmHWM {result['vm_hwm_mb']:.1f} MB  {json.dumps(extra)}")
    best = {c: min(runs, key=lambda r: r["seconds"]) for c, runs in results.items() if runs}
    report(scenario, best, info["events"], args.repeat, contenders)
    return info, best


def summary(done: list[tuple[Scenario, dict[str, Any], dict[str, dict[str, Any]]]], contenders: list[str]) -> None:
    print()
    print("== summary (best runs; VmHWM = the consumer process's peak RSS)")
    header = ("stream", "contender", "queued msgs", *RESULT_HEADER, "vs celery-state", "vs bare aio-pika")
    body = []
    for scenario, info, best in done:
        found = ratios(best)
        for c in contenders:
            if c not in best:
                continue
            vs_celery = f"{found['vs_celery_state']:.2f}x" if c == "drainctl" and "vs_celery_state" in found else ""
            vs_bare = f"{found['vs_aio_pika']:.2f}x" if c == "drainctl" and "vs_aio_pika" in found else ""
            body.append((scenario.stream, c, f"{info['messages']:,}", *result_cells(best[c]), vs_celery, vs_bare))
    print(fmt_table(header, body, text_columns=2))


def bench_main(args: argparse.Namespace) -> None:
    contenders = [c for c in CONTENDERS if c in args.only.split(",")] if args.only else list(CONTENDERS)
    streams = list(STREAMS) if args.stream == "both" else [args.stream]
    if args.messages:
        scenarios = [Scenario(s, None, m) for s in streams for m in args.messages]
    else:
        scenarios = [Scenario(s, e, None) for s in streams for e in args.events]
    if args.fill_only and len(scenarios) > 1:
        raise SystemExit("--fill-only fills one stream at one size")
    create_vhost()
    print(f"vhost {VHOST!r} created; queues: {', '.join(QUEUES[c] for c in contenders)}")
    done = []
    try:
        for scenario in scenarios:
            outcome = run_scenario(scenario, contenders, args)
            if outcome is None:
                return
            done.append((scenario, *outcome))
    finally:
        if not args.fill_only:
            delete_vhost()
            print(f"vhost {VHOST!r} deleted")
    if len(done) > 1:
        summary(done, contenders)


def sizes(text: str) -> list[int]:
    values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated: {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", choices=[*STREAMS, "both"], default="default",
                        help="which stream (celery_wire.py); both: every contender on each, a table per stream")
    parser.add_argument("--events", type=sizes, default=[300_000],
                        help="events in the stream (at least; default 300000); comma-separated: one run per size")
    parser.add_argument("--messages", type=sizes,
                        help="instead of --events: the stream ends after this many messages (at least), the backlog "
                             "queued at start; comma-separated: one run per size (e.g. 20000,200000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender, alternating order; best reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--max-batch", type=int,
                        help="task events per task.multi message: 1..n (default: 3 default stream, 4 fleet)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per contender run")
    parser.add_argument("--fill-only", action="store_true", help="create the vhost, fill the queues, keep them")
    parser.add_argument("--cleanup", action="store_true", help=f"delete the {VHOST} vhost and exit")
    parser.add_argument("--consume-existing", action="store_true",
                        help="drainctl's ingest path on an existing, bound, pre-filled queue (--url, --queue)")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--with-dev-extras", action="store_true",
                        help="let drainctl import the development extras (rich, pygments) as the dev venv has them")
    parser.add_argument("--fill-child", help=argparse.SUPPRESS)  # child mode: generate and publish
    parser.add_argument("--url", default=BENCH_URL)
    parser.add_argument("--queue")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.with_dev_extras:
        os.environ["BENCH_WITH_DEV_EXTRAS"] = "1"
    if args.only:
        unknown = set(args.only.split(",")) - set(CONTENDERS)
        if unknown:
            parser.error(f"--only: unknown contender(s) {', '.join(sorted(unknown))}")
    if args.cleanup:
        delete_vhost()
        print(f"vhost {VHOST!r} deleted")
    elif args.contender:
        args.events = args.events[0]
        child_main(args)
    elif args.fill_child:
        fill_child_main(args)
    elif args.consume_existing:
        if not args.queue:
            parser.error("--consume-existing needs --queue")
        import anyio

        result = anyio.run(consume_existing, args.url, args.queue, args.events[0], args.timeout, backend="asyncio")
        print(json.dumps(result), flush=True)
    else:
        bench_main(args)


if __name__ == "__main__":
    main()
