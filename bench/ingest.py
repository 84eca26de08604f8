"""Event-ingest throughput: drainctl's real ingest path against bare consumers and Celery's own State.

    .venv/bin/python bench/ingest.py                       # 300k events, every contender once
    .venv/bin/python bench/ingest.py --events 500000 --repeat 3
    .venv/bin/python bench/ingest.py --consume-existing --url URL --queue NAME --events N

Every contender runs in its own subprocess (clean CPU seconds and peak RSS) and consumes its own
queue, pre-filled with the identical, deterministic stream (see celery_wire.py) in a throwaway vhost.
See bench/README.md for what each contender is and how to read the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
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

from celery_wire import CeleryEventStream, WireMessage

VHOST = "drainctl-bench"
BENCH_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
CONTENDERS = ("drainctl", "aio-pika", "py-amqp", "celery-state")
QUEUES = {
    "drainctl": "drainctl.bench",  # drainctl.<controller id>: the name drainctl itself derives
    "aio-pika": "bench.aio-pika",
    "py-amqp": "bench.py-amqp",
    "celery-state": "bench.celery-state",
}
PREFETCH = 2000
DEFAULT_MAX_LENGTH = 200_000  # drainctl's default [events] max_length
TARGETS = {"vs_celery_state": 1.5, "vs_aio_pika": 1.2, "peak_rss_mb": 60.0}


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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def vm_hwm_mb() -> float:
    """The kernel's high-water RSS of this process image (a cross-check of ru_maxrss, which exec inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


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
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "vm_hwm_mb": round(vm_hwm_mb(), 1),
            **extra,
        }


# --------------------------------------------------------------------------- contenders (children)

async def run_drainctl(url: str, queue: str, n: int, timeout_s: float, max_length: int) -> dict[str, Any]:
    """drainctl's real ingest path: Controller.run() (connect, declare, consume_events, reducer, acks)."""
    import anyio

    from drainctl import logs
    from drainctl.app import Controller

    logs.configure("json", "info")  # as `drainctl run` does when not on a terminal (stderr)
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
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    meter = Meter()
    done = asyncio.Event()
    count = 0
    messages = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count, messages
        meter.first()
        body = json.loads(message.body)
        await message.ack()
        messages += 1
        count += count_events(body)
        if count >= n:
            meter.done()
            done.set()

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        q = await channel.get_queue(queue, ensure=False)
        await q.consume(on_message)
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await connection.close()
    return meter.result("aio-pika", count, messages=messages)


def _drain(connection: Any, until: Callable[[], bool], timeout: float, timeout_exc: type[BaseException]) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(50_000_000):  # bounded in count as well as in time
        if until():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout} s")
        with contextlib.suppress(timeout_exc):
            connection.drain_events(timeout=1)
    raise RuntimeError("drain loop bound reached")


def run_py_amqp(url: str, queue: str, n: int, timeout: float) -> dict[str, Any]:
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
    count = 0
    messages = 0
    try:
        channel = connection.channel()
        channel.basic_qos(0, PREFETCH, False)

        def on_message(message: Any) -> None:
            nonlocal count, messages
            meter.first()
            body = json.loads(message.body)
            channel.basic_ack(message.delivery_tag)
            messages += 1
            count += count_events(body)
            if count >= n:
                meter.done()

        channel.basic_consume(queue, callback=on_message)
        _drain(connection, lambda: count >= n, timeout, socket.timeout)
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
        import anyio

        result = anyio.run(run_drainctl, args.url, queue, args.events, args.timeout, args.max_length,
                           backend="asyncio")
    elif name == "aio-pika":
        result = asyncio.run(run_aio_pika(args.url, queue, args.events, args.timeout))
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
    """drainctl's consume_events + the controller's own reducer, on a queue someone else declared and filled."""
    import anyio

    from drainctl import broker, logs
    from drainctl.app import Controller
    from drainctl.inputs import EventsIn

    logs.configure("json", "info")
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
    connection = await broker.connect(url, name="drainctl bench")
    try:
        channel = await connection.channel()
        async with anyio.create_task_group() as tg:
            # Controller.run() is not started (it would connect and declare): each batch goes straight
            # through the controller's reducer, as the controller's inbox would hand it over.
            async def on_batch(batch: broker.EventBatch, nbytes: int) -> None:
                controller.apply(EventsIn(batch, nbytes))

            await tg.start(broker.consume_events, channel, spec, on_batch)
            await controller.wait_for(lambda: stats.events > 0, timeout_s)
            meter.first()
            await controller.wait_for(lambda: stats.events >= n, timeout_s)
            meter.done()
            tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(5, shield=True):
            await connection.close()
    full = meter.result("drainctl-consume-existing", stats.events)
    return {k: full[k] for k in ("events", "seconds", "events_per_s", "peak_rss_mb")}


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
    """Declare one queue per contender, each bound to celeryev with '#', purge, publish the stream once to
    celeryev (the topic exchange copies it into every queue) with publisher confirms. Returns the
    seconds it took and the depth of each queue."""
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
            if name == "drainctl":
                await broker.declare_event_topology(channel, spec)
                queue = await channel.declare_queue(spec.name, passive=True)
            else:
                # The same queue type and arguments as drainctl's (its dead-letter exchange aside), so the
                # broker side costs the same.
                queue = await broker.declare_event_queue(channel, dataclasses.replace(spec, name=QUEUES[name]))
            await queue.purge()
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


