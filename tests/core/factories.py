"""Builders for raw Celery event dicts, shaped like what Celery 5.x puts on the wire; `feed` to apply them, and
`states` to read what the model makes of them."""

from __future__ import annotations

from typing import Any

from drainctl.core.events import parse_event
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice

HOST = "w1@host"
PID = 100
ETA = "2030-01-01T00:00:00+00:00"


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


def online(cluster: Cluster, clock: int = 1, **kw: Any) -> None:
    feed(cluster, [worker_event("online", clock, **kw)])


def states(cluster: Cluster, host: str = HOST) -> dict[str, str]:
    """The state of each task the model holds for `host`, by task id."""
    worker = cluster.worker(host)
    assert worker is not None
    return {uuid: t.state.value for uuid, t in sorted(worker.tasks.items())}
