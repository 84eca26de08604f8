"""What the pure core asks the shell to do. The shell runs each and feeds the result back as an input."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Ask workers what they hold (`clock`, `active`, `reserved`, `scheduled`, `active_queues`).

    `hostname=None` is the one broadcast made when the controller starts; every other reconcile
    targets one worker.
    """

    hostname: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class EnableEvents:
    """Turn task events on for a worker (Airflow's workers run without them)."""

    hostname: str


Command = Reconcile | EnableEvents
