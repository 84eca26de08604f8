"""How long tasks run: a bounded history of runtimes per task name, learnt from task-succeeded/task-failed.

Memory is fixed: the last `per_name` runtimes of each of at most `max_names` task names (the name updated
least recently is forgotten first), plus the last `global_size` runtimes of all tasks together. Learning is
O(1) (a ring append and a move to the end of an ordered dict): it runs on the model's hot path. Queries
sort a copy of one ring; they are made when a decision is taken (which worker to scale in, when a drain
will end), not per event.

What a query answers, for a task of a name that has run `elapsed` seconds so far:
- `remaining(name, elapsed)`: the median of `runtime - elapsed` over the runtimes longer than `elapsed`
  (the conditional median: a task that has already run long is one of the long ones);
- `quantile(name, q)`, `p50`, `p90`: the runtimes' quantiles.
A name with fewer than `min_samples` runtimes falls back to the global history; with too few there as
well, or when the task has outrun every runtime of its history, the answer is None: unknown.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Final

DEFAULT_PER_NAME: Final = 64
DEFAULT_MAX_NAMES: Final = 500
DEFAULT_GLOBAL_SIZE: Final = 256
DEFAULT_MIN_SAMPLES: Final = 3


class RuntimeHistory:
    def __init__(
        self,
        *,
        per_name: int = DEFAULT_PER_NAME,
        max_names: int = DEFAULT_MAX_NAMES,
        global_size: int = DEFAULT_GLOBAL_SIZE,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        if per_name < 1 or max_names < 1 or global_size < 1 or min_samples < 1:
            raise ValueError("per_name, max_names, global_size and min_samples must be at least 1")
        self.per_name = per_name
        self.max_names = max_names
        self.min_samples = min_samples
        self._by_name: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=global_size)
        self.learnt = 0
        self.evicted = 0

    # ------------------------------------------------------------------ learning (hot path)
    def record(self, name: str | None, runtime: float) -> None:
        """One task ran `runtime` seconds. Without a name it counts in the global history only."""
        if not 0.0 <= runtime < math.inf:  # negative, NaN or infinite: not a runtime
            return
        self.learnt += 1
        self._all.append(runtime)
        if name is None:
            return
        by_name = self._by_name
        ring = by_name.get(name)
        if ring is None:
            if len(by_name) >= self.max_names:
                by_name.popitem(last=False)
                self.evicted += 1
            ring = by_name[name] = deque(maxlen=self.per_name)
        else:
            by_name.move_to_end(name)
        ring.append(runtime)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        """How many task names have a history."""
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def samples(self, name: str | None) -> tuple[float, ...]:
        """The runtimes a query about `name` is answered from: its own, else the global ones, else none."""
        ring = self._by_name.get(name) if name is not None else None
        if ring is not None and len(ring) >= self.min_samples:
            return tuple(ring)
        if len(self._all) >= self.min_samples:
            return tuple(self._all)
        return ()

    def quantile(self, name: str | None, q: float) -> float | None:
        """The `q` quantile (0..1) of the runtimes of `name` (linear interpolation); None: unknown."""
        values = sorted(self.samples(name))
        return sorted_quantile(values, q) if values else None

    def p50(self, name: str | None) -> float | None:
        return self.quantile(name, 0.5)

    def p90(self, name: str | None) -> float | None:
        return self.quantile(name, 0.9)

    def remaining(self, name: str | None, elapsed: float) -> float | None:
        """Seconds a task of `name` that has run `elapsed` seconds is expected to run still; None: unknown.

        A task not started yet (`elapsed` 0) is expected to run its median.
        """
        elapsed = max(0.0, elapsed)
        tail = sorted(r - elapsed for r in self.samples(name) if r > elapsed)
        if not tail:
            return None
        return sorted_quantile(tail, 0.5)


def sorted_quantile(values: list[float], q: float) -> float:
    """`values` sorted and not empty; q clamped to 0..1."""
    position = min(1.0, max(0.0, q)) * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)
