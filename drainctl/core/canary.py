"""Canary rollouts: replace a pool's workers in steps, and hold after each until the new version has proved
itself on real tasks against the old one, over the same window (`drainctl.core.canary_stats`).

The planner (`drainctl.core.rollout.Fleet`) asks `CanaryBook.allowed` how many workers of the new version
the pool may have now. Each step's workers go through the usual start path (quiet start, readiness gate)
and replace old workers surge-first; once a step's workers are all ready, the hold starts: every task the
pool ends from then on is counted, per task name, for the new version or for the old one. The hold ends:

- `fail` (as soon as the evidence is clear): the rollout is aborted the usual way (the pool is pinned to
  the old version, the new workers are drained, the old ones resume), the reason naming the task, the
  counts and the figures;
- `pass` (`min_tasks` of the new version seen, nothing against it, `bake_s` over): the next step;
- `max_wait_s` without a verdict: `on_timeout` decides (promote: the next step; abort; hold: keep waiting);
- an operator's `promote` (every remaining step at once) or `abort`.

The step reached and a promotion are journaled (`JournalCanary`): a restarted controller resumes the hold
at its step, with a new window (what was counted before is gone with the process).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from drainctl.core.canary_stats import Outcomes, Thresholds, Verdict, analyse

OnTimeout = Literal["promote", "hold", "abort"]
# How a task end counts: a retried task is counted once it ends.
FAILED_OUTCOMES: Final = frozenset({"failed", "rejected"})


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """`steps`: new workers after each step, a count (`1`) or a share of the pool (`0.5` for "50%");
    the last step, the whole pool, is implied."""

    steps: tuple[int | float, ...]
    min_tasks: int = 50
    max_wait_s: float = 600.0
    bake_s: float = 60.0
    on_timeout: OnTimeout = "hold"
    thresholds: Thresholds = field(default_factory=Thresholds)


def step_sizes(policy: CanaryPolicy, replicas: int) -> list[int]:
    """New workers after each step, increasing, the last one the whole pool: [1, "50%"] of 4 is [1, 2, 4]."""
    sizes: list[int] = []
    for step in policy.steps:
        size = step if isinstance(step, int) else math.ceil(step * replicas)
        size = max(1, min(replicas, size))
        if not sizes or size > sizes[-1]:
            sizes.append(size)
    if not sizes or sizes[-1] < replicas:
        sizes.append(replicas)
    return sizes


@dataclass(slots=True)
class Hold:
    """One canary rollout of a pool: the step it is at and, once that step's workers are ready, the window."""

    pool: str
    to_version: str
    step: int = 0
    promoted: bool = False
    started_at: float | None = None  # the window's start; None: the step's workers are not all ready yet
    new: dict[str, Outcomes] = field(default_factory=dict)
    old: dict[str, Outcomes] = field(default_factory=dict)
    verdict: Verdict = field(default_factory=lambda: Verdict("wait"))
    detail: str = ""

    def seen(self) -> int:
        return sum(o.total for o in self.new.values())

    def restart_window(self, now: float | None) -> None:
        self.started_at, self.new, self.old, self.verdict = now, {}, {}, Verdict("wait")


@dataclass(frozen=True, slots=True)
class Gate:
    """What the planner may do in a canary rollout: how many new workers, or abort (with the reason)."""

    allowed: int
    abort: str | None = None
    journal: bool = False  # the step or the promotion changed: journal it


