"""`drainctl entrypoint -- <celery worker command>`: drain one's own worker on SIGTERM, no controller.

Runs as PID 1 of a worker container (or as a plain parent process). It starts the worker as a child
in a process group of its own, forwards every signal but SIGTERM to it, and reaps every child (as
PID 1 must: orphans are re-parented to it). SIGTERM starts a drain of that one worker:

1. connect to RabbitMQ and only now bind a short-lived event queue to `celeryev` (worker and task
   event routing keys only);
2. turn task events on (`enable_events`), take a targeted snapshot (`clock`, `active`, `reserved`,
   `scheduled`, `active_queues`) and merge it into a `Cluster` that the events then keep current;
3. `cancel_consumer` for each queue the worker consumes;
4. wait on events until the worker runs nothing and holds nothing prefetched (ETA tasks do not
   count), confirm with one targeted reconcile, then SIGTERM the worker (a warm shutdown with
   nothing left to finish) and exit with its exit code.

If the broker cannot be reached (or is lost mid-drain), SIGTERM is forwarded as is. Decisions are
made by the pure `drainctl.core.entrypoint_drain.EntrypointDrain`; this module only does the I/O.

With `--ready-file PATH` the entrypoint also says when the worker consumes, for a readiness probe
(`drainctl.readiness`): the file appears once the worker answers that it consumes its queues, and goes
the moment a stop signal arrives, before anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc
import structlog
from aio_pika.abc import AbstractConnection

from drainctl import broker, ready_file
from drainctl.core.commands import Reconcile
from drainctl.core.entrypoint_drain import Action, EntrypointDrain, Phase, WorkerCommand, held, worker_command
from drainctl.core.model import Cluster
from drainctl.core.snapshot import build_snapshot
from drainctl.readiness import ReadyFile
from drainctl.redact import redact_url

log = structlog.get_logger("drainctl.entrypoint")

# Passed through to the worker as they are. SIGTERM is the drain; SIGCHLD is ours (reaping).
FORWARDED: Final = (
    signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
)
# Celery names an event's routing key after its type; `task.sent` (from clients) and custom events
# are left out. Routing keys do not carry the hostname: other workers' events are filtered here.
EVENT_ROUTING_KEYS: Final = (
    "worker.online", "worker.heartbeat", "worker.offline",
    "task.multi", "task.received", "task.started",
    "task.succeeded", "task.failed", "task.rejected", "task.revoked", "task.retried",
)
QUEUE_EXPIRES_S: Final = 60
QUEUE_MAX_LENGTH: Final = 100_000
CONNECT_TIMEOUT_S: Final = 10.0
SNAPSHOT_ATTEMPTS: Final = 3
MAX_REAPED_PER_SIGNAL: Final = 10_000
# Signals that stop the worker: the ready file goes at once (SIGTERM starts the drain, the others are forwarded).
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class DrainFailed(Exception):
    """The drain cannot be carried out; SIGTERM is forwarded instead."""


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Entrypoint:
    def __init__(self, command: WorkerCommand, url: str, *, grace_s: float | None = None,
                 reply_timeout_s: float = 2.0, ready_path: str | None = None) -> None:
        self.command = command
        self.hostname = command.nodename
        self.url = url
        self.grace_s = grace_s
        self.reply_timeout_s = reply_timeout_s
        self.flow = EntrypointDrain()
        self.cluster = Cluster()
        self.pid = 0
        self.exit_code: int | None = None
        self.exited = anyio.Event()
        self._changed = anyio.Event()
        self._reconcile_wanted = False
        self.ready = ReadyFile(ready_path, self.hostname, url, reply_timeout_s=reply_timeout_s) if ready_path else None

    # ------------------------------------------------------------------ process
    async def run(self) -> int:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGCHLD, *FORWARDED) as signals:
            # The receiver is in place before the child exists: its SIGCHLD cannot be missed.
            try:
                self.pid = self._spawn()
            except OSError as exc:
                log.error("cannot start the worker", command=list(self.command.argv), error=str(exc))
                return 127 if isinstance(exc, FileNotFoundError) else 126
            log.info("worker started", worker=self.hostname, pid=self.pid, hostname_injected=self.command.injected,
                     pid1=os.getpid() == 1)
            self._reap()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._on_signals, signals, tg)
                if self.ready is not None:
                    tg.start_soon(self.ready.run)
                await self.exited.wait()
                if self.ready is not None:
                    self.ready.stop("the worker exited")
                tg.cancel_scope.cancel()
        assert self.exit_code is not None
        log.info("worker exited", worker=self.hostname, pid=self.pid, exit_code=self.exit_code,
                 phase=self.flow.phase.value)
        return self.exit_code

    def _spawn(self) -> int:
        argv = list(self.command.argv)
        # Its own process group: a terminal's ^C reaches it once (forwarded), not twice.
        return os.posix_spawnp(
            argv[0], argv, dict(os.environ), setpgroup=0, setsigmask=(),
            setsigdef=(signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, *FORWARDED),
        )

    def _reap(self) -> None:
        for _ in range(MAX_REAPED_PER_SIGNAL):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.exit_code = exit_code(status)
                self.exited.set()
            else:
                log.debug("reaped an orphan", pid=pid, exit_code=exit_code(status))

    def _kill(self, signum: int) -> None:
        if self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def _on_signals(self, signals: Any, tg: anyio.abc.TaskGroup) -> None:
        async for signum in signals:
            if signum in STOP_SIGNALS and self.ready is not None:
                self.ready.stop(signal.Signals(signum).name)
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGTERM:
                action = self.flow.sigterm()
                if action is Action.DRAIN:
                    log.info("SIGTERM: draining the worker before stopping it", worker=self.hostname)
                    tg.start_soon(self._drain)
                else:
                    log.warning("SIGTERM again: forwarding it to the worker, the drain is abandoned",
                                worker=self.hostname)
                    self._act(action)
            else:
                log.info("signal forwarded", signal=signal.Signals(signum).name, worker=self.hostname)
                self._kill(signum)

    def _act(self, action: Action, **detail: Any) -> None:
        if action is Action.STOP:
            log.info("sending SIGTERM to the worker (warm shutdown)", worker=self.hostname, **detail)
            self._kill(signal.SIGTERM)
        elif action is Action.FORWARD:
            self._kill(signal.SIGTERM)

    # ------------------------------------------------------------------ drain
    async def _drain(self) -> None:
        started = time.monotonic()
        connection: AbstractConnection | None = None
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                connection = await broker.connect(self.url, name=f"drainctl entrypoint {self.hostname}")
        except Exception as exc:  # BrokerUnavailableError, TimeoutError, anything: PID 1 must not die here
            log.warning("broker unreachable: forwarding SIGTERM to the worker without a drain",
                        worker=self.hostname, broker=redact_url(self.url), error=str(exc) or type(exc).__name__)
            self._act(self.flow.failed())
            return
        queue_name = f"drainctl.entrypoint.{self.hostname}.{uuid.uuid4().hex[:8]}"
        try:
            async with anyio.create_task_group() as tg:
                await self._session(connection, queue_name, tg, started)
                tg.cancel_scope.cancel()
        except Exception as exc:
            expected = isinstance(exc, DrainFailed) or broker.is_broker_error(exc)
            log.warning("drain failed: forwarding SIGTERM to the worker", worker=self.hostname,
                        error=_describe(exc), exc_info=not expected)
            self._act(self.flow.failed())
        finally:
            await broker.close_with_queue(connection, queue_name)

    async def _session(self, connection: AbstractConnection, queue_name: str, tg: anyio.abc.TaskGroup,
                       started: float) -> None:
        channel = await connection.channel()
        spec = broker.EventQueueSpec(queue_name, QUEUE_EXPIRES_S, QUEUE_MAX_LENGTH, prefetch=1000)
        # Short-lived (x-expires), and only the keys of worker and task events.
        await broker.declare_event_queue(channel, spec, routing_keys=EVENT_ROUTING_KEYS)
        await tg.start(broker.consume_events, channel, spec, self._on_batch)
        control = await broker.ControlClient.open(connection, f"entrypoint.{socket.gethostname()}")
        log.info("event queue bound", queue=queue_name, worker=self.hostname)
        reply = await control.call("enable_events", {}, [self.hostname], timeout_s=self.reply_timeout_s)
        if not await self._snapshot(control, SNAPSHOT_ATTEMPTS):
            raise DrainFailed("the worker does not answer remote control")
        self._reconcile_wanted = False
        worker = self.cluster.worker(self.hostname)
        assert worker is not None
        queues = worker.queues or ()
        log.info("snapshot", worker=self.hostname, queues=list(queues), held=list(held(worker) or ()),
                 task_events=reply.replies.get(self.hostname))
        await self._cancel(control, queues)
        self._changed.set()
        with anyio.move_on_after(self.grace_s if self.grace_s is not None else float("inf")) as budget:
            await self._wait_drained(control)
        if budget.cancelled_caught:
            worker = self.cluster.worker(self.hostname)
            self._act(self.flow.deadline(), reason=f"--grace {self.grace_s}s passed",
                      still_held=list(held(worker) or ()))

    async def _wait_drained(self, control: broker.ControlClient) -> None:
        """On events only: every batch (and merged snapshot) sets `_changed`. Bounded by the worker's
        exit (which cancels this), the supervisor's kill timeout and `--grace`."""
        while self.flow.phase is not Phase.STOPPING:
            await self._changed.wait()
            self._changed = anyio.Event()
            if self._reconcile_wanted:  # the model asked (a heartbeat disagreed with it)
                self._reconcile_wanted = False
                await self._snapshot(control, 1)
            action = self.flow.observed(self.cluster.worker(self.hostname))
            if action is not Action.CONFIRM:
                continue
            answered = await self._snapshot(control, 1)
            worker = self.cluster.worker(self.hostname)
            if answered and worker is not None and worker.queues:
                log.warning("the worker still consumes: cancelling again", worker=self.hostname,
                            queues=list(worker.queues))
                await self._cancel(control, worker.queues)
            action = self.flow.confirmed(answered, worker)
            if action is Action.STOP:
                self._act(action, reason="drained: nothing running, nothing prefetched (confirmed)")
            elif action is Action.FORWARD:
                log.warning("the worker does not answer the confirmation: forwarding SIGTERM", worker=self.hostname)
                self._act(action)
            else:
                log.info("confirmation found work: waiting on", worker=self.hostname,
                         held=list(held(worker) or ()), answered=answered)

    async def _cancel(self, control: broker.ControlClient, queues: Sequence[str]) -> None:
        results = await control.call_many([("cancel_consumer", {"queue": q}) for q in queues], [self.hostname],
                                          timeout_s=self.reply_timeout_s)
        replies = {q: r.replies.get(self.hostname, "no reply") for q, r in zip(queues, results, strict=True)}
        log.info("cancel_consumer sent", worker=self.hostname, replies=replies)

    async def _snapshot(self, control: broker.ControlClient, attempts: int) -> bool:
        for _ in range(attempts):
            replies = await broker.reconcile(control, [self.hostname], timeout_s=self.reply_timeout_s)
            snapshot = build_snapshot(self.hostname, replies.get(self.hostname, {}))
            if snapshot.tasks is not None and snapshot.clock is not None:
                self.cluster.merge(snapshot, time.monotonic())
                self._changed.set()
                return True
        return False

    async def _on_batch(self, batch: broker.EventBatch, _size: int) -> None:
        now = time.monotonic()
        for decoded in batch:
            for event in decoded.events:
                if event.hostname != self.hostname:
                    continue
                commands, _ = self.cluster.apply(event, now)
                if any(isinstance(c, Reconcile) for c in commands):
                    self._reconcile_wanted = True
        self._changed.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str], url: str, *, grace_s: float | None = None, reply_timeout_s: float = 2.0,
         ready_path: str | None = None) -> int:
    """Raises ValueError for a command whose node name cannot be told, or a ready file that cannot be written."""
    command = worker_command(argv, socket.gethostname())
    if ready_path is not None:
        ready_file.prepare(ready_path)
    entrypoint = Entrypoint(command, url, grace_s=grace_s, reply_timeout_s=reply_timeout_s, ready_path=ready_path)
    return anyio.run(entrypoint.run)
