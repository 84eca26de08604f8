"""Where a new worker of a pool that spans several Docker engines goes.

The engine with the fewest of the pool's workers (starting, serving and draining ones alike: they all hold
a place there), never one at the pool's per-engine cap; among equals, the first in the pool's list. A
worker's Celery hostname names its engine (`pool-version-id@engine`), so an adopted worker is placed
again where it runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence, Set

from drainctl.core.members import Member


def engine_of(hostname: str) -> str:
    return hostname.rpartition("@")[2]


def place(engines: Sequence[str], cap: int | None, members: Iterable[Member],
          closed: Set[str] = frozenset()) -> str | None:
    """The engine for the next worker; None when every open engine is at `cap` (or none is open)."""
    counts = Counter(engine_of(m.hostname) for m in members)
    candidates = [e for e in engines if e not in closed and (cap is None or counts[e] < cap)]
    if not candidates:
        return None
    return min(candidates, key=lambda e: (counts[e], engines.index(e)))
