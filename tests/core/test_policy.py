"""A caller's choices laid over a pool's drain policy: only what the caller set changes."""

from __future__ import annotations

import pytest

from drainctl.core.policy import DrainPolicy, PolicyOverrides

POOL = DrainPolicy(deadline_s=3600, on_deadline="escalate", retire_grace_s=7, stop_timeout_s=45, retry_s=2)
NO_DEADLINE = DrainPolicy(retire_grace_s=7, stop_timeout_s=45)


@pytest.mark.parametrize(
    ("base", "overrides", "expected"),
    [
        # nothing chosen: the pool's policy as it is
        (POOL, PolicyOverrides(), POOL),
        # a deadline only: the pool's on_deadline, stop timeout and retire grace stay
        (POOL, PolicyOverrides(deadline_s=30), DrainPolicy(30, "escalate", 7, 45, 2)),
        (POOL, PolicyOverrides(on_deadline="wait"), DrainPolicy(3600, "wait", 7, 45, 2)),
        (POOL, PolicyOverrides(deadline_s=30, on_deadline="wait"), DrainPolicy(30, "wait", 7, 45, 2)),
        # a pool without a deadline gets the caller's
        (NO_DEADLINE, PolicyOverrides(deadline_s=5), DrainPolicy(5, "wait", 7, 45)),
        (NO_DEADLINE, PolicyOverrides(on_deadline="escalate"), DrainPolicy(None, "escalate", 7, 45)),
        # a worker of no pool: the defaults under the caller's choices
        (DrainPolicy(), PolicyOverrides(deadline_s=5, on_deadline="escalate"), DrainPolicy(5, "escalate")),
        (DrainPolicy(), PolicyOverrides(), DrainPolicy()),
    ],
)
def test_overrides_change_only_what_the_caller_set(
    base: DrainPolicy, overrides: PolicyOverrides, expected: DrainPolicy
) -> None:
    assert overrides.over(base) == expected
