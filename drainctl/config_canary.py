"""The `canary` key of a pool: rollouts in steps, each held until the new version has proved itself.

    canary = { steps = [1, "50%"], min_tasks = 50, max_wait_s = 600, bake_s = 60, on_timeout = "hold" }

What each setting means, and how to choose the thresholds: docs/canary.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drainctl.core.canary import CanaryPolicy
from drainctl.core.canary_stats import Thresholds

_DEFAULTS = Thresholds()

_SHARE = re.compile(r"^(\d{1,2}(?:\.\d+)?)%$")


class CanarySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # New workers after each step: a count (1) or a share of the pool ("50%"); the whole pool comes last.
    steps: Annotated[list[int | str], Field(min_length=1, max_length=10)]
    # Tasks of the new version a step needs to pass (with nothing against it).
    min_tasks: Annotated[int, Field(ge=1)] = 50
    # A hold that has no verdict by then: on_timeout decides (hold: keep waiting for an operator).
    max_wait_s: Annotated[float, Field(gt=0)] = 600.0
    # A passing step is held at least this long (slow failures get a chance to show).
    bake_s: Annotated[float, Field(ge=0)] = 60.0
    on_timeout: Literal["promote", "hold", "abort"] = "hold"
    # Each test's significance level; the failure-rate increase and the runtime ratios worth failing for.
    alpha: Annotated[float, Field(gt=0, le=0.1)] = _DEFAULTS.alpha
    min_failure_rate_increase: Annotated[float, Field(gt=0, le=1)] = _DEFAULTS.min_failure_rate_increase
    max_median_ratio: Annotated[float, Field(gt=1)] = _DEFAULTS.max_median_ratio
    max_p90_ratio: Annotated[float, Field(gt=1)] = _DEFAULTS.max_p90_ratio
    min_old_runs: Annotated[int, Field(ge=1)] = _DEFAULTS.min_old_runs

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, steps: list[int | str]) -> list[int | str]:
        for step in steps:
            if isinstance(step, int):
                if step < 1:
                    raise ValueError(f"a step of {step} workers: a step adds at least 1")
            elif not (match := _SHARE.match(step)) or not 0 < float(match.group(1)) < 100:
                raise ValueError(f'{step!r}: a step is a number of workers (1) or a share below 100 % ("50%")')
        return steps

    def policy(self) -> CanaryPolicy:
        return CanaryPolicy(
            steps=tuple(s if isinstance(s, int) else float(s.rstrip("%")) / 100 for s in self.steps),
            min_tasks=self.min_tasks, max_wait_s=self.max_wait_s, bake_s=self.bake_s, on_timeout=self.on_timeout,
            thresholds=Thresholds(alpha=self.alpha, min_failure_rate_increase=self.min_failure_rate_increase,
                                  max_median_ratio=self.max_median_ratio, max_p90_ratio=self.max_p90_ratio,
                                  min_old_runs=self.min_old_runs),
        )
