"""Small helpers shared by the test suites."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy.

    Returns that value. Raises ``AssertionError(f"timed out after {timeout}s waiting for {what}")``
    when ``timeout`` seconds pass first. The predicate is always called at least once and
    once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(interval, remaining))


def read_records(record_dir: str | Path) -> list[dict[str, Any]]:
    """All execution records written by ``taskapp.sleep`` into ``record_dir``.

    Sorted by their ``monotonic`` time. A partly written last line (a worker killed mid-write)
    is skipped.
    """
    records: list[dict[str, Any]] = []
    for path in sorted(Path(record_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    records.sort(key=lambda r: r["monotonic"])
    return records
