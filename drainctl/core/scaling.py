"""Drain-aware autoscaling, the pure part: how many workers a pool wants, which one leaves first, and when
a drain is expected to end.

- `desired_replicas`: a sizing decision from the pool's load (queue depths, consumer counts, the tasks its
  workers run and hold prefetched), within `min_replicas`..`max_replicas`, with cooldowns and a hysteresis
  band so that it does not flap.
- `pick_scale_in`: among the members that may leave, the one that will be free first.
- `drain_estimate`: when a drain of a worker is expected to end, from the runtime history
  (`drainctl.core.runtimes`). A drain waits for what `held` counts: the running tasks and the prefetched
  ones (Celery still runs its prefetched messages after `cancel_consumer`); ETA tasks do not hold it.

Times are inputs (floats, the model's clock); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from drainctl.core.model import Cluster
from drainctl.core.runtimes import RuntimeHistory
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import Task, Worker

# Slack for float noise when turning slots into workers (4.0000001 slots of 2 are 2 workers, not 3).
_EPSILON: Final = 1e-9


# ---------------------------------------------------------------------- estimates
def elapsed(task: Task, now: float) -> float:
    """How long a running task has run: since its task-started (or since drainctl first saw it)."""
    return max(0.0, now - (task.started_at if task.started_at is not None else task.received_at))


def running_remaining(worker: Worker, runtimes: RuntimeHistory, now: float) -> float | None:
    """Seconds until the last of the worker's running tasks is expected to end: 0 when it runs nothing,
    None when one of them is unknown (no history, or it has outrun its history)."""
    longest = 0.0
    for task in worker.tasks.values():
        if task.state is TaskState.RUNNING:
            left = runtimes.remaining(task.name, elapsed(task, now))
            if left is None:
                return None
            longest = max(longest, left)
    return longest


def drain_estimate(
    worker: Worker | None, runtimes: RuntimeHistory, now: float, *, concurrency: int | None = None
) -> float | None:
    """When a drain of `worker` is expected to end (model time); None: unknown.

    The drain waits for the running tasks to end and for the prefetched ones to run: each prefetched task
    (in the order received) takes the slot that frees first, and runs its name's median. Slots: the
    worker's `concurrency` when known, else as many as it runs tasks now (a worker holding prefetched
    tasks has every slot busy), at least one. ETA tasks are not counted: they do not hold a drain.
    """
    if worker is None:
        return None
    free_in: list[float] = []  # seconds until each busy slot frees
    waiting: list[Task] = []
    for task in worker.tasks.values():
        if task.state is TaskState.RUNNING:
            left = runtimes.remaining(task.name, elapsed(task, now))
            if left is None:
                return None
            free_in.append(left)
        elif task.state is TaskState.RESERVED:
            waiting.append(task)
    end = max(free_in, default=0.0)
    slots = max(1, len(free_in), concurrency or 0)
    free_in.extend([0.0] * (slots - len(free_in)))
    heapq.heapify(free_in)
    for task in sorted(waiting, key=lambda t: (t.received_at, t.uuid)):
        run = runtimes.remaining(task.name, 0.0)
        if run is None:
            return None
        finish = heapq.heappop(free_in) + run
        end = max(end, finish)
        heapq.heappush(free_in, finish)
    return now + end


# ---------------------------------------------------------------------- scale-in
@dataclass(frozen=True, slots=True)
class ScaleInPick:
    """The worker to drain, and why it was picked."""

    hostname: str
    running: int
    reserved: int
    # Seconds until its running tasks are expected to end (None: unknown); when its drain should end.
    remaining_s: float | None
    estimated_end_at: float | None


def scale_in_order(worker: Worker, runtimes: RuntimeHistory, now: float) -> tuple[int, int, float, str]:
    """The order in which workers leave (smallest first): fewest running tasks; then fewest prefetched
    (the drain waits for those to run too); then the smallest expected remaining run time of its running
    tasks (unknown last); then the hostname."""
    remaining = running_remaining(worker, runtimes, now)
    return (
        worker.count(TaskState.RUNNING),
        worker.count(TaskState.RESERVED),
        math.inf if remaining is None else remaining,
        worker.hostname,
    )


def pick_scale_in(candidates: Iterable[str], model: Cluster, now: float) -> ScaleInPick | None:
    """Among `candidates` (hostnames of a pool's ready members that may be removed), the one that will be
    free first (`scale_in_order`). A candidate the model does not know is never picked: nothing says it is
    idle. None: no candidate."""
    runtimes = model.runtimes
    known = [w for w in (model.worker(h) for h in set(candidates)) if w is not None]
    if not known:
        return None
    best = min(known, key=lambda w: scale_in_order(w, runtimes, now))
    return ScaleInPick(
        hostname=best.hostname,
        running=best.count(TaskState.RUNNING),
        reserved=best.count(TaskState.RESERVED),
        remaining_s=running_remaining(best, runtimes, now),
        estimated_end_at=drain_estimate(best, runtimes, now),
    )


def in_hand(model: Cluster, hostnames: Iterable[str]) -> tuple[int, int]:
    """The running and prefetched tasks of these workers, as the model knows them."""
    running = reserved = 0
    for hostname in set(hostnames):
        worker = model.worker(hostname)
        if worker is not None:
            running += worker.count(TaskState.RUNNING)
            reserved += worker.count(TaskState.RESERVED)
    return running, reserved


# ---------------------------------------------------------------------- sizing
@dataclass(frozen=True, slots=True)
class QueueLoad:
    """One queue as a passive queue.declare reports it."""

    name: str
    depth: int  # messages ready (not counting those delivered and unacknowledged)
    consumers: int


@dataclass(frozen=True, slots=True)
class PoolLoad:
    queues: tuple[QueueLoad, ...]
    running: int  # tasks the pool's workers run
    reserved: int  # tasks they hold prefetched (delivered, so not in `depth`)
    replicas: int  # the pool's workers now, draining ones excluded


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """How a pool scales. `target_backlog_per_slot`: waiting messages (ready or prefetched) the pool
    accepts per worker slot, on top of one running task per busy slot. `hysteresis`: a scale-in happens
    only when, one worker fewer, the slots needed stay below (1 - hysteresis) of the slots left."""

    min_replicas: int
    max_replicas: int
    concurrency: int
    target_backlog_per_slot: float = 1.0
    scale_out_cooldown_s: float = 30.0
    scale_in_cooldown_s: float = 300.0
    hysteresis: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.target_backlog_per_slot > 0:
            raise ValueError(f"target_backlog_per_slot must be positive, got {self.target_backlog_per_slot}")
        if not 0 <= self.hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis}")
        if self.scale_out_cooldown_s < 0 or self.scale_in_cooldown_s < 0:
            raise ValueError("cooldowns must not be negative")


@dataclass(frozen=True, slots=True)
class Sizing:
    replicas: int
    reason: str


def backlog(load: PoolLoad) -> int:
    """Messages waiting for a slot: ready in the queues, and prefetched by the pool's workers."""
    return sum(q.depth for q in load.queues) + load.reserved


def needed_slots(load: PoolLoad, policy: ScalingPolicy) -> float:
    """Slots the load needs: one per running task, and one per `target_backlog_per_slot` waiting messages."""
    return load.running + backlog(load) / policy.target_backlog_per_slot


def _cooling(since: float | None, cooldown_s: float, now: float) -> float:
    """Seconds of the cooldown left (0: none)."""
    return 0.0 if since is None else max(0.0, since + cooldown_s - now)


def _unconsumed(load: PoolLoad) -> str:
    names = [q.name for q in load.queues if q.depth > 0 and q.consumers == 0]
    return f"; no consumer on {', '.join(names)}" if names else ""


def desired_replicas(
    load: PoolLoad,
    policy: ScalingPolicy,
    now: float,
    *,
    last_scale_out_at: float | None = None,
    last_scale_in_at: float | None = None,
    rollout_active: bool = False,
    draining: int = 0,
) -> Sizing:
    """How many workers the pool should have, and why. Never below `min_replicas` nor above `max_replicas`.

    Out: as many workers as the needed slots fill (several at once), unless a scale-out happened less than
    `scale_out_cooldown_s` ago. In: one worker at a time, only when no scale-in drain is under way
    (`draining`), the last scaling is `scale_in_cooldown_s` old, and the load stays below target by the
    hysteresis margin with one worker fewer. A rollout in progress holds the size (bounds still apply).
    """
    current, lo, hi = load.replicas, policy.min_replicas, policy.max_replicas
    if current < lo:
        return Sizing(lo, f"below min_replicas {lo}")
    if current > hi:
        return Sizing(hi, f"above max_replicas {hi}")
    if rollout_active:
        return Sizing(current, "a rollout is in progress: size held")
    slots = current * policy.concurrency
    needed = needed_slots(load, policy)
    what = f"{needed:.1f} slots needed, {slots} in the pool{_unconsumed(load)}"
    want = min(hi, max(lo, math.ceil(needed / policy.concurrency - _EPSILON)))
    if want > current:
        wait = _cooling(last_scale_out_at, policy.scale_out_cooldown_s, now)
        if wait > 0:
            return Sizing(current, f"scale-out cooling down ({wait:.0f}s left); {what}")
        return Sizing(want, f"scale out: {what}")
    if current == lo or needed > (slots - policy.concurrency) * (1 - policy.hysteresis):
        return Sizing(current, f"within target: {what}")
    if draining:
        return Sizing(current, f"a scale-in drain is under way; {what}")
    last = max((t for t in (last_scale_out_at, last_scale_in_at) if t is not None), default=None)
    wait = _cooling(last, policy.scale_in_cooldown_s, now)
    if wait > 0:
        return Sizing(current, f"scale-in cooling down ({wait:.0f}s left); {what}")
    return Sizing(current - 1, f"scale in: {what}")
