"""Replies to a reconcile (`clock`, `active`, `reserved`, `scheduled`, `active_queues`) -> one snapshot.

Celery's replies are loosely typed JSON; this turns one worker's replies into a typed snapshot or
says exactly which part was unusable. A part that is missing stays `None` (unknown), never empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TaskState(StrEnum):
    RESERVED = "reserved"  # received (prefetched), not started, no ETA
    SCHEDULED = "scheduled"  # received with an ETA/countdown; held unacknowledged until due
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    uuid: str
    name: str | None
    state: TaskState
    eta: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    hostname: str
    # The worker's Lamport clock read *before* the task lists were taken: events with a
    # clock at or below it are already reflected in the lists.
    clock: int | None
    tasks: tuple[TaskInfo, ...] | None
    queues: tuple[str, ...] | None
    problems: tuple[str, ...] = ()


def _request_info(item: Any, state: TaskState, eta: str | None, problems: list[str]) -> TaskInfo | None:
    if not isinstance(item, Mapping):
        problems.append(f"{state.value}: entry is not an object")
        return None
    uuid = item.get("id")
    if not isinstance(uuid, str) or not uuid:
        problems.append(f"{state.value}: entry without an 'id'")
        return None
    name = item.get("name")
    return TaskInfo(uuid=uuid, name=name if isinstance(name, str) else None, state=state, eta=eta)


def _tasks(
    active: Any, reserved: Any, scheduled: Any, problems: list[str]
) -> tuple[TaskInfo, ...] | None:
    if not (isinstance(active, list) and isinstance(reserved, list) and isinstance(scheduled, list)):
        for label, value in (("active", active), ("reserved", reserved), ("scheduled", scheduled)):
            if not isinstance(value, list):
                problems.append(f"{label}: no usable reply")
        return None
    out: dict[str, TaskInfo] = {}
    for item in scheduled:
        if not isinstance(item, Mapping):
            problems.append("scheduled: entry is not an object")
            continue
        eta = item.get("eta")
        info = _request_info(
            item.get("request"), TaskState.SCHEDULED, eta if isinstance(eta, str) else None, problems
        )
        if info is not None:
            out[info.uuid] = info
    for item in reserved:
        info = _request_info(item, TaskState.RESERVED, None, problems)
        if info is not None:
            out[info.uuid] = info
    # Active last: a task listed twice (it started between two replies) is running.
    for item in active:
        info = _request_info(item, TaskState.RUNNING, None, problems)
        if info is not None:
            out[info.uuid] = info
    return tuple(out.values())


def parse_queues(reply: Any, problems: list[str]) -> tuple[str, ...] | None:
    if not isinstance(reply, list):
        problems.append("active_queues: no usable reply")
        return None
    names: list[str] = []
    for item in reply:
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str):
            names.append(name)
        else:
            problems.append("active_queues: entry without a 'name'")
    return tuple(sorted(set(names)))


def _clock(reply: Any, problems: list[str]) -> int | None:
    value = reply.get("clock") if isinstance(reply, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    problems.append("clock: no usable reply")
    return None


def build_snapshot(hostname: str, replies: Mapping[str, Any]) -> WorkerSnapshot:
    """`replies` maps a control method name to that worker's reply (absent = no reply)."""
    problems: list[str] = []
    clock = _clock(replies.get("clock"), problems)
    tasks = _tasks(replies.get("active"), replies.get("reserved"), replies.get("scheduled"), problems)
    queues = parse_queues(replies.get("active_queues"), problems)
    return WorkerSnapshot(hostname, clock, tasks, queues, tuple(problems))
