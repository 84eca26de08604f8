"""`drainctl run` as a real process: SIGKILL mid-rollout and restart, and a burst of SIGHUPs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from celery import Celery

from tests.helpers import read_records, wait_until
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import stop_workers
from tests.integration.pools import WORKER, PoolHarness
from tests.integration.tasks import send

TOKEN = "controller-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControllerProcess:
    def __init__(self, harness: PoolHarness, tmp_path: Path) -> None:
        self.harness = harness
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DRAINCTL_BROKER_URL": self.harness.broker_url, "DRAINCTL_API_TOKEN": TOKEN}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "drainctl", "run", "--config", str(self.harness.path), "--http",
                 f"127.0.0.1:{self.port}", "--log-format", "json"],
                env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
        wait_until(lambda: self._healthy(), 30, "the controller's /healthz")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return bool(json.loads(response.read())["synced"])
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/status", timeout=10) as response:
            return dict(json.loads(response.read()))

    def pool(self) -> dict[str, Any]:
        return dict(self.status()["pools"][0])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def controller_process(tmp_path: Path, broker_url: str) -> Iterator[ControllerProcess]:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1")
    controller = ControllerProcess(harness, tmp_path)
    try:
        yield controller
    finally:
        controller.stop()
        anyio.run(stop_workers, harness.state_dir, harness.controller_id)


def settled(controller: ControllerProcess, version: str) -> Callable[[], bool]:
    def check() -> bool:
        pool = controller.pool()
        return (pool["version_target"] == version and pool["ready"] == 3 and pool["alive"] == 3
                and pool["rollout"] is None and all(w["version"] == version for w in pool["workers"]))
    return check


def _starting(controller: ControllerProcess) -> bool:
    # On its way, not judged yet: "standby" when started quiet (the default), "starting" otherwise.
    return any(w["version"] == "v2" and w["status"] in ("starting", "standby") for w in controller.pool()["workers"])


def _in_drain_phase(*phases: str) -> Callable[[ControllerProcess], bool]:
    def check(controller: ControllerProcess) -> bool:
        return any(w["drain"] and w["drain"]["phase"] in phases for w in controller.pool()["workers"])
    return check


SLOW_START = ["/bin/sh", "-c", 'sleep 2; exec "$0" "$@"', *WORKER]  # widens the window before worker-online
CRASH_LOOP = [sys.executable, "-c", "import sys, time; time.sleep(2); sys.exit(3)"]

# (the moment of the SIGKILL, the v2 command, the version the pool must end at)
PHASES = {
    "new-worker-starting": (_starting, SLOW_START, "v2"),
    "old-worker-draining": (_in_drain_phase("cancelling", "confirming-queues", "waiting", "verifying"), None, "v2"),
    "old-worker-retiring": (_in_drain_phase("retiring", "stopping"), None, "v2"),
    "bad-version-starting": (_starting, CRASH_LOOP, "v1"),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_sigkilled_controller_restarted_at_any_rollout_phase_finishes_it(
    controller_process: ControllerProcess, celery_app: Celery, phase: str
) -> None:
    reached, command, final = PHASES[phase]
    controller = controller_process
    harness = controller.harness
    slow_shutdown = ', TASKAPP_SHUTDOWN_DELAY = "3"'  # widens the window between `shutdown` and the exit
    harness.write("v1", extra_env=slow_shutdown)
    controller.start()
    wait_until(settled(controller, "v1"), 90, "the pool at v1")
    tasks = [anyio.run(send, celery_app, harness.queue, 3.0) for _ in range(6)]
    harness.write("v2", command=command, extra_env=slow_shutdown, ready_timeout=20)
    controller.signal(signal.SIGHUP)
    wait_until(lambda: reached(controller), 60, f"the rollout to reach {phase}", interval=0.02)
    controller.kill()  # its journal holds the intents; the workers run on in their own sessions
    controller.start()
    wait_until(settled(controller, final), 150, f"the restarted controller to settle at {final}")
    history = controller.pool()["history"]
    outcome = "succeeded" if final == "v2" else "failed"
    assert any(h["to_version"] == "v2" and h["outcome"] == outcome for h in history), history
    assert controller.pool()["alive"] == 3
    members = {w["hostname"] for w in controller.pool()["workers"]}
    unmanaged = [w["hostname"] for w in controller.status()["workers"]
                 if w["state"] in ("online", "silent") and w["hostname"] not in members
                 and (harness.queue in (w["queues"] or []) or w["hostname"].startswith("p-"))]
    assert unmanaged == [], f"workers of the pool that drainctl does not manage: {unmanaged}"

    def all_done() -> bool:
        runs = read_records(harness.records)
        return sum(1 for r in runs if r["event"] == "end" and r["uuid"] in tasks) == len(tasks)

    wait_until(all_done, 60, "every task to finish")
    runs = read_records(harness.records)
    starts = Counter(r["uuid"] for r in runs if r["event"] == "start" and r["uuid"] in tasks)
    assert starts == Counter(dict.fromkeys(tasks, 1)), "a task was lost or ran twice"


def test_twenty_sighups_in_a_second_end_at_the_last_version_within_the_cap(
    controller_process: ControllerProcess,
) -> None:
    controller = controller_process
    harness = controller.harness
    controller.start()
    wait_until(settled(controller, "v1"), 90, "the pool at v1")
    for i in range(2, 22):
        harness.write(f"v{i}")
        controller.signal(signal.SIGHUP)
        anyio.run(anyio.sleep, 0.04)
    max_alive = 0

    def finished() -> bool:
        nonlocal max_alive
        pool = controller.pool()
        max_alive = max(max_alive, pool["alive"])
        return settled(controller, "v21")()

    wait_until(finished, 180, "the pool at v21", interval=0.1)
    assert max_alive <= 4
    log = controller.log.read_text()
    assert log.count('"configuration reloaded"') >= 1
    assert '"rollout superseded"' in log or log.count('"rollout succeeded"') == 1
    # `drainctl rollout` with no pool change but an edit of a section read only at start says so.
    harness.path.write_text(harness.path.read_text().replace("reply_timeout_s = 1.0", "reply_timeout_s = 3.0"))
    result = subprocess.run([sys.executable, "-m", "drainctl", "rollout", "--url", controller.url],
                            env={**os.environ, "DRAINCTL_API_TOKEN": TOKEN}, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "config reloaded; no pool changed"
    assert result.stderr.strip() == "changes to [broker] take effect when drainctl restarts"
