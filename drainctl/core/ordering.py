"""How the model orders what it learns from events and snapshots that arrive out of order.

- Lamport clocks are compared only within one worker process (pid): task events are buffered and
  flushed as ``task.multi`` lists after heartbeats with higher clocks, so clocks are compared per
  kind — task events with task events, worker events with worker events.
- A finished task leaves a tombstone; a late event for it (clock at or below the tombstone's)
  is ignored instead of resurrecting it. Tombstones are bounded (oldest dropped first).
- A snapshot taken at clock C replaces what the model learnt at or before C and leaves alone what
  events taught it after C (`drainctl.core.reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is left of a finished task: the clock and pid of the event that ended it."""

    clock: int
    pid: int | None


def same_process(a: int | None, b: int | None) -> bool:
    """Can clocks stamped by pids `a` and `b` be compared? An unknown pid cannot tell them apart."""
    return a is None or b is None or a == b
