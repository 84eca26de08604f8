"""The event stream holds at most `prefetch` decoded messages the reducer has not applied: a backlog stays in
RabbitMQ, however long the reducer takes, and every message arrives once it catches up."""

from __future__ import annotations

import uuid

import aio_pika
import aio_pika.abc
import anyio
import orjson
import pytest

from drainctl import broker
from drainctl.event_stream import EventStream

pytestmark = pytest.mark.anyio

BACKLOG = 1000
PREFETCH = 40


async def until_ready(channel: aio_pika.abc.AbstractChannel, name: str, count: int) -> None:
    """Until RabbitMQ holds `count` messages ready (neither delivered nor acked) in queue `name`: it tells
    no one when that changes, so it is asked, for at most 20 s."""
    seen = None
    for _ in range(400):
        declared = await channel.declare_queue(name, passive=True)
        seen = declared.declaration_result.message_count
        if seen == count:
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{name}: {seen} messages ready, expected {count}")


async def test_a_slow_reducer_holds_at_most_prefetch_and_the_backlog_waits_in_the_broker(broker_url: str) -> None:
    spec = broker.EventQueueSpec(f"drainctl.stream-{uuid.uuid4().hex[:8]}", 60, 10 * BACKLOG, PREFETCH)
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        queue = await broker.declare_event_queue(channel, spec)
        exchange = await channel.get_exchange(broker.EVENT_EXCHANGE)
        for clock in range(BACKLOG):
            body = orjson.dumps({"type": "worker-heartbeat", "hostname": "w@h", "clock": clock, "timestamp": 1.0,
                                 "freq": 2.0, "active": 0, "processed": 0, "pid": 1})
            await exchange.publish(aio_pika.Message(body, content_type="application/json"), "worker.heartbeat")

        stream = EventStream(broker_url, None, spec, name="drainctl-test events")
        received: list[int] = []
        arrived = anyio.Event()

        async def handle(batch: broker.EventBatch, nbytes: int) -> None:
            nonlocal arrived
            received.extend(e.clock for d in batch for e in d.events)
            arrived.set()
            arrived = anyio.Event()

        async def until(count: int) -> None:
            with anyio.fail_after(20):
                while len(received) < count:
                    await arrived.wait()

        async with anyio.create_task_group() as tg:
            await tg.start(stream.run, handle)
            await until(PREFETCH)
            # Nothing applied yet. The stream acked what it handed over and holds one prefetch window
            # unacked: RabbitMQ keeps the rest ready, and keeps it there while the reducer lags.
            await until_ready(channel, spec.name, BACKLOG - 2 * PREFETCH)
            assert len(received) == PREFETCH
            stream.applied(len(received))
            applied = len(received)
            with anyio.fail_after(30):
                while applied < BACKLOG:
                    await until(applied + 1)
                    stream.applied(len(received) - applied)
                    applied = len(received)
            tg.cancel_scope.cancel()
        assert received == list(range(BACKLOG))  # each once, in order
        await queue.delete(if_unused=False, if_empty=False)
