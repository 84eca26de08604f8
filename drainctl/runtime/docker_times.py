"""The Docker engine's times and stop outcomes, read from its answers (pure: no I/O)."""

from __future__ import annotations

import re
import signal as signal_mod
from datetime import datetime
from typing import Any

_RFC3339 = re.compile(r"^(?P<base>[^.]+?)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:\d\d)$")


def unix_since(rfc3339: str) -> str:
    """The engine's RFC 3339 (nanosecond) time as the `seconds.nanoseconds` the events API takes."""
    m = _RFC3339.match(rfc3339)
    if m is None:
        raise ValueError(f"unexpected time format {rfc3339!r}")
    tz = "+00:00" if m["tz"] == "Z" else m["tz"]
    seconds = int(datetime.fromisoformat(m["base"] + tz).timestamp())
    frac = (m["frac"] or "").ljust(9, "0")[:9]
    return f"{seconds}.{frac}"


def event_since(event: dict[str, Any]) -> str | None:
    ns = event.get("timeNano")
    if isinstance(ns, int):
        return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
    return None


def finished_at(state: dict[str, Any]) -> float | None:
    raw = state.get("FinishedAt")
    if not isinstance(raw, str) or raw.startswith("0001-"):
        return None
    try:
        return float(unix_since(raw))
    except ValueError:
        return None


def judge_forced(
    exit_code: int | None, state: dict[str, Any] | None, stopping: tuple[float, int] | None, now: float
) -> bool:
    """Whether the engine killed the worker because a stop timeout expired (the heuristic in docker.py's docstring)."""
    if stopping is None or exit_code != 128 + signal_mod.SIGKILL:
        return False
    if state is not None and state.get("OOMKilled"):
        return False
    asked, timeout = stopping
    ended = finished_at(state) if state is not None else None
    if ended is None:
        ended = now
    # 50 ms of slack for the engine's clock vs. ours (same machine; different reading points).
    return ended - asked >= timeout - 0.05
