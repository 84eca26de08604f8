"""The live model: every worker, and every task it is running, holding prefetched or holding for an ETA.

Pure and single-writer: `Cluster.apply(event, now)`, `Cluster.merge(snapshot, now)` and
`Cluster.tick(now)` are the only mutations, and each returns what the shell must act on
(`Command`) or may report (`Notice`). Time is an input, so every rule here is testable as data.

Ordering rules (DESIGN §3):
- Lamport clocks are compared only within one worker process (pid): task events are buffered and
  flushed as ``task.multi`` lists after heartbeats with higher clocks, so clocks are compared per
  kind — task events with task events, worker events with worker events.
- A finished task leaves a tombstone; a late event for it (clock at or below the tombstone's)
  is ignored instead of resurrecting it. Tombstones are bounded (oldest dropped first).
- A snapshot taken at clock C replaces what the model learnt at or before C and leaves alone what
  events taught it after C.

One name, several processes (DESIGN §3): a worker-online from a new pid while the current process
is alive makes that pid a *contender*, not the new incarnation. Celery >= 5.7 (kombu's exclusive
pidbox queue) makes a second worker with a taken name announce itself and crash within a second:
its worker-offline then ends the matter, and the first process keeps the name. If the contender
heartbeats instead, the current process decides: it spoke meanwhile -> two live processes share
the name (a collision; older Celery lets them); it fell silent -> it was replaced (a restart).

A collision clears once no second live process has been heard under the name for twice the silent
window: every heartbeat (or task event) of a second process that has not announced its shutdown
renews it. A process that sent worker-offline no longer counts: Celery closes its remote-control
(pidbox) consumer before it sends worker-offline, so commands to the name reach the other one only.

Remote control: a worker that keeps heartbeating while several questions in a row (reconcile,
active_queues, enable_events, registered, cancel_consumer) go unanswered over a span of time does
not answer remote control (`worker_enable_remote_control = False`, or a pidbox consumer that died).
drainctl cannot stop such a worker consuming, so it refuses to drain it and says so once.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from drainctl.core.commands import Command, EnableEvents, Reconcile
from drainctl.core.events import TERMINAL_TASK_EVENTS, Event, TaskEvent, WorkerEvent
from drainctl.core.snapshot import TaskState, WorkerSnapshot

__all__ = ["REMOTE_CONTROL_CHECK", "Cluster", "Notice", "Task", "TaskState", "Worker", "WorkerState"]

# Late events arrive within seconds; 20k finished tasks covers a fleet doing 1000 tasks/s.
DEFAULT_MAX_TOMBSTONES: Final = 20_000
# Unanswered remote-control questions it takes (at least, and over `no_remote_control_after_s`)
# to call a heartbeating worker one that does not answer remote control.
UNANSWERED_QUESTIONS: Final = 3
# Ask times kept per worker: the first (where the span starts) and the latest ones.
MAX_UNANSWERED_KEPT: Final = 10
REMOTE_CONTROL_CHECK: Final = "remote-control-check"
# A snapshot races the task events sent just before it (they travel another queue): what it adds or
# removes is called a correction only if no such event explains it within this time.
CORRECTION_GRACE_S: Final = 5.0


class WorkerState(StrEnum):
    ONLINE = "online"
    # worker-offline was received: a warm shutdown has *started*; tasks may still run.
    OFFLINE = "offline"
    # Heartbeats stopped for longer than the window: a suspicion, not a verdict.
    SILENT = "silent"


class TaskEvents(StrEnum):
    UNKNOWN = "unknown"
    ON = "on"  # seen task events, or the worker said they were already on
    ENABLED = "enabled"  # drainctl turned them on with `enable_events`


@dataclass(slots=True)
class Task:
    uuid: str
    name: str | None
    state: TaskState
    received_at: float
    started_at: float | None = None
    eta: str | None = None
    retries: int = 0
    # Clock and pid of the newest information about this task (event or snapshot).
    clock: int = 0
    pid: int | None = None


@dataclass(slots=True)
class Worker:
    hostname: str
    first_seen: float
    last_seen: float
    state: WorkerState = WorkerState.ONLINE
    pid: int | None = None
    sw_ver: str | None = None
    sw_ident: str | None = None
    freq: float = 2.0
    last_heartbeat: float | None = None
    heartbeat_active: int | None = None
    processed: int | None = None
    loadavg: tuple[float, ...] | None = None
    queues: tuple[str, ...] | None = None
    task_events: TaskEvents = TaskEvents.UNKNOWN
    offline_at: float | None = None
    worker_clock: int = -1
    tasks: dict[str, Task] = field(default_factory=dict)
    # Collision detection: pids seen under this hostname, with the time each was last heard.
    pids: dict[int, float] = field(default_factory=dict)
    offline_pids: set[int] = field(default_factory=set)
    collision_at: float | None = None
    collision_reason: str | None = None
    # A pid that announced itself (worker-online) while the current process was alive: its next
    # words decide whether it is a restart, a duplicate that could not start, or a collision.
    contender: int | None = None
    contender_at: float | None = None
    current_spoke: bool = False  # the current process sent an event since the contender appeared
    # Remote control: when each question left unanswered since the last answer was asked.
    unanswered: list[float] = field(default_factory=list)
    answered_at: float | None = None
    not_answering_since: float | None = None
    active_mismatches: int = 0
    reconcile_requested_at: float | None = None
    # When the last task on this worker ended (model time): drain reaction latency is measured from it.
    last_task_end: float | None = None
    last_task_end_clock: int = -1
    heartbeat_active_clock: int = -1
    # The model follows this worker's tasks: since its worker-online, or since its first full snapshot.
    # Before then, the tasks a snapshot adds are news, not a correction.
    synced: bool = False

    @property
    def collision(self) -> bool:
        return self.collision_at is not None

    @property
    def not_answering(self) -> bool:
        """It heartbeats but leaves remote-control questions unanswered (drainctl cannot drain it)."""
        return self.not_answering_since is not None

    def unanswered_proof(self) -> list[float]:
        """The unanswered questions the worker was provably alive for: a heartbeat came after each was asked."""
        last = self.last_heartbeat
        return [t for t in self.unanswered if last is not None and last > t]

    def heartbeat_says_busy(self) -> bool:
        """The last heartbeat counted running tasks, and no task ended after it was sent."""
        return bool(self.heartbeat_active) and self.heartbeat_active_clock > self.last_task_end_clock

    def count(self, state: TaskState) -> int:
        return sum(1 for t in self.tasks.values() if t.state is state)

    def task_ids(self, state: TaskState) -> list[str]:
        return sorted(t.uuid for t in self.tasks.values() if t.state is state)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line. `kind` is a short stable label."""

    kind: str
    hostname: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _Tombstone:
    clock: int
    pid: int | None


