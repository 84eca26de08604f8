"""The journal of intents (SQLite in the state directory): what a restarted controller cannot observe.

- intents: the workers whose consumers drainctl cancelled for a rollout, written *before* the
  `cancel_consumer` goes out — after a crash, a worker without consumers is ours to finish draining
  only if it is listed here (an operator may have paused it by hand);
- rollouts: the history (who, when, from -> to, outcome);
- pins: a pool held at a version (after a failed rollout or a rollback) until the config changes;
- specs: the config of every version a pool has run, so a rollback or an abort can start workers of
  a version the config no longer describes.

Writes are synchronous and small; WAL mode with synchronous=NORMAL keeps each one well under a ms.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drainctl.core.rollout import Pin, Rollout
from drainctl.errors import DrainctlError

SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (hostname TEXT PRIMARY KEY, rollout_id TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, pool TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL,
    started_at REAL NOT NULL, requested_by TEXT NOT NULL, outcome TEXT, finished_at REAL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (pool TEXT PRIMARY KEY, version TEXT NOT NULL, config_version TEXT NOT NULL,
                                 reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS canary (pool TEXT PRIMARY KEY, to_version TEXT NOT NULL, step INTEGER NOT NULL,
                                   promoted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS engines (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS specs (pool TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL,
                                  PRIMARY KEY (pool, version));
"""


class Journal:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            # It holds each version's pool spec, env included: readable by its owner only.
            path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DrainctlError(f"cannot open the journal {path}: {exc}; check the state_dir permissions") from exc
        self.path = path

    def close(self) -> None:
        self._db.close()

    # intents
    def record_cancel(self, hostname: str, rollout_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO intents VALUES (?, ?, ?)", (hostname, rollout_id, time.time()))

    def forget(self, hostname: str) -> None:
        self._db.execute("DELETE FROM intents WHERE hostname = ?", (hostname,))

    def cancelled(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT hostname, rollout_id FROM intents").fetchall())

    # rollouts
    def record_rollout(self, rollout: Rollout, wall_offset: float) -> None:
        """`wall_offset` converts the controller's monotonic times to unix times."""
        finished = rollout.finished_at + wall_offset if rollout.finished_at is not None else None
        self._db.execute(
            "INSERT OR REPLACE INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rollout.id, rollout.pool, rollout.from_version, rollout.to_version, rollout.started_at + wall_offset,
             rollout.requested_by, rollout.outcome, finished, rollout.detail),
        )

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, pool, from_version, to_version, started_at, requested_by, outcome, finished_at, detail "
            "FROM rollouts ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "pool", "from_version", "to_version", "started_at", "requested_by", "outcome",
                "finished_at", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # pins
    def save_pins(self, pins: dict[str, Pin]) -> None:
        self._db.execute("DELETE FROM pins")
        self._db.executemany("INSERT INTO pins VALUES (?, ?, ?, ?)",
                             [(pool, p.version, p.config_version, p.reason) for pool, p in pins.items()])

    def pins(self) -> dict[str, Pin]:
        rows = self._db.execute("SELECT pool, version, config_version, reason FROM pins").fetchall()
        return {pool: Pin(version, config_version, reason) for pool, version, config_version, reason in rows}

    # canary rollouts: the step each has reached
    def save_canary(self, rows: Mapping[str, tuple[str, int, bool]]) -> None:
        self._db.execute("DELETE FROM canary")
        self._db.executemany("INSERT INTO canary VALUES (?, ?, ?, ?)",
                             [(pool, version, step, int(promoted)) for pool, (version, step, promoted) in rows.items()])

    def canary(self) -> dict[str, tuple[str, int, bool]]:
        rows = self._db.execute("SELECT pool, to_version, step, promoted FROM canary").fetchall()
        return {pool: (version, step, bool(promoted)) for pool, version, step, promoted in rows}

    # engines: cordoned, or being evacuated
    def save_engines(self, states: Mapping[str, str]) -> None:
        self._db.execute("DELETE FROM engines")
        self._db.executemany("INSERT INTO engines VALUES (?, ?)", sorted(states.items()))

    def engines(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, state FROM engines").fetchall())

    # specs
    def save_spec(self, pool: str, version: str, spec: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO specs VALUES (?, ?, ?)", (pool, version, json.dumps(spec)))

    def specs(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self._db.execute("SELECT pool, version, spec FROM specs").fetchall()
        return {(pool, version): json.loads(spec) for pool, version, spec in rows}