def make_stream(args: argparse.Namespace) -> CeleryEventStream:
    return CeleryEventStream(target_events=args.events, seed=args.seed, workers=args.workers,
                             max_batch=args.max_batch)


def fill_child_main(args: argparse.Namespace) -> None:
    """Child: generate the stream and publish it into every contender's queue (the parent never holds it,
    so the contenders, forked from a small parent, inherit no ru_maxrss from it)."""
    started = time.perf_counter()
    generator = make_stream(args)
    stream = list(generator)
    st = generator.stats
    generated_s = time.perf_counter() - started
    max_length = max(DEFAULT_MAX_LENGTH, st.messages + 1000)
    contenders = args.fill_child.split(",")
    seconds, depths = asyncio.run(fill(args.url, stream, contenders, max_length))
    print(json.dumps({
        "events": st.events, "messages": st.messages, "bytes": st.bytes, "tasks": st.tasks,
        "heartbeats": st.heartbeats, "by_type": st.by_type, "generated_s": round(generated_s, 2),
        "fill_s": round(seconds, 3), "depths": depths, "max_length": max_length,
    }), flush=True)


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


def fmt_table(rows: list[dict[str, Any]]) -> str:
    header = ("contender", "events", "seconds", "events/s", "CPU s", "CPU µs/event", "peak RSS MB")
    body = [header]
    for r in rows:
        body.append((
            r["contender"], f"{r['events']:,}", f"{r['seconds']:.3f}", f"{r['events_per_s']:,.0f}",
            f"{r['cpu_s']:.3f}", f"{1e6 * r['cpu_s'] / r['events']:.2f}", f"{r['peak_rss_mb']:.1f}",
        ))
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    lines = []
    for index, row in enumerate(body):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:],
                                                                                     strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_main(args: argparse.Namespace) -> None:
    contenders = [c for c in CONTENDERS if c in args.only.split(",")] if args.only else list(CONTENDERS)
    create_vhost()
    print(f"vhost {VHOST!r} created; queues: {', '.join(QUEUES[c] for c in contenders)}")
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    n = 0
    try:
        for rep in range(args.repeat):
            info = run_json_child(
                ["--fill-child", ",".join(contenders), "--url", BENCH_URL, "--events", str(args.events),
                 "--seed", str(args.seed), "--workers", str(args.workers), "--max-batch", str(args.max_batch)],
                "fill", 1800)
            n, messages, max_length = info["events"], info["messages"], info["max_length"]
            if rep == 0:
                print(f"stream: {n:,} events in {messages:,} messages ({n / messages:.2f} events/message, "
                      f"{info['bytes'] / 1e6:.1f} MB of bodies, {info['bytes'] / messages:.0f} B/message), "
                      f"{info['tasks']:,} tasks on {args.workers} workers, {info['heartbeats']:,} heartbeats, "
                      f"seed {args.seed}; generated in {info['generated_s']:.1f} s")
                print(f"        by type: {json.dumps(info['by_type'])}")
                if max_length != DEFAULT_MAX_LENGTH:
                    print(f"        (more messages than drainctl's default max_length: using {max_length})")
            print(f"[run {rep + 1}/{args.repeat}] fill (not measured against contenders): {messages:,} messages "
                  f"into {len(contenders)} queues in {info['fill_s']:.1f} s "
                  f"({messages / info['fill_s']:,.0f} publishes/s, confirmed); depths {info['depths']}")
            bad = {c: d for c, d in info["depths"].items() if d != messages}
            if bad:
                raise RuntimeError(f"queues not filled with {messages} messages: {bad}")
            if args.fill_only:
                print(f"--fill-only: left filled in vhost {VHOST!r} ({n} events); `--cleanup` deletes it")
                return
            order = contenders if rep % 2 == 0 else contenders[::-1]
            for contender in order:
                result = run_child(contender, BENCH_URL, n, args.timeout, max_length)
                results[contender].append(result)
                extra = {k: v for k, v in result.items() if k not in {
                    "contender", "events", "seconds", "events_per_s", "cpu_s", "peak_rss_mb"}}
                print(f"  {contender:<13} {result['seconds']:8.3f} s {result['events_per_s']:>10,.0f} ev/s "
                      f"cpu {result['cpu_s']:.2f} s rss {result['peak_rss_mb']:.1f} MB  {json.dumps(extra)}")
    finally:
        if not args.fill_only:
            delete_vhost()
            print(f"vhost {VHOST!r} deleted")
    best = {c: min(runs, key=lambda r: r["seconds"]) for c, runs in results.items() if runs}
    print()
    print(f"best of {args.repeat} run(s), seconds from the first delivery to the {n:,}-th event; "
          f"CPU = user+sys of the consumer process over that window; peak RSS = ru_maxrss of the whole process")
    print(fmt_table([best[c] for c in contenders if c in best]))
    print()

    def ratio(a: str, b: str) -> float | None:
        if a in best and b in best:
            return best[a]["events_per_s"] / best[b]["events_per_s"]
        return None

    print("throughput ratios (events/s):")
    for a, b in (("drainctl", "celery-state"), ("drainctl", "aio-pika"), ("py-amqp", "aio-pika"),
                 ("celery-state", "aio-pika")):
        value = ratio(a, b)
        if value is not None:
            print(f"  {a} / {b}: {value:.2f}x")
    print()
    print("targets:")
    checks = []
    value = ratio("drainctl", "celery-state")
    if value is not None:
        checks.append((f"drainctl >= {TARGETS['vs_celery_state']}x celery-state", value >= TARGETS["vs_celery_state"],
                       f"{value:.2f}x"))
    value = ratio("drainctl", "aio-pika")
    if value is not None:
        checks.append((f"drainctl >= {TARGETS['vs_aio_pika']}x aio-pika", value >= TARGETS["vs_aio_pika"],
                       f"{value:.2f}x"))
    if "drainctl" in best:
        rss = best["drainctl"]["peak_rss_mb"]
        checks.append((f"drainctl peak RSS <= {TARGETS['peak_rss_mb']:.0f} MB", rss <= TARGETS["peak_rss_mb"],
                       f"{rss:.1f} MB"))
    for label, ok, shown in checks:
        print(f"  {label:<36} {shown:>9}  {'MET' if ok else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="events in the stream (at least; default 300000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender, alternating order; best reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--max-batch", type=int, default=3, help="task events per task.multi message: 1..n")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per contender run")
    parser.add_argument("--fill-only", action="store_true", help="create the vhost, fill the queues, keep them")
    parser.add_argument("--cleanup", action="store_true", help=f"delete the {VHOST} vhost and exit")
    parser.add_argument("--consume-existing", action="store_true",
                        help="drainctl's ingest path on an existing, bound, pre-filled queue (--url, --queue)")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--fill-child", help=argparse.SUPPRESS)  # child mode: generate and publish
    parser.add_argument("--url", default=BENCH_URL)
    parser.add_argument("--queue")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cleanup:
        delete_vhost()
        print(f"vhost {VHOST!r} deleted")
    elif args.contender:
        child_main(args)
    elif args.fill_child:
        fill_child_main(args)
    elif args.consume_existing:
        if not args.queue:
            parser.error("--consume-existing needs --queue")
        import anyio

        result = anyio.run(consume_existing, args.url, args.queue, args.events, args.timeout, backend="asyncio")
        print(json.dumps(result), flush=True)
    else:
        bench_main(args)


if __name__ == "__main__":
    main()
