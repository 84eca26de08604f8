"""The command executor: the one place where the core's commands become I/O.

Each command runs in its own task of the controller's task group and reports back as an input. A
command that needs the broker while it is down is dropped: its asker asks again after its retry interval.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from typing import assert_never

import anyio.abc
import structlog
from aio_pika.abc import AbstractConnection

from drainctl import broker
from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    CancelStandby,
    Command,
    DeleteStandby,
    EnableEvents,
    EscalateWorker,
    JournalCanary,
    JournalCancel,
    JournalEngines,
    JournalRollout,
    QueryQueues,
    QueryRegistered,
    Reconcile,
    ShutdownWorker,
    StartWorker,
    StopWorker,
    SwitchToPool,
)
from drainctl.core.drain import DrainBook
from drainctl.core.quiet import standby_queue
from drainctl.core.rollout import Fleet
from drainctl.errors import DrainctlError
from drainctl.inputs import CommandFailed, Input, LeaseDeniedIn, QueuesRepliedIn
from drainctl.pool_service import PoolService
from drainctl.redact import redact_text
from drainctl.remote import WorkerQuestions
from drainctl.runtime.base import WorkerHandle, WorkerRuntime
from drainctl.session import BrokerSession

log = structlog.get_logger("drainctl")

RemoteCommand = (EnableEvents | CancelConsumers | AddConsumers | QueryQueues | ShutdownWorker | QueryRegistered
                 | SwitchToPool | CancelStandby)


class CommandExecutor:
    def __init__(
        self, session: BrokerSession, pools: PoolService, fleet: Fleet, reply_timeout_s: float,
        send: Callable[[Input], Awaitable[None]], clock: Callable[[], float],
    ) -> None:
        self.session = session
        self.pools = pools
        self.fleet = fleet
        self.reply_timeout_s = reply_timeout_s
        self._send = send
        self._clock = clock
        # Reconciles under way, by target and purpose: the reducer drops a key when it merges the answer.
        self.reconciling: set[tuple[str | None, str]] = set()
        self._taking: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None

    def attach(self, tg: anyio.abc.TaskGroup) -> None:
        """From now on commands run in `tg`; before, they are dropped (a reducer driven on its own)."""
        self._tg = tg

    def execute(self, command: Command) -> None:
        """Turn one core command into I/O. Every command type is matched: none is dropped silently."""
        tg = self._tg
        if tg is None:
            return
        journal = self.pools.journal
        match command:
            case Reconcile():
                self._start_reconcile(command, tg)
            case JournalCancel():
                # Synchronously, before the cancel_consumer that follows it in this same batch.
                if journal is not None:
                    journal.record_cancel(command.hostname, command.rollout_id)
            case JournalRollout():
                rollout = self.fleet.rollout(command.rollout_id)
                if journal is not None and rollout is not None:
                    journal.record_rollout(rollout, time.time() - self._clock())
                    journal.save_pins(self.fleet.pins)
                    journal.save_canary(self.fleet.canary.journal_rows())
            case JournalCanary():
                if journal is not None:
                    journal.save_canary(self.fleet.canary.journal_rows())
            case JournalEngines():
                if journal is not None:
                    journal.save_engines(self.fleet.engines.states)
            case StartWorker():
                tg.start_soon(self._start_worker, command)
            case StopWorker() | EscalateWorker():
                handle = self.pools.managed.get(command.hostname)
                # The worker's own runtime: a container must be stopped by the engine that runs it.
                runtime = self.pools.runtimes.get(handle.runtime) if handle is not None else None
                if handle is not None and runtime is not None:
                    tg.start_soon(self._runtime_command, command, handle, runtime)
            case DeleteStandby():
                connection = self.session.connection
                if connection is not None:
                    tg.start_soon(self._delete_standby, command.hostname, connection)
            case (EnableEvents() | CancelConsumers() | AddConsumers() | QueryQueues() | ShutdownWorker()
                  | QueryRegistered() | SwitchToPool() | CancelStandby()):
                self._execute_remote(command, tg)
            case _:
                assert_never(command)

    def _execute_remote(self, command: RemoteCommand, tg: anyio.abc.TaskGroup) -> None:
        control = self.session.control
        if control is None:
            log.info("broker down: command deferred", command=type(command).__name__)
            return
        tg.start_soon(self._remote, command, WorkerQuestions(control, self.reply_timeout_s, self._clock))

    async def _remote(self, command: RemoteCommand, ask: WorkerQuestions) -> None:
        answer: Input | None
        match command:
            case EnableEvents():
                answer = await ask.enable_events(command)
            case CancelConsumers():
                if not await self._lease(command):
                    return
                answer = await ask.consumers(command)
            case AddConsumers():
                answer = await ask.consumers(command)
            case QueryQueues():
                answer = await ask.queues(command)
            case ShutdownWorker():
                answer = await ask.shutdown(command)
            case QueryRegistered():
                answer = await ask.registered(command)
            case SwitchToPool():
                answer = await ask.switch_to_pool(command)
            case CancelStandby():
                await self._cancel_standby(command, ask)
                return
            case _:
                assert_never(command)
        if answer is not None:
            await self._send(answer)

    def _start_reconcile(self, command: Reconcile, tg: anyio.abc.TaskGroup) -> None:
        key = (command.hostname, command.reason)
        if key in self.reconciling:
            return  # one at a time per target and purpose: the running one answers the same
        control = self.session.control
        if control is None:
            return  # disconnected: the reconnect asks again (the broadcast, or every known worker)
        self.reconciling.add(key)
        tg.start_soon(self._reconcile, command, WorkerQuestions(control, self.reply_timeout_s, self._clock))

    async def _reconcile(self, command: Reconcile, ask: WorkerQuestions) -> None:
        answer = await ask.reconcile(command)
        if isinstance(answer, CommandFailed):
            self.reconciling.discard((command.hostname, command.reason))
        await self._send(answer)

    async def _cancel_standby(self, command: CancelStandby, ask: WorkerQuestions) -> None:
        answer = await ask.cancel_standby(command)
        await self._send(answer)
        connection = self.session.connection
        if (isinstance(answer, QueuesRepliedIn) and answer.queues is not None
                and standby_queue(command.hostname) not in answer.queues and connection is not None):
            await self._delete_standby(command.hostname, connection)

    async def _delete_standby(self, hostname: str, connection: AbstractConnection) -> None:
        try:
            await broker.delete_unused_queue(connection, standby_queue(hostname))
        except DrainctlError as exc:
            log.info("standby queue not deleted", worker=hostname, error=str(exc))

    async def _start_worker(self, command: StartWorker) -> None:
        await self._send(await self.pools.start_pool_worker(command))

    async def _runtime_command(
        self, command: StopWorker | EscalateWorker, handle: WorkerHandle, runtime: WorkerRuntime
    ) -> None:
        try:
            if isinstance(command, StopWorker):
                log.info("worker still alive after shutdown: stopping it through the runtime",
                         worker=command.hostname, timeout_s=command.timeout_s)
                forced = await runtime.stop(handle, command.timeout_s)
                if forced:
                    log.warning("SIGTERM had no effect: the worker was killed when the stop timeout expired",
                                worker=command.hostname, timeout_s=command.timeout_s)
            else:
                log.warning("drain past its deadline: escalating with SIGQUIT", worker=command.hostname)
                await runtime.signal(handle, signal.SIGQUIT)
        except DrainctlError as exc:
            await self._send(CommandFailed(command, str(exc)))

    # ------------------------------------------------------------------ drain leases
    async def _lease(self, command: CancelConsumers) -> bool:
        """No cancel_consumer without the worker's lease: another controller may be acting on it."""
        leases = self.session.leases
        if leases is None:
            return True
        try:
            mine = await leases.acquire(command.hostname)
        except Exception as exc:  # no lease, no cancel: the drain asks again after its retry interval
            await self._send(CommandFailed(command, f"cannot take the lease: {redact_text(str(exc))}"))
            return False
        if not mine:
            log.warning("drain called off: another controller holds the worker's lease", worker=command.hostname)
            await self._send(LeaseDeniedIn(command.hostname))
        return mine

    def sync_leases(self, drains: DrainBook) -> None:
        """Hold a lease exactly for the drains under way (resumed ones and those after a reconnect too)."""
        leases = self.session.leases
        if leases is None or self._tg is None:
            return
        active = set(drains.active)
        for hostname in leases.held - active:
            self._tg.start_soon(self._release_lease, leases, hostname)
        for hostname in active - leases.held - self._taking:
            self._taking.add(hostname)
            self._tg.start_soon(self._retake_lease, leases, hostname)

    async def _retake_lease(self, leases: broker.Leases, hostname: str) -> None:
        try:
            mine = await leases.acquire(hostname)
        except Exception as exc:  # the connection is going: the reconnect takes it again
            log.info("lease not taken", worker=hostname, error=redact_text(str(exc)))
            mine = True
        finally:
            self._taking.discard(hostname)
        if not mine:
            await self._send(LeaseDeniedIn(hostname))

    async def _release_lease(self, leases: broker.Leases, hostname: str) -> None:
        try:
            await leases.release(hostname)
        except Exception as exc:  # the connection may be gone: RabbitMQ then released it itself
            log.info("lease release failed", worker=hostname, error=redact_text(str(exc)))
