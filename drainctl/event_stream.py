"""The event stream: Celery events from the controller's queue, read by py-amqp in a thread of its own.

Why not aio-pika, which the rest of the broker shell uses: per delivery, aiormq starts a task, passes
three frames through a queue and pamqp decodes every header property. On the event stream that was
most of the controller's CPU (bench/README.md). py-amqp, Celery's own client, reads the same frames
synchronously; in a thread it hands the event loop whole decoded batches, and the loop only applies them.

Memory is bounded in messages, not in batches: the thread never holds more than `spec.prefetch`
decoded messages that the reducer has not applied yet. It waits for the reducer before it reads on,
so a backlog stays in RabbitMQ, bounded by the queue's `x-max-length` (and counted when it overflows).
A batch is acked once it is in the controller's inbox: a crash loses the model anyway, and a restarted
controller rebuilds it with a reconcile.
"""

from __future__ import annotations

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

from drainctl.broker import EventBatch, EventQueueSpec, TlsFiles
from drainctl.core.events import Decoded, decode_message
from drainctl.errors import BrokerUnavailableError
from drainctl.redact import redact_text, redact_url

# How long one read waits for the first message of a batch; a stop request is seen within it.
IDLE_WAIT_S: Final = 0.2
# Once a message has come, how long to wait for more before the batch is handed over: a busy stream
# is handed over in large batches, an idle one message by message.
MORE_WAIT_S: Final = 0.0005
HEARTBEAT_S: Final = 60
HEARTBEAT_TICK_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 30.0
# Enough for a few messages, small enough that keeping the rest of a read costs little to copy.
READ_AHEAD_BYTES: Final = 16384

# The loop side: hand a decoded batch (and its size in bytes) to the reducer's inbox.
BatchHandler = Callable[[EventBatch, int], Coroutine[Any, Any, None]]


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

    def add(self, message: amqp.Message) -> None:
        self.batch.append(decode_message(message.body, message.properties.get("content_type")))
        self.nbytes += len(message.body)
        self.last_tag = message.delivery_tag

    def take(self) -> tuple[list[Decoded], int, int]:
        """The batch, its size in bytes and the delivery tag that acks all of it; empty again."""
        taken = self.batch, self.nbytes, self.last_tag
        self.batch, self.nbytes = [], 0
        return taken


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

    async def run(self, handle: BatchHandler, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        consuming = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._in_thread, handle, consuming)
            await consuming.wait()
            task_status.started()

    async def _in_thread(self, handle: BatchHandler, consuming: anyio.Event) -> None:
        stopping = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._consume, handle, consuming, stopping, abandon_on_cancel=True)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise BrokerUnavailableError(
                f"event stream from {redact_url(self.url)} ended: {redact_text(str(exc)) or type(exc).__name__}"
            ) from exc
        finally:
            stopping.set()

    def _consume(self, handle: BatchHandler, consuming: anyio.Event, stopping: threading.Event) -> None:
        t = self._target
        connection = amqp.Connection(
            t.host, userid=t.userid, password=t.password, virtual_host=t.virtual_host, ssl=t.ssl,
            heartbeat=HEARTBEAT_S, connect_timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": self.name},
        )
        try:
            connection.connect()
            _read_ahead(connection.transport)
            channel = connection.channel()
            # Bodies stay bytes: orjson reads them directly.
            channel.auto_decode = False
            channel.basic_qos(0, self.spec.prefetch, False)
            pending = _Pending()
            channel.basic_consume(self.spec.name, callback=pending.add, no_ack=False)
            anyio.from_thread.run_sync(consuming.set)
            ticked = time.monotonic()
            while not stopping.is_set():
                self._read(connection, pending)
                if time.monotonic() - ticked >= HEARTBEAT_TICK_S:
                    # Sends a heartbeat when due; raises when the broker has been silent too long.
                    connection.heartbeat_tick()
                    ticked = time.monotonic()
                if pending.batch:
                    batch, nbytes, last = pending.take()
                    if not self._window.take(len(batch), stopping):
                        return
                    anyio.from_thread.run(handle, batch, nbytes)
                    channel.basic_ack(last, multiple=True)
        finally:
            stopping.set()
            _close(connection)

    def _read(self, connection: amqp.Connection, pending: _Pending) -> None:
        """Read until a batch is complete: whatever arrives without waiting, up to the window's size.

        The socket's own timeout bounds each wait. `drain_events(timeout=...)` would set and restore
        it around every frame: two system calls and a context manager per frame, which were most of
        the thread's time.
        """
        transport = connection.transport
        sock = transport.sock
        # `blocking_read` without its per-frame context manager: a frame in, dispatched.
        read_frame, on_frame = transport.read_frame, connection.on_inbound_frame
        sock.settimeout(IDLE_WAIT_S)
        try:
            # A quarter of the window: the thread reads the next batch while the reducer applies this one.
            while len(pending.batch) < max(1, self._window.limit // 4):
                before = len(pending.batch)
                try:
                    on_frame(read_frame())
                except TimeoutError:
                    return
                if before == 0 and pending.batch:
                    sock.settimeout(MORE_WAIT_S)
        finally:
            # Writes (acks, heartbeats) block, as py-amqp expects.
            sock.settimeout(None)


def _read_ahead(transport: Any) -> None:
    """Let the transport read up to READ_AHEAD_BYTES per system call instead of exactly one frame part.

    py-amqp reads each frame's header and then its payload with a `recv` each: six system calls (and six
    polls, under a timeout) per delivered message. Its reader keeps whatever a read returns beyond what
    it asked for, and serves the next reads from it, so a larger read is all it takes.
    """
    recv = transport._quick_recv
    transport._quick_recv = lambda n: recv(max(n, READ_AHEAD_BYTES))


def _close(connection: amqp.Connection) -> None:
    try:
        if connection.connected:
            connection.close()
        else:
            connection.collect()
    except (TimeoutError, OSError, amqp.exceptions.AMQPError):
        connection.collect()
