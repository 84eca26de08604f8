"""Questions and orders to workers over Celery remote control, each answered as one reducer input.

A broker failure is an answer too (`CommandFailed`): nothing here raises, so the asker always learns
what became of its question. No reply is `None` in the input (unknown), never an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio
import structlog

from drainctl import broker
from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    CancelStandby,
    EnableEvents,
    QueryQueues,
    QueryRegistered,
    Reconcile,
    ShutdownWorker,
    SwitchToPool,
)
from drainctl.core.events import TASK_EVENT_TYPES, WORKER_EVENT_TYPES
from drainctl.core.quiet import add_consumer_arguments, delayed_delivery_gaps, standby_declaration, standby_queue
from drainctl.core.snapshot import build_snapshot, parse_queues
from drainctl.errors import DrainctlError
from drainctl.inputs import (
    CancelRepliedIn,
    CommandFailed,
    EventsEnabledIn,
    Input,
    QueuesRepliedIn,
    RegisteredIn,
    SnapshotsIn,
)

log = structlog.get_logger("drainctl")

# A worker first seen through one of these events is asked what it holds at once, with short deadlines.
DISCOVERY_REASONS: Final = TASK_EVENT_TYPES | WORKER_EVENT_TYPES
# A worker the start-up broadcast did not hear from (it may have come up while the broadcast was out).
STARTUP_MISSED: Final = "startup-missed"
# Deadlines of the first questions to a worker just seen (then the configured reply timeout, twice).
JUST_SEEN_DEADLINES_S: Final = (0.05, 0.15, 0.5)
# Pauses before the active_queues questions that confirm a switch or a standby cancel: Celery applies
# them on its next loop iteration, which a worker still starting up may not reach for a second or two.
CONFIRM_DELAYS_S: Final = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
# A worker that just started is busy forking its pool: `registered` gets at least this long.
REGISTERED_MIN_TIMEOUT_S: Final = 5.0
# How long a `shutdown` waits in the worker's pidbox queue at least (it is not answered).
SHUTDOWN_MIN_TTL_S: Final = 5.0


class WorkerQuestions:
    """One remote-control client, its reply deadline and the clock that dates each question."""

    def __init__(self, control: broker.ControlClient, reply_timeout_s: float, clock: Callable[[], float]) -> None:
        self.control = control
        self.timeout_s = reply_timeout_s
        self.clock = clock

    async def reconcile(self, command: Reconcile) -> Input:
        destination = None if command.hostname is None else [command.hostname]
        asked_at = self.clock()
        snapshots: tuple[Any, ...] = ()
        deadlines = self._reconcile_deadlines(command)
        for attempt, timeout in enumerate(deadlines):
            # The last attempt's start: the worker must prove alive after it for silence to count.
            asked_at = self.clock()
            try:
                replies = await broker.reconcile(self.control, destination, timeout_s=timeout)
            except DrainctlError as exc:
                return CommandFailed(command, str(exc))
            snapshots = tuple(build_snapshot(host, methods) for host, methods in sorted(replies.items()))
            complete = all(s.tasks is not None and s.clock is not None for s in snapshots)
            if destination is None or (snapshots and complete) or attempt == len(deadlines) - 1:
                break
        return SnapshotsIn(command.reason, command.hostname, snapshots, asked_at)

    def _reconcile_deadlines(self, command: Reconcile) -> list[float]:
        # A worker announces itself (worker-online) a few ms before its pidbox queue is bound (Celery
        # starts the Heart bootstep before Control), and a command published before then is simply
        # gone. So a targeted question to a worker just seen starts with short deadlines (one that
        # answers later is just asked again) and ends with the configured one. A worker drainctl
        # already talked to gets the whole deadline each time: a late answer is no loss.
        if command.hostname is None:
            return [self.timeout_s]
        if command.reason in DISCOVERY_REASONS or command.reason == STARTUP_MISSED:
            return [min(self.timeout_s, d) for d in JUST_SEEN_DEADLINES_S] + [self.timeout_s, self.timeout_s]
        return [self.timeout_s] * 3

    async def enable_events(self, command: EnableEvents) -> Input:
        asked_at = self.clock()
        try:
            result = await self.control.call("enable_events", {}, [command.hostname], timeout_s=self.timeout_s)
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        reply = result.replies.get(command.hostname)
        enabled_now: bool | None = None
        if isinstance(reply, dict) and isinstance(reply.get("ok"), str):
            enabled_now = "already" not in reply["ok"]
        return EventsEnabledIn(command.hostname, enabled_now, asked_at)

    async def registered(self, command: QueryRegistered) -> Input:
        asked_at = self.clock()
        try:
            # Rather than lose a late reply and ask again a retry interval later.
            result = await self.control.call("registered", {}, [command.hostname],
                                             timeout_s=max(REGISTERED_MIN_TIMEOUT_S, self.timeout_s))
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        reply = result.replies.get(command.hostname)
        tasks = None
        if isinstance(reply, list):
            # Entries may carry attributes: "proj.add [rate_limit=10/s]".
            tasks = tuple(sorted({str(t).split(" ", 1)[0] for t in reply if isinstance(t, str)}))
        return RegisteredIn(command.hostname, tasks, asked_at)

    async def queues(self, command: QueryQueues) -> Input:
        asked_at = self.clock()
        try:
            result = await self.control.call("active_queues", {}, [command.hostname], timeout_s=self.timeout_s)
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        queues = parse_queues(result.replies.get(command.hostname), [])
        return QueuesRepliedIn(command.hostname, queues, asked_at)

    async def consumers(self, command: CancelConsumers | AddConsumers) -> Input | None:
        """cancel_consumer (a drain's: answered with the replies) or add_consumer (a drain undone)."""
        method = "cancel_consumer" if isinstance(command, CancelConsumers) else "add_consumer"
        asked_at = self.clock()
        try:
            results = await self.control.call_many(
                [(method, {"queue": q}) for q in command.queues], [command.hostname], timeout_s=self.timeout_s
            )
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        replies: dict[str, bool | None] = {}
        for queue, result in zip(command.queues, results, strict=True):
            reply = result.replies.get(command.hostname)
            replies[queue] = None if reply is None else _ok(reply)
        log.info(f"{method} sent", worker=command.hostname, replies={q: _word(r) for q, r in replies.items()})
        if isinstance(command, CancelConsumers):
            return CancelRepliedIn(command.hostname, replies, asked_at)
        return None

    async def switch_to_pool(self, command: SwitchToPool) -> Input:
        """add_consumer for each pool queue, declared as -Q would on this worker (see `drainctl.core.quiet`)."""
        hostname = command.hostname
        asked_at = self.clock()
        try:
            current = await self.control.call("active_queues", {}, [hostname], timeout_s=self.timeout_s)
            reply = current.replies.get(hostname)
            if reply is None:
                return QueuesRepliedIn(hostname, None, asked_at)
            standby = standby_declaration(reply, hostname)
            calls = [("add_consumer", add_consumer_arguments(q, standby)) for q in command.queues]
            results = await self.control.call_many(calls, [hostname], timeout_s=self.timeout_s)
            refused = {q: r.replies.get(hostname) for q, r in zip(command.queues, results, strict=True)
                       if not _ok(r.replies.get(hostname))}
            if refused:
                log.warning("add_consumer not confirmed", worker=hostname, replies=refused)
            queues, reply = await self._confirm_queues(hostname, lambda qs: set(command.queues) <= set(qs))
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        switched = queues is not None and set(command.queues) <= set(queues)
        if switched:
            log.info("worker switched to the pool's queues", worker=hostname, queues=queues)
        else:
            log.info("switch to the pool's queues not confirmed yet", worker=hostname, queues=queues)
        gaps = delayed_delivery_gaps(reply, command.queues)
        if gaps:
            log.warning("quorum queues on a non-direct exchange were taken by add_consumer: countdown/ETA tasks sent "
                        "to them may never be delivered; give this pool quiet_start = false (see the README)",
                        worker=hostname, queues=gaps)
        return QueuesRepliedIn(hostname, queues, asked_at)

    async def cancel_standby(self, command: CancelStandby) -> Input:
        standby = standby_queue(command.hostname)
        asked_at = self.clock()
        try:
            await self.control.call("cancel_consumer", {"queue": standby}, [command.hostname],
                                    timeout_s=self.timeout_s)
            queues, _ = await self._confirm_queues(command.hostname, lambda qs: standby not in qs)
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        return QueuesRepliedIn(command.hostname, queues, asked_at)

    async def _confirm_queues(
        self, hostname: str, done: Callable[[tuple[str, ...]], bool]
    ) -> tuple[tuple[str, ...] | None, Any]:
        """`active_queues` until `done` holds (a few round trips, within about 1.5 s): Celery applies
        add_consumer and cancel_consumer after it has replied to them. The queue names and the last reply."""
        queues: tuple[str, ...] | None = None
        reply: Any = None
        for delay in CONFIRM_DELAYS_S:
            await anyio.sleep(delay)
            result = await self.control.call("active_queues", {}, [hostname], timeout_s=self.timeout_s)
            reply = result.replies.get(hostname)
            queues = parse_queues(reply, [])
            if queues is not None and done(queues):
                break
        return queues, reply

    async def shutdown(self, command: ShutdownWorker) -> Input | None:
        try:
            await self.control.publish("shutdown", {}, [command.hostname],
                                       ttl_s=max(SHUTDOWN_MIN_TTL_S, self.timeout_s))
        except DrainctlError as exc:
            return CommandFailed(command, str(exc))
        log.info("remote shutdown sent", worker=command.hostname)
        return None


def _ok(reply: Any) -> bool:
    return isinstance(reply, dict) and "ok" in reply


def _word(reply: bool | None) -> str:
    return "unknown (no reply)" if reply is None else ("ok" if reply else "error")
