"""Everything the controller's reducer consumes: one bounded stream of these, one writer.

Broker events, reconcile replies, command results, runtime exits, timer ticks and requests from the
API or signals are all inputs; failures are inputs too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from drainctl.core.commands import Command
from drainctl.core.drain import Drain, DrainPolicy, DrainRefused
from drainctl.core.events import Decoded
from drainctl.core.policy import PolicyOverrides
from drainctl.core.scaling import QueueLoad
from drainctl.core.snapshot import WorkerSnapshot
from drainctl.runtime.base import Exited, WorkerHandle


@dataclass(frozen=True, slots=True)
class EventsIn:
    batch: Sequence[Decoded]
    nbytes: int
    # Told the number of messages once the batch is applied: the event stream reads that many more.
    applied: Callable[[int], None] | None = None


@dataclass(frozen=True, slots=True)
class DroppedIn:
    events: int


@dataclass(frozen=True, slots=True)
class BrokerUp:
    """Connected (again). Until the start-up broadcast is merged, every connection asks everyone."""


@dataclass(frozen=True, slots=True)
class BrokerDown:
    reason: str


@dataclass(frozen=True, slots=True)
class SnapshotsIn:
    reason: str
    target: str | None
    snapshots: tuple[WorkerSnapshot, ...]
    # When the question went out (controller clock): a worker that heartbeats after it and never
    # answers is one that does not answer remote control.
    asked_at: float | None = None


@dataclass(frozen=True, slots=True)
class EventsEnabledIn:
    hostname: str
    enabled_now: bool | None  # None: no reply (unknown)
    asked_at: float | None = None


@dataclass(frozen=True, slots=True)
class CommandFailed:
    command: Command
    error: str


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class CancelRepliedIn:
    hostname: str
    # per queue: True ok, False error, None no reply (unknown)
    replies: dict[str, bool | None]
    asked_at: float | None = None


@dataclass(frozen=True, slots=True)
class QueuesRepliedIn:
    hostname: str
    queues: tuple[str, ...] | None
    asked_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerExitedIn:
    exited: Exited


@dataclass(frozen=True, slots=True)
class WorkerStartedIn:
    handle: WorkerHandle


class Pending:
    """A request from outside (HTTP) waiting for the reducer's answer."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Drain | DrainRefused | None = None


@dataclass(frozen=True, slots=True)
class DrainRequested:
    hostname: str
    force: bool
    # A DrainPolicy is used as given; PolicyOverrides are laid over the policy of the worker's pool.
    policy: DrainPolicy | PolicyOverrides
    requested_by: str
    pending: Pending


@dataclass(frozen=True, slots=True)
class LeaseDeniedIn:
    hostname: str


@dataclass(frozen=True, slots=True)
class RegisteredIn:
    hostname: str
    tasks: tuple[str, ...] | None
    asked_at: float | None = None


@dataclass(frozen=True, slots=True)
class StartFailedIn:
    hostname: str
    error: str


class Answer:
    """A request from outside (signal, HTTP) waiting for the reducer's verdict."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: str | None = None
        self.detail: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    requested_by: str
    answer: Answer


@dataclass(frozen=True, slots=True)
class RollbackRequested:
    pool: str
    version: str | None
    requested_by: str
    answer: Answer


@dataclass(frozen=True, slots=True)
class CanaryDecisionRequested:
    """An operator promotes the pool's canary rollout (every remaining step at once) or aborts it."""

    pool: str
    decision: Literal["promote", "abort"]
    requested_by: str
    answer: Answer


@dataclass(frozen=True, slots=True)
class EngineRequested:
    """An operator cordons, uncordons or evacuates a Docker engine."""

    engine: str
    action: Literal["cordon", "uncordon", "evacuate"]
    requested_by: str
    answer: Answer


@dataclass(frozen=True, slots=True)
class EngineReachIn:
    """A Docker engine's event stream broke (`reachable` False, with why) or is back."""

    engine: str
    reachable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class QueueDepthsIn:
    """The elastic pools' queues as RabbitMQ reported them (a passive queue.declare each), by queue name;
    a queue it could not report is missing."""

    queues: Mapping[str, QueueLoad]


Input = (
    EventsIn | DroppedIn | BrokerUp | BrokerDown | SnapshotsIn | EventsEnabledIn | CommandFailed | Tick
    | CancelRepliedIn | QueuesRepliedIn | WorkerExitedIn | WorkerStartedIn | DrainRequested
    | RegisteredIn | StartFailedIn | ReloadRequested | RollbackRequested | LeaseDeniedIn | QueueDepthsIn
    | CanaryDecisionRequested | EngineRequested | EngineReachIn
)
