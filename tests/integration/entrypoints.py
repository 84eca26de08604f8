"""`drainctl entrypoint` as the tests run it: a real worker as its child, in a process of its own.

`worker_argv` (a `celery worker` of `tests.integration.taskapp` on one queue), `entrypoint_env` (its
environment), `Entrypoint` (the subprocess, its JSON log lines, teardown by pid), `send`, `started` and
`assert_ran_once_to_the_end` (the `taskapp.sleep` records). Shared by test_entrypoint.py and
test_entrypoint_ready.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from tests.helpers import read_records, wait_until
from tests.integration.conftest import REPO_ROOT, TASKAPP_MODULE

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"


def worker_argv(name: str, queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", TASKAPP_MODULE, "worker", "-n", f"{name}@%h", "-Q", queue,
            "-c", "1", "-E", "--without-mingle", "--without-gossip", "-l", "INFO"]


def entrypoint_env(broker_url: str, records: Path, *, drainctl_broker: str | None = None) -> dict[str, str]:
    return {
        "DRAINCTL_TEST_BROKER_URL": broker_url,
        "DRAINCTL_BROKER_URL": drainctl_broker or broker_url,
        "TASKAPP_RECORD_DIR": str(records),
        "TASKAPP_PREFETCH": "2",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


class Entrypoint:
    """`python -m drainctl entrypoint [options] -- ...` as a subprocess, its output (and its worker's) in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, options: Sequence[str] = ()) -> None:
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "drainctl", "entrypoint", "--log-format", "json", *options, "--", *argv],
                cwd=REPO_ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and "event" in doc:
                    out.append(doc)
        return out

    def worker_pid(self) -> int | None:
        return next((d["pid"] for d in self.lines() if d["event"] == "worker started"), None)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"entrypoint exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return re.search(r" ready\.\s*$", self.log(), re.MULTILINE) is not None

        wait_until(ready, timeout, "the worker to be ready")

    def stop(self) -> None:
        """Teardown: SIGKILL the entrypoint and its worker's process group (both by pid), if still up."""
        pid = self.worker_pid()
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def send(app: Celery, queue: str, seconds: float) -> str:
    from tests.integration.taskapp import sleep

    return str(sleep.apply_async((seconds,), queue=queue).id)


def started(records: Path, task_id: str) -> bool:
    return any(r["uuid"] == task_id and r["event"] == "start" for r in read_records(records))


def assert_ran_once_to_the_end(records: Path, *task_ids: str) -> None:
    runs = read_records(records)
    starts = Counter(r["uuid"] for r in runs if r["event"] == "start")
    ends = Counter(r["uuid"] for r in runs if r["event"] == "end")
    assert starts == Counter(dict.fromkeys(task_ids, 1)), runs
    assert ends == starts, f"a task started but never finished: it was interrupted; {runs}"