class CanaryBook:
    def __init__(self) -> None:
        self.holds: dict[str, Hold] = {}
        # From the journal at start: pool -> (to_version, step, promoted).
        self.resumed: dict[str, tuple[str, int, bool]] = {}

    def record(self, pool: str, version: str, task: str | None, outcome: str, runtime: float | None) -> None:
        """A task of the pool ended on a worker of `version`."""
        hold = self.holds.get(pool)
        if hold is None or hold.started_at is None or outcome == "retried":
            return
        side = hold.new if version == hold.to_version else hold.old
        counted = side.setdefault(task or "(unnamed)", Outcomes())
        if outcome in FAILED_OUTCOMES:
            counted.failed += 1
        elif outcome == "succeeded":
            counted.succeeded += 1
        else:
            return  # revoked: says nothing of the code
        if runtime is not None and outcome == "succeeded":
            counted.runtimes.append(runtime)

    def decide(self, pool: str, decision: Literal["promote", "abort"], by: str) -> str | None:
        """An operator's decision on the pool's canary; an error message when there is no hold to decide."""
        hold = self.holds.get(pool)
        if hold is None:
            return f"pool {pool!r} has no canary rollout under way"
        if decision == "promote":
            hold.promoted, hold.detail = True, f"promoted by {by}"
        else:
            hold.verdict, hold.detail = Verdict("fail", (f"aborted by {by}",)), f"aborted by {by}"
        return None

    def allowed(self, pool: str, to_version: str, policy: CanaryPolicy, replicas: int, ready_new: int,
                now: float) -> Gate:
        """How many workers of `to_version` the pool may have now (all of them once promoted)."""
        hold = self.holds.get(pool)
        if hold is None or hold.to_version != to_version:
            hold = self.holds[pool] = self._open(pool, to_version)
        sizes = step_sizes(policy, replicas)
        hold.step = min(hold.step, len(sizes) - 1)
        if hold.verdict.outcome == "fail":
            return Gate(sizes[hold.step], abort="; ".join(hold.verdict.reasons))
        if hold.promoted:
            moved = hold.step != len(sizes) - 1
            if moved:
                self._to(hold, len(sizes) - 1)
            return Gate(replicas, journal=moved)
        last = hold.step == len(sizes) - 1
        if last or ready_new < sizes[hold.step]:
            return Gate(sizes[hold.step])
        if hold.started_at is None:
            hold.restart_window(now)
            hold.detail = f"holding at step {hold.step + 1} of {len(sizes)} ({sizes[hold.step]} new workers)"
            return Gate(sizes[hold.step])
        return self._judge(hold, policy, sizes, now)

    def _judge(self, hold: Hold, policy: CanaryPolicy, sizes: list[int], now: float) -> Gate:
        assert hold.started_at is not None
        hold.verdict = analyse(hold.new, hold.old, min_tasks=policy.min_tasks, t=policy.thresholds)
        waited = now - hold.started_at
        if hold.verdict.outcome == "fail":
            hold.detail = "failed: " + "; ".join(hold.verdict.reasons)
            return Gate(sizes[hold.step], abort="; ".join(hold.verdict.reasons))
        if hold.verdict.outcome == "pass" and waited >= policy.bake_s:
            return Gate(sizes[self._to(hold, hold.step + 1)], journal=True)
        if waited >= policy.max_wait_s and policy.on_timeout != "hold":
            why = (f"{hold.seen()} of {policy.min_tasks} tasks on the new version after {policy.max_wait_s:g}s "
                   f"(on_timeout = {policy.on_timeout})")
            if policy.on_timeout == "abort":
                hold.verdict = Verdict("fail", (why,))
                return Gate(sizes[hold.step], abort=why)
            return Gate(sizes[self._to(hold, hold.step + 1)], journal=True)
        return Gate(sizes[hold.step])

    @staticmethod
    def _to(hold: Hold, step: int) -> int:
        hold.step = step
        hold.restart_window(None)
        hold.detail = f"step {step + 1}: starting its workers"
        return step

    def _open(self, pool: str, to_version: str) -> Hold:
        resumed = self.resumed.pop(pool, None)
        if resumed is not None and resumed[0] == to_version:
            return Hold(pool, to_version, step=resumed[1], promoted=resumed[2], detail="resumed from the journal")
        return Hold(pool, to_version)

    def close(self, pool: str) -> None:
        self.holds.pop(pool, None)

    def journal_rows(self) -> Mapping[str, tuple[str, int, bool]]:
        return {pool: (h.to_version, h.step, h.promoted) for pool, h in self.holds.items()}
