"""The `/status` document and its parts: what the model and the drains say, for people and scripts.

Counts are integers; nothing secret (the broker URL is redacted; pool env is never shown).
"""

from __future__ import annotations

from typing import Any

from drainctl.core.autoscale import PoolSizing
from drainctl.core.drain import Drain
from drainctl.core.members import PoolTarget
from drainctl.core.model import Worker
from drainctl.core.scaling import backlog, needed_slots
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import Task
from drainctl.readmodel import ReadModel, member_status, pool_pin
from drainctl.status_canary import canary_document

_TASK_STATES = tuple(state.value for state in TaskState)


def _received_at(task: Task) -> float:
    return task.received_at


def remote_control(worker: Worker) -> str:
    """`answering`, `not answering` (drains refused) or `unknown` (it has not answered yet)."""
    if worker.not_answering:
        return "not answering"
    return "answering" if worker.answered_at is not None else "unknown"


def drain_document(model: ReadModel, drain: Drain) -> dict[str, Any]:
    """One drain for /status and the drain API: its phase and exactly what it still waits for."""
    now = model.now()
    worker = model.cluster.worker(drain.hostname)
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
        # Estimated when it started, from the runtimes of the tasks it waits for (None: no history yet).
        "estimated_duration_s": (round(drain.estimated_end_at - drain.started_at, 3)
                                 if drain.estimated_end_at is not None else None),
        "estimated_remaining_s": (round(max(0.0, drain.estimated_end_at - now), 3)
                                  if drain.estimated_end_at is not None and drain.active else None),
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


def _age(now: float, at: float | None) -> float | None:
    return None if at is None else round(now - at, 3)


def scaling_document(model: ReadModel, target: PoolTarget) -> dict[str, Any] | None:
    """An elastic pool's last sizing decision: why it has the size it has (None for a fixed pool).

    Before the start-up reconcile is merged, an elastic pool has no decision yet (`decided_age_s` None).
    """
    policy = target.scaling
    if policy is None:
        return None
    now = model.now()
    sizing = model.pool_sizing.get(target.name) or PoolSizing(
        target.replicas, "not decided yet: the model is not complete (start-up reconcile)")
    load = sizing.load
    return {
        "reason": sizing.reason,
        "decided_age_s": _age(now, sizing.decided_at),
        "last_scale_out_age_s": _age(now, sizing.last_scale_out_at),
        "last_scale_in_age_s": _age(now, sizing.last_scale_in_at),
        # What the last decision saw: ready messages in the queues plus those the workers hold prefetched.
        "backlog_messages": backlog(load) if load is not None else None,
        "needed_slots": round(needed_slots(load, policy), 3) if load is not None else None,
        "running": load.running if load is not None else None,
        "reserved": load.reserved if load is not None else None,
        "queues": [] if load is None else [
            {"name": q.name, "depth": q.depth, "consumers": q.consumers} for q in load.queues],
        "scale_events": {"out": sizing.events.get("out", 0), "in": sizing.events.get("in", 0)},
        "concurrency": policy.concurrency,
        "target_backlog_per_slot": policy.target_backlog_per_slot,
        "scale_out_cooldown_s": policy.scale_out_cooldown_s,
        "scale_in_cooldown_s": policy.scale_in_cooldown_s,
        "scale_in_hysteresis": policy.hysteresis,
    }


def pools_document(model: ReadModel) -> list[dict[str, Any]]:
    fleet = model.fleet
    history = model.rollout_history(20)
    pools = []
    for name, target in sorted(model.pool_targets.items()):
        members = fleet.of_pool(name)
        version = fleet.target(target)
        pin = pool_pin(fleet, name, target)
        workers = []
        for member in members:
            drain = model.drains.active.get(member.hostname)
            status = member_status(member, model.drains)
            if member.failed:
                status = f"failed: {member.failed}"
            workers.append({
                "hostname": member.hostname, "version": member.version, "status": status,
                "drain": drain_document(model, drain) if drain is not None else None,
                "blocked": fleet.blocked.get(member.hostname),
            })
        active = fleet.rollouts.get(name)
        ready = [m for m in members if m.version == version and m.ready_at is not None and not m.failed]
        sizing = model.pool_sizing.get(name)
        pools.append({
            "name": name,
            "version_target": version,
            "version_config": target.version,
            "pinned": pin.reason if pin is not None else None,
            "replicas": target.replicas,
            "cap": target.cap,
            "alive": len(members),
            "ready": len(ready),
            # The size the pool is kept at, and what serves it: ready workers of the target version not draining.
            "desired_replicas": sizing.desired if sizing is not None else target.replicas,
            "actual_replicas": sum(1 for m in ready if m.hostname not in model.drains.active),
            "min_replicas": target.scaling.min_replicas if target.scaling is not None else None,
            "max_replicas": target.scaling.max_replicas if target.scaling is not None else None,
            "scaling": scaling_document(model, target),
            "queues": list(target.queues),
            "workers": workers,
            "rollout": None if active is None else {
                "id": active.id, "from_version": active.from_version, "to_version": active.to_version,
                "replaced": active.replaced, "total": active.total, "requested_by": active.requested_by,
                "age_s": round(model.now() - active.started_at, 3),
            },
            "canary": canary_document(model, target),
            "history": [h for h in history if h["pool"] == name and h["outcome"] is not None],
        })
    return pools


def engines_document(model: ReadModel) -> list[dict[str, Any]]:
    """Every Docker engine a pool spreads over: cordoned or evacuating, and the workers still there."""
    fleet = model.fleet
    known = sorted({e for t in model.pool_targets.values() for e in t.engines} | set(fleet.engines.states))
    known = sorted(set(known) | set(fleet.engines.down))
    return [{"name": name, "state": fleet.engines.states.get(name, "schedulable"),
             "reachable": name not in fleet.engines.down, "unreachable_reason": fleet.engines.down.get(name),
             "workers": fleet.engines.workers_on(name, fleet.members.values())} for name in known]


def build_status(model: ReadModel) -> dict[str, Any]:
    """The `/status` document. Integers for counts; no secrets (the broker URL is redacted)."""
    now = model.now()
    workers = []
    for worker in sorted(model.cluster, key=lambda w: w.hostname):
        tasks: dict[str, list[dict[str, Any]]] = {state: [] for state in _TASK_STATES}
        for task in sorted(worker.tasks.values(), key=_received_at):
            since = task.started_at if task.started_at is not None else task.received_at
            entry: dict[str, Any] = {"id": task.uuid, "name": task.name, "age_s": round(now - since, 3)}
            if task.eta:
                entry["eta"] = task.eta
            tasks[task.state].append(entry)  # a StrEnum: the member is its value
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
    stats = model.stats
    return {
        "pools": pools_document(model),
        "engines": engines_document(model),
        "drains": [drain_document(model, d) for d in model.drains]
        + [drain_document(model, d) for d in reversed(model.drains.finished)],
        "controller": {
            "id": model.identity.controller_id,
            "broker": model.identity.broker,
            "broker_connected": stats.connected,
            "synced": model.is_synced(),
            "event_queue": model.identity.event_queue,
            "events_consumed": stats.events,
            "events_malformed": sum(stats.malformed.values()),
            "events_dropped": stats.dropped,
        },
        "workers": workers,
    }
