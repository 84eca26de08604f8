"""Garbage collection for a process that keeps a large, long-lived model.

The model is many long-lived objects (workers, tasks, tombstones), and a full collection walks them
all: at fleet rates the default thresholds made pauses of tens of milliseconds every few seconds
(bench/README.md, `fleet.py`), which is event lag and API latency.
"""

from __future__ import annotations

import gc
from typing import Final

# The young generation is collected after this many allocations instead of 700; the older ones ten
# times less often than by default.
THRESHOLDS: Final = (10_000, 100, 100)


def for_a_long_lived_model() -> None:
    """Freeze what start-up left out of collection, and collect less often."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
