"""What the HTTP API, /metrics and /status may see of a running controller: a narrow, typed surface.

`ReadModel` is read-only: the live model (workers, pools, drains) and the controller's own counters.
`ControllerApi` adds the requests the HTTP API may make; each goes through the reducer like any input.
Neither exposes the broker session, the executor or the runtimes: those stay behind the controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from drainctl.core.autoscale import PoolSizing
from drainctl.core.drain import Drain, DrainBook, DrainPolicy
from drainctl.core.model import Cluster
from drainctl.core.policy import PolicyOverrides
from drainctl.core.rollout import Fleet, Member, Pin, PoolTarget
from drainctl.core.version_outcomes import VersionOutcomes


@dataclass(slots=True)
class IngestStats:
    """Counters the model does not own: written by the broker session and the reducer, read by /metrics."""

    messages: int = 0
    events: int = 0
    bytes: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    reconciles: dict[str, int] = field(default_factory=dict)
    reconcile_no_reply: int = 0
    connected: bool = False
    connects: int = 0
    last_event_wall: float | None = None
    started_wall: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the controller is, safe to show: the broker URL comes redacted."""

    controller_id: str
    broker: str
    event_queue: str


class ReadModel(Protocol):
    @property
    def identity(self) -> Identity: ...
    @property
    def cluster(self) -> Cluster: ...
    @property
    def fleet(self) -> Fleet: ...
    @property
    def drains(self) -> DrainBook: ...
    @property
    def pool_targets(self) -> Mapping[str, PoolTarget]: ...

    @property
    def pool_sizing(self) -> Mapping[str, PoolSizing]: ...
    @property
    def stats(self) -> IngestStats: ...
    @property
    def reloads(self) -> Mapping[str, int]: ...
    @property
    def version_outcomes(self) -> VersionOutcomes: ...

    def now(self) -> float:
        """The controller's clock (monotonic seconds): ages and durations are measured on it."""
        ...

    def is_synced(self) -> bool:
        """True once the start-up reconcile was merged: from then on the model is complete."""
        ...

    def rollout_history(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` rollouts from the journal, newest first."""
        ...


class ControllerApi(ReadModel, Protocol):
    async def request_drain(
        self, hostname: str, *, force: bool = False, policy: DrainPolicy | PolicyOverrides | None = None,
        requested_by: str = "api",
    ) -> Drain: ...

    async def reload(self, requested_by: str) -> dict[str, Any]: ...

    async def rollback(self, pool: str, version: str | None, requested_by: str) -> dict[str, Any]: ...

    async def canary_decision(self, pool: str, decision: Literal["promote", "abort"], requested_by: str
                              ) -> dict[str, Any]: ...

    async def engine_request(self, engine: str, action: Literal["cordon", "uncordon", "evacuate"],
                             requested_by: str) -> dict[str, Any]: ...

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None: ...


def pool_pin(fleet: Fleet, name: str, target: PoolTarget) -> Pin | None:
    """The pin that holds pool `name` now: one set while the config asked for another version no longer does."""
    pin = fleet.pins.get(name)
    return pin if pin is not None and pin.config_version == target.version else None


def member_status(member: Member, drains: DrainBook) -> str:
    """A pool member's status as shown everywhere: `draining` while a drain of it is under way."""
    if member.failed is None and member.hostname in drains.active:
        return "draining"
    return member.status
