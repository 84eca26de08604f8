"""The `/status` document and its parts: what the model and the drains say, for people and scripts.

Counts are integers; nothing secret (the broker URL is redacted; pool env is never shown).
"""

from __future__ import annotations

from typing import Any

from drainctl.app import Controller
from drainctl.core.drain import Drain
from drainctl.core.model import Worker
from drainctl.core.snapshot import TaskState
from drainctl.redact import redact_url


def remote_control(worker: Worker) -> str:
    """`answering`, `not answering` (drains refused) or `unknown` (it has not answered yet)."""
    if worker.not_answering:
        return "not answering"
    return "answering" if worker.answered_at is not None else "unknown"


def drain_document(controller: Controller, drain: Drain) -> dict[str, Any]:
    """One drain for /status and the drain API: its phase and exactly what it still waits for."""
    now = controller.clock()
    worker = controller.cluster.worker(drain.hostname)
    waiting_for = []
    if drain.active and worker is not None:
        for uuid in drain.held:
            task = worker.tasks.get(uuid)
            if task is None:
                continue
            since = task.started_at if task.started_at is not None else task.received_at
            waiting_for.append({"id": uuid, "name": task.name, "state": task.state.value,
                                "age_s": round(now - since, 3)})
    return {
        "hostname": drain.hostname,
        "phase": drain.phase.value,
        "outcome": drain.outcome.value if drain.outcome is not None else None,
        "detail": drain.detail,
        "queues": list(drain.queues),
        "managed": drain.managed,
        "forced": drain.forced,
        "requested_by": drain.requested_by,
        "duration_s": round(drain.duration(now), 3),
        "deadline_s": drain.policy.deadline_s,
        "on_deadline": drain.policy.on_deadline,
        # For a pool member, its pool's: how long it gets to exit after `shutdown`, then to stop warm.
        "retire_grace_s": drain.policy.retire_grace_s,
        "stop_timeout_s": drain.policy.stop_timeout_s,
        "past_deadline": drain.past_deadline,
        "escalated": drain.escalated,
        "waiting_for": waiting_for,
        "lost_tasks": list(drain.lost_tasks),
        "reaction_s": drain.reaction_s,
        # Tasks reported as near RabbitMQ's consumer_timeout (a `consumer-timeout-near` warning each).
        "consumer_timeout_warned": sorted(drain.timeout_warned),
        # ...and those another worker received since (a `consumer-timeout-redelivered` warning each).
        "consumer_timeout_redelivered": sorted(drain.redelivered),
    }


def pools_document(controller: Controller) -> list[dict[str, Any]]:
    fleet = controller.fleet
    history = controller.journal.history(20) if controller.journal is not None else []
    pools = []
    for name, target in sorted(controller.pool_targets.items()):
        members = fleet.of_pool(name)
        version = fleet.target(target)
        pin = fleet.pins.get(name)
        workers = []
        for member in members:
            drain = controller.drains.active.get(member.hostname)
            status = f"failed: {member.failed}" if member.failed else member.status
            workers.append({
                "hostname": member.hostname, "version": member.version, "status": status,
                "drain": drain_document(controller, drain) if drain is not None else None,
                "blocked": fleet.blocked.get(member.hostname),
            })
        active = fleet.rollouts.get(name)
        pools.append({
            "name": name,
            "version_target": version,
            "version_config": target.version,
            "pinned": pin.reason if pin is not None and pin.config_version == target.version else None,
            "replicas": target.replicas,
            "cap": target.cap,
            "alive": len(members),
            "ready": sum(1 for m in members if m.version == version and m.ready_at is not None and not m.failed),
            "queues": list(target.queues),
            "workers": workers,
            "rollout": None if active is None else {
                "id": active.id, "from_version": active.from_version, "to_version": active.to_version,
                "replaced": active.replaced, "total": active.total, "requested_by": active.requested_by,
                "age_s": round(controller.clock() - active.started_at, 3),
            },
            "history": [h for h in history if h["pool"] == name and h["outcome"] is not None],
        })
    return pools


def build_status(controller: Controller) -> dict[str, Any]:
    """The `/status` document. Integers for counts; no secrets (the broker URL is redacted)."""
    now = controller.clock()
    workers = []
    for worker in sorted(controller.cluster, key=lambda w: w.hostname):
        tasks: dict[str, list[dict[str, Any]]] = {s.value: [] for s in TaskState}
        for task in sorted(worker.tasks.values(), key=lambda t: t.received_at):
            since = task.started_at if task.started_at is not None else task.received_at
            entry: dict[str, Any] = {"id": task.uuid, "name": task.name, "age_s": round(now - since, 3)}
            if task.eta:
                entry["eta"] = task.eta
            tasks[task.state.value].append(entry)
        last = worker.last_heartbeat
        workers.append({
            "hostname": worker.hostname,
            "state": worker.state.value,
            "pid": worker.pid,
            "celery_version": worker.sw_ver,
            "running": len(tasks["running"]),
            "reserved": len(tasks["reserved"]),
            "scheduled": len(tasks["scheduled"]),
            "queues": list(worker.queues) if worker.queues is not None else None,
            "last_heartbeat_age_s": round(now - last, 3) if last is not None else None,
            "heartbeat_active": worker.heartbeat_active,
            "processed": worker.processed,
            "task_events": worker.task_events.value,
            "collision": worker.collision_reason,
            "remote_control": remote_control(worker),
            "remote_control_unanswered": len(worker.unanswered),
            "tasks": tasks,
        })
    stats = controller.stats
    return {
        "pools": pools_document(controller),
        "drains": [drain_document(controller, d) for d in controller.drains]
        + [drain_document(controller, d) for d in reversed(controller.drains.finished)],
        "controller": {
            "id": controller.settings.controller.id,
            "broker": redact_url(controller.broker_url),
            "broker_connected": stats.connected,
            "synced": controller.synced.is_set(),
            "event_queue": controller.event_queue.name,
            "events_consumed": stats.events,
            "events_malformed": sum(stats.malformed.values()),
            "events_dropped": stats.dropped,
        },
        "workers": workers,
    }
