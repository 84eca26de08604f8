"""The canary analysis' statistics: no verdict from a handful of tasks, a clear one from enough."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drainctl.core.canary_stats import (
    Outcomes,
    Thresholds,
    Verdict,
    analyse,
    fisher_worse,
    mann_whitney_slower,
    quantile,
)


def runs(n: int, mean: float, seed: int, failed: int = 0) -> Outcomes:
    rng = random.Random(seed)
    return Outcomes(succeeded=n - failed, failed=failed, runtimes=[rng.expovariate(1 / mean) for _ in range(n)])


def test_fisher_matches_the_hypergeometric_law_by_hand() -> None:
    assert fisher_worse(3, 3, 0, 3) == pytest.approx(1 / 20)  # all 3 failures on the new side: 1 of C(6,3)
    assert fisher_worse(1, 3, 0, 100) == pytest.approx(3 / 103)
    assert fisher_worse(0, 10, 0, 10) == 1.0  # no failure anywhere
    assert fisher_worse(0, 10, 5, 10) == 1.0  # the new version fails less: nothing to say


@given(new_total=st.integers(1, 60), old_total=st.integers(1, 60), old_failed=st.integers(0, 60), data=st.data())
def test_fisher_is_a_probability_that_falls_as_the_new_version_fails_more(
        new_total: int, old_total: int, old_failed: int, data: st.DataObject) -> None:
    old_failed = min(old_failed, old_total)
    new_failed = data.draw(st.integers(0, new_total - 1))
    p, p_more = (fisher_worse(k, new_total, old_failed, old_total) for k in (new_failed, new_failed + 1))
    # One more failure changes the law itself (all failures are given), so near 1 both p-values are
    # sums of different terms: equal within rounding.
    assert 0.0 <= p_more <= p + 1e-12 and p <= 1.0


def test_three_tasks_give_no_verdict_even_with_a_failure() -> None:
    new = {"work": Outcomes(succeeded=2, failed=1, runtimes=[1.0, 1.1, 0.9])}
    old = {"work": runs(200, 1.0, seed=1)}
    assert analyse(new, old, min_tasks=50).outcome == "wait"


def test_a_version_failing_a_fifth_of_its_tasks_fails_at_its_first_step() -> None:
    new = {"work": runs(50, 1.0, seed=2, failed=10)}
    old = {"work": runs(200, 1.0, seed=3)}
    verdict = analyse(new, old, min_tasks=50)
    assert verdict.outcome == "fail"
    assert verdict.reasons[0].startswith("work: 10/50 failed on the new version against 0/200 on the old (20% vs 0%")


def test_a_small_difference_in_failure_rate_is_not_worth_a_failure() -> None:
    new = {"work": runs(5000, 1.0, seed=4, failed=150)}  # 3 % against 1 %: significant, but small
    old = {"work": runs(5000, 1.0, seed=5, failed=50)}
    assert analyse(new, old, min_tasks=50).outcome == "pass"


def test_a_version_three_times_slower_fails_and_says_by_how_much() -> None:
    new = {"work": runs(30, 3.0, seed=6)}
    old = {"work": runs(60, 1.0, seed=7)}
    verdict = analyse(new, old, min_tasks=20)
    assert verdict.outcome == "fail"
    assert "work: runtime p50" in verdict.reasons[0] and "(30 and 60 runs)" in verdict.reasons[0]


def test_a_slightly_slower_version_passes() -> None:
    new = {"work": Outcomes(succeeded=400, runtimes=[1.1] * 400)}  # 10 % slower: significant, below 1.5x
    old = {"work": Outcomes(succeeded=400, runtimes=[1.0] * 400)}
    assert analyse(new, old, min_tasks=50).outcome == "pass"


def test_a_healthy_version_passes_once_enough_tasks_were_seen() -> None:
    old = {"work": runs(300, 1.0, seed=8, failed=3), "report": runs(100, 5.0, seed=9)}
    new = {"work": runs(40, 1.0, seed=10), "report": runs(15, 5.0, seed=11)}
    assert analyse(new, old, min_tasks=80).outcome == "wait"
    assert analyse(new, old, min_tasks=50).outcome == "pass"


def test_a_version_that_looks_worse_without_clear_evidence_waits_for_more_tasks() -> None:
    old = {"work": runs(60, 1.0, seed=16)}
    new = {"work": runs(20, 1.0, seed=17, failed=4)}  # 20 % against 0 %: p = 0.003, not below 0.001
    verdict = analyse(new, old, min_tasks=20)
    assert verdict == Verdict("wait", ("work: 4/20 failed against 0/60, not yet significant",))


def test_a_task_the_new_version_never_runs_fails_it() -> None:
    old = {"work": runs(100, 1.0, seed=12), "report": runs(12, 1.0, seed=13), "rare": runs(2, 1.0, seed=14)}
    new = {"work": runs(60, 1.0, seed=15), "report": Outcomes()}
    verdict = analyse(new, old, min_tasks=50)
    assert verdict.reasons == ("report: never ran on the new version, 12 times on the old",)
    assert analyse({}, old, min_tasks=50).outcome == "wait"  # nothing ran yet: nothing to say


@given(st.lists(st.floats(0.01, 100), min_size=10, max_size=40),
       st.lists(st.integers(0, 3), min_size=1, max_size=1))
def test_a_version_identical_to_the_old_one_never_fails(runtimes: list[float], failed: list[int]) -> None:
    same = Outcomes(succeeded=len(runtimes) - failed[0], failed=failed[0], runtimes=runtimes)
    assert analyse({"work": same}, {"work": same}, min_tasks=1, t=Thresholds(alpha=0.05)).outcome == "pass"


def test_mann_whitney_needs_enough_runs_and_copes_with_ties() -> None:
    assert mann_whitney_slower([2.0] * 9, [1.0] * 50) == 1.0  # too few to say
    assert mann_whitney_slower([1.0] * 20, [1.0] * 20) == 1.0  # all tied: no difference to test
    assert mann_whitney_slower([2.0] * 20, [1.0] * 20) < 1e-6
    assert mann_whitney_slower([1.0] * 20, [2.0] * 20) > 0.99


def test_quantiles_interpolate_between_ranks() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0], 0.9) == pytest.approx(1.9)
    assert quantile([5.0], 0.9) == 5.0
