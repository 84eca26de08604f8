from __future__ import annotations

import stat
from pathlib import Path

from drainctl.core.rollout import Pin, Rollout
from drainctl.journal import Journal


def test_journal_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite"
    journal = Journal(path)
    journal.record_cancel("w1@h", "p-1")
    journal.record_cancel("w2@h", "p-1")
    journal.forget("w2@h")
    rollout = Rollout(id="p-1", pool="p", from_version="v1", to_version="v2", started_at=10.0,
                      requested_by="sighup", total=3)
    journal.record_rollout(rollout, wall_offset=1000.0)
    rollout.outcome, rollout.finished_at, rollout.detail = "succeeded", 20.0, "p runs v2"
    journal.record_rollout(rollout, wall_offset=1000.0)
    journal.save_pins({"p": Pin("v1", "v2", "rollout p-1 failed")})
    journal.save_spec("p", "v1", {"name": "p", "env": {"SECRET": "x"}})
    journal.save_canary({"p": ("v3", 1, False), "q": ("v9", 0, True)})
    journal.save_canary({"p": ("v3", 2, True)})
    journal.close()

    again = Journal(path)
    assert again.cancelled() == {"w1@h": "p-1"}
    (row,) = again.history()
    assert (row["outcome"], row["started_at"], row["finished_at"]) == ("succeeded", 1010.0, 1020.0)
    assert again.pins() == {"p": Pin("v1", "v2", "rollout p-1 failed")}
    assert again.canary() == {"p": ("v3", 2, True)}
    assert again.specs() == {("p", "v1"): {"name": "p", "env": {"SECRET": "x"}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
