"""Builders for raw Celery event dicts, shaped like what Celery 5.x puts on the wire, and `feed` to apply them."""

from __future__ import annotations

from typing import Any

from drainctl.core.events import parse_event
from drainctl.core.model import Cluster, Notice

HOST = "w1@host"
PID = 100


def worker_event(kind: str, clock: int, *, host: str = HOST, pid: int = PID, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": f"worker-{kind}",
        "hostname": host,
        "pid": pid,
        "clock": clock,
        "timestamp": 1_700_000_000.0 + clock,
        "utcoffset": 0,
        "freq": 2.0,
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "processed": 0,
        "loadavg": [0.1, 0.2, 0.3],
    }
    if kind == "heartbeat":
        event["active"] = 0
    event.update(extra)
    return event


def task_event(kind: str, uuid: str, clock: int, *, host: str = HOST, pid: int = PID, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": f"task-{kind}",
        "uuid": uuid,
        "hostname": host,
        "pid": pid,
        "clock": clock,
        "timestamp": 1_700_000_000.0 + clock,
        "utcoffset": 0,
    }
    if kind == "received":
        event.update({"name": "app.sleep", "args": "(1,)", "kwargs": "{}", "root_id": uuid, "parent_id": None,
                      "retries": 0, "eta": None, "expires": None})
    if kind == "succeeded":
        event.update({"result": "1", "runtime": 1.0})
    event.update(extra)
    return event


def feed(cluster: Cluster, raws: list[dict[str, Any]], now: float = 0.0) -> tuple[list[Any], list[Notice]]:
    """Apply raw events in order at `now`; the commands and notices they produced."""
    commands: list[Any] = []
    notices: list[Notice] = []
    for raw in raws:
        c, n = cluster.apply(parse_event(raw), now)
        commands += c
        notices += n
    return commands, notices
