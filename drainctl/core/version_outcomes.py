"""Task outcomes and runtimes per pool and version: what a dashboard sets side by side while a pool is
rolled out, and what a canary analysis compares (`drainctl.core.canary_stats`).

Counted once per task end the model accepts (a late duplicate is not counted again). Bounded: per pool, the
MAX_VERSIONS versions that ended a task most recently; an older one is forgotten (its series end).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

# Task runtimes, seconds: from sub-second tasks to Airflow's hours-long ones.
RUNTIME_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0)
MAX_VERSIONS: Final = 5


@dataclass(slots=True)
class VersionTasks:
    """One pool version's ended tasks: counts by outcome (`succeeded`, `failed`, ...) and a runtime histogram
    (per bucket, not cumulative; the last one is +Inf)."""

    outcomes: dict[str, int] = field(default_factory=dict)
    runtime_buckets: list[int] = field(default_factory=lambda: [0] * (len(RUNTIME_BUCKETS) + 1))
    runtime_sum: float = 0.0


class VersionOutcomes:
    def __init__(self, max_versions: int = MAX_VERSIONS) -> None:
        self.max_versions = max_versions
        self._pools: dict[str, OrderedDict[str, VersionTasks]] = {}

    def record(self, pool: str, version: str, outcome: str, runtime: float | None) -> None:
        versions = self._pools.setdefault(pool, OrderedDict())
        tasks = versions.get(version)
        if tasks is None:
            tasks = versions[version] = VersionTasks()
            while len(versions) > self.max_versions:
                versions.popitem(last=False)
        else:
            versions.move_to_end(version)
        tasks.outcomes[outcome] = tasks.outcomes.get(outcome, 0) + 1
        if runtime is not None and runtime >= 0:
            tasks.runtime_sum += runtime
            tasks.runtime_buckets[bisect_left(RUNTIME_BUCKETS, runtime)] += 1

    def __iter__(self) -> Iterator[tuple[str, str, VersionTasks]]:
        """(pool, version, its tasks), pools by name, versions from the least recently active."""
        for pool in sorted(self._pools):
            for version, tasks in self._pools[pool].items():
                yield pool, version, tasks
