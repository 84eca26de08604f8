"""What `drainctl status` prints from the `/status` document: the controller, each elastic pool's size and
why, and every worker with what it holds."""

from __future__ import annotations

from typing import Any


def age(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _scale_events(scaling: dict[str, Any], direction: str) -> str:
    count = scaling["scale_events"].get(direction, 0)
    last = scaling.get(f"last_scale_{direction}_age_s")
    word = "out" if direction == "out" else "in"
    return f"scaled {word} {count} time(s)" + ("" if last is None else f", last {age(last)} ago")


def pool_sizing_lines(document: dict[str, Any]) -> list[str]:
    """Each elastic pool: `pool etl: 3 of 4 workers (min 1, max 6) — <the last decision's reason>`, where 3
    are the ready workers of its target version not draining and 4 the size decided; then what the decision
    saw and how often the pool scaled."""
    lines = []
    for pool in document.get("pools", []):
        scaling = pool.get("scaling")
        if not scaling:
            continue
        lines.append(f"pool {pool['name']}: {pool['actual_replicas']} of {pool['desired_replicas']} workers "
                     f"(min {pool['min_replicas']}, max {pool['max_replicas']}) — {scaling['reason']}")
        backlog = scaling.get("backlog_messages")
        seen = "queue depths not known yet" if backlog is None else f"backlog {backlog} messages"
        if scaling.get("decided_age_s") is not None:
            seen += f" (decided {age(scaling['decided_age_s'])} ago)"
        lines.append(f"  {seen}; {_scale_events(scaling, 'out')}; {_scale_events(scaling, 'in')}")
    return lines


def _worker_rows(document: dict[str, Any]) -> list[str]:
    rows = [("WORKER", "STATE", "RUN", "PREF", "ETA", "QUEUES", "HEARTBEAT", "TASK EVENTS", "CELERY")]
    for w in document.get("workers", []):
        state = w["state"] + (" COLLISION" if w.get("collision") else "") + (
            " NO-REMOTE-CONTROL" if w.get("remote_control") == "not answering" else "")
        rows.append((
            w["hostname"], state, str(w["running"]), str(w["reserved"]), str(w["scheduled"]),
            ",".join(w["queues"]) if w.get("queues") is not None else "?",
            age(w.get("last_heartbeat_age_s")), w.get("task_events", "?"), w.get("celery_version") or "?",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no workers seen yet)")
    return lines


def status_lines(document: dict[str, Any]) -> list[str]:
    """The whole of `drainctl status` (without --json)."""
    ctl = document.get("controller", {})
    lines = [
        f"controller {ctl.get('id')}  broker {ctl.get('broker')}  "
        f"{'connected' if ctl.get('broker_connected') else 'DISCONNECTED'}  "
        f"events {ctl.get('events_consumed')}  malformed {ctl.get('events_malformed')}  "
        f"dropped {ctl.get('events_dropped')}",
        *pool_sizing_lines(document),
        *_worker_rows(document),
    ]
    for w in document.get("workers", []):
        if w.get("collision"):
            lines.append(f"{w['hostname']}: hostname collision: {w['collision']}; drains of that name are refused")
        if w.get("remote_control") == "not answering":
            lines.append(f"{w['hostname']}: does not answer remote control ({w.get('remote_control_unanswered')} "
                         "questions unanswered while it heartbeats): drains refused; stop it with SIGTERM "
                         "(warm shutdown) and enable worker_enable_remote_control")
    return lines
