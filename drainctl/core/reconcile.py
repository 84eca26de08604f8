"""A reconcile reply merged into the model: what a worker's snapshot lists against what events said.

A snapshot taken at clock C replaces what the model learnt at or before C and leaves alone what events
taught it after C (see `drainctl.core.ordering`). It races the task events sent just before it (they
travel another queue): what it adds or removes is called a correction only if no such event explains
it within `CORRECTION_GRACE_S`; a correction means task events were lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from drainctl.core.notices import Notice
from drainctl.core.ordering import Tombstone, same_process
from drainctl.core.snapshot import TaskInfo, TaskState
from drainctl.core.worker import Task, Worker

CORRECTION_GRACE_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Correction:
    """A task a snapshot added or removed: unexplained until an event older than the snapshot arrives."""

    added: bool
    clock: int
    pid: int | None
    at: float


def merge_tasks(
    worker: Worker, tasks: tuple[TaskInfo, ...], clock: int | None,
    tombstones: Mapping[tuple[str, str], Tombstone], now: float,
) -> tuple[int, list[str], list[str]]:
    """Bring the worker's tasks in line with a snapshot's lists; the snapshot's clock, and what it added and removed."""
    base = clock
    if base is None:
        # Without the worker's clock, treat all the model knows as older than the snapshot.
        base = max((t.clock for t in worker.tasks.values()), default=0)
    listed = {info.uuid: info for info in tasks}
    removed: list[str] = []
    for uuid, task in list(worker.tasks.items()):
        if task.clock > base and same_process(task.pid, worker.pid):
            continue  # events told us something newer than the snapshot
        if uuid not in listed:
            del worker.tasks[uuid]
            removed.append(uuid)
    added: list[str] = []
    for uuid, info in listed.items():
        tomb = tombstones.get((worker.hostname, uuid))
        if tomb is not None and tomb.clock > base and same_process(tomb.pid, worker.pid):
            continue  # it finished after the snapshot was taken
        current = worker.tasks.get(uuid)
        if current is not None and current.clock > base and same_process(current.pid, worker.pid):
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
    return base, added, removed


def due_corrections(corrections: dict[tuple[str, str], Correction], now: float) -> list[Notice]:
    """What snapshots changed that no event explained within the grace: the events were lost."""
    due: dict[str, list[bool]] = {}
    for key, correction in list(corrections.items()):
        if now - correction.at >= CORRECTION_GRACE_S:
            del corrections[key]
            due.setdefault(key[0], []).append(correction.added)
    return [Notice("reconcile-corrected", hostname, f"added {sum(kinds)}, removed {len(kinds) - sum(kinds)}")
            for hostname, kinds in sorted(due.items())]
