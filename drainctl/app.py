"""The controller: one root task group, every input through one bounded stream, one reducer.

Broker events, remote-control replies, command results, runtime exits and timer ticks are all inputs.
Only the reducer (`drainctl.reducer`) mutates the model; the broker session (`drainctl.session`), the
command executor (`drainctl.executor`) and the pool service (`drainctl.pool_service`) run the I/O and
send what they learn back as inputs, so failures are inputs too, never swallowed. The HTTP API, /metrics
and /status see the controller only through `drainctl.readmodel`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from drainctl import broker
from drainctl.config import Settings
from drainctl.core.autoscale import PoolSizing
from drainctl.core.drain import ConsumerTimeout, Drain, DrainBook, DrainPolicy, DrainRefused
from drainctl.core.model import Cluster
from drainctl.core.policy import PolicyOverrides
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.version_outcomes import VersionOutcomes
from drainctl.errors import DrainctlError, RuntimeFailure
from drainctl.executor import CommandExecutor
from drainctl.inputs import (
    Answer,
    CanaryDecisionRequested,
    DrainRequested,
    EngineReachIn,
    EngineRequested,
    EventsIn,
    Input,
    Pending,
    QueueDepthsIn,
    ReloadRequested,
    RollbackRequested,
    Tick,
    WorkerExitedIn,
    WorkerStartedIn,
)
from drainctl.pool_service import PoolService
from drainctl.readmodel import Identity, IngestStats
from drainctl.redact import redact_text, redact_url
from drainctl.reducer import Reducer, log_notice
from drainctl.runtime.base import Exited, WorkerHandle, WorkerRuntime, WorkerSpec
from drainctl.session import BrokerSession

log = structlog.get_logger("drainctl")

INBOX_SIZE: Final = 256
# The clock is an input: time-based transitions (the silent window, drain retries and deadlines, the
# consumer_timeout warning) are evaluated on ticks, so TICK_S bounds how late they come.
TICK_S: Final = 1.0


class Controller:
    def __init__(
        self,
        settings: Settings,
        broker_url: str,
        *,
        runtime: WorkerRuntime | None = None,
        runtimes: dict[str, WorkerRuntime] | None = None,
        config_path: Path | None = None,
        file_settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker_url = broker_url
        self.clock = clock
        self.runtime = runtime
        all_runtimes = dict(runtimes or {})
        if runtime is not None:
            all_runtimes.setdefault(runtime.name, runtime)
        c = settings.controller
        self.event_queue = broker.EventQueueSpec(
            name=f"drainctl.{c.id}", expires_s=settings.events.queue_expires_s,
            max_length=settings.events.max_length, prefetch=settings.events.prefetch,
        )
        self._identity = Identity(c.id, redact_url(broker_url), self.event_queue.name)
        self._stats = IngestStats()
        self._fleet = Fleet(new_id=lambda: uuid.uuid4().hex[:6])
        self._drains = DrainBook(consumer_timeout=ConsumerTimeout(
            settings.broker.consumer_timeout_s, settings.broker.consumer_timeout_warn_at))
        self._cluster = Cluster(
            silent_after_s=c.silent_after_s, offline_retention_s=c.offline_retention_s,
            reconcile_min_interval_s=c.reconcile_min_interval_s, no_remote_control_after_s=c.no_remote_control_after_s,
        )
        send, receive = anyio.create_memory_object_stream[Input](INBOX_SIZE)
        self._send: MemoryObjectSendStream[Input] = send
        self._receive: MemoryObjectReceiveStream[Input] = receive
        self.pools = PoolService(settings, self._fleet, all_runtimes, config_path=config_path,
                                 file_settings=file_settings if file_settings is not None else settings)
        self.session = BrokerSession(settings, broker_url, self.event_queue, self._stats, self._send.send,
                                     self._send.send_nowait, clock)
        self.executor = CommandExecutor(self.session, self.pools, self._fleet, settings.broker.reply_timeout_s,
                                        self._send.send, clock)
        self.reducer = Reducer(self._cluster, self._fleet, self._drains, self.pools, self._stats,
                               self.executor.reconciling)
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ the read model
    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def fleet(self) -> Fleet:
        return self._fleet

    @property
    def drains(self) -> DrainBook:
        return self._drains

    @property
    def stats(self) -> IngestStats:
        return self._stats

    @property
    def pool_targets(self) -> Mapping[str, PoolTarget]:
        # Until the model is complete, an elastic pool's size is not decided (its adopted workers count).
        return self.reducer.targets if self.reducer.synced.is_set() else self.pools.targets

    @property
    def pool_sizing(self) -> Mapping[str, PoolSizing]:
        return self.reducer.autoscaler.sizing

    @property
    def reloads(self) -> Mapping[str, int]:
        return self.pools.reloads

    @property
    def version_outcomes(self) -> VersionOutcomes:
        return self.reducer.version_outcomes

    @property
    def settings(self) -> Settings:
        """The settings in force: those of start-up, with the pools of the last reload."""
        return self.pools.settings

    @property
    def managed(self) -> Mapping[str, WorkerHandle]:
        return self.pools.managed

    @property
    def control(self) -> broker.ControlClient | None:
        return self.session.control

    @property
    def leases(self) -> broker.Leases | None:
        return self.session.leases

    @property
    def synced(self) -> anyio.Event:
        return self.reducer.synced

    def now(self) -> float:
        return self.clock()

    def is_synced(self) -> bool:
        return self.reducer.synced.is_set()

    def rollout_history(self, limit: int) -> list[dict[str, Any]]:
        return self.pools.history(limit)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("controller starting", controller_id=self._identity.controller_id, broker=self._identity.broker,
                 event_queue=self.event_queue.name)
        self.pools.open_journal()
        self.pools.apply(self.settings)
        async with anyio.create_task_group() as tg:
            self.executor.attach(tg)
            tg.start_soon(self._reduce)
            tg.start_soon(self._tick)
            tg.start_soon(self._watch_queue_depths)
            for name, runtime in self.pools.runtimes.items():
                several = name.startswith("docker:")
                if several and hasattr(runtime, "on_reachability") and hasattr(runtime, "on_adopted"):
                    # One of several engines: one that does not answer is shown, and the others go on.
                    runtime.on_reachability = partial(self._engine_reach, name.removeprefix("docker:"))
                    runtime.on_adopted = self._adopted
                await tg.start(runtime.watch, self._on_exit)
                try:
                    handles = await runtime.adopt()
                except RuntimeFailure as exc:
                    if not several:
                        raise
                    log.warning("engine not answering at start; its workers are adopted once it does",
                                engine=name.removeprefix("docker:"), error=str(exc))
                    continue
                for handle in handles:
                    await self._send.send(WorkerStartedIn(handle))
            tg.start_soon(self.session.run)
            task_status.started()

    async def _reduce(self) -> None:
        async with self._receive:
            async for item in self._receive:
                self.apply(item)

    def apply(self, item: Input) -> None:
        """One input through the reducer; its notices logged, its commands executed, its waiters woken."""
        commands, notices = self.reducer.handle(item, self.clock())
        if isinstance(item, EventsIn) and item.applied is not None:
            item.applied(len(item.batch))
        for notice in notices:
            log_notice(notice)
        for command in commands:
            self.executor.execute(command)
        self.executor.sync_leases(self._drains)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(TICK_S)
            await self._send.send(Tick())

    async def _watch_queue_depths(self) -> None:
        """Every queue_depth_interval_s, the depth of each elastic pool's queues, as an input."""
        while True:
            await anyio.sleep(self.settings.controller.queue_depth_interval_s)
            queues = sorted({q for t in self.pools.targets.values() if t.scaling is not None for q in t.queues})
            connection = self.session.connection
            if not queues or connection is None:
                continue
            try:
                depths = await broker.queue_depths(connection, queues)
            except Exception as exc:  # a broker failure of any shape: sizes held, the session reconnects
                log.warning("cannot read queue depths; pool sizes held", error=redact_text(str(exc)))
                continue
            await self._send.send(QueueDepthsIn(depths))

    async def _adopted(self, handle: WorkerHandle) -> None:
        await self._send.send(WorkerStartedIn(handle))

    async def _engine_reach(self, engine: str, reachable: bool, reason: str) -> None:
        await self._send.send(EngineReachIn(engine, reachable, redact_text(reason)))

    async def _on_exit(self, exited: Exited) -> None:
        await self._send.send(WorkerExitedIn(exited))

    # ------------------------------------------------------------------ requests
    async def reload(self, requested_by: str) -> dict[str, Any]:
        """Re-read the config file (SIGHUP, POST /rollout). An invalid file changes nothing."""
        answer = Answer()
        await self._send.send(ReloadRequested(requested_by, answer))
        return await _answered(answer)

    async def rollback(self, pool: str, version: str | None, requested_by: str) -> dict[str, Any]:
        answer = Answer()
        await self._send.send(RollbackRequested(pool, version, requested_by, answer))
        return await _answered(answer)

    async def canary_decision(self, pool: str, decision: Literal["promote", "abort"], requested_by: str
                              ) -> dict[str, Any]:
        """Promote the pool's canary rollout (every remaining step at once) or abort it."""
        answer = Answer()
        await self._send.send(CanaryDecisionRequested(pool, decision, requested_by, answer))
        return await _answered(answer)

    async def engine_request(self, engine: str, action: Literal["cordon", "uncordon", "evacuate"],
                             requested_by: str) -> dict[str, Any]:
        """Cordon, uncordon or evacuate a Docker engine."""
        answer = Answer()
        await self._send.send(EngineRequested(engine, action, requested_by, answer))
        return await _answered(answer)

    async def start_worker(self, spec: WorkerSpec) -> WorkerHandle:
        """Start a worker through the runtime; from then on drainctl owns it (it can stop it, sees it exit)."""
        if self.runtime is None:
            raise DrainctlError("no worker runtime configured")
        handle = await self.runtime.start(spec)
        await self._send.send(WorkerStartedIn(handle))
        return handle

    async def request_drain(
        self, hostname: str, *, force: bool = False, policy: DrainPolicy | PolicyOverrides | None = None,
        requested_by: str = "api",
    ) -> Drain:
        """Start (or join) a drain. Raises DrainRefused with the reason.

        A DrainPolicy is used as given. PolicyOverrides (None: none) are laid over the drain policy of the
        worker's pool (its deadline, stop timeout, retire grace), or over the defaults for a worker of no pool.
        """
        pending = Pending()
        chosen = PolicyOverrides() if policy is None else policy
        await self._send.send(DrainRequested(hostname, force, chosen, requested_by, pending))
        await pending.done.wait()
        if isinstance(pending.result, DrainRefused):
            raise pending.result
        assert pending.result is not None
        return pending.result

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `predicate()` holds, re-checking after each input the reducer handles (no polling).

        Raises TimeoutError after `timeout_s`.
        """
        with anyio.fail_after(timeout_s):
            while not predicate():
                await self._changed.wait()


async def _answered(answer: Answer) -> dict[str, Any]:
    await answer.done.wait()
    if answer.error is not None:
        raise DrainctlError(answer.error)
    return answer.detail
