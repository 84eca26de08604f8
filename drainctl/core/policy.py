"""How a drain goes about it: its deadline, and how long a worker gets to exit at the end.

A pool's policy comes from its config (`drainctl.pools.target_of`); a caller of the API may choose
the deadline part of it (`PolicyOverrides`), laid over the policy of the worker's pool.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

OnDeadline = Literal["wait", "escalate"]


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    deadline_s: float | None = None
    on_deadline: OnDeadline = "wait"
    # After `shutdown`, how long a worker drainctl started may take to exit before the runtime stops it.
    retire_grace_s: float = 15.0
    # How long the runtime's stop waits for a warm shutdown before it kills.
    stop_timeout_s: float = 600.0
    # How long to wait for a control reply before asking again.
    retry_s: float = 5.0


@dataclass(frozen=True, slots=True)
class PolicyOverrides:
    """The parts of a drain's policy its requester chose; None: not chosen, the base policy's applies.

    The base is the policy of the worker's pool, or the defaults for a worker of no pool: a caller who
    sets a deadline changes the deadline only, never the pool's stop timeout or retire grace. (So a
    caller cannot take a pool's deadline away, only set another one.)
    """

    deadline_s: float | None = None
    on_deadline: OnDeadline | None = None

    def over(self, base: DrainPolicy) -> DrainPolicy:
        return replace(
            base,
            deadline_s=base.deadline_s if self.deadline_s is None else self.deadline_s,
            on_deadline=base.on_deadline if self.on_deadline is None else self.on_deadline,
        )
