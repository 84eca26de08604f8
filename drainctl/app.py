"""The controller: one root task group, every input through one bounded stream, one reducer.

Broker events, reconcile replies, command results and timer ticks are all `Input`s. Only the reducer
mutates the model; everything else runs I/O and sends its result back as an input, so failures are
inputs too, never swallowed.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, assert_never

import anyio
import anyio.abc
import structlog
from aio_pika.abc import AbstractConnection
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from drainctl import broker
from drainctl import config as config_module
from drainctl.config import PoolSettings, Settings
from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    CancelStandby,
    Command,
    DeleteStandby,
    EnableEvents,
    EscalateWorker,
    JournalCancel,
    JournalRollout,
    QueryQueues,
    QueryRegistered,
    Reconcile,
    ShutdownWorker,
    StartWorker,
    StopWorker,
    SwitchToPool,
)
from drainctl.core.drain import CONFIRM_REASON, ConsumerTimeout, Drain, DrainBook, DrainPolicy, DrainRefused
from drainctl.core.events import TASK_EVENT_TYPES, WORKER_EVENT_TYPES, Decoded
from drainctl.core.model import Cluster, Notice
from drainctl.core.policy import PolicyOverrides
from drainctl.core.quiet import (
    add_consumer_arguments,
    delayed_delivery_gaps,
    standby_declaration,
    standby_queue,
)
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.snapshot import build_snapshot, parse_queues
from drainctl.errors import BrokerUnavailableError, DrainctlError
from drainctl.inputs import (
    Answer,
    BrokerDown,
    BrokerUp,
    CancelRepliedIn,
    CommandFailed,
    DrainRequested,
    DroppedIn,
    EventsEnabledIn,
    EventsIn,
    Input,
    LeaseDeniedIn,
    Pending,
    QueuesRepliedIn,
    RegisteredIn,
    ReloadRequested,
    RollbackRequested,
    SnapshotsIn,
    StartFailedIn,
    Tick,
    WorkerExitedIn,
    WorkerStartedIn,
)
from drainctl.journal import Journal
from drainctl.pools import spec_for, target_of
from drainctl.redact import redact_text, redact_url
from drainctl.runtime.base import Exited, WorkerHandle, WorkerRuntime, WorkerSpec

log = structlog.get_logger("drainctl")

INBOX_SIZE: Final = 256
# A worker first seen through one of these events is asked what it holds at once, with short deadlines.
DISCOVERY_REASONS: Final = TASK_EVENT_TYPES | WORKER_EVENT_TYPES
# A worker the start-up broadcast did not hear from (it may have come up while the broadcast was out).
STARTUP_MISSED: Final = "startup-missed"
# Deadlines of the first questions to a worker just seen (then the configured reply timeout, twice).
JUST_SEEN_DEADLINES_S: Final = (0.05, 0.15, 0.5)
TICK_S: Final = 1.0
# Pauses before the active_queues questions that confirm a switch or a standby cancel: Celery applies
# them on its next loop iteration, which a worker still starting up may not reach for a second or two.
CONFIRM_DELAYS_S: Final = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)


@dataclass(slots=True)
class IngestStats:
    """Counters the model does not own; read by /metrics and /status."""

    messages: int = 0
    events: int = 0
    bytes: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    reconciles: dict[str, int] = field(default_factory=dict)
    reconcile_no_reply: int = 0
    connected: bool = False
    connects: int = 0
    last_event_wall: float | None = None
    started_wall: float = field(default_factory=time.time)


class _RateLimitedLog:
    """One line now, then at most one summary line per interval: a flood of garbage is visible, not deafening."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -1e18
        self._suppressed = 0

    def should_log(self, now: float) -> tuple[bool, int]:
        if now - self._last >= self.interval_s:
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
            return True, suppressed
        self._suppressed += 1
        return False, 0


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
        self.settings = settings
        self.config_path = config_path
        # What the file said at start, before command-line overrides: a reload compares its
        # sections read only at start with these.
        self.file_settings = file_settings if file_settings is not None else settings
        self.runtime = runtime
        self.runtimes: dict[str, WorkerRuntime] = dict(runtimes or {})
        if runtime is not None:
            self.runtimes.setdefault(runtime.name, runtime)
        self.fleet = Fleet(new_id=lambda: uuid.uuid4().hex[:6])
        self.pool_targets: dict[str, PoolTarget] = {}
        self.pool_specs: dict[tuple[str, str], PoolSettings] = {}
        self.journal: Journal | None = None
        self.reloads: dict[str, int] = {"applied": 0, "rejected": 0}
        self._requested_by = "config"
        self.drains = DrainBook(consumer_timeout=ConsumerTimeout(
            settings.broker.consumer_timeout_s, settings.broker.consumer_timeout_warn_at))
        # Workers this controller started (or adopted): it can stop them and sees them exit.
        self.managed: dict[str, WorkerHandle] = {}
        self.broker_url = broker_url
        self.clock = clock
        c = settings.controller
        self.cluster = Cluster(
            silent_after_s=c.silent_after_s,
            offline_retention_s=c.offline_retention_s,
            reconcile_min_interval_s=c.reconcile_min_interval_s,
            no_remote_control_after_s=c.no_remote_control_after_s,
        )
        self.stats = IngestStats()
        self.event_queue = broker.EventQueueSpec(
            name=f"drainctl.{c.id}",
            expires_s=settings.events.queue_expires_s,
            max_length=settings.events.max_length,
            prefetch=settings.events.prefetch,
        )
        self.control: broker.ControlClient | None = None
        self.connection: AbstractConnection | None = None
        self.leases: broker.Leases | None = None
        self._taking: set[str] = set()
        # Set once the start-up reconcile has been merged: the model is complete from then on.
        self.synced = anyio.Event()
        send, receive = anyio.create_memory_object_stream[Input](INBOX_SIZE)
        self._send: MemoryObjectSendStream[Input] = send
        self._receive: MemoryObjectReceiveStream[Input] = receive
        self._tg: anyio.abc.TaskGroup | None = None
        self._reconciling: set[tuple[str | None, str]] = set()
        self._malformed_log = _RateLimitedLog(10.0)
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "controller starting",
            controller_id=self.settings.controller.id,
            broker=redact_url(self.broker_url),
            event_queue=self.event_queue.name,
        )
        self._open_journal()
        self._apply_pools(self.settings)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reduce)
            tg.start_soon(self._tick)
            for runtime in self.runtimes.values():
                await tg.start(runtime.watch, self._on_exit)
                for handle in await runtime.adopt():
                    await self._send.send(WorkerStartedIn(handle))
            tg.start_soon(self._broker_loop)
            task_status.started()

    def _open_journal(self) -> None:
        if self.journal is not None:
            return
        self.journal = Journal(self.settings.controller.state_dir / "journal.sqlite")
        self.fleet.cancelled.update(self.journal.cancelled())
        self.fleet.pins.update(self.journal.pins())
        for (pool, version), spec in self.journal.specs().items():
            try:
                self.pool_specs[(pool, version)] = PoolSettings.model_validate(spec)
            except ValueError:
                log.warning("journal holds a pool spec this version cannot read; ignored", pool=pool,
                            version=version)

    def _apply_pools(self, settings: Settings) -> None:
        self.pool_targets = {p.name: target_of(p) for p in settings.pool}
        for pool in settings.pool:
            key = (pool.name, pool.target_version)
            self.pool_specs[key] = pool
            if self.journal is not None:
                self.journal.save_spec(pool.name, pool.target_version, pool.model_dump(mode="json"))
        missing = {p.runtime for p in settings.pool} - set(self.runtimes)
        if missing:
            raise DrainctlError(f"pools need the {', '.join(sorted(missing))} runtime, which is not set up")

    async def reload(self, requested_by: str) -> dict[str, Any]:
        """Re-read the config file (SIGHUP, POST /rollout). An invalid file changes nothing."""
        answer = Answer()
        await self._send.send(ReloadRequested(requested_by, answer))
        await answer.done.wait()
        if answer.error is not None:
            raise DrainctlError(answer.error)
        return answer.detail

    async def rollback(self, pool: str, version: str | None, requested_by: str) -> dict[str, Any]:
        answer = Answer()
        await self._send.send(RollbackRequested(pool, version, requested_by, answer))
        await answer.done.wait()
        if answer.error is not None:
            raise DrainctlError(answer.error)
        return answer.detail

    async def _on_exit(self, exited: Exited) -> None:
        await self._send.send(WorkerExitedIn(exited))

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

    async def submit(self, item: Input) -> None:
        await self._send.send(item)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `predicate()` holds, re-checking after each input the reducer handles (no polling).

        Raises TimeoutError after `timeout_s`.
        """
        with anyio.fail_after(timeout_s):
            while not predicate():
                await self._changed.wait()

    # ------------------------------------------------------------------ broker shell
    async def _broker_loop(self) -> None:
        backoff = 0.5
        maximum = self.settings.broker.reconnect_max_backoff_s
        first = True
        while True:
            started = self.clock()
            try:
                await self._broker_session(first)
            except DrainctlError as exc:
                reason = str(exc)
            except Exception as exc:  # an aio-pika/aiormq failure of any shape ends this session only
                reason = redact_text(f"{type(exc).__name__}: {exc}")
            else:
                reason = "connection closed"
            if self.stats.connected:
                first = False
            self.control = None
            self.connection = None
            self.leases = None
            was_connected = self.stats.connected
            self.stats.connected = False
            await self._send.send(BrokerDown(reason))
            if self.clock() - started > 30:
                backoff = 0.5
            delay = min(backoff, maximum) * random.uniform(0.8, 1.2)
            log.warning("broker unavailable; retrying", reason=reason, retry_in_s=round(delay, 2),
                        was_connected=was_connected)
            await anyio.sleep(delay)
            backoff = min(backoff * 2, maximum)

    async def _broker_session(self, first: bool) -> None:
        tls = broker.TlsFiles(
            *(str(p) if p is not None else None for p in (
                self.settings.broker.ca_file, self.settings.broker.cert_file, self.settings.broker.key_file))
        )
        connection = await broker.connect(
            self.broker_url, tls, name=f"drainctl {self.settings.controller.id}"
        )
        try:
            closed = anyio.Event()
            connection.close_callbacks.add(lambda *_: closed.set())
            channel = await connection.channel()
            await broker.declare_event_topology(channel, self.event_queue)
            control = await broker.ControlClient.open(connection, self.settings.controller.id)
            # Without its channel, no question would ever be answered: start the session afresh instead.
            control.on_close(closed.set)
            dropped_channel = await connection.channel()
            async with anyio.create_task_group() as tg:
                await tg.start(broker.consume_events, channel, self.event_queue, self._on_batch)
                tg.start_soon(broker.consume_dropped, dropped_channel, self.event_queue, self._on_dropped)
                self.control = control
                self.connection = connection
                self.leases = broker.Leases(connection)
                self.stats.connected = True
                self.stats.connects += 1
                log.info("broker connected", broker=redact_url(self.broker_url), first=first)
                await self._send.send(BrokerUp())
                await closed.wait()
                tg.cancel_scope.cancel()
            raise BrokerUnavailableError("the broker closed the connection")
        finally:
            with anyio.move_on_after(5, shield=True):
                await connection.close()

    async def _on_batch(self, batch: broker.EventBatch, nbytes: int) -> None:
        await self._send.send(EventsIn(batch, nbytes))

    async def _on_dropped(self, events: int) -> None:
        await self._send.send(DroppedIn(events))

    async def _tick(self) -> None:
        # The clock is an input: time-based transitions (the silent window, drain retries and deadlines,
        # the consumer_timeout warning) are evaluated on ticks, so TICK_S bounds how late they come.
        while True:
            await anyio.sleep(TICK_S)
            await self._send.send(Tick())

    # ------------------------------------------------------------------ the reducer
    async def _reduce(self) -> None:
        async with self._receive:
            async for item in self._receive:
                now = self.clock()
                commands: list[Command] = []
                notices: list[Notice] = []
                self._dispatch(item, now, commands, notices)
                if self.synced.is_set() and self.pool_targets:
                    c, n = self.fleet.plan(self.pool_targets, self.cluster, self.drains, now,
                                           requested_by=self._requested_by)
                    commands.extend(c)
                    notices.extend(n)
                c, n = self.drains.evaluate(self.cluster, now)
                commands.extend(c)
                notices.extend(n)
                for notice in notices:
                    self._log_notice(notice)
                for command in commands:
                    self._execute(command)
                self._sync_leases()
                changed, self._changed = self._changed, anyio.Event()
                changed.set()

    def _dispatch(self, item: Input, now: float, commands: list[Command], notices: list[Notice]) -> None:
        """Apply one input. Every input type is matched: a new one cannot be dropped silently."""
        match item:
            case EventsIn():
                self._ingest(item, now, commands, notices)
            case Tick():
                notices.extend(self.cluster.tick(now))
                c, n = self.cluster.recheck(now)
                commands.extend(c)
                notices.extend(n)
                commands.extend(self._startup_broadcast())
            case SnapshotsIn():
                self._merge(item, now, commands, notices)
            case EventsEnabledIn():
                self._heard(item.hostname, item.enabled_now is not None, item.asked_at, now, notices)
                if item.enabled_now is not None:
                    commands.extend(self.cluster.note_task_events(item.hostname, item.enabled_now, now))
                    if item.enabled_now:
                        log.info("task events turned on", worker=item.hostname)
            case DroppedIn():
                self.stats.dropped += item.events
                log.warning("event queue overflowed; oldest events dropped", events=item.events,
                            total=self.stats.dropped)
            case LeaseDeniedIn():
                # Never add_consumer here: the other controller may be draining this very worker.
                notices.extend(self.drains.abandon(
                    item.hostname, now,
                    "another controller holds this worker's lease (drainctl.lock.<hostname>): it is acting on it"))
                self.fleet.cancelled.pop(item.hostname, None)
                if self.journal is not None:
                    self.journal.forget(item.hostname)
            case BrokerUp():
                # Until the start-up broadcast has been merged, every connection asks everyone again.
                commands.extend(self._startup_broadcast())
                if self.synced.is_set():
                    commands.extend(Reconcile(h, "reconnect") for h in sorted(self.cluster.workers))
            case BrokerDown():
                pass
            case CommandFailed():
                log.warning("command failed", command=repr(item.command), error=item.error)
            case RegisteredIn() | StartFailedIn() | ReloadRequested() | RollbackRequested():
                self._pool_input(item, now, notices)
            case (DrainRequested() | CancelRepliedIn() | QueuesRepliedIn() | WorkerStartedIn()
                  | WorkerExitedIn()):
                self._drain_input(item, now, commands, notices)
            case _:
                assert_never(item)

    def _startup_broadcast(self) -> list[Command]:
        """The start-up broadcast, until one has been merged: sent again when the last one failed."""
        if self.synced.is_set() or self.control is None or (None, "startup") in self._reconciling:
            return []
        return [Reconcile(None, "startup")]

    def _heard(self, hostname: str, answered: bool, asked_at: float | None, now: float,
               notices: list[Notice]) -> None:
        """A remote-control question to `hostname` was answered, or went unanswered (not a broker failure)."""
        if answered:
            notices.extend(self.cluster.note_answered(hostname, now))
        else:
            notices.extend(self.cluster.note_unanswered(hostname, asked_at if asked_at is not None else now, now))

    def _pool_input(
        self, item: RegisteredIn | StartFailedIn | ReloadRequested | RollbackRequested, now: float,
        notices: list[Notice],
    ) -> None:
        match item:
            case RegisteredIn():
                self._heard(item.hostname, item.tasks is not None, item.asked_at, now, notices)
                self.fleet.registered(item.hostname, item.tasks, now)
            case StartFailedIn():
                notices.extend(self.fleet.start_failed(item.hostname, item.error, now))
            case ReloadRequested():
                self._reload(item, now)
            case RollbackRequested():
                self._rollback(item)
            case _:
                assert_never(item)

    def _reload(self, item: ReloadRequested, now: float) -> None:
        answer = item.answer
        try:
            if self.config_path is None:
                raise DrainctlError("drainctl runs without --config: there is no file to reload")
            new = config_module.load(self.config_path)
            uncovered = config_module.uncovered_queues(self.settings, new)
            if uncovered:
                raise DrainctlError(f"{self.config_path}: refused: no pool would consume {', '.join(uncovered)} "
                                    "any more; keep a pool on each queue (or stop its workers by hand first)")
            self._apply_pools(new)
        except DrainctlError as exc:
            self.reloads["rejected"] += 1
            log.error("configuration reload rejected; the running configuration stays", error=str(exc),
                      requested_by=item.requested_by)
            answer.error = str(exc)
        else:
            changed = [p.name for p in new.pool if p.target_version != self._version_before(p.name)]
            # Connections, listeners and the controller's identity are set up once: say so rather than
            # let an edit look applied.
            restart_needed = [name for name in type(new).model_fields
                              if name != "pool" and getattr(new, name) != getattr(self.file_settings, name)]
            self.settings = self.settings.model_copy(update={"pool": new.pool})
            self.reloads["applied"] += 1
            self._requested_by = item.requested_by
            log.info("configuration reloaded", requested_by=item.requested_by, pools_changed=changed)
            if restart_needed:
                log.warning("configuration reloaded: pools only; the changes to these sections take effect when "
                            "drainctl restarts", sections=restart_needed)
            answer.detail = {"pools": {name: t.version for name, t in self.pool_targets.items()},
                             "changed": changed, "restart_needed": restart_needed}
        answer.done.set()

    def _version_before(self, pool: str) -> str | None:
        for p in self.settings.pool:
            if p.name == pool:
                return p.target_version
        return None

    def _rollback(self, item: RollbackRequested) -> None:
        answer = item.answer
        target = self.pool_targets.get(item.pool)
        if target is None:
            answer.error = f"no pool named {item.pool!r} (pools: {', '.join(sorted(self.pool_targets)) or 'none'})"
            answer.done.set()
            return
        current = self.fleet.target(target)
        version = item.version
        if version is None:
            previous = [r.from_version for r in reversed(self.fleet.history)
                        if r.pool == item.pool and r.to_version == current and r.outcome == "succeeded"]
            if not previous and self.journal is not None:
                previous = [r["from_version"] for r in self.journal.history()
                            if r["pool"] == item.pool and r["to_version"] == current and r["outcome"] == "succeeded"]
            if not previous:
                answer.error = f"pool {item.pool!r}: no earlier version to roll back to (it runs {current})"
                answer.done.set()
                return
            version = previous[0]
        if (item.pool, version) not in self.pool_specs:
            answer.error = f"pool {item.pool!r}: version {version!r} is unknown (never run by this controller)"
            answer.done.set()
            return
        self.fleet.rollback(target, version, self.clock(), item.requested_by)
        self._requested_by = item.requested_by
        if self.journal is not None:
            self.journal.save_pins(self.fleet.pins)
        log.info("rollback requested", pool=item.pool, to_version=version, requested_by=item.requested_by)
        answer.detail = {"pool": item.pool, "version": version, "pinned": True}
        answer.done.set()

    def _drain_input(
        self, item: DrainRequested | CancelRepliedIn | QueuesRepliedIn | WorkerStartedIn | WorkerExitedIn,
        now: float, commands: list[Command], notices: list[Notice],
    ) -> None:
        drains = self.drains
        if isinstance(item, DrainRequested):
            try:
                drain, c = drains.start(
                    self.cluster, item.hostname, now, policy=self._requested_policy(item),
                    managed=item.hostname in self.managed, force=item.force, requested_by=item.requested_by,
                )
            except DrainRefused as refused:
                # A temporary refusal is asked again by a retrying client: info, not a warning per retry.
                (log.info if refused.temporary else log.warning)(
                    "drain refused", worker=item.hostname, reason=refused.reason, temporary=refused.temporary)
                item.pending.result = refused
            else:
                if c:
                    log.info("drain started", worker=item.hostname, queues=list(drain.queues),
                             managed=drain.managed, forced=item.force, requested_by=item.requested_by)
                commands.extend(c)
                item.pending.result = drain
            item.pending.done.set()
        elif isinstance(item, CancelRepliedIn):
            answered = any(reply is not None for reply in item.replies.values())
            self._heard(item.hostname, answered, item.asked_at, now, notices)
            commands.extend(drains.cancel_replied(item.hostname, item.replies, now))
        elif isinstance(item, QueuesRepliedIn):
            self._heard(item.hostname, item.queues is not None, item.asked_at, now, notices)
            commands.extend(drains.queues_replied(self.cluster, item.hostname, item.queues, now))
        elif isinstance(item, WorkerStartedIn):
            handle = item.handle
            self.managed[handle.hostname] = handle
            if handle.pool in self.pool_targets or (handle.pool, handle.version) in self.pool_specs:
                self.fleet.adopt(handle.hostname, handle.pool, handle.version, now)
        elif isinstance(item, WorkerExitedIn):
            handle = item.exited.handle
            if self.managed.get(handle.hostname) == handle:
                del self.managed[handle.hostname]
            notices.extend(drains.exited(self.cluster, handle.hostname, item.exited.exit_code,
                                         item.exited.forced, now))
            c, n = self.fleet.exited(handle.hostname, item.exited.exit_code, now)
            commands.extend(c)
            notices.extend(n)
            if self.journal is not None:
                self.journal.forget(handle.hostname)
            log.info("worker process exited", worker=handle.hostname, exit_code=item.exited.exit_code,
                     runtime=handle.runtime)
        else:
            assert_never(item)

    def _requested_policy(self, item: DrainRequested) -> DrainPolicy:
        """The policy of a requested drain: as given, or the caller's overrides on the worker's pool policy."""
        if isinstance(item.policy, DrainPolicy):
            return item.policy
        member = self.fleet.members.get(item.hostname)
        target = self.pool_targets.get(member.pool) if member is not None else None
        return item.policy.over(target.drain_policy if target is not None else DrainPolicy())

    def _ingest(self, item: EventsIn, now: float, commands: list[Command], notices: list[Notice]) -> None:
        stats = self.stats
        stats.messages += len(item.batch)
        stats.bytes += item.nbytes
        apply = self.cluster.apply
        for decoded in item.batch:
            if decoded.rejections:
                self._malformed(decoded, now)
            stats.events += len(decoded.events)
            for event in decoded.events:
                c, n = apply(event, now)
                if c:
                    commands.extend(c)
                if n:
                    notices.extend(n)
        stats.last_event_wall = time.time()

    def _malformed(self, decoded: Decoded, now: float) -> None:
        for rejection in decoded.rejections:
            self.stats.malformed[rejection.reason] = self.stats.malformed.get(rejection.reason, 0) + 1
        emit, suppressed = self._malformed_log.should_log(now)
        if emit:
            first = decoded.rejections[0]
            log.warning("malformed event ignored", reason=first.reason, detail=first.detail,
                        suppressed_since_last=suppressed)

    def _merge(self, item: SnapshotsIn, now: float, commands: list[Command], notices: list[Notice]) -> None:
        self._reconciling.discard((item.target, item.reason))
        self.stats.reconciles[item.reason] = self.stats.reconciles.get(item.reason, 0) + 1
        asked_at = item.asked_at if item.asked_at is not None else now
        if item.target is not None and not item.snapshots:
            self.stats.reconcile_no_reply += 1
            log.info("no reconcile reply (unknown, not empty)", worker=item.target, reason=item.reason)
            notices.extend(self.cluster.note_unanswered(item.target, asked_at, now))
        elif item.target is None:
            # The broadcast reached every worker alive when it went out: those that did not answer count.
            replied = {s.hostname for s in item.snapshots}
            for worker in list(self.cluster):
                if worker.hostname not in replied and worker.first_seen <= asked_at:
                    notices.extend(self.cluster.note_unanswered(worker.hostname, asked_at, now))
        for snapshot in item.snapshots:
            if snapshot.problems:
                log.warning("partial reconcile reply", worker=snapshot.hostname, problems=list(snapshot.problems))
            c, n = self.cluster.merge(snapshot, now)
            commands.extend(c)
            notices.extend(n)
        if item.reason == CONFIRM_REASON and item.target is not None:
            answered = any(s.tasks is not None for s in item.snapshots)
            commands.extend(self.drains.confirm_done(self.cluster, item.target, answered, now))
        if item.target is None:
            # A worker that came up while the broadcast was out (its pidbox queue not bound yet) did not
            # hear it: ask each one not in the replies on its own, at once.
            replied = {s.hostname for s in item.snapshots}
            commands.extend(Reconcile(w.hostname, STARTUP_MISSED) for w in self.cluster
                            if w.hostname not in replied and w.queues is None)
            log.info("start-up reconcile merged", workers=len(item.snapshots),
                     in_flight=self.cluster.in_flight())
            self.synced.set()

    def _log_notice(self, notice: Notice) -> None:
        level = "warning" if notice.kind in {
            "worker-silent", "hostname-collision", "hostname-contender-left", "tasks-lost", "reconcile-corrected",
            "remote-control-unanswered", "rollout-blocked", "consumer-timeout-near", "consumer-timeout-redelivered",
        } else "info"
        getattr(log, level)(notice.kind.replace("-", " "), worker=notice.hostname, detail=notice.detail)

    # ------------------------------------------------------------------ commands
    def _execute(self, command: Command) -> None:
        """Turn one core command into I/O. Every command type is matched: none is dropped silently."""
        if self._tg is None:
            return  # not running (a reducer driven on its own, e.g. by a benchmark)
        tg = self._tg
        match command:
            case Reconcile():
                self._start_reconcile(command, tg)
            case JournalCancel():
                # Synchronously, before the cancel_consumer that follows it in this same batch.
                if self.journal is not None:
                    self.journal.record_cancel(command.hostname, command.rollout_id)
            case JournalRollout():
                rollout = self.fleet.rollout(command.rollout_id)
                if self.journal is not None and rollout is not None:
                    self.journal.record_rollout(rollout, time.time() - self.clock())
                    self.journal.save_pins(self.fleet.pins)
            case StartWorker():
                tg.start_soon(self._start_pool_worker, command)
            case StopWorker() | EscalateWorker():
                handle = self.managed.get(command.hostname)
                # The worker's own runtime: a container must be stopped by the engine that runs it.
                runtime = self.runtimes.get(handle.runtime) if handle is not None else None
                if handle is not None and runtime is not None:
                    tg.start_soon(self._runtime_command, command, handle, runtime)
            case DeleteStandby():
                if self.connection is not None:
                    tg.start_soon(self._delete_standby, command.hostname, self.connection)
            case (EnableEvents() | CancelConsumers() | AddConsumers() | QueryQueues() | ShutdownWorker()
                  | QueryRegistered() | SwitchToPool() | CancelStandby()):
                self._execute_remote(command, tg)
            case _:
                assert_never(command)

    def _execute_remote(
        self,
        command: (EnableEvents | CancelConsumers | AddConsumers | QueryQueues | ShutdownWorker | QueryRegistered
                  | SwitchToPool | CancelStandby),
        tg: anyio.abc.TaskGroup,
    ) -> None:
        control = self.control
        if control is None:
            # Remote control needs the broker; every asker asks again after its retry interval.
            log.info("broker down: command deferred", command=type(command).__name__)
            return
        match command:
            case EnableEvents():
                tg.start_soon(self._enable_events, command, control)
            case CancelConsumers() | AddConsumers():
                tg.start_soon(self._consumers, command, control)
            case QueryQueues():
                tg.start_soon(self._query_queues, command, control)
            case ShutdownWorker():
                tg.start_soon(self._shutdown, command, control)
            case QueryRegistered():
                tg.start_soon(self._query_registered, command, control)
            case SwitchToPool():
                tg.start_soon(self._switch_to_pool, command, control)
            case CancelStandby():
                tg.start_soon(self._cancel_standby, command, control)
            case _:
                assert_never(command)

    def _start_reconcile(self, command: Reconcile, tg: anyio.abc.TaskGroup) -> None:
        key = (command.hostname, command.reason)
        if key in self._reconciling:
            return  # one at a time per target and purpose: the running one answers the same
        control = self.control
        if control is None:
            return  # disconnected: the reconnect asks again (the broadcast, or every known worker)
        self._reconciling.add(key)
        tg.start_soon(self._reconcile, command, control)

    async def _start_pool_worker(self, command: StartWorker) -> None:
        pool = self.pool_specs.get((command.pool, command.version))
        if pool is None:
            await self._send.send(StartFailedIn(command.hostname, f"no spec known for version {command.version}"))
            return
        runtime = self.runtimes.get(pool.runtime)
        if runtime is None:
            await self._send.send(StartFailedIn(command.hostname, f"the {pool.runtime} runtime is not set up"))
            return
        try:
            handle = await runtime.start(spec_for(pool, command.version, command.hostname, quiet=command.quiet))
        except DrainctlError as exc:
            await self._send.send(StartFailedIn(command.hostname, str(exc)))
            return
        await self._send.send(WorkerStartedIn(handle))

    async def _query_registered(self, command: QueryRegistered, control: broker.ControlClient) -> None:
        asked_at = self.clock()
        try:
            # A worker that just started is busy forking its pool: give it time rather than
            # losing its late reply and asking again a retry interval later.
            result = await control.call("registered", {}, [command.hostname],
                                        timeout_s=max(5.0, self.settings.broker.reply_timeout_s))
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        reply = result.replies.get(command.hostname)
        tasks = None
        if isinstance(reply, list):
            # Entries may carry attributes: "proj.add [rate_limit=10/s]".
            tasks = tuple(sorted({str(t).split(" ", 1)[0] for t in reply if isinstance(t, str)}))
        await self._send.send(RegisteredIn(command.hostname, tasks, asked_at))

    def _sync_leases(self) -> None:
        """Hold a lease exactly for the drains under way (resumed ones and those after a reconnect too)."""
        leases = self.leases
        if leases is None or self._tg is None:
            return
        active = set(self.drains.active)
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
            await self._send.send(LeaseDeniedIn(hostname))

    async def _release_lease(self, leases: broker.Leases, hostname: str) -> None:
        try:
            await leases.release(hostname)
        except Exception as exc:  # the connection may be gone: RabbitMQ then released it itself
            log.info("lease release failed", worker=hostname, error=redact_text(str(exc)))

    async def _consumers(self, command: CancelConsumers | AddConsumers, control: broker.ControlClient) -> None:
        method = "cancel_consumer" if isinstance(command, CancelConsumers) else "add_consumer"
        timeout = self.settings.broker.reply_timeout_s
        leases = self.leases
        if isinstance(command, CancelConsumers) and leases is not None:
            try:
                mine = await leases.acquire(command.hostname)
            except Exception as exc:  # no lease, no cancel: the drain asks again after its retry interval
                await self._send.send(CommandFailed(command, f"cannot take the lease: {redact_text(str(exc))}"))
                return
            if not mine:
                log.warning("drain called off: another controller holds the worker's lease", worker=command.hostname)
                await self._send.send(LeaseDeniedIn(command.hostname))
                return
        asked_at = self.clock()
        try:
            results = await control.call_many(
                [(method, {"queue": q}) for q in command.queues], [command.hostname], timeout_s=timeout
            )
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        replies: dict[str, bool | None] = {}
        for queue, result in zip(command.queues, results, strict=True):
            reply = result.replies.get(command.hostname)
            replies[queue] = None if reply is None else bool(isinstance(reply, dict) and "ok" in reply)
        log.info(f"{method} sent", worker=command.hostname, replies={q: _word(r) for q, r in replies.items()})
        if isinstance(command, CancelConsumers):
            await self._send.send(CancelRepliedIn(command.hostname, replies, asked_at))

    async def _switch_to_pool(self, command: SwitchToPool, control: broker.ControlClient) -> None:
        """add_consumer for each pool queue, declared as -Q would on this worker (see `drainctl.core.quiet`)."""
        hostname = command.hostname
        timeout = self.settings.broker.reply_timeout_s
        asked_at = self.clock()
        try:
            current = await control.call("active_queues", {}, [hostname], timeout_s=timeout)
            reply = current.replies.get(hostname)
            if reply is None:
                await self._send.send(QueuesRepliedIn(hostname, None, asked_at))
                return
            standby = standby_declaration(reply, hostname)
            calls = [("add_consumer", add_consumer_arguments(q, standby)) for q in command.queues]
            results = await control.call_many(calls, [hostname], timeout_s=timeout)
            refused = {q: r.replies.get(hostname) for q, r in zip(command.queues, results, strict=True)
                       if not (isinstance(r.replies.get(hostname), dict) and "ok" in r.replies[hostname])}
            if refused:
                log.warning("add_consumer not confirmed", worker=hostname, replies=refused)
            queues, reply = await self._confirm_queues(control, hostname, lambda qs: set(command.queues) <= set(qs))
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        log.info("worker switched to the pool's queues" if queues is not None and set(command.queues) <= set(queues)
                 else "switch to the pool's queues not confirmed yet", worker=hostname, queues=queues)
        gaps = delayed_delivery_gaps(reply, command.queues)
        if gaps:
            log.warning("quorum queues on a non-direct exchange taken by add_consumer: Celery binds them for native "
                        "delayed delivery only at worker start, so countdown/ETA tasks sent to them may never be "
                        "delivered; give this pool quiet_start = false", worker=hostname, queues=gaps)
        await self._send.send(QueuesRepliedIn(hostname, queues, asked_at))

    async def _cancel_standby(self, command: CancelStandby, control: broker.ControlClient) -> None:
        hostname = command.hostname
        standby = standby_queue(hostname)
        asked_at = self.clock()
        try:
            await control.call("cancel_consumer", {"queue": standby}, [hostname],
                               timeout_s=self.settings.broker.reply_timeout_s)
            queues, _ = await self._confirm_queues(control, hostname, lambda qs: standby not in qs)
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        await self._send.send(QueuesRepliedIn(hostname, queues, asked_at))
        connection = self.connection
        if queues is not None and standby not in queues and connection is not None:
            await self._delete_standby(hostname, connection)

    async def _confirm_queues(
        self, control: broker.ControlClient, hostname: str, done: Callable[[tuple[str, ...]], bool]
    ) -> tuple[tuple[str, ...] | None, Any]:
        """`active_queues` until `done` holds (a few round trips, within about 1.5 s): Celery applies
        add_consumer and cancel_consumer after it has replied to them. The queue names and the last reply."""
        queues: tuple[str, ...] | None = None
        reply: Any = None
        for delay in CONFIRM_DELAYS_S:
            await anyio.sleep(delay)
            result = await control.call("active_queues", {}, [hostname], timeout_s=self.settings.broker.reply_timeout_s)
            reply = result.replies.get(hostname)
            queues = parse_queues(reply, [])
            if queues is not None and done(queues):
                break
        return queues, reply

    async def _delete_standby(self, hostname: str, connection: AbstractConnection) -> None:
        try:
            await broker.delete_unused_queue(connection, standby_queue(hostname))
        except DrainctlError as exc:
            log.info("standby queue not deleted", worker=hostname, error=str(exc))

    async def _query_queues(self, command: QueryQueues, control: broker.ControlClient) -> None:
        asked_at = self.clock()
        try:
            result = await control.call("active_queues", {}, [command.hostname],
                                        timeout_s=self.settings.broker.reply_timeout_s)
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        queues = parse_queues(result.replies.get(command.hostname), [])
        await self._send.send(QueuesRepliedIn(command.hostname, queues, asked_at))

    async def _shutdown(self, command: ShutdownWorker, control: broker.ControlClient) -> None:
        try:
            ttl = max(5.0, self.settings.broker.reply_timeout_s)
            await control.publish("shutdown", {}, [command.hostname], ttl_s=ttl)
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        log.info("remote shutdown sent", worker=command.hostname)

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
            await self._send.send(CommandFailed(command, str(exc)))

    async def _reconcile(self, command: Reconcile, control: broker.ControlClient) -> None:
        destination = None if command.hostname is None else [command.hostname]
        reply_timeout = self.settings.broker.reply_timeout_s
        # A worker announces itself (worker-online) a few ms before its pidbox queue is bound (Celery
        # starts the Heart bootstep before Control), and a command published before then is simply
        # gone. So a targeted question to a worker just seen starts with short deadlines (one that
        # answers later is just asked again) and ends with the configured one. A worker drainctl
        # already talked to gets the whole deadline each time: a late answer is no loss.
        just_seen = command.reason in DISCOVERY_REASONS or command.reason == STARTUP_MISSED
        if destination is None:
            deadlines = [reply_timeout]
        elif just_seen:
            deadlines = [min(reply_timeout, d) for d in JUST_SEEN_DEADLINES_S] + [reply_timeout, reply_timeout]
        else:
            deadlines = [reply_timeout] * 3
        asked_at = self.clock()
        for attempt, timeout in enumerate(deadlines):
            # The last attempt's start: the worker must prove alive after it for silence to count.
            asked_at = self.clock()
            try:
                replies = await broker.reconcile(control, destination, timeout_s=timeout)
            except DrainctlError as exc:
                self._reconciling.discard((command.hostname, command.reason))
                await self._send.send(CommandFailed(command, str(exc)))
                return
            snapshots = tuple(build_snapshot(host, methods) for host, methods in sorted(replies.items()))
            complete = all(s.tasks is not None and s.clock is not None for s in snapshots)
            if destination is None or (snapshots and complete) or attempt == len(deadlines) - 1:
                break
        await self._send.send(SnapshotsIn(command.reason, command.hostname, snapshots, asked_at))

    async def _enable_events(self, command: EnableEvents, control: broker.ControlClient) -> None:
        asked_at = self.clock()
        try:
            result = await control.call(
                "enable_events", {}, [command.hostname], timeout_s=self.settings.broker.reply_timeout_s
            )
        except DrainctlError as exc:
            await self._send.send(CommandFailed(command, str(exc)))
            return
        reply = result.replies.get(command.hostname)
        enabled_now: bool | None = None
        if isinstance(reply, dict) and isinstance(reply.get("ok"), str):
            enabled_now = "already" not in reply["ok"]
        await self._send.send(EventsEnabledIn(command.hostname, enabled_now, asked_at))


def _word(reply: bool | None) -> str:
    return "unknown (no reply)" if reply is None else ("ok" if reply else "error")
