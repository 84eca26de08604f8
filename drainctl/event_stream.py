"""The event stream: Celery events from the controller's queue, read by py-amqp in a thread of its own.

Why not aio-pika, which the rest of the broker shell uses: per delivery, aiormq starts a task, passes
three frames through a queue and pamqp decodes every header property. On the event stream that was
most of the controller's CPU (bench/README.md). py-amqp, Celery's own client, reads the same frames
synchronously; in a thread it hands the event loop whole decoded batches, and the loop only applies them.

Memory is bounded in messages, not in batches: the thread never holds more than `spec.prefetch`
decoded messages that the reducer has not applied yet. It waits for the reducer before it reads on,
so a backlog stays in RabbitMQ, bounded by the queue's `x-max-length` (and counted when it overflows).
Batches are acked once they are in the controller's inbox, together: every ACK_EVERY_S or every quarter
of the prefetch, whichever comes first. A crash loses the model anyway, and a restarted controller
rebuilds it with a reconcile; a session that ends hands what it did not ack to the next one, whose
model ignores events it has already applied (their clocks are not newer).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import amqp
import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from drainctl.amqp_frames import Deliveries, FrameBuffer
from drainctl.broker import EventBatch, EventQueueSpec, TlsFiles
from drainctl.core.events import Decoded, decode_message
from drainctl.errors import BrokerUnavailableError
from drainctl.redact import redact_text, redact_url

# How long one read waits for the first bytes of a batch; a stop request is seen within it.
IDLE_WAIT_S: Final = 0.2
# Once bytes have come and what followed them without waiting is read, how long the rest of the burst
# may take to arrive before the batch is handed over: a few ms of lag for one wakeup per burst instead
# of one per message. A backlog fills the batch without it.
GATHER_S: Final = 0.002
HEARTBEAT_S: Final = 60
HEARTBEAT_TICK_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 30.0
# Acks are sent at most this often (one per batch was a tenth of the thread's time at 1,000 workers).
ACK_EVERY_S: Final = 0.1
# Bytes asked for by one system call: a backlog is read in few calls.
RECV_BYTES: Final = 65536

# The loop side: hand a decoded batch (and its size in bytes) to the reducer's inbox.
BatchHandler = Callable[[EventBatch, int], Coroutine[Any, Any, None]]
# The same without waiting: False when the inbox is full (the batch then goes through BatchHandler).
BatchHandlerNow = Callable[[EventBatch, int], bool]


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    userid: str
    password: str
    virtual_host: str
    ssl: dict[str, Any] | bool


def _target(url: str, tls: TlsFiles | None) -> _Target:
    """What py-amqp needs to connect where aio-pika would, from the same URL and TLS files."""
    parts = urlsplit(url)
    secure = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if secure else 5672)
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    options: dict[str, Any] | bool = False
    if secure:
        tls = tls or TlsFiles()
        options = {"server_hostname": host, "cert_reqs": ssl.CERT_REQUIRED,
                   "ca_certs": tls.ca_file or ssl.get_default_verify_paths().cafile}
        if tls.cert_file:
            options |= {"certfile": tls.cert_file, "keyfile": tls.key_file}
    return _Target(f"{host}:{port}", unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                   vhost, options)


class _Window:
    """Messages handed to the reducer and not applied yet: the thread waits while there are too many."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._room = threading.Condition()

    def take(self, n: int, stopping: threading.Event) -> bool:
        """Wait until `n` more fit (a batch larger than the limit fits an empty window).

        False once the stream is stopping: a session that has ended hands over nothing more, and what it
        read but did not ack goes back to the queue for the next one.
        """
        with self._room:
            while not stopping.is_set():
                if not self._held or self._held + n <= self.limit:
                    self._held += n
                    return True
                self._room.wait(IDLE_WAIT_S)
            return False

    def release(self, n: int) -> None:
        with self._room:
            self._held -= n
            self._room.notify()


class _Pending:
    """The messages read since the last handoff, decoded as they arrive: the raw message is not kept."""

    def __init__(self) -> None:
        self.batch: list[Decoded] = []
        self.nbytes = 0
        self.last_tag = 0

    def add(self, tag: int, content_type: str | None, body: bytes) -> None:
        self.batch.append(decode_message(body, content_type))
        self.nbytes += len(body)
        self.last_tag = tag

    def add_message(self, message: amqp.Message) -> None:
        """A delivery py-amqp read itself (while the consumer was being set up)."""
        self.add(message.delivery_tag, message.properties.get("content_type"), message.body)

    def take(self) -> tuple[list[Decoded], int, int]:
        """The batch, its size in bytes and the delivery tag that acks all of it; empty again."""
        taken = self.batch, self.nbytes, self.last_tag
        self.batch, self.nbytes = [], 0
        return taken


@dataclass(frozen=True, slots=True)
class _Handoff:
    """From the thread to the loop: a batch, in order; the thread waits until the loop has it."""

    handle: BatchHandler
    handle_now: BatchHandlerNow | None

    def __call__(self, batch: EventBatch, nbytes: int) -> None:
        if self.handle_now is None or not anyio.from_thread.run_sync(self.handle_now, batch, nbytes):
            anyio.from_thread.run(self.handle, batch, nbytes)