@dataclass(frozen=True, slots=True)
class _Correction:
    """A task a snapshot added or removed: unexplained until an event older than the snapshot arrives."""

    added: bool
    clock: int
    pid: int | None
    at: float


def _same_process(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


class Cluster:
    def __init__(
        self,
        *,
        silent_after_s: float = 10.0,
        offline_retention_s: float = 60.0,
        reconcile_min_interval_s: float = 30.0,
        no_remote_control_after_s: float = 20.0,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
    ) -> None:
        self.silent_after_s = silent_after_s
        self.offline_retention_s = offline_retention_s
        self.reconcile_min_interval_s = reconcile_min_interval_s
        self.no_remote_control_after_s = no_remote_control_after_s
        self.max_tombstones = max_tombstones
        self.workers: dict[str, Worker] = {}
        self._tombstones: OrderedDict[tuple[str, str], _Tombstone] = OrderedDict()
        self._corrections: dict[tuple[str, str], _Correction] = {}
        # History lives in counters, not in the model: memory is O(in-flight).
        self.events_by_type: dict[str, int] = {}
        self.late_events = 0
        self.task_outcomes: dict[str, int] = {}
        self.snapshots_merged = 0

    # ------------------------------------------------------------------ queries
    def worker(self, hostname: str) -> Worker | None:
        return self.workers.get(hostname)

    def tombstones(self) -> int:
        return len(self._tombstones)

    def in_flight(self) -> int:
        return sum(len(w.tasks) for w in self.workers.values())

    def silent_window(self, worker: Worker) -> float:
        return max(self.silent_after_s, 2.0 * worker.freq)

    # ------------------------------------------------------------------ inputs
    def apply(self, event: Event, now: float) -> tuple[list[Command], list[Notice]]:
        counts = self.events_by_type
        counts[event.type] = counts.get(event.type, 0) + 1
        if isinstance(event, TaskEvent):
            if event.type == "task-sent":
                # Sent by a client, not a worker: counted, not modelled.
                return [], []
            return self._apply_task(event, now)
        return self._apply_worker(event, now)

    def _discover(self, hostname: str, now: float, reason: str) -> tuple[Worker, list[Command], list[Notice]]:
        worker = self.workers.get(hostname)
        if worker is not None:
            return worker, [], []
        worker = Worker(hostname=hostname, first_seen=now, last_seen=now, synced=reason == "worker-online")
        self.workers[hostname] = worker
        worker.reconcile_requested_at = now
        commands: list[Command] = [Reconcile(hostname, reason), EnableEvents(hostname)]
        return worker, commands, [Notice("worker-discovered", hostname, reason)]

    def _note_pid(self, worker: Worker, pid: int | None, now: float, kind: str) -> Notice | None:
        """Track which process speaks for a hostname; flag two live ones as a collision.

        `kind` is the event type (`task` for any task event).
        """
        if pid is None:
            return None
        current = worker.pid
        if current is None or pid == current:
            worker.pid = pid
            worker.pids[pid] = now
            if worker.contender is not None:
                worker.current_spoke = True
            return None
        known = pid in worker.pids
        worker.pids[pid] = now
        if pid in worker.offline_pids:
            # A process that announced its shutdown, finishing its tasks: its events are expected.
            return None
        current_gone = current in worker.offline_pids or (
            now - worker.pids.get(current, -1e18) > self.silent_window(worker))
        if current_gone:
            return self._replace(worker, pid)
        if kind == "worker-offline":
            return self._contender_left(worker, pid, now, known)
        if kind == "worker-online" and not known:
            worker.contender = pid
            worker.contender_at = now
            worker.current_spoke = False
            return None
        if pid == worker.contender and kind == "worker-online":
            return None  # said again: still undecided
        if pid == worker.contender and not worker.current_spoke:
            # The current process has said nothing since the contender appeared: it was replaced.
            return self._replace(worker, pid)
        if pid == worker.contender:
            worker.contender = None
        return self._collide(worker, now, f"two processes (pids {current} and {pid}) use this name")

    def _contender_left(self, worker: Worker, pid: int, now: float, known: bool) -> Notice | None:
        """Another process under this name shuts down: a twin stopping, or a duplicate that could not start."""
        worker.offline_pids.add(pid)
        if pid != worker.contender and known:
            return None  # a process already flagged as a collision: the collision clears in time
        since = "" if worker.contender_at is None or pid != worker.contender else (
            f" {now - worker.contender_at:.1f}s after it announced itself")
        worker.contender = None
        return Notice("hostname-contender-left", worker.hostname,
                      f"pid {pid} shut down under this name{since} while pid {worker.pid} keeps it "
                      "(a second worker started with the same -n?)")

    def _replace(self, worker: Worker, pid: int) -> Notice:
        """A new incarnation (a restart after an exit or SIGKILL) takes the name."""
        previous = worker.pid
        worker.pid = pid
        worker.worker_clock = -1
        worker.contender = None
        # A new process: what the old one answered (or did not) says nothing about it.
        worker.unanswered.clear()
        worker.answered_at = None
        worker.not_answering_since = None
        return Notice("worker-restarted", worker.hostname, f"pid {previous} -> {pid}")

    def _collide(self, worker: Worker, now: float, reason: str) -> Notice | None:
        first = worker.collision_at is None
        worker.collision_at = now
        worker.collision_reason = reason
        return Notice("hostname-collision", worker.hostname, reason) if first else None

    def _apply_worker(self, event: WorkerEvent, now: float) -> tuple[list[Command], list[Notice]]:
        worker, commands, notices = self._discover(event.hostname, now, event.type)
        online = event.type == "worker-online"
        notice = self._note_pid(worker, event.pid, now, event.type)
        if notice is not None:
            notices.append(notice)
            if notice.kind == "worker-restarted":
                notices.extend(self._drop_tasks_of_dead_incarnation(worker))
                if not online and not commands:
                    # Its worker-online was held back while the name was contended: ask now.
                    worker.reconcile_requested_at = now
                    commands = [Reconcile(worker.hostname, "worker-online"), EnableEvents(worker.hostname)]
        if not _same_process(event.pid, worker.pid):
            # An event from a previous incarnation or a colliding process: it must not
            # move the state of the current one.
            return commands, notices
        if event.clock < worker.worker_clock and not online:
            notice = self._collide(
                worker, now, f"worker clock went backwards ({worker.worker_clock} -> {event.clock})"
            )
            if notice is not None:
                notices.append(notice)
            return commands, notices
        worker.worker_clock = event.clock
        worker.last_seen = now
        worker.freq = event.freq
        if event.sw_ver is not None:
            worker.sw_ver = event.sw_ver
        if event.sw_ident is not None:
            worker.sw_ident = event.sw_ident
        if event.processed is not None:
            worker.processed = event.processed
        if event.loadavg is not None:
            worker.loadavg = event.loadavg

        if event.type == "worker-offline":
            if worker.state is not WorkerState.OFFLINE:
                worker.state = WorkerState.OFFLINE
                worker.offline_at = now
                if worker.pid is not None:
                    worker.offline_pids.add(worker.pid)
                notices.append(Notice("worker-offline", worker.hostname, f"{len(worker.tasks)} tasks held"))
            return commands, notices

        worker.last_heartbeat = now
        previous = worker.state
        worker.state = WorkerState.ONLINE
        worker.offline_at = None
        if online:
            if not commands:  # a known worker came (back) online: ask what it holds
                worker.reconcile_requested_at = now
                commands = [Reconcile(worker.hostname, "worker-online"), EnableEvents(worker.hostname)]
            notices.append(Notice("worker-online", worker.hostname, f"celery {event.sw_ver or '?'}"))
        elif previous is WorkerState.SILENT:
            notices.append(Notice("worker-recovered", worker.hostname, "heartbeats resumed"))
        if event.type == "worker-heartbeat" and event.active is not None:
            worker.heartbeat_active = event.active
            worker.heartbeat_active_clock = event.clock
            commands.extend(self._check_active(worker, event.active, now))
        return commands, notices

    def _check_active(self, worker: Worker, active: int, now: float) -> list[Command]:
        """The heartbeat's count of running tasks is a veto: a lasting disagreement asks the worker."""
        if active == worker.count(TaskState.RUNNING):
            worker.active_mismatches = 0
            return []
        worker.active_mismatches += 1
        # One disagreement can be a heartbeat sent between two events; two in a row is not.
        if worker.active_mismatches < 2:
            return []
        last = worker.reconcile_requested_at
        if last is not None and now - last < self.reconcile_min_interval_s:
            return []
        worker.reconcile_requested_at = now
        worker.active_mismatches = 0
        commands: list[Command] = [Reconcile(worker.hostname, "heartbeat-active-mismatch")]
        if worker.task_events is TaskEvents.UNKNOWN:
            commands.append(EnableEvents(worker.hostname))
        return commands

    def _drop_tasks_of_dead_incarnation(self, worker: Worker) -> list[Notice]:
        gone = [t for t in worker.tasks.values() if t.pid is not None and t.pid != worker.pid]
        gone = [t for t in gone if t.pid not in worker.offline_pids]
        for task in gone:
            del worker.tasks[task.uuid]
        if not gone:
            return []
        ids = ", ".join(sorted(t.uuid for t in gone))
        return [Notice("tasks-lost", worker.hostname, f"previous process held {ids}")]

    def _apply_task(self, event: TaskEvent, now: float) -> tuple[list[Command], list[Notice]]:
        worker, commands, notices = self._discover(event.hostname, now, event.type)
        if worker.task_events is TaskEvents.UNKNOWN:
            worker.task_events = TaskEvents.ON
        worker.last_seen = now
        notice = self._note_pid(worker, event.pid, now, "task")
        if notice is not None:
            notices.append(notice)
        key = (event.hostname, event.uuid)
        correction = self._corrections.get(key)
        if correction is not None and _same_process(correction.pid, event.pid) and event.clock <= correction.clock:
            del self._corrections[key]  # the event was on its way when the snapshot was taken
        tomb = self._tombstones.get(key)
        if tomb is not None and _same_process(tomb.pid, event.pid) and event.clock <= tomb.clock:
            self.late_events += 1
            return commands, notices
        task = worker.tasks.get(event.uuid)
        if task is not None and _same_process(task.pid, event.pid) and event.clock < task.clock:
            self.late_events += 1
            return commands, notices
        etype = event.type
        if etype in TERMINAL_TASK_EVENTS:
            if task is not None:
                del worker.tasks[event.uuid]
                worker.last_task_end = now
                worker.last_task_end_clock = max(worker.last_task_end_clock, event.clock)
            self._bury(key, event.clock, event.pid)
            outcomes = self.task_outcomes
            outcomes[etype] = outcomes.get(etype, 0) + 1
            return commands, notices
        if tomb is not None:
            # Re-received after it ended here (a retry, a redelivery): alive again.
            del self._tombstones[key]
        if etype == "task-received":
            if task is None:
                state = TaskState.SCHEDULED if event.eta else TaskState.RESERVED
                worker.tasks[event.uuid] = Task(
                    uuid=event.uuid,
                    name=event.name,
                    state=state,
                    received_at=now,
                    eta=event.eta,
                    retries=event.retries,
                    clock=event.clock,
                    pid=event.pid,
                )
            else:
                task.name = event.name or task.name
                task.eta = event.eta
                task.retries = event.retries
                task.clock = event.clock
                task.pid = event.pid
                if task.state is not TaskState.RUNNING:
                    task.state = TaskState.SCHEDULED if event.eta else TaskState.RESERVED
        else:  # task-started
            if task is None:
                task = Task(uuid=event.uuid, name=event.name, state=TaskState.RUNNING, received_at=now)
                worker.tasks[event.uuid] = task
            task.state = TaskState.RUNNING
            task.started_at = now
            task.clock = event.clock
            task.pid = event.pid
        return commands, notices

    def _bury(self, key: tuple[str, str], clock: int, pid: int | None) -> None:
        tombstones = self._tombstones
        tombstones[key] = _Tombstone(clock, pid)
        tombstones.move_to_end(key)
        while len(tombstones) > self.max_tombstones:
            tombstones.popitem(last=False)

    def note_task_events(self, hostname: str, enabled_now: bool, now: float) -> list[Command]:
        """The reply to `enable_events`: whether drainctl turned task events on or they already were.

        When drainctl just turned them on, everything the worker did before went unseen: ask it.
        """
        worker = self.workers.get(hostname)
        if worker is None:
            return []
        worker.task_events = TaskEvents.ENABLED if enabled_now else TaskEvents.ON
        if not enabled_now:
            return []
        worker.reconcile_requested_at = now
        return [Reconcile(hostname, "events-enabled")]

    # ------------------------------------------------------------------ remote control
    def note_answered(self, hostname: str, now: float) -> list[Notice]:
        """The worker answered a remote-control question: it answers remote control."""
        worker = self.workers.get(hostname)
        if worker is None:
            return []
        worker.unanswered.clear()
        worker.answered_at = now
        if worker.not_answering_since is None:
            return []
        worker.not_answering_since = None
        return [Notice("remote-control-answered", hostname, "it answers remote-control commands again")]

    def note_unanswered(self, hostname: str, asked_at: float, now: float) -> list[Notice]:
        """A remote-control question asked at `asked_at` got no reply from the worker in time."""
        worker = self.workers.get(hostname)
        if worker is None:
            return []
        # Replies to questions asked at once arrive in any order; keep the list sorted.
        bisect.insort(worker.unanswered, asked_at)
        if len(worker.unanswered) > MAX_UNANSWERED_KEPT:
            del worker.unanswered[1]  # the first stays: the span starts there
        notice = self._judge_remote_control(worker, now)
        return [notice] if notice is not None else []

    def _judge_remote_control(self, worker: Worker, now: float) -> Notice | None:
        if worker.not_answering_since is not None or worker.state is not WorkerState.ONLINE:
            return None
        proof = worker.unanswered_proof()
        if len(proof) < UNANSWERED_QUESTIONS:
            return None
        span = now - proof[0]
        if span < self.no_remote_control_after_s:
            return None
        worker.not_answering_since = now
        return Notice("remote-control-unanswered", worker.hostname, (
            f"{len(proof)} remote-control questions in a row went unanswered over {span:.0f}s while its "
            "heartbeats kept arriving: is worker_enable_remote_control off (or its pidbox consumer gone)? "
            "drainctl cannot stop it consuming, so it will not drain it"))

    def recheck(self, now: float) -> tuple[list[Command], list[Notice]]:
        """Time passes: ask again what went unanswered; call a worker that keeps not answering so.

        A worker whose last question went unanswered is asked again at a third of
        `no_remote_control_after_s` while undecided; once decided (or when it answers but its queues
        are still unknown), every `reconcile_min_interval_s`, so a worker whose remote control
        comes back is noticed.
        """
        commands: list[Command] = []
        notices: list[Notice] = []
        for worker in self.workers.values():
            notice = self._judge_remote_control(worker, now)
            if notice is not None:
                notices.append(notice)
            if worker.state is not WorkerState.ONLINE or (worker.queues is not None and not worker.unanswered):
                continue
            interval = self.no_remote_control_after_s / UNANSWERED_QUESTIONS
            if worker.not_answering_since is not None or not worker.unanswered:
                # Decided, or it answers but without its queues: no hurry.
                interval = max(interval, self.reconcile_min_interval_s)
            last = worker.reconcile_requested_at if worker.reconcile_requested_at is not None else worker.first_seen
            if now - last >= interval:
                worker.reconcile_requested_at = now
                commands.append(Reconcile(worker.hostname, REMOTE_CONTROL_CHECK))
        return commands, notices

    def merge(self, snapshot: WorkerSnapshot, now: float) -> tuple[list[Command], list[Notice]]:
        """Merge one worker's reconcile reply. The worker replied, so it is alive."""
        worker = self.workers.get(snapshot.hostname)
        notices: list[Notice] = []
        commands: list[Command] = []
        if worker is None:
            worker = Worker(hostname=snapshot.hostname, first_seen=now, last_seen=now)
            self.workers[snapshot.hostname] = worker
            notices.append(Notice("worker-discovered", snapshot.hostname, "reconcile reply"))
            commands.append(EnableEvents(snapshot.hostname))
        worker.last_seen = now
        notices.extend(self.note_answered(worker.hostname, now))
        if worker.state is WorkerState.SILENT:
            worker.state = WorkerState.ONLINE
            notices.append(Notice("worker-recovered", worker.hostname, "answered a reconcile"))
        if snapshot.queues is not None:
            worker.queues = snapshot.queues
        if snapshot.tasks is None:
            return commands, notices
        self.snapshots_merged += 1
        base = snapshot.clock
        if base is None:
            # Without the worker's clock, treat all the model knows as older than the snapshot.
            base = max((t.clock for t in worker.tasks.values()), default=0)
        listed = {info.uuid: info for info in snapshot.tasks}
        removed: list[str] = []
        for uuid, task in list(worker.tasks.items()):
            if task.clock > base and _same_process(task.pid, worker.pid):
                continue  # events told us something newer than the snapshot
            if uuid not in listed:
                del worker.tasks[uuid]
                removed.append(uuid)
        added: list[str] = []
        for uuid, info in listed.items():
            tomb = self._tombstones.get((worker.hostname, uuid))
            if tomb is not None and tomb.clock > base and _same_process(tomb.pid, worker.pid):
                continue  # it finished after the snapshot was taken
            current = worker.tasks.get(uuid)
            if current is not None and current.clock > base and _same_process(current.pid, worker.pid):
                continue
            if current is None:
                current = Task(uuid=uuid, name=info.name, state=info.state, received_at=now)
                worker.tasks[uuid] = current
                added.append(uuid)
            task = current
            task.name = info.name or task.name
            task.state = info.state
            task.eta = info.eta
            task.clock = base
            task.pid = worker.pid
            if info.state is TaskState.RUNNING and task.started_at is None:
                task.started_at = now
        if worker.synced:
            for uuids, was_added in ((added, True), (removed, False)):
                for uuid in uuids:
                    self._corrections[(worker.hostname, uuid)] = _Correction(was_added, base, worker.pid, now)
        worker.synced = True
        return commands, notices

    def _report_corrections(self, now: float) -> list[Notice]:
        """What snapshots changed that no event explained within the grace: the events were lost."""
        due: dict[str, list[bool]] = {}
        for key, correction in list(self._corrections.items()):
            if now - correction.at >= CORRECTION_GRACE_S:
                del self._corrections[key]
                due.setdefault(key[0], []).append(correction.added)
        return [Notice("reconcile-corrected", hostname, f"added {sum(kinds)}, removed {len(kinds) - sum(kinds)}")
                for hostname, kinds in sorted(due.items())]

    def tick(self, now: float) -> list[Notice]:
        """Time passes: heartbeats overdue make a worker silent; finished offline workers leave."""
        notices = self._report_corrections(now) if self._corrections else []
        for worker in list(self.workers.values()):
            window = self.silent_window(worker)
            if worker.state is WorkerState.ONLINE:
                reference = worker.last_heartbeat if worker.last_heartbeat is not None else worker.last_seen
                if now - reference > window:
                    worker.state = WorkerState.SILENT
                    notices.append(
                        Notice(
                            "worker-silent",
                            worker.hostname,
                            f"no heartbeat for {now - reference:.1f}s; holds {len(worker.tasks)} tasks",
                        )
                    )
            elif worker.state is WorkerState.OFFLINE and worker.tasks and worker.offline_at is not None:
                notice = self._release_held_tasks(worker, now)
                if notice is not None:
                    notices.append(notice)
            if (
                worker.state is WorkerState.OFFLINE
                and not worker.tasks
                and worker.offline_at is not None
                # retention counts from the last sign of life: the end of its last task
                and now - max(worker.offline_at, worker.last_seen) >= self.offline_retention_s
            ):
                del self.workers[worker.hostname]
                notices.append(Notice("worker-removed", worker.hostname, "offline and idle"))
                continue
            if worker.collision_at is not None and now - worker.collision_at > 2 * window:
                worker.collision_at = None
                worker.collision_reason = None
                notices.append(Notice("hostname-collision-cleared", worker.hostname, ""))
            if len(worker.pids) > 1:
                for pid, seen in list(worker.pids.items()):
                    if pid != worker.pid and now - seen > 2 * window:
                        del worker.pids[pid]
                        worker.offline_pids.discard(pid)
                        if pid == worker.contender:
                            worker.contender = None  # announced itself, then never heard of again
        return notices

    def _release_held_tasks(self, worker: Worker, now: float) -> Notice | None:
        """After a warm shutdown's last running task, the worker closes its connection and the broker
        takes back what it held unacknowledged (ETA and, on Celery < 5.7, prefetched tasks).

        No event says so; the sign is an offline worker with nothing running for a heartbeat window.
        A task it does start after all comes back through its task-started event.
        """
        assert worker.offline_at is not None
        if any(t.state is TaskState.RUNNING for t in worker.tasks.values()):
            return None
        if now - max(worker.offline_at, worker.last_seen) < 2 * worker.freq:
            return None
        released = sorted(worker.tasks)
        worker.tasks.clear()
        return Notice("tasks-returned", worker.hostname, f"back to the queue: {', '.join(released)}")

    def set_queues(self, hostname: str, queues: tuple[str, ...]) -> None:
        worker = self.workers.get(hostname)
        if worker is not None:
            worker.queues = tuple(sorted(set(queues)))

    def forget(self, hostname: str) -> Worker | None:
        """Remove a worker the runtime confirmed gone; returns it with the tasks it held."""
        return self.workers.pop(hostname, None)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.workers.values())
