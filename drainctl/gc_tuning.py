"""Memory management for a process that keeps a large, long-lived model: garbage collection and malloc.

The model is many long-lived objects (workers, tasks, tombstones), and a full collection walks them
all: at fleet rates the default thresholds made pauses of tens of milliseconds every few seconds
(bench/README.md, `fleet.py`), which is event lag and API latency.

Each `/status` and `/metrics` response is a buffer of several hundred KiB, built and freed again. glibc
serves a buffer that large from its own mapping and unmaps it when freed, but it also raises that
threshold to the size of every such buffer freed, after which the next ones come from the heap, between
long-lived objects that keep it from shrinking: 6-8 MB more resident memory at 1,000 workers.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Final

# The young generation is collected after this many allocations instead of 700; the older ones ten
# times less often than by default.
THRESHOLDS: Final = (10_000, 100, 100)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
# glibc's default starting values, held fixed: setting either stops the dynamic adjustment.
MMAP_THRESHOLD_BYTES: Final = 128 * 1024
TRIM_THRESHOLD_BYTES: Final = 256 * 1024


def for_a_long_lived_model() -> None:
    """Freeze what start-up left out of collection, collect less often, and keep large buffers out of
    the heap."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    large_buffers_unmapped_when_freed()


def large_buffers_unmapped_when_freed() -> bool:
    """Hold glibc's mmap and trim thresholds at their defaults; False where the C library has no mallopt
    (musl, macOS), which leaves its own policy alone."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
