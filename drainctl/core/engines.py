"""Host maintenance for pools spread over several Docker engines: a task-aware `kubectl drain`.

- cordon: no new worker goes to the engine; those there stay;
- evacuate: cordon, and every worker there is replaced on the other engines the way a rollout replaces
  old workers: a new worker starts quiet, passes the readiness gate, and only then is one on the engine
  drained (it stops consuming, finishes what it runs and holds, and is retired). The engine stays cordoned
  once empty;
- uncordon: back to normal.

An engine that cannot be reached (its event stream broke and does not come back) is closed too, and its
workers are not counted as the pool's capacity; the planner then drains nothing in that pool and stops
nothing there (it cannot see them exit): it waits, rather than guess, until the engine answers again.

The states are journaled (`JournalEngines`): a restarted controller goes on where it was.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

from drainctl.core.members import Member
from drainctl.core.placement import engine_of

EngineState = Literal["cordoned", "evacuating"]
EngineAction = Literal["cordon", "uncordon", "evacuate"]


class EngineBook:
    def __init__(self) -> None:
        self.states: dict[str, EngineState] = {}
        # Engines that cannot be reached now, and why.
        self.down: dict[str, str] = {}

    def closed(self) -> frozenset[str]:
        """Engines no new worker goes to."""
        return frozenset(self.states) | frozenset(self.down)

    def reachable(self, engine: str, up: bool, reason: str) -> bool:
        """Note whether `engine` answers; True when that changed."""
        was_down = engine in self.down
        if up:
            self.down.pop(engine, None)
        else:
            self.down[engine] = reason
        return was_down == up

    def leaving(self) -> frozenset[str]:
        """Engines whose workers are being replaced elsewhere."""
        return frozenset(e for e, state in self.states.items() if state == "evacuating")

    def request(self, engine: str, action: EngineAction, known: Collection[str]) -> str | None:
        """Apply an operator's request; an error message when the engine is unknown."""
        if engine not in known:
            return f"no pool spreads over an engine named {engine!r} (engines: {', '.join(sorted(known)) or 'none'})"
        if action == "uncordon":
            self.states.pop(engine, None)
        elif action == "evacuate":
            self.states[engine] = "evacuating"
        elif engine not in self.states:
            self.states[engine] = "cordoned"
        return None

    @staticmethod
    def workers_on(engine: str, members: Iterable[Member]) -> list[str]:
        return sorted(m.hostname for m in members if engine_of(m.hostname) == engine)