class EventStream:
    """Consume `spec.name` until cancelled; decoded batches go to `handle` in arrival order."""

    def __init__(self, url: str, tls: TlsFiles | None, spec: EventQueueSpec, *, name: str) -> None:
        self.url = url
        self.spec = spec
        self.name = name
        self._target = _target(url, tls)
        self._window = _Window(spec.prefetch)

    def applied(self, messages: int) -> None:
        """The reducer applied a batch of `messages`: the thread may read that many more."""
        self._window.release(messages)

    async def run(self, handle: BatchHandler, handle_now: BatchHandlerNow | None = None, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """`handle_now`, when given, is tried first: a plain call on the loop costs a fraction of running a
        coroutine there, once per batch."""
        consuming = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._in_thread, _Handoff(handle, handle_now), consuming)
            await consuming.wait()
            task_status.started()

    async def _in_thread(self, handle: _Handoff, consuming: anyio.Event) -> None:
        stopping = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._consume, handle, consuming, stopping, abandon_on_cancel=True)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise BrokerUnavailableError(
                f"event stream from {redact_url(self.url)} ended: {redact_text(str(exc)) or type(exc).__name__}"
            ) from exc
        finally:
            stopping.set()

    def _consume(self, handle: _Handoff, consuming: anyio.Event, stopping: threading.Event) -> None:
        t = self._target
        connection = amqp.Connection(
            t.host, userid=t.userid, password=t.password, virtual_host=t.virtual_host, ssl=t.ssl,
            heartbeat=HEARTBEAT_S, connect_timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": self.name},
        )
        try:
            connection.connect()
            channel = connection.channel()
            # Bodies stay bytes: orjson reads them directly.
            channel.auto_decode = False
            channel.basic_qos(0, self.spec.prefetch, False)
            pending = _Pending()
            channel.basic_consume(self.spec.name, callback=pending.add_message, no_ack=False)
            quarter = max(1, self._window.limit // 4)
            reader = _Reader(connection, channel.channel_id, pending, quarter)
            acks = _Acks(channel, quarter)
            anyio.from_thread.run_sync(consuming.set)
            ticked = time.monotonic()
            try:
                while not stopping.is_set():
                    reader.read()
                    if time.monotonic() - ticked >= HEARTBEAT_TICK_S:
                        # Sends a heartbeat when due; raises when the broker has been silent too long.
                        connection.heartbeat_tick()
                        ticked = time.monotonic()
                    if pending.batch:
                        batch, nbytes, last = pending.take()
                        if not self._window.take(len(batch), stopping):
                            return
                        handle(batch, nbytes)
                        acks.handed_over(last, len(batch))
                    acks.send_if_due()
            finally:
                reader.give_back()
                with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
                    acks.send_now()  # what the loop has, before the connection closes
        finally:
            stopping.set()
            _close(connection)


class _Acks:
    """What was handed over and not acked yet: acked together, when due."""

    def __init__(self, channel: amqp.Channel, every_messages: int) -> None:
        self._channel = channel
        self._every_messages = every_messages
        self._tag = 0
        self._messages = 0
        self._sent_at = time.monotonic()

    def handed_over(self, tag: int, messages: int) -> None:
        self._tag = tag
        self._messages += messages

    def send_if_due(self) -> None:
        if self._messages and (self._messages >= self._every_messages
                               or time.monotonic() - self._sent_at >= ACK_EVERY_S):
            self.send_now()

    def send_now(self) -> None:
        if self._messages and self._channel.is_open:
            self._channel.basic_ack(self._tag, multiple=True)
        self._messages = 0
        self._sent_at = time.monotonic()


class _Reader:
    """Reads the connection's socket in large chunks; the consumer's deliveries go to `pending`, every other
    frame to py-amqp (`drainctl.amqp_frames`).

    Writes (acks, heartbeats) stay py-amqp's, in blocking mode as it expects; only reads are done here.
    """

    def __init__(self, connection: amqp.Connection, channel: int, pending: _Pending, batch_limit: int) -> None:
        transport = connection.transport
        self._connection = connection
        self._transport = transport
        self._sock = transport.sock
        self._on_frame = Deliveries(channel, pending.add, connection.on_inbound_frame, self._count_frame).feed
        self._pending = pending
        self._batch_limit = batch_limit
        # Bytes py-amqp read ahead while the consumer was set up belong to the stream.
        self._frames = FrameBuffer(transport._read_buffer)
        transport._read_buffer = b""

    def read(self) -> None:
        """Read until a batch is complete: the bytes of one burst, waiting at most IDLE_WAIT_S for its start
        and GATHER_S for its rest, up to a quarter of the window (the thread reads the next batch while the
        reducer applies this one)."""
        self._dispatch()
        sock, pending, limit = self._sock, self._pending, self._batch_limit
        try:
            if not pending.batch:
                sock.settimeout(IDLE_WAIT_S)
                if not self._recv():
                    return
            sock.settimeout(0.0)
            gathered = False
            while True:
                while len(pending.batch) < limit and self._recv():
                    pass
                if gathered or len(pending.batch) >= limit:
                    return
                time.sleep(GATHER_S)
                gathered = True
        finally:
            # Writes (acks, heartbeats) block, as py-amqp expects.
            sock.settimeout(None)

    def give_back(self) -> None:
        """Leave what was read and not dispatched to py-amqp, which reads on while the connection closes."""
        self._transport._read_buffer = self._frames.take_rest() + self._transport._read_buffer

    def _recv(self) -> bool:
        """One `recv` within the socket's timeout, its whole frames dispatched; False when nothing had come."""
        try:
            data = self._sock.recv(RECV_BYTES)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return False
        if not data:
            raise OSError("Server unexpectedly closed connection")
        self._frames.feed(data)
        self._dispatch()
        return True

    def _count_frame(self) -> None:
        self._connection.bytes_recv += 1

    def _dispatch(self) -> None:
        on_frame = self._on_frame
        for frame in self._frames.frames():
            on_frame(frame)


def _close(connection: amqp.Connection) -> None:
    try:
        if connection.connected:
            connection.close()
        else:
            connection.collect()
    except (TimeoutError, OSError, amqp.exceptions.AMQPError):
        connection.collect()
