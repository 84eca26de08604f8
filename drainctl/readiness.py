"""`drainctl entrypoint --ready-file PATH`: a file that exists while the worker consumes (docs/kubernetes.md).

While the worker starts, the entrypoint listens to its worker events (`worker.online` and `worker.heartbeat`
only, on a short-lived queue of its own) and asks it `active_queues` when it hears from it, and once when it
starts listening; one question at a time (heard from again while one is out: once more right after). The
first answer that names a queue writes the file, and the watch closes its connection. An answer is proof
enough: Celery starts consuming its queues before its event loop reads the first remote-control command.
The entrypoint removes the file the moment it gets SIGTERM (before the drain connects to the broker) and
when the worker exits. Decisions: `drainctl.core.readiness.ReadinessWatch`.
"""

from __future__ import annotations

import socket
import uuid
from typing import Final

import anyio
import anyio.abc
import structlog
from aio_pika.abc import AbstractConnection

from drainctl import broker, ready_file
from drainctl.core.readiness import Next, Readiness, ReadinessWatch
from drainctl.redact import redact_url

log = structlog.get_logger("drainctl.entrypoint")

ROUTING_KEYS: Final = ("worker.online", "worker.heartbeat")
QUEUE_EXPIRES_S: Final = 60
QUEUE_MAX_LENGTH: Final = 1_000
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 30.0


class ReadyFile:
    def __init__(self, path: str, hostname: str, url: str, *, reply_timeout_s: float) -> None:
        self.path = path
        self.hostname = hostname
        self.url = url
        self.reply_timeout_s = reply_timeout_s
        self.watch = ReadinessWatch(hostname)
        self._scope: anyio.CancelScope | None = None  # `run`'s, once it runs
        self._wake: anyio.Event | None = None

    def stop(self, reason: str) -> None:
        """A stop signal or the worker's exit: not ready from now on. Never raises (PID 1 must not die here)."""
        self.watch.stop()
        if self._scope is not None:
            self._scope.cancel()
        try:
            removed = ready_file.remove(self.path)
        except OSError as exc:
            log.error("cannot remove the ready file: the pod still looks ready", path=self.path, error=str(exc))
            return
        if removed:
            log.info("not ready: ready file removed", worker=self.hostname, reason=reason, ready_file=self.path)

    async def run(self) -> None:
        """Until the worker is ready or `stop`: broker sessions, retried (the broker may not be up yet)."""
        delay = RETRY_FIRST_S
        self._wake = anyio.Event()
        with anyio.CancelScope() as self._scope:
            while self.watch.state is Readiness.STARTING:
                try:
                    await self._session()
                except Exception as exc:  # the watch must never take the entrypoint down
                    self.watch.lost()
                    log.warning("readiness watch: broker session failed, retrying", worker=self.hostname,
                                broker=redact_url(self.url), error=str(exc) or type(exc).__name__,
                                retry_in_s=delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)

    async def _session(self) -> None:
        connection = await broker.connect(self.url, name=f"drainctl entrypoint-ready {self.hostname}")
        queue_name = f"drainctl.entrypoint-ready.{self.hostname}.{uuid.uuid4().hex[:8]}"
        try:
            async with anyio.create_task_group() as tg:
                await self._listen(connection, queue_name, tg)
                tg.cancel_scope.cancel()
        finally:
            await broker.close_with_queue(connection, queue_name)

    async def _listen(self, connection: AbstractConnection, queue_name: str, tg: anyio.abc.TaskGroup) -> None:
        channel = await connection.channel()
        spec = broker.EventQueueSpec(queue_name, QUEUE_EXPIRES_S, QUEUE_MAX_LENGTH, prefetch=100)
        await broker.declare_event_queue(channel, spec, routing_keys=ROUTING_KEYS)
        await tg.start(broker.consume_events, channel, spec, self._on_batch)
        control = await broker.ControlClient.open(connection, f"entrypoint-ready.{socket.gethostname()}")
        log.info("readiness watch listening", worker=self.hostname, queue=queue_name)
        self._hear(self.hostname)  # it may consume already
        while True:
            assert self._wake is not None
            await self._wake.wait()
            self._wake = anyio.Event()
            result = await control.call("active_queues", {}, [self.hostname], timeout_s=self.reply_timeout_s)
            reply = result.replies.get(self.hostname)
            step = self.watch.answered(reply)
            if step is Next.READY:
                self._write()
                return
            log.info("the worker does not consume yet", worker=self.hostname,
                     reply="none in time" if reply is None else reply)
            if step is Next.ASK:  # heard from meanwhile
                self._wake.set()

    def _write(self) -> None:
        queues = ",".join(self.watch.queues)
        try:
            ready_file.write(self.path, f"{self.hostname} consumes {queues}\n")
        except OSError as exc:
            log.error("cannot write the ready file: the pod stays not ready", path=self.path, error=str(exc))
            return
        log.info("ready: the worker consumes", worker=self.hostname, queues=list(self.watch.queues),
                 ready_file=self.path)

    def _hear(self, hostname: str) -> None:
        if self.watch.heard(hostname) is Next.ASK and self._wake is not None:
            self._wake.set()

    async def _on_batch(self, batch: broker.EventBatch, _size: int) -> None:
        for decoded in batch:
            for event in decoded.events:
                self._hear(event.hostname)
