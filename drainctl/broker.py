"""The RabbitMQ shell: Celery's event stream in, Celery remote control (the pidbox) out.

Thin on purpose. It declares what it needs with exactly Celery's flags, hands decoded events to a
callback in batches and acknowledges them afterwards (``multiple=True``), and translates aio-pika /
aiormq exceptions into `drainctl.errors`.

`consume_events` (used by `drainctl entrypoint`, which follows one worker's events) goes one level
below aio-pika's high-level consumer, to aiormq: aio-pika builds an `IncomingMessage` per delivery and
acks one by one. The controller's own event stream, at fleet rates, is `drainctl.event_stream`.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import aio_pika
import aiormq
import aiormq.abc
import anyio
import anyio.lowlevel
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from drainctl.core.events import Decoded, decode_message
from drainctl.core.scaling import QueueLoad
from drainctl.errors import BrokerError, BrokerUnavailableError, ControlError, TopologyError
from drainctl.redact import redact_text, redact_url

EVENT_EXCHANGE: Final = "celeryev"
PIDBOX_EXCHANGE: Final = "celery.pidbox"
REPLY_EXCHANGE: Final = "reply.celery.pidbox"
# Direct: each controller's dead-letter queue is bound with its own queue name as the key.
DROPPED_EXCHANGE: Final = "drainctl.deadletter"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


async def connect(url: str, tls: TlsFiles | None = None, *, name: str = "drainctl") -> AbstractConnection:
    """Open a connection; every failure becomes a `BrokerUnavailableError` that names the URL without its password."""
    context = None
    if url.startswith("amqps://") and tls is not None and (tls.ca_file or tls.cert_file):
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    try:
        with anyio.fail_after(30):
            return await aio_pika.connect(url, ssl_context=context, client_properties={"connection_name": name})
    except TimeoutError as exc:
        raise BrokerUnavailableError(f"no answer from {redact_url(url)} within 30 s") from exc
    except (OSError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise BrokerUnavailableError(
            f"cannot connect to {redact_url(url)}: {redact_text(str(exc)) or type(exc).__name__}"
        ) from exc


# --------------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class EventQueueSpec:
    name: str
    expires_s: int
    max_length: int
    prefetch: int

    @property
    def dropped_queue(self) -> str:
        return f"{self.name}.dropped"


EventBatch = Sequence[Decoded]
BatchHandler = Callable[[EventBatch, int], Awaitable[None]]
DroppedHandler = Callable[[int], Awaitable[None]]


async def declare_event_queue(
    channel: AbstractChannel,
    spec: EventQueueSpec,
    *,
    routing_keys: Sequence[str] = ("#",),
    dead_letter_exchange: str | None = None,
) -> AbstractQueue:
    """`celeryev` (Celery's flags) and a durable named queue bound to it with `routing_keys`.

    The queue expires `spec.expires_s` after its last consumer is gone and holds at most `spec.max_length`
    messages, dropping the oldest: into `dead_letter_exchange` (routing key: the queue's name) if given.
    Every declarer of a queue must pass the same arguments, or RabbitMQ refuses (PRECONDITION_FAILED):
    this is the one place they are written.
    """
    events = await channel.declare_exchange(EVENT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    arguments: dict[str, Any] = {
        "x-expires": spec.expires_s * 1000,
        "x-max-length": spec.max_length,
        "x-overflow": "drop-head",
    }
    if dead_letter_exchange is not None:
        arguments["x-dead-letter-exchange"] = dead_letter_exchange
        arguments["x-dead-letter-routing-key"] = spec.name
    queue = await channel.declare_queue(spec.name, durable=True, arguments=arguments)
    for key in routing_keys:
        await queue.bind(events, routing_key=key)
    return queue


async def declare_event_topology(channel: AbstractChannel, spec: EventQueueSpec) -> None:
    """The controller's event queue: every event (`#`); overflow drops the oldest into a counted dead-letter queue."""
    try:
        dropped = await channel.declare_exchange(DROPPED_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_queue(
            spec.dropped_queue,
            durable=True,
            arguments={"x-expires": spec.expires_s * 1000, "x-max-length": 10_000, "x-overflow": "drop-head"},
        )
        await dead.bind(dropped, routing_key=spec.name)
        await declare_event_queue(channel, spec, dead_letter_exchange=DROPPED_EXCHANGE)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {spec.name!r} or exchange exists with other settings ({exc}); delete the queue "
            f"(rabbitmqctl delete_queue {spec.name}) or give this controller another id"
        ) from exc


async def consume_events(
    channel: AbstractChannel,
    spec: EventQueueSpec,
    handle: BatchHandler,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver decoded messages to `handle` in arrival order, in batches, acking each batch after it is handled.

    The batch is whatever arrived while the previous one was handled, so under load batches grow and
    acks become rare, while an idle stream is handled message by message without delay. `prefetch`
    bounds what the broker hands over. A batch is acked once the reducer's inbox holds it: a crash
    loses the model anyway, and a restarted controller rebuilds it with a reconcile.
    """
    raw = await channel.get_underlay_channel()
    await raw.basic_qos(prefetch_count=spec.prefetch)
    pending: list[aiormq.abc.DeliveredMessage] = []
    wake = anyio.Event()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        nonlocal wake
        pending.append(message)
        wake.set()

    await raw.basic_consume(spec.name, on_message, no_ack=False)
    task_status.started()
    while True:
        if not pending:
            await wake.wait()
            wake = anyio.Event()
            # aiormq hands each delivery over in a task of its own: let those already read run
            # first, so that a busy stream is handled (and acked) in large batches.
            await anyio.lowlevel.checkpoint()
            continue
        batch = pending[:]
        pending.clear()
        decoded = [decode_message(m.body, m.header.properties.content_type) for m in batch]
        await handle(decoded, sum(len(m.body) for m in batch))
        tag = batch[-1].delivery_tag
        if tag is not None:
            await raw.basic_ack(tag, multiple=True)


async def consume_dropped(channel: AbstractChannel, spec: EventQueueSpec, handle: DroppedHandler) -> None:
    """Count the events that overflow pushed out of the event queue (they are gone: make that visible)."""
    queue = await channel.get_queue(spec.dropped_queue, ensure=False)
    async with queue.iterator() as messages:
        async for message in messages:
            decoded = decode_message(message.body, message.content_type)
            await handle(max(1, len(decoded.events) + len(decoded.rejections)))
            await message.ack()


# --------------------------------------------------------------------------- remote control

@dataclass(frozen=True, slots=True)
class ControlResult:
    """Replies per worker. A destination missing from `replies` did not answer: unknown, not refused."""

    method: str
    replies: Mapping[str, Any]
    missing: tuple[str, ...]


class ControlClient:
    """Celery remote control over the pidbox, straight from aio-pika.

    Commands carry the AMQP `expiration` property (the worker ignores the `expires` header, and its
    queue would otherwise keep a command for 300 s), go to named destinations unless a broadcast is
    meant, and collect one reply per worker until a deadline.
    """

    def __init__(self, channel: AbstractChannel, pidbox: AbstractExchange, oid: str) -> None:
        self._channel = channel
        self._pidbox = pidbox
        self._oid = oid
        self._clock = 0
        self._waiting: dict[str, _Collector] = {}

    @classmethod
    async def open(cls, connection: AbstractConnection, controller_id: str) -> ControlClient:
        channel = await connection.channel()
        # Celery's own flags: a mismatch on reply.celery.pidbox makes every worker's replies fail with 406.
        pidbox = await channel.declare_exchange(
            PIDBOX_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False
        )
        replies = await channel.declare_exchange(
            REPLY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=False, auto_delete=False
        )
        oid = f"drainctl.{controller_id}.{uuid.uuid4().hex[:12]}"
        queue = await channel.declare_queue(f"{oid}.reply", exclusive=True, auto_delete=True)
        await queue.bind(replies, routing_key=oid)
        client = cls(channel, pidbox, oid)
        await queue.consume(client._on_reply, no_ack=True)
        return client

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the control channel closes (e.g. the broker closed it after a channel error)."""
        self._channel.close_callbacks.add(lambda *_: callback())

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        ticket = (message.headers or {}).get("ticket")
        collector = self._waiting.get(ticket) if isinstance(ticket, str) else None
        if collector is None:
            return  # a late reply to a command whose deadline passed
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        if isinstance(body, dict):
            for hostname, result in body.items():
                collector.add(str(hostname), result)

    async def publish(
        self, method: str, arguments: Mapping[str, Any], destination: Sequence[str] | None, *, ttl_s: float,
        reply_ticket: str | None = None,
    ) -> None:
        self._clock += 1
        body: dict[str, Any] = {
            "method": method,
            "arguments": dict(arguments),
            "destination": list(destination) if destination is not None else None,
            "pattern": None,
            "matcher": None,
        }
        if reply_ticket is not None:
            body["ticket"] = reply_ticket
            body["reply_to"] = {"exchange": REPLY_EXCHANGE, "routing_key": self._oid}
        message = aio_pika.Message(
            orjson.dumps(body),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"clock": self._clock, "expires": time.time() + ttl_s},
            expiration=timedelta(seconds=ttl_s),
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        try:
            await self._pidbox.publish(message, routing_key="")
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise ControlError(f"cannot send {method!r}: {exc}") from exc

    async def call_many(
        self,
        calls: Sequence[tuple[str, Mapping[str, Any]]],
        destination: Sequence[str] | None,
        *,
        timeout_s: float,
    ) -> list[ControlResult]:
        """Send several commands in order (a worker handles them in that order) and collect replies.

        Targeted calls return as soon as every destination answered every command; a broadcast
        waits out the deadline, since nobody knows how many workers will answer.
        """
        collectors = [_Collector(destination) for _ in calls]
        tickets = [uuid.uuid4().hex for _ in calls]
        for ticket, collector in zip(tickets, collectors, strict=True):
            self._waiting[ticket] = collector
        try:
            for (method, arguments), ticket in zip(calls, tickets, strict=True):
                await self.publish(method, arguments, destination, ttl_s=max(timeout_s, 1.0), reply_ticket=ticket)
            with anyio.move_on_after(timeout_s):
                for collector in collectors:
                    await collector.complete.wait()
        finally:
            for ticket in tickets:
                self._waiting.pop(ticket, None)
        if self._channel.is_closed:
            # Replies come on this channel: silence now says nothing about the workers.
            raise ControlError(f"the control channel closed while waiting for replies to {calls[0][0]!r}")
        return [c.result(method) for c, (method, _) in zip(collectors, calls, strict=True)]

    async def call(
        self, method: str, arguments: Mapping[str, Any], destination: Sequence[str] | None, *, timeout_s: float
    ) -> ControlResult:
        return (await self.call_many([(method, arguments)], destination, timeout_s=timeout_s))[0]


class _Collector:
    def __init__(self, destination: Sequence[str] | None) -> None:
        self.expected = frozenset(destination) if destination is not None else None
        self.replies: dict[str, Any] = {}
        self.complete = anyio.Event()

    def add(self, hostname: str, result: Any) -> None:
        if self.expected is not None and hostname not in self.expected:
            return
        self.replies.setdefault(hostname, result)
        if self.expected is not None and self.expected <= self.replies.keys():
            self.complete.set()

    def result(self, method: str) -> ControlResult:
        missing = tuple(sorted(self.expected - self.replies.keys())) if self.expected is not None else ()
        return ControlResult(method, dict(self.replies), missing)


class Leases:
    """One controller at a time acts on a worker: the lease is an exclusive queue
    `drainctl.lock.<hostname>`, held by this controller's connection — released when the drain ends,
    and by RabbitMQ itself when the connection dies, so a crashed controller blocks nobody."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self.held: set[str] = set()

    @staticmethod
    def queue_name(hostname: str) -> str:
        return f"drainctl.lock.{hostname}"

    async def acquire(self, hostname: str) -> bool:
        """True if this controller holds (or now took) the lease; False if another controller does."""
        if hostname in self.held:
            return True
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        try:
            await self._channel.declare_queue(self.queue_name(hostname), exclusive=True, auto_delete=True)
        except aiormq.exceptions.ChannelLockedResource:
            self._channel = None  # the refusal closed the channel
            return False
        self.held.add(hostname)
        return True

    async def release(self, hostname: str) -> None:
        if hostname not in self.held:
            return
        self.held.discard(hostname)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.queue_delete(self.queue_name(hostname))


async def delete_unused_queue(connection: AbstractConnection, name: str) -> None:
    """Delete a queue and the exchange of the same name, only if nothing consumes the queue.

    On a channel of its own: a refusal (the queue is in use) closes that channel, not one that matters.
    """
    try:
        channel = await connection.channel()
        try:
            await channel.queue_delete(name, if_unused=True)
            await channel.exchange_delete(name, if_unused=True)
        finally:
            if not channel.is_closed:
                await channel.close()
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise BrokerError(f"cannot delete {name!r}: {exc}") from exc


async def close_with_queue(connection: AbstractConnection, queue_name: str) -> None:
    """End a short-lived session: delete its private queue, then close the connection. Shielded and bounded
    (5 s), and it never raises: it runs on the way out, after success, failure or cancellation alike."""
    with anyio.move_on_after(5, shield=True):
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            await channel.queue_delete(queue_name)
        with contextlib.suppress(Exception):
            await connection.close()


async def queue_depths(connection: AbstractConnection, names: Sequence[str]) -> dict[str, QueueLoad]:
    """Each queue's ready messages and consumers, by a passive queue.declare (it creates nothing). A queue
    nobody declared yet holds nothing: it counts as empty, with no consumer (its 404 closes the channel,
    so the next queue gets a new one)."""
    depths: dict[str, QueueLoad] = {}
    channel = await connection.channel()
    try:
        for name in names:
            try:
                declared = (await channel.declare_queue(name, passive=True)).declaration_result
            except aiormq.exceptions.ChannelNotFoundEntity:
                depths[name] = QueueLoad(name, 0, 0)
                channel = await connection.channel()
                continue
            depths[name] = QueueLoad(name, declared.message_count or 0, declared.consumer_count or 0)
    finally:
        if not channel.is_closed:
            await channel.close()
    return depths


RECONCILE_METHODS: Final = ("clock", "active", "reserved", "scheduled", "active_queues")


async def reconcile(
    client: ControlClient, destination: Sequence[str] | None, *, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """One reconcile: `clock` first (what the snapshot is as of), then the task lists and queues.

    Returns method replies per worker; a method missing for a worker means it did not answer it.
    """
    results = await client.call_many([(m, {}) for m in RECONCILE_METHODS], destination, timeout_s=timeout_s)
    per_worker: dict[str, dict[str, Any]] = {}
    for result in results:
        for hostname, reply in result.replies.items():
            per_worker.setdefault(hostname, {})[result.method] = reply
    return per_worker


def is_broker_error(exc: BaseException) -> bool:
    return isinstance(exc, aiormq.exceptions.AMQPError | ConnectionError | BrokerError | OSError)
