"""The reducer: the only writer of the model. One input in; the commands and notices it leads to out.

It runs no I/O and never awaits: the controller feeds it one input at a time from its inbox, logs the
notices and hands the commands to the executor. Every input type is matched, so none is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Final, assert_never

import anyio
import structlog

from drainctl.core.autoscale import Autoscaler
from drainctl.core.commands import Command, JournalEngines, Reconcile
from drainctl.core.drain import CONFIRM_REASON, DrainBook, DrainRefused
from drainctl.core.events import Decoded, TaskEvent
from drainctl.core.model import Cluster, Notice
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.core.version_outcomes import VersionOutcomes
from drainctl.inputs import (
    BrokerDown,
    BrokerUp,
    CanaryDecisionRequested,
    CancelRepliedIn,
    CommandFailed,
    DrainRequested,
    DroppedIn,
    EngineReachIn,
    EngineRequested,
    EventsEnabledIn,
    EventsIn,
    Input,
    LeaseDeniedIn,
    QueueDepthsIn,
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
from drainctl.pool_service import PoolService
from drainctl.readmodel import IngestStats
from drainctl.remote import STARTUP_MISSED

log = structlog.get_logger("drainctl")

WARNING_NOTICES: Final = frozenset({
    "worker-silent", "hostname-collision", "hostname-contender-left", "tasks-lost", "reconcile-corrected",
    "remote-control-unanswered", "rollout-blocked", "engine-unreachable", "consumer-timeout-near",
    "consumer-timeout-redelivered",
})


class RateLimitedLog:
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


class Reducer:
    def __init__(
        self, cluster: Cluster, fleet: Fleet, drains: DrainBook, pools: PoolService, stats: IngestStats,
        reconciling: set[tuple[str | None, str]],
    ) -> None:
        self.cluster = cluster
        self.fleet = fleet
        self.version_outcomes = VersionOutcomes()
        self.autoscaler = Autoscaler()
        cluster.task_ended = self._task_ended
        self.drains = drains
        self.pools = pools
        self.stats = stats
        # Reconciles under way (the executor adds, the merge of an answer removes).
        self.reconciling = reconciling
        # Set once the start-up reconcile has been merged: the model is complete from then on.
        self.synced = anyio.Event()
        self._malformed_log = RateLimitedLog(10.0)
        self._commands: list[Command] = []
        self._notices: list[Notice] = []

    def handle(self, item: Input, now: float) -> tuple[list[Command], list[Notice]]:
        """Apply one input, then let the planner and the drains react to the model as it now is."""
        self._commands, self._notices = [], []
        self._dispatch(item, now)
        if self.synced.is_set() and self.pools.targets:
            self._add(*self.fleet.plan(self.targets, self.cluster, self.drains, now,
                                       requested_by=self.pools.requested_by))
        self._add(*self.drains.evaluate(self.cluster, now))
        return self._commands, self._notices

    @property
    def targets(self) -> Mapping[str, PoolTarget]:
        """The pools as the planner keeps them: as configured, elastic ones at their size now."""
        return self.autoscaler.targets(self.pools.targets, self.fleet.members)

    def _add(self, commands: Iterable[Command] = (), notices: Iterable[Notice] = ()) -> None:
        self._commands.extend(commands)
        self._notices.extend(notices)

    def _dispatch(self, item: Input, now: float) -> None:
        match item:
            case EventsIn():
                self._ingest(item, now)
            case Tick():
                self._add(notices=self.cluster.tick(now))
                self._add(*self.cluster.recheck(now))
                self._add(self._startup_broadcast())
            case SnapshotsIn():
                self._merge(item, now)
            case EventsEnabledIn():
                self._events_enabled(item, now)
            case DroppedIn():
                self.stats.dropped += item.events
                log.warning("event queue overflowed; oldest events dropped", events=item.events,
                            total=self.stats.dropped)
            case LeaseDeniedIn():
                self._lease_denied(item, now)
            case BrokerUp():
                # Until the start-up broadcast has been merged, every connection asks everyone again.
                self._add(self._startup_broadcast())
                if self.synced.is_set():
                    self._add([Reconcile(h, "reconnect") for h in sorted(self.cluster.workers)])
            case BrokerDown():
                pass
            case CommandFailed():
                log.warning("command failed", command=repr(item.command), error=item.error)
            case RegisteredIn():
                self._heard(item.hostname, item.tasks is not None, item.asked_at, now)
                self.fleet.registered(item.hostname, item.tasks, now)
            case StartFailedIn():
                self._add(notices=self.fleet.start_failed(item.hostname, item.error, now))
            case ReloadRequested():
                self.pools.reload(item)
            case RollbackRequested():
                self.pools.rollback(item)
            case DrainRequested():
                self._drain_requested(item, now)
            case CancelRepliedIn():
                answered = any(reply is not None for reply in item.replies.values())
                self._heard(item.hostname, answered, item.asked_at, now)
                self._add(self.drains.cancel_replied(item.hostname, item.replies, now))
            case QueuesRepliedIn():
                self._heard(item.hostname, item.queues is not None, item.asked_at, now)
                self._add(self.drains.queues_replied(self.cluster, item.hostname, item.queues, now))
            case WorkerStartedIn():
                self.pools.started(item.handle, now)
            case WorkerExitedIn():
                self._exited(item, now)
            case CanaryDecisionRequested() | EngineRequested() | EngineReachIn() | QueueDepthsIn():
                self._fleet_input(item, now)
            case _:
                assert_never(item)

    def _fleet_input(self, item: CanaryDecisionRequested | EngineRequested | EngineReachIn | QueueDepthsIn,
                     now: float) -> None:
        """Canary decisions, engines (maintenance, reachability) and queue depths for the autoscaler."""
        match item:
            case CanaryDecisionRequested():
                self._canary_decision(item)
            case EngineRequested():
                self._engine_request(item)
            case EngineReachIn():
                if self.fleet.engines.reachable(item.engine, item.reachable, item.reason):
                    self._add(notices=[Notice("engine-reachable" if item.reachable else "engine-unreachable",
                                              item.engine, item.reason or "its event stream is back")])
            case QueueDepthsIn():
                if self.synced.is_set():
                    self._add(notices=self.autoscaler.observe(
                        self.pools.targets, item.queues, self.fleet.members, self.fleet.rollouts, self.cluster,
                        self.drains, now))
            case _:
                assert_never(item)

    def _startup_broadcast(self) -> list[Command]:
        """The start-up broadcast, until one has been merged: sent again when the last one failed."""
        if self.synced.is_set() or not self.stats.connected or (None, "startup") in self.reconciling:
            return []
        return [Reconcile(None, "startup")]

    def _heard(self, hostname: str, answered: bool, asked_at: float | None, now: float) -> None:
        """A remote-control question to `hostname` was answered, or went unanswered (not a broker failure)."""
        if answered:
            self._add(notices=self.cluster.note_answered(hostname, now))
        else:
            self._add(notices=self.cluster.note_unanswered(hostname, asked_at if asked_at is not None else now, now))

    def _events_enabled(self, item: EventsEnabledIn, now: float) -> None:
        self._heard(item.hostname, item.enabled_now is not None, item.asked_at, now)
        if item.enabled_now is not None:
            self._add(self.cluster.note_task_events(item.hostname, item.enabled_now, now))
            if item.enabled_now:
                log.info("task events turned on", worker=item.hostname)

    def _lease_denied(self, item: LeaseDeniedIn, now: float) -> None:
        # Never add_consumer here: the other controller may be draining this very worker.
        self._add(notices=self.drains.abandon(
            item.hostname, now, "another controller holds this worker's lease (drainctl.lock.<hostname>)"))
        self.fleet.cancelled.pop(item.hostname, None)
        if self.pools.journal is not None:
            self.pools.journal.forget(item.hostname)

    def _drain_requested(self, item: DrainRequested, now: float) -> None:
        try:
            drain, commands = self.drains.start(
                self.cluster, item.hostname, now, policy=self.pools.drain_policy(item.hostname, item.policy),
                managed=item.hostname in self.pools.managed, force=item.force, requested_by=item.requested_by,
            )
        except DrainRefused as refused:
            # A temporary refusal is asked again by a retrying client: info, not a warning per retry.
            (log.info if refused.temporary else log.warning)(
                "drain refused", worker=item.hostname, reason=refused.reason, temporary=refused.temporary)
            item.pending.result = refused
        else:
            if commands:
                log.info("drain started", worker=item.hostname, queues=list(drain.queues),
                         managed=drain.managed, forced=item.force, requested_by=item.requested_by)
            self._add(commands)
            item.pending.result = drain
        item.pending.done.set()

    def _canary_decision(self, item: CanaryDecisionRequested) -> None:
        error = self.fleet.canary.decide(item.pool, item.decision, item.requested_by)
        if error is not None:
            item.answer.error = f"{error} (to undo a rollout, `drainctl rollback --pool {item.pool}`)"
        else:
            log.info(f"canary {item.decision}d", pool=item.pool, requested_by=item.requested_by)
            item.answer.detail = {"pool": item.pool, "decision": item.decision}
        item.answer.done.set()

    def _engine_request(self, item: EngineRequested) -> None:
        known = {e for t in self.pools.targets.values() for e in t.engines}
        error = self.fleet.engines.request(item.engine, item.action, known)
        if error is not None:
            item.answer.error = error
        else:
            self._add([JournalEngines()])
            on = self.fleet.engines.workers_on(item.engine, self.fleet.members.values())
            log.info(f"engine {item.action} requested", engine=item.engine, workers=len(on),
                     requested_by=item.requested_by)
            item.answer.detail = {"engine": item.engine, "state": self.fleet.engines.states.get(item.engine),
                                  "workers": on}
        item.answer.done.set()

    def _exited(self, item: WorkerExitedIn, now: float) -> None:
        exited = item.exited
        handle = exited.handle
        self.pools.exited(handle)
        self._add(notices=self.drains.exited(self.cluster, handle.hostname, exited.exit_code, exited.forced, now))
        self._add(*self.fleet.exited(handle.hostname, exited.exit_code, now))
        log.info("worker process exited", worker=handle.hostname, exit_code=exited.exit_code, runtime=handle.runtime)

    def _ingest(self, item: EventsIn, now: float) -> None:
        stats = self.stats
        stats.messages += len(item.batch)
        stats.bytes += item.nbytes
        apply = self.cluster.apply
        commands, notices = self._commands, self._notices
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

    def _task_ended(self, hostname: str, name: str | None, event: TaskEvent) -> None:
        member = self.fleet.members.get(hostname)
        if member is not None:
            outcome = event.type.removeprefix("task-")
            self.version_outcomes.record(member.pool, member.version, outcome, event.runtime)
            self.fleet.canary.record(member.pool, member.version, name, outcome, event.runtime)

    def _malformed(self, decoded: Decoded, now: float) -> None:
        for rejection in decoded.rejections:
            self.stats.malformed[rejection.reason] = self.stats.malformed.get(rejection.reason, 0) + 1
        emit, suppressed = self._malformed_log.should_log(now)
        if emit:
            first = decoded.rejections[0]
            log.warning("malformed event ignored", reason=first.reason, detail=first.detail,
                        suppressed_since_last=suppressed)

    def _merge(self, item: SnapshotsIn, now: float) -> None:
        self.reconciling.discard((item.target, item.reason))
        self.stats.reconciles[item.reason] = self.stats.reconciles.get(item.reason, 0) + 1
        asked_at = item.asked_at if item.asked_at is not None else now
        if item.target is not None and not item.snapshots:
            self.stats.reconcile_no_reply += 1
            log.info("no reconcile reply (unknown, not empty)", worker=item.target, reason=item.reason)
            self._add(notices=self.cluster.note_unanswered(item.target, asked_at, now))
        elif item.target is None:
            # The broadcast reached every worker alive when it went out: those that did not answer count.
            replied = {s.hostname for s in item.snapshots}
            for worker in list(self.cluster):
                if worker.hostname not in replied and worker.first_seen <= asked_at:
                    self._add(notices=self.cluster.note_unanswered(worker.hostname, asked_at, now))
        for snapshot in item.snapshots:
            if snapshot.problems:
                log.warning("partial reconcile reply", worker=snapshot.hostname, problems=list(snapshot.problems))
            self._add(*self.cluster.merge(snapshot, now))
        if item.reason == CONFIRM_REASON and item.target is not None:
            answered = any(s.tasks is not None for s in item.snapshots)
            self._add(self.drains.confirm_done(self.cluster, item.target, answered, now))
        if item.target is None:
            self._startup_merged(item)

    def _startup_merged(self, item: SnapshotsIn) -> None:
        # A worker that came up while the broadcast was out (its pidbox queue not bound yet) did not
        # hear it: ask each one not in the replies on its own, at once.
        replied = {s.hostname for s in item.snapshots}
        self._add([Reconcile(w.hostname, STARTUP_MISSED) for w in self.cluster
                   if w.hostname not in replied and w.queues is None])
        log.info("start-up reconcile merged", workers=len(item.snapshots), in_flight=self.cluster.in_flight())
        self.synced.set()


def log_notice(notice: Notice) -> None:
    level = "warning" if notice.kind in WARNING_NOTICES else "info"
    getattr(log, level)(notice.kind.replace("-", " "), worker=notice.hostname, detail=notice.detail)
