"""`drainctl entrypoint`: which worker it runs, and when it may stop it. Pure (see docs/entrypoint.md).

`worker_command` finds (or injects) the worker's Celery node name in its command line, expanded the
way `celery worker` expands it. `EntrypointDrain` is the drain of that one worker as a tiny state
machine: the shell feeds it SIGTERMs, what the model (a `Cluster` fed by events) says, confirmations
and failures, and does what it answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from drainctl.core.worker import Worker, WorkerState, held

__all__ = [
    "NODENAME_DEFAULT", "Action", "EntrypointDrain", "Phase", "WorkerCommand", "expand_nodename", "held",
    "worker_command",
]

NODENAME_DEFAULT: Final = "celery"
_FORMAT: Final = re.compile(r"%([%\w])")


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    argv: tuple[str, ...]
    nodename: str  # as the worker names itself in events and remote control
    injected: bool  # `-n celery@<host>` was appended


def expand_nodename(raw: str, host: str) -> str:
    """Celery's `host_format(default_nodename(raw))` in the worker's main process."""
    name, sep, node_host = raw.partition("@")
    if not sep:
        name, node_host = "", raw
    value = f"{name or NODENAME_DEFAULT}@{node_host or host}"
    short, _, domain = host.partition(".")
    keys = {"h": host, "n": short, "d": domain, "i": "0", "I": "", "%": "%"}

    def resolve(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in keys:
            raise ValueError(f"unknown format key %{key} in node name {raw!r}")
        return keys[key]

    return _FORMAT.sub(resolve, value)


def worker_command(argv: Sequence[str], host: str) -> WorkerCommand:
    """The node name given with `-n NAME`, `-nNAME`, `--hostname NAME` or `--hostname=NAME` (the last
    wins, as with click); without one, `-n celery@<host>` is appended (what Celery would use anyway)."""
    if not argv:
        raise ValueError("no worker command given (drainctl entrypoint -- celery -A proj worker ...)")
    raw: str | None = None
    for i, token in enumerate(argv):
        if token in ("-n", "--hostname"):
            if i + 1 >= len(argv):
                raise ValueError(f"{token} needs a value")
            raw = argv[i + 1]
        elif token.startswith("--hostname="):
            raw = token.partition("=")[2]
        elif token.startswith("-n") and len(token) > 2:
            raw = token[2:]
    if raw is None:
        nodename = f"{NODENAME_DEFAULT}@{host}"
        return WorkerCommand((*argv, "-n", nodename), nodename, True)
    if not raw:
        raise ValueError("the worker's -n/--hostname is empty")
    return WorkerCommand(tuple(argv), expand_nodename(raw, host), False)


class Phase(StrEnum):
    WORKING = "working"  # no SIGTERM yet: signals pass through
    DRAINING = "draining"  # consumers cancelled; waiting on events
    CONFIRMING = "confirming"  # the model says idle: one targeted inspect confirms
    STOPPING = "stopping"  # the worker was sent SIGTERM (or is shutting down): waiting for it to exit


class Action(StrEnum):
    NOTHING = "nothing"
    DRAIN = "drain"  # bind the event queue, snapshot the worker, cancel its consumers
    CONFIRM = "confirm"  # one targeted reconcile, then `confirmed`
    STOP = "stop"  # drained: SIGTERM to the worker (warm shutdown)
    FORWARD = "forward"  # no drain (broker unreachable, second SIGTERM, ...): SIGTERM to the worker now


@dataclass(slots=True)
class EntrypointDrain:
    phase: Phase = Phase.WORKING
    # Confirmations left unanswered in a row; at `max_unanswered` the worker is stopped anyway.
    unanswered: int = 0
    max_unanswered: int = 3

    def sigterm(self) -> Action:
        if self.phase is Phase.WORKING:
            self.phase = Phase.DRAINING
            return Action.DRAIN
        # Another SIGTERM: whoever sends it will not wait for the drain.
        self.phase = Phase.STOPPING
        return Action.FORWARD

    def failed(self) -> Action:
        """The drain cannot go on (broker unreachable or lost, the worker does not answer)."""
        if self.phase in (Phase.DRAINING, Phase.CONFIRMING):
            self.phase = Phase.STOPPING
            return Action.FORWARD
        return Action.NOTHING

    def observed(self, worker: Worker | None) -> Action:
        """The model changed (events, a merged snapshot)."""
        if self.phase is not Phase.DRAINING:
            return Action.NOTHING
        if worker is not None and worker.state is WorkerState.OFFLINE:
            self.phase = Phase.STOPPING  # its warm shutdown already started: wait for the exit
            return Action.NOTHING
        if held(worker) == ():
            self.phase = Phase.CONFIRMING
            return Action.CONFIRM
        return Action.NOTHING

    def confirmed(self, answered: bool, worker: Worker | None) -> Action:
        """The confirmation's reconcile was merged (`answered`), or went unanswered."""
        if self.phase is not Phase.CONFIRMING:
            return Action.NOTHING
        if not answered:
            self.unanswered += 1
            if self.unanswered >= self.max_unanswered:
                return self.failed()
            self.phase = Phase.DRAINING  # the next event asks again
            return Action.NOTHING
        self.unanswered = 0
        if held(worker) == () and worker is not None and not worker.queues:
            self.phase = Phase.STOPPING
            return Action.STOP
        self.phase = Phase.DRAINING
        return Action.NOTHING

    def deadline(self) -> Action:
        """The drain's budget (`--grace`) ran out: warm shutdown with whatever the worker still holds."""
        if self.phase in (Phase.DRAINING, Phase.CONFIRMING):
            self.phase = Phase.STOPPING
            return Action.STOP
        return Action.NOTHING
