"""The event stream holds at most `prefetch` decoded messages the reducer has not applied: a backlog stays in
RabbitMQ, however long the reducer takes, and every message arrives once it catches up."""

from __future__ import annotations

import uuid

import aio_pika
import anyio
import orjson
import pytest

from drainctl import broker
from drainctl.event_stream import EventStream

pytestmark = pytest.mark.anyio

BACKLOG = 1000
PREFETCH = 40
# Long enough for a stream that ignored its bound to read far past it: it reads thousands of messages a second.
SETTLE_S = 0.5


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
            await anyio.sleep(SETTLE_S)
            # Nothing applied yet: the stream stopped at its bound, and the rest is still queued in RabbitMQ.
            assert len(received) == PREFETCH
            waiting = await channel.declare_queue(spec.name, passive=True)
            assert waiting.declaration_result.message_count >= BACKLOG - 2 * PREFETCH
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
