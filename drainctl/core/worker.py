"""The model's records: a worker, the tasks it holds, and which of them hold a drain.

`drainctl.core.model.Cluster` keeps one `Worker` per Celery node name and is the only one to change
them; everything else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from drainctl.core.snapshot import TaskState


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


def held(worker: Worker | None) -> tuple[str, ...] | None:
    """Ids of the tasks that hold a drain: running and prefetched. ETA tasks do not (the broker hands
    them to another worker once this one disconnects). None: the model does not know the worker."""
    if worker is None:
        return None
    return tuple(sorted(t.uuid for t in worker.tasks.values() if t.state is not TaskState.SCHEDULED))
