"""Drain-aware autoscaling, the loop: per elastic pool, the size the planner keeps it at, and why.

The controller asks RabbitMQ for the depth of each elastic pool's queues (a passive `queue.declare`)
every `[controller] queue_depth_interval_s`; the reducer hands the answer here with the model. The
decision is `drainctl.core.scaling.desired_replicas`; the planner (`drainctl.core.rollout.Fleet`) then
works to the pool's target with that size, so:

- scale-out starts workers through the planner's one start path: quiet, judged by the readiness gate,
  within the pool's cap;
- scale-in lowers the size by one, and the planner drains the worker that will be free first
  (`Fleet._shed_excess`): it stops consuming, finishes what it runs and holds, and is retired;
- a rollout in progress holds the size (the surge-first rule counts against one fixed number), and a
  scale-in waits until no drain of the pool is under way.

A pool seen for the first time starts at its members alive (an adopted pool keeps its size across a
controller restart), within `min_replicas`..`max_replicas`, or at its `replicas` when it has none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from drainctl.core.drain import DrainBook
from drainctl.core.members import Member, PoolTarget
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.scaling import PoolLoad, QueueLoad, ScalingPolicy, desired_replicas, in_hand


@dataclass(slots=True)
class PoolSizing:
    """An elastic pool's size and the last decision about it."""

    desired: int
    reason: str
    decided_at: float | None = None
    last_scale_out_at: float | None = None
    last_scale_in_at: float | None = None
    load: PoolLoad | None = None
    # The first decision: a scale-in waits scale_in_cooldown_s from then, as after a scaling (a
    # restarted controller does not shrink a pool it has just found).
    since: float | None = None
    # "out" / "in" -> how many times
    events: Counter[str] = field(default_factory=Counter)


def _clamp(value: int, policy: ScalingPolicy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, value))


class Autoscaler:
    def __init__(self) -> None:
        self.sizing: dict[str, PoolSizing] = {}
        self._configured: Mapping[str, PoolTarget] | None = None
        self._targets: dict[str, PoolTarget] = {}

    def targets(self, configured: Mapping[str, PoolTarget], members: Mapping[str, Member]) -> Mapping[str, PoolTarget]:
        """The targets the planner works to: the configured ones, elastic pools at their desired size.

        Rebuilt only when the configuration or a size changes: the planner asks after every input.
        """
        if configured is not self._configured:
            self._configured = configured
            self._rebuild(configured, members)
        return self._targets

    def _rebuild(self, configured: Mapping[str, PoolTarget], members: Mapping[str, Member]) -> None:
        targets: dict[str, PoolTarget] = {}
        for name, pool in configured.items():
            policy = pool.scaling
            if policy is None:
                self.sizing.pop(name, None)
                targets[name] = pool
                continue
            sizing = self.sizing.get(name)
            if sizing is None:
                alive = sum(1 for m in members.values() if m.pool == name and m.failed is None)
                start = _clamp(alive or pool.replicas, policy)
                why = f"{alive} worker(s) found" if alive else f"starting size {pool.replicas}"
                sizing = self.sizing[name] = PoolSizing(start, f"{why}, within {policy.min_replicas}.."
                                                               f"{policy.max_replicas}")
            elif sizing.desired != _clamp(sizing.desired, policy):
                sizing.desired = _clamp(sizing.desired, policy)
                sizing.reason = f"bounds changed to {policy.min_replicas}..{policy.max_replicas}"
            # The configured cap is that of max_replicas: at a smaller size a rollout surges as it would
            # at a fixed one.
            targets[name] = replace(pool, replicas=sizing.desired, cap=min(pool.cap, sizing.desired + pool.surge))
        for gone in set(self.sizing) - set(targets):
            del self.sizing[gone]
        self._targets = targets

    def observe(
        self, configured: Mapping[str, PoolTarget], queues: Mapping[str, QueueLoad], members: Mapping[str, Member],
        rollouts: Mapping[str, object], cluster: Cluster, drains: DrainBook, now: float,
    ) -> list[Notice]:
        """Decide every elastic pool's size from its queues' depths (`queues`: by queue name; a pool with a
        queue missing from it is not decided) and what its workers run and hold."""
        self.targets(configured, members)
        notices: list[Notice] = []
        changed = False
        for name, pool in configured.items():
            sizing = self.sizing.get(name)
            if pool.scaling is None or sizing is None:
                continue
            if any(q not in queues for q in pool.queues):
                sizing.reason = "queue depths unknown: size held"
                continue
            alive = [m.hostname for m in members.values() if m.pool == name and m.failed is None]
            if sizing.since is None:
                sizing.since = now
            running, reserved = in_hand(cluster, alive)
            load = PoolLoad(tuple(queues[q] for q in pool.queues), running, reserved, sizing.desired)
            decision = desired_replicas(
                load, pool.scaling, now, last_scale_out_at=sizing.last_scale_out_at,
                last_scale_in_at=max(sizing.last_scale_in_at or sizing.since, sizing.since),
                rollout_active=name in rollouts,
                draining=sum(1 for h in alive if h in drains.active),
            )
            sizing.load, sizing.reason, sizing.decided_at = load, decision.reason, now
            if decision.replicas == sizing.desired:
                continue
            direction = "out" if decision.replicas > sizing.desired else "in"
            if direction == "out":
                sizing.last_scale_out_at = now
            else:
                sizing.last_scale_in_at = now
            sizing.events[direction] += 1
            notices.append(Notice(f"pool-scaled-{direction}", name,
                                  f"{sizing.desired} -> {decision.replicas} workers: {decision.reason}"))
            sizing.desired = decision.replicas
            changed = True
        if changed:
            self._rebuild(configured, members)
        return notices
