"""The short soak: `bench/soak.py` with a few rollouts and short tasks, every bad count must be zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO_ROOT


def test_short_soak_loses_duplicates_interrupts_and_strands_nothing(tmp_path: Path) -> None:
    # Its own vhost, controller, pools and load (see the script's docstring); tasks of 0.1-3 s, some
    # with an ETA, some failing, some retried, across 3 rollouts of two pools.
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--rollouts", "3", "--max-task", "3",
         "--eta-max", "3", "--rate", "2", "--warmup", "3", "--settle", "60", "--rollout-timeout", "120",
         "--max-minutes", "5", "--work", str(tmp_path / "soak"), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert completed.stdout.strip(), completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    summary = {k: result[k] for k in ("lost", "duplicated", "interrupted", "unexpected", "stuck")}
    assert summary == {k: [] for k in summary}, (summary, completed.stderr[-4000:])
    assert completed.returncode == 0
    assert result["rollouts"] == 3
    assert result["rollout_outcomes"] == {"succeeded": 6}
    assert result["completed"] == result["sent"] > 20
    assert set(result["sent_by_kind"]) == {"plain", "eta", "failing", "retried"}
    assert result["max_workers_alive"] <= result["cap"]
