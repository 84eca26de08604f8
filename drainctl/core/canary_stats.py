"""Is a new version worse than the old one on the same tasks, over the same window? Sound at small counts.

Per task name, two questions, each a one-sided test (only "worse" matters) with a floor on the size of
the effect, so that neither noise at small counts nor a trivial difference at large ones fails a release:

- failures: Fisher's exact test on the 2x2 table (new/old x failed/succeeded), exact at any count;
- runtimes: the Mann-Whitney U test (new slower than old; normal approximation with a tie correction,
  used from MIN_RUNTIMES samples on each side), and the ratio of the medians and of the 90th percentiles.

And one more: a task the old version ran at least `min_old_runs` times in the window and the new version
never ran, while the new version ran others (it may not be routed there, or may not know it).

`analyse` turns them into a verdict: `fail` (with a reason naming the task, the counts and the figures) as
soon as the evidence is clear, `pass` once enough tasks have been seen without any and with a failure
rate within the threshold even where not significant, `wait` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from drainctl.core.runtimes import sorted_quantile

MIN_RUNTIMES: Final = 10


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Defaults chosen so that a healthy release does not fail by chance (alpha 0.1 % per test) and a
    clearly worse one fails early."""

    alpha: float = 0.001
    # A failure rate this much higher (absolute) is worth failing a release for.
    min_failure_rate_increase: float = 0.05
    max_median_ratio: float = 1.5
    max_p90_ratio: float = 2.0
    min_old_runs: int = 10


@dataclass(slots=True)
class Outcomes:
    """One task name's outcomes on one version, in the window."""

    succeeded: int = 0
    failed: int = 0  # task-failed and task-rejected; a retry is counted once it ends
    runtimes: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["pass", "fail", "wait"]
    reasons: tuple[str, ...] = ()


def fisher_worse(new_failed: int, new_total: int, old_failed: int, old_total: int) -> float:
    """P-value of "the new version fails more often": P(X >= new_failed) for the hypergeometric law of
    the new version's failures, given both totals and all failures."""
    failures = new_failed + old_failed
    total = new_total + old_total
    if failures == 0:
        return 1.0
    low, high = max(0, failures - old_total), min(failures, new_total)

    def log_p(k: int) -> float:
        return (_log_choose(new_total, k) + _log_choose(old_total, failures - k)
                - _log_choose(total, failures))

    if new_failed <= low:
        return 1.0  # the whole law: as few as could be
    # fsum is correctly rounded, so more failures never give a larger p-value.
    return min(1.0, math.fsum(math.exp(log_p(k)) for k in range(new_failed, high + 1)))


def mann_whitney_slower(new: Sequence[float], old: Sequence[float]) -> float:
    """P-value of "new runtimes are larger than old ones" (normal approximation, ties corrected)."""
    n, m = len(new), len(old)
    if n < MIN_RUNTIMES or m < MIN_RUNTIMES:
        return 1.0
    ranked = sorted([(value, 0) for value in new] + [(value, 1) for value in old])
    rank_sum_new = 0.0
    tie_term = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1
        rank_sum_new += mid_rank * sum(1 for k in range(i, j + 1) if ranked[k][1] == 0)
        ties = j - i + 1
        tie_term += ties**3 - ties
        i = j + 1
    u = rank_sum_new - n * (n + 1) / 2
    variance = n * m / 12 * ((n + m + 1) - tie_term / ((n + m) * (n + m - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n * m / 2 - 0.5) / math.sqrt(variance)  # continuity corrected
    return 0.5 * math.erfc(z / math.sqrt(2))


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks (values need not be sorted)."""
    return sorted_quantile(sorted(values), q)


def compare(name: str, new: Outcomes, old: Outcomes, t: Thresholds) -> list[str]:
    """Why the new version is worse on task `name`, if it clearly is."""
    reasons = []
    if new.total and old.total:
        new_rate, old_rate = new.failed / new.total, old.failed / old.total
        p = fisher_worse(new.failed, new.total, old.failed, old.total)
        if p < t.alpha and new_rate - old_rate >= t.min_failure_rate_increase:
            reasons.append(f"{name}: {new.failed}/{new.total} failed on the new version against "
                           f"{old.failed}/{old.total} on the old ({new_rate:.0%} vs {old_rate:.0%}, p={p:.1e})")
    if mann_whitney_slower(new.runtimes, old.runtimes) < t.alpha:
        median = quantile(new.runtimes, 0.5) / max(quantile(old.runtimes, 0.5), 1e-9)
        p90 = quantile(new.runtimes, 0.9) / max(quantile(old.runtimes, 0.9), 1e-9)
        if median > t.max_median_ratio or p90 > t.max_p90_ratio:
            reasons.append(f"{name}: runtime p50 {median:.1f}x and p90 {p90:.1f}x the old version's "
                           f"({len(new.runtimes)} and {len(old.runtimes)} runs)")
    return reasons


def analyse(new: Mapping[str, Outcomes], old: Mapping[str, Outcomes], *, min_tasks: int,
            t: Thresholds = Thresholds()) -> Verdict:
    """The verdict on the new version over the window: per task name, then across names."""
    reasons = [r for name in sorted(new.keys() & old.keys()) for r in compare(name, new[name], old[name], t)]
    seen = sum(o.total for o in new.values())
    if seen:
        reasons += [f"{name}: never ran on the new version, {old[name].total} times on the old"
                    for name in sorted(old.keys() - {n for n, o in new.items() if o.total})
                    if old[name].total >= t.min_old_runs]
    if reasons:
        return Verdict("fail", tuple(reasons))
    if seen < min_tasks:
        return Verdict("wait")
    # No clear evidence against it is not enough: a new version that looks worse than the thresholds
    # allow waits for more tasks (a clear verdict either way, or max_wait_s).
    doubts = [d for name in sorted(new.keys() & old.keys()) for d in looks_worse(name, new[name], old[name], t)]
    return Verdict("wait", tuple(doubts)) if doubts else Verdict("pass")


def looks_worse(name: str, new: Outcomes, old: Outcomes, t: Thresholds) -> list[str]:
    """Where the new version's failure rate is above the old one's by the threshold, significant or not.
    (Runtimes are not doubted so: a median of a few dozen runs swings by half on its own.)"""
    if new.total and old.total and new.failed / new.total - old.failed / old.total >= t.min_failure_rate_increase:
        return [f"{name}: {new.failed}/{new.total} failed against {old.failed}/{old.total}, not yet significant"]
    return []


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
