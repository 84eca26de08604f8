"""`drainctl entrypoint --ready-file`: when its worker counts as ready. Pure (see docs/kubernetes.md).

Ready means: the worker answered `active_queues` with at least one queue (it consumes), and no drain has
started. The shell asks when the worker is heard from (its `worker-online`, each heartbeat) and once when it
starts listening, one question at a time (heard again meanwhile: once more right after), until an answer
makes it ready; it never asks after that. Readiness ends with the drain (SIGTERM) or the worker's exit, for
good: a draining worker consumes nothing on purpose, and a worker that comes back is a new process under a
new entrypoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from drainctl.core.snapshot import parse_queues

__all__ = ["Next", "Readiness", "ReadinessWatch"]


class Readiness(StrEnum):
    STARTING = "starting"  # not seen consuming yet
    READY = "ready"  # it answered with the queues it consumes: the ready file exists
    STOPPED = "stopped"  # the drain started (or the worker exited): never ready again


class Next(StrEnum):
    WAIT = "wait"  # until the worker is heard from again
    ASK = "ask"  # ask it `active_queues` now, and pass the answer to `answered`
    READY = "ready"  # write the ready file


@dataclass(slots=True)
class ReadinessWatch:
    hostname: str  # the worker's Celery node name
    state: Readiness = Readiness.STARTING
    asking: bool = False  # an `active_queues` question is out
    heard_meanwhile: bool = False  # the worker was heard from while it was out
    queues: tuple[str, ...] = ()  # what it consumed when it became ready

    def heard(self, hostname: str) -> Next:
        """`hostname` sent an event (or the watch starts listening: the shell passes its own worker's name)."""
        if hostname != self.hostname or self.state is not Readiness.STARTING:
            return Next.WAIT
        if self.asking:
            self.heard_meanwhile = True
            return Next.WAIT
        return self._ask()

    def answered(self, reply: Any) -> Next:
        """The worker's reply to `active_queues` (None: no reply in time)."""
        self.asking = False
        if self.state is not Readiness.STARTING:
            return Next.WAIT
        queues = parse_queues(reply, []) if reply is not None else None
        if queues:
            self.state = Readiness.READY
            self.queues = queues
            return Next.READY
        return self._ask() if self.heard_meanwhile else Next.WAIT

    def lost(self) -> None:
        """The broker session ended: no question is out any more (the next session starts by asking)."""
        self.asking = self.heard_meanwhile = False

    def stop(self) -> None:
        """The drain started, or the worker exited."""
        self.state = Readiness.STOPPED

    def _ask(self) -> Next:
        self.asking = True
        self.heard_meanwhile = False
        return Next.ASK
