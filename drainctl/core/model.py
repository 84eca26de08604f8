"""The live model: every worker, and every task it is running, holding prefetched or holding for an ETA.

Pure and single-writer: `Cluster.apply(event, now)`, `Cluster.merge(snapshot, now)` and
`Cluster.tick(now)` are the only mutations, and each returns what the shell must act on
(`Command`) or may report (`Notice`). Time is an input, so every rule here is testable as data.

The rules it applies live next to it: how events and snapshots are ordered (`ordering`), which
process speaks for a name (`collisions`), whether a worker answers remote control
(`remote_control`), and how a reconcile reply is merged (`reconcile`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from drainctl.core import remote_control
from drainctl.core.collisions import collide, drop_tasks_of_dead_incarnation, forget_stale, note_pid
from drainctl.core.commands import Command, EnableEvents, Reconcile
from drainctl.core.events import TERMINAL_TASK_EVENTS, Event, TaskEvent, WorkerEvent
from drainctl.core.notices import Notice
from drainctl.core.ordering import Tombstones, same_process
from drainctl.core.reconcile import Correction, due_corrections, merge_tasks
from drainctl.core.remote_control import REMOTE_CONTROL_CHECK
from drainctl.core.runtimes import RuntimeHistory
from drainctl.core.snapshot import TaskState, WorkerSnapshot
from drainctl.core.worker import Task, TaskEvents, Worker, WorkerState

# What code outside the core imports from here, wherever it is defined.
__all__ = [
    "REMOTE_CONTROL_CHECK", "Cluster", "Notice", "Task", "TaskEvents", "TaskState", "Worker", "WorkerState",
]

# Late events arrive within seconds; 20k finished tasks covers a fleet doing 1000 tasks/s.
DEFAULT_MAX_TOMBSTONES: Final = 20_000
# The task events whose `runtime` is the time a task ran.
_RAN: Final = frozenset({"task-succeeded", "task-failed"})


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
        self.workers: dict[str, Worker] = {}
        self._tombstones = Tombstones(max_tombstones)
        self._corrections: dict[tuple[str, str], Correction] = {}
        # History lives in counters, not in the model: memory is O(in-flight).
        self.events_by_type: dict[str, int] = {}
        self.late_events = 0
        self.task_outcomes: dict[str, int] = {}
        self.snapshots_merged = 0
        # Told of every task end the model accepts (hostname, event): the reducer counts them per pool version.
        self.task_ended: Callable[[str, str | None, TaskEvent], None] | None = None
        # How long tasks of each name ran (bounded): what drains and scale-in estimate from.
        self.runtimes = RuntimeHistory()

    # ------------------------------------------------------------------ queries
    def worker(self, hostname: str) -> Worker | None:
        return self.workers.get(hostname)

    def tombstones(self) -> int:
        return len(self._tombstones)

    def in_flight(self) -> int:
        return sum(len(w.tasks) for w in self.workers.values())

    def silent_window(self, worker: Worker) -> float:
        return max(self.silent_after_s, 2.0 * worker.freq)

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.workers.values())

    # ------------------------------------------------------------------ events
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

    @staticmethod
    def _ask_what_it_holds(worker: Worker, now: float) -> list[Command]:
        """A (re)started process: everything it did before went unseen."""
        worker.reconcile_requested_at = now
        return [Reconcile(worker.hostname, "worker-online"), EnableEvents(worker.hostname)]

    def _apply_worker(self, event: WorkerEvent, now: float) -> tuple[list[Command], list[Notice]]:
        worker, commands, notices = self._discover(event.hostname, now, event.type)
        online = event.type == "worker-online"
        notice = note_pid(worker, event.pid, now, event.type, self.silent_window(worker))
        if notice is not None:
            notices.append(notice)
            if notice.kind == "worker-restarted":
                notices.extend(drop_tasks_of_dead_incarnation(worker))
                if not online and not commands:
                    # Its worker-online was held back while the name was contended: ask now.
                    commands = self._ask_what_it_holds(worker, now)
        if not same_process(event.pid, worker.pid):
            # An event from a previous incarnation or a colliding process: it must not
            # move the state of the current one.
            return commands, notices
        if event.clock < worker.worker_clock and not online:
            notice = collide(worker, now, f"worker clock went backwards ({worker.worker_clock} -> {event.clock})")
            if notice is not None:
                notices.append(notice)
            return commands, notices
        _note_worker_event(worker, event, now)
        if event.type == "worker-offline":
            if worker.state is not WorkerState.OFFLINE:
                worker.state = WorkerState.OFFLINE
                worker.offline_at = now
                if worker.pid is not None:
                    worker.offline_pids.add(worker.pid)
                notices.append(Notice("worker-offline", worker.hostname, f"{len(worker.tasks)} tasks held"))
            return commands, notices
        return self._alive(worker, event, now, commands, notices)

    def _alive(
        self, worker: Worker, event: WorkerEvent, now: float, commands: list[Command], notices: list[Notice]
    ) -> tuple[list[Command], list[Notice]]:
        """A worker-online or a heartbeat of the current process."""
        worker.last_heartbeat = now
        previous = worker.state
        worker.state = WorkerState.ONLINE
        worker.offline_at = None
        if event.type == "worker-online":
            if not commands:  # a known worker came (back) online: ask what it holds
                commands = self._ask_what_it_holds(worker, now)
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

    def _apply_task(self, event: TaskEvent, now: float) -> tuple[list[Command], list[Notice]]:
        worker, commands, notices = self._discover(event.hostname, now, event.type)
        if worker.task_events is TaskEvents.UNKNOWN:
            worker.task_events = TaskEvents.ON
        worker.last_seen = now
        notice = note_pid(worker, event.pid, now, "task", self.silent_window(worker))
        if notice is not None:
            notices.append(notice)
        # The model's own hostname (and, below, pid) objects: a tombstone outlives the event and need not
        # keep its copies.
        key = (worker.hostname, event.uuid)
        correction = self._corrections.get(key)
        if correction is not None and same_process(correction.pid, event.pid) and event.clock <= correction.clock:
            del self._corrections[key]  # the event was on its way when the snapshot was taken
        task = worker.tasks.get(event.uuid)
        if self._is_late(key, task, event):
            self.late_events += 1
        elif event.type in TERMINAL_TASK_EVENTS:
            self._end(worker, task, event, now)
        else:
            # Re-received after it ended here (a retry, a redelivery): alive again.
            self._tombstones.revive(key)
            if event.type == "task-received":
                _received(worker, task, event, now)
            else:  # task-started
                _started(worker, task, event, now)
        return commands, notices

    def _is_late(self, key: tuple[str, str], task: Task | None, event: TaskEvent) -> bool:
        """Older than what the model knows of the task: its tombstone, or a newer event of the same process."""
        tomb = self._tombstones.get(key)
        if tomb is not None and same_process(tomb.pid, event.pid) and event.clock <= tomb.clock:
            return True
        return task is not None and same_process(task.pid, event.pid) and event.clock < task.clock

    def _end(self, worker: Worker, task: Task | None, event: TaskEvent, now: float) -> None:
        runtime = event.runtime
        if runtime is not None and event.type in _RAN:
            # task-succeeded and task-failed carry no name: task-received told it.
            self.runtimes.record(task.name if task is not None and task.name is not None else event.name, runtime)
        if task is not None:
            del worker.tasks[event.uuid]
            worker.last_task_end = now
            worker.last_task_end_clock = max(worker.last_task_end_clock, event.clock)
        self._tombstones.bury((worker.hostname, event.uuid), event.clock,
                              worker.pid if worker.pid == event.pid else event.pid)
        outcomes = self.task_outcomes
        outcomes[event.type] = outcomes.get(event.type, 0) + 1
        if self.task_ended is not None:
            self.task_ended(worker.hostname, task.name if task is not None and task.name else event.name, event)

    # ------------------------------------------------------------------ replies
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

    def note_answered(self, hostname: str, now: float) -> list[Notice]:
        """The worker answered a remote-control question: it answers remote control."""
        worker = self.workers.get(hostname)
        return remote_control.answered(worker, now) if worker is not None else []

    def note_unanswered(self, hostname: str, asked_at: float, now: float) -> list[Notice]:
        """A remote-control question asked at `asked_at` got no reply from the worker in time."""
        worker = self.workers.get(hostname)
        if worker is None:
            return []
        remote_control.unanswered(worker, asked_at)
        notice = remote_control.judge(worker, now, self.no_remote_control_after_s)
        return [notice] if notice is not None else []

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
        base, added, removed = merge_tasks(worker, snapshot.tasks, snapshot.clock, self._tombstones.by_key, now)
        if worker.synced:
            for uuids, was_added in ((added, True), (removed, False)):
                for uuid in uuids:
                    self._corrections[(worker.hostname, uuid)] = Correction(was_added, base, worker.pid, now)
        worker.synced = True
        return commands, notices

    def set_queues(self, hostname: str, queues: tuple[str, ...]) -> None:
        worker = self.workers.get(hostname)
        if worker is not None:
            worker.queues = tuple(sorted(set(queues)))

    def forget(self, hostname: str) -> Worker | None:
        """Remove a worker the runtime confirmed gone; returns it with the tasks it held."""
        return self.workers.pop(hostname, None)

    # ------------------------------------------------------------------ time
    def recheck(self, now: float) -> tuple[list[Command], list[Notice]]:
        """Time passes: ask again what went unanswered; call a worker that keeps not answering so."""
        commands: list[Command] = []
        notices: list[Notice] = []
        for worker in self.workers.values():
            notice = remote_control.judge(worker, now, self.no_remote_control_after_s)
            if notice is not None:
                notices.append(notice)
            interval = remote_control.ask_again_after(
                worker, self.no_remote_control_after_s, self.reconcile_min_interval_s)
            if interval is None:
                continue
            last = worker.reconcile_requested_at if worker.reconcile_requested_at is not None else worker.first_seen
            if now - last >= interval:
                worker.reconcile_requested_at = now
                commands.append(Reconcile(worker.hostname, REMOTE_CONTROL_CHECK))
        return commands, notices

    def tick(self, now: float) -> list[Notice]:
        """Time passes: heartbeats overdue make a worker silent; finished offline workers leave."""
        notices = due_corrections(self._corrections, now) if self._corrections else []
        for worker in list(self.workers.values()):
            window = self.silent_window(worker)
            if worker.state is WorkerState.ONLINE:
                reference = worker.last_heartbeat if worker.last_heartbeat is not None else worker.last_seen
                if now - reference > window:
                    worker.state = WorkerState.SILENT
                    notices.append(Notice("worker-silent", worker.hostname,
                                          f"no heartbeat for {now - reference:.1f}s; holds {len(worker.tasks)} tasks"))
            elif worker.state is WorkerState.OFFLINE and worker.tasks and worker.offline_at is not None:
                notice = _release_held_tasks(worker, now)
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
            notice = forget_stale(worker, now, window)
            if notice is not None:
                notices.append(notice)
        return notices


def _note_worker_event(worker: Worker, event: WorkerEvent, now: float) -> None:
    """What every worker event of the current process tells: its clock, and what it says about itself."""
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


def _received(worker: Worker, task: Task | None, event: TaskEvent, now: float) -> None:
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
        return
    task.name = event.name or task.name
    task.eta = event.eta
    task.retries = event.retries
    task.clock = event.clock
    task.pid = event.pid
    if task.state is not TaskState.RUNNING:
        task.state = TaskState.SCHEDULED if event.eta else TaskState.RESERVED


def _started(worker: Worker, task: Task | None, event: TaskEvent, now: float) -> None:
    if task is None:
        task = Task(uuid=event.uuid, name=event.name, state=TaskState.RUNNING, received_at=now)
        worker.tasks[event.uuid] = task
    task.state = TaskState.RUNNING
    task.started_at = now
    task.clock = event.clock
    task.pid = event.pid


def _release_held_tasks(worker: Worker, now: float) -> Notice | None:
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
