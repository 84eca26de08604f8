"""A canary rollout in `/status`: the step, the hold's progress and the running comparison, per task name."""

from __future__ import annotations

from typing import Any

from drainctl.core.canary import step_sizes
from drainctl.core.canary_stats import Outcomes, quantile
from drainctl.core.rollout import PoolTarget
from drainctl.readmodel import ReadModel


def _side(outcomes: Outcomes | None) -> dict[str, Any]:
    if outcomes is None:
        return {"succeeded": 0, "failed": 0, "runtime_p50_s": None, "runtime_p90_s": None}
    runtimes = outcomes.runtimes
    return {
        "succeeded": outcomes.succeeded, "failed": outcomes.failed,
        "runtime_p50_s": round(quantile(runtimes, 0.5), 4) if runtimes else None,
        "runtime_p90_s": round(quantile(runtimes, 0.9), 4) if runtimes else None,
    }


def canary_document(model: ReadModel, target: PoolTarget) -> dict[str, Any] | None:
    """None unless the pool has a canary rollout under way."""
    hold = model.fleet.canary.holds.get(target.name)
    policy = target.canary
    if hold is None or policy is None or target.name not in model.fleet.rollouts:
        return None
    sizes = step_sizes(policy, target.replicas)
    step = min(hold.step, len(sizes) - 1)
    document: dict[str, Any] = {
        "step": step + 1, "steps": len(sizes), "new_workers": sizes[step], "promoted": hold.promoted,
        "holding": hold.started_at is not None, "detail": hold.detail,
        "verdict": hold.verdict.outcome, "reasons": list(hold.verdict.reasons),
        "tasks_seen": hold.seen(), "tasks_needed": policy.min_tasks,
        "held_s": None, "bake_left_s": None, "time_left_s": None, "on_timeout": policy.on_timeout,
        "comparison": [
            {"task": name, "new": _side(hold.new.get(name)), "old": _side(hold.old.get(name))}
            for name in sorted(hold.new.keys() | hold.old.keys())
        ],
    }
    if hold.started_at is not None:
        held = model.now() - hold.started_at
        document.update(held_s=round(held, 1), bake_left_s=round(max(0.0, policy.bake_s - held), 1),
                        time_left_s=round(max(0.0, policy.max_wait_s - held), 1))
    return document
