"""The broker session: connect, consume events, open remote control, and reconnect when any of it fails.

Events come through `drainctl.event_stream` (py-amqp, in a thread, on a connection of its own); remote
control, the drain leases and the dropped-events count through aio-pika on the session's connection.

Everything it learns goes to the reducer as an input: `BrokerUp` once consuming, each event batch,
each dead-lettered overflow, and `BrokerDown` with the reason when the session ends. While connected it
offers the remote-control client, the connection and the drain leases to the command executor.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import structlog
from aio_pika.abc import AbstractConnection

from drainctl import broker
from drainctl.config import Settings
from drainctl.errors import BrokerUnavailableError, DrainctlError
from drainctl.event_stream import EventStream
from drainctl.inputs import BrokerDown, BrokerUp, DroppedIn, EventsIn, Input
from drainctl.readmodel import IngestStats
from drainctl.redact import redact_text, redact_url

log = structlog.get_logger("drainctl")

# A session that lasted this long was healthy: the next failure starts the backoff afresh.
HEALTHY_SESSION_S = 30.0
FIRST_BACKOFF_S = 0.5


class BrokerSession:
    def __init__(
        self, settings: Settings, broker_url: str, event_queue: broker.EventQueueSpec, stats: IngestStats,
        send: Callable[[Input], Awaitable[None]], send_now: Callable[[Input], None], clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.broker_url = broker_url
        self.event_queue = event_queue
        self.stats = stats
        self._send = send
        # Raises anyio.WouldBlock when the inbox is full.
        self._send_now = send_now
        self._clock = clock
        # Set while connected, None otherwise: the executor reads them at the moment it acts.
        self.control: broker.ControlClient | None = None
        self.connection: AbstractConnection | None = None
        self.leases: broker.Leases | None = None

    async def run(self) -> None:
        """Stay connected for as long as the controller runs, with a jittered, capped exponential backoff."""
        backoff = FIRST_BACKOFF_S
        maximum = self.settings.broker.reconnect_max_backoff_s
        first = True
        while True:
            started = self._clock()
            reason = await self._one_session(first)
            if self.stats.connected:
                first = False
            was_connected = self.stats.connected
            self.control = None
            self.connection = None
            self.leases = None
            self.stats.connected = False
            await self._send(BrokerDown(reason))
            if self._clock() - started > HEALTHY_SESSION_S:
                backoff = FIRST_BACKOFF_S
            delay = min(backoff, maximum) * random.uniform(0.8, 1.2)
            log.warning("broker unavailable; retrying", reason=reason, retry_in_s=round(delay, 2),
                        was_connected=was_connected)
            await anyio.sleep(delay)
            backoff = min(backoff * 2, maximum)

    async def _one_session(self, first: bool) -> str:
        """One connection from open to close; the reason it ended (never an exception)."""
        try:
            await self._connected(first)
        except Exception as exc:  # an aio-pika/aiormq/py-amqp failure of any shape ends this session only
            return _reason(exc)
        return "connection closed"

    async def _connected(self, first: bool) -> None:
        b = self.settings.broker
        tls = broker.TlsFiles(*(str(p) if p is not None else None for p in (b.ca_file, b.cert_file, b.key_file)))
        connection = await broker.connect(self.broker_url, tls, name=f"drainctl {self.settings.controller.id}")
        try:
            closed = anyio.Event()
            connection.close_callbacks.add(lambda *_: closed.set())
            channel = await connection.channel()
            await broker.declare_event_topology(channel, self.event_queue)
            control = await broker.ControlClient.open(connection, self.settings.controller.id)
            # Without its channel, no question would ever be answered: start the session afresh instead.
            control.on_close(closed.set)
            dropped_channel = await connection.channel()
            stream = EventStream(self.broker_url, tls, self.event_queue,
                                 name=f"drainctl-events {self.settings.controller.id}")

            async def on_batch(batch: broker.EventBatch, nbytes: int) -> None:
                await self._send(EventsIn(batch, nbytes, stream.applied))

            def on_batch_now(batch: broker.EventBatch, nbytes: int) -> bool:
                try:
                    self._send_now(EventsIn(batch, nbytes, stream.applied))
                except anyio.WouldBlock:
                    return False
                return True

            async with anyio.create_task_group() as tg:
                await tg.start(stream.run, on_batch, on_batch_now)
                tg.start_soon(broker.consume_dropped, dropped_channel, self.event_queue, self._on_dropped)
                self.control = control
                self.connection = connection
                self.leases = broker.Leases(connection)
                self.stats.connected = True
                self.stats.connects += 1
                log.info("broker connected", broker=redact_url(self.broker_url), first=first)
                await self._send(BrokerUp())
                await closed.wait()
                tg.cancel_scope.cancel()
            raise BrokerUnavailableError("the broker closed the connection")
        finally:
            with anyio.move_on_after(5, shield=True):
                await connection.close()

    async def _on_dropped(self, events: int) -> None:
        await self._send(DroppedIn(events))


def _reason(exc: Exception) -> str:
    """Why a session ended, in words: the first failure inside task groups, never a password."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, DrainctlError):
        return str(exc)
    return redact_text(f"{type(exc).__name__}: {exc}")
