"""An elastic pool "p" of real Celery workers, a seeded mixed load for it, and what its scale-ins are judged by.

`ElasticHarness` writes the config of pool "p" with `min_replicas`..`max_replicas` and short cooldowns
(`[controller] queue_depth_interval_s` short too); `mixed_durations` is a seeded mix of short and long
task durations; `PoolWatch` is a predicate for `Controller.wait_for` that never holds and records, after
each input the reducer handles, the pool's size and every drain as it starts, with the members it could
have drained instead; `running_between` counts a worker's running tasks at an instant from the tasks' own
records; `worker_seconds` sums the pool's workers' alive time over a window.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drainctl.app import Controller
from tests.integration.pools import PoolHarness

ELASTIC = """
[controller]
id = "{controller_id}"
state_dir = "{state_dir}"
queue_depth_interval_s = 0.5

[broker]
reply_timeout_s = 1.0

[[pool]]
name = "p"
queues = ["{queue}"]
version = "{version}"
concurrency = 2
command = {command}
env = {{ DRAINCTL_TEST_BROKER_URL = "{broker_url}", TASKAPP_PREFETCH = "1", TASKAPP_ACKS_LATE = "1", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}"{extra_env} }}
cwd = "{root}"
ready_timeout_s = {ready_timeout}
stop_timeout_s = 60
"""

#: The scaling keys of the tests' elastic pool (appended to the pool's table).
SCALING = """min_replicas = {lo}
max_replicas = {hi}
scale_out_cooldown_s = {out_s}
scale_in_cooldown_s = {in_s}
"""


class ElasticHarness(PoolHarness):
    """Pool "p", 2 slots a worker (acks_late, prefetch multiplier 1, as Airflow runs them), on its own queue;
    its size is given by `write(..., extra_pool=scaling(...))` (elastic) or `extra_pool="replicas = N"`."""

    template = ELASTIC
    prefix = "elastic"


def scaling(lo: int, hi: int, *, out_s: float = 1.5, in_s: float = 2.5) -> str:
    return SCALING.format(lo=lo, hi=hi, out_s=out_s, in_s=in_s)


def mixed_durations(count: int, seed: int, *, long_share: float = 0.05, short: tuple[float, float] = (0.1, 1.0),
                    long: tuple[float, float] = (5.0, 20.0)) -> list[float]:
    """`count` task durations (s): `long_share` of them in `long`, the others in `short`, in a seeded order."""
    rng = random.Random(seed)
    longs = round(count * long_share)
    durations = [round(rng.uniform(*long), 2) for _ in range(longs)]
    durations += [round(rng.uniform(*short), 2) for _ in range(count - longs)]
    rng.shuffle(durations)
    return durations


@dataclass(frozen=True, slots=True)
class DrainSeen:
    hostname: str
    started_at: float  # the controller's clock: CLOCK_MONOTONIC, as the task records
    requested_by: str
    # The pool's other ready members, not draining, when the drain started: those it could have drained.
    candidates: tuple[str, ...]


@dataclass
class PoolWatch:
    """`Controller.wait_for(watch, timeout)` in a task of its own: never holds; after each input the reducer
    handles, records the pool's ready size (draining members excluded), every member's start and exit, and
    each drain of a member as it starts. Cancel the task to stop it."""

    ctl: Controller
    pool: str = "p"
    most_ready: int = 0
    fewest_ready: int | None = None
    drains: dict[str, DrainSeen] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # hostname -> process start (controller clock)
    gone: dict[str, float] = field(default_factory=dict)  # hostname -> when it left the pool (exited)
    reached: dict[int, float] = field(default_factory=dict)  # ready size -> when the pool first had it

    def __call__(self) -> bool:
        now = self.ctl.clock()
        active = self.ctl.drains.active
        members = self.ctl.fleet.of_pool(self.pool)
        ready = [m.hostname for m in members if m.ready_at is not None and m.failed is None]
        serving = [h for h in ready if h not in active]
        self.most_ready = max(self.most_ready, len(serving))
        self.reached.setdefault(len(serving), now)
        self.fewest_ready = len(serving) if self.fewest_ready is None else min(self.fewest_ready, len(serving))
        for member in members:
            self.started.setdefault(member.hostname, member.started_at)
        for hostname in set(self.started) - {m.hostname for m in members}:
            self.gone.setdefault(hostname, now)
        for hostname, drain in active.items():
            if hostname in ready and hostname not in self.drains:
                self.drains[hostname] = DrainSeen(hostname, drain.started_at, drain.requested_by,
                                                  tuple(h for h in serving if h != hostname))
        return False

    def worker_seconds(self, since: float, until: float) -> float:
        """The pool's workers' alive time (process start to exit), within [since, until]."""
        total = 0.0
        for hostname, start in self.started.items():
            end = self.gone.get(hostname, until)
            total += max(0.0, min(end, until) - max(start, since))
        return total


def executions(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[str, float, float | None]]]:
    """Per worker hostname, its executions (task id, start, end or None) from the tasks' own records."""
    ends = {(r["uuid"], r["retries"]): float(r["monotonic"]) for r in records if r["event"] == "end"}
    runs: dict[str, list[tuple[str, float, float | None]]] = {}
    for r in records:
        if r["event"] == "start":
            runs.setdefault(r["hostname"], []).append(
                (r["uuid"], float(r["monotonic"]), ends.get((r["uuid"], r["retries"]))))
    return runs


def running_between(runs: Iterable[tuple[str, float, float | None]], at: float, slack: float) -> tuple[int, int]:
    """A worker's running tasks at `at`: (certainly: started `slack` before and ended `slack` after;
    possibly: within `slack` of it). The slack covers the time the controller's events take."""
    certain = possible = 0
    for _, start, end in runs:
        finish = float("inf") if end is None else end
        certain += start <= at - slack and finish >= at + slack
        possible += start <= at + slack and finish >= at - slack
    return certain, possible


def free_first_violations(drains: Iterable[DrainSeen], records: list[dict[str, Any]], slack: float = 0.25
                          ) -> list[str]:
    """Each drain whose worker certainly ran more tasks, as it started, than a candidate possibly did."""
    runs = executions(records)
    found = []
    for drain in drains:
        mine, _ = running_between(runs.get(drain.hostname, ()), drain.started_at, slack)
        for other in drain.candidates:
            _, theirs = running_between(runs.get(other, ()), drain.started_at, slack)
            if mine > theirs:
                found.append(f"{drain.hostname} ran {mine} task(s) when its drain started at {drain.started_at:.3f}; "
                             f"{other} ran at most {theirs}")
    return found


def tally(sent: Iterable[str], records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """The tasks sent that were lost (never started), duplicated (started more than once) and interrupted
    (an execution started and never ended), from the tasks' own records."""
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    for r in records:
        into = starts if r["event"] == "start" else ends if r["event"] == "end" else None
        if into is not None:
            into[r["uuid"]] = into.get(r["uuid"], 0) + 1
    ids = list(sent)
    lost = [t for t in ids if t not in starts]
    duplicated = [t for t in ids if starts.get(t, 0) > 1]
    interrupted = [t for t in ids if ends.get(t, 0) < starts.get(t, 0)]
    return lost, duplicated, interrupted


def read_sent(path: Path) -> dict[str, float]:
    """`<task id> <sent at, monotonic>` lines, as a load generator writes them."""
    sent: dict[str, float] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            task_id, at = line.split()
            sent[task_id] = float(at)
    return sent
