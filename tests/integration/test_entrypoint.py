"""`drainctl entrypoint`: a real worker as its child, real RabbitMQ, a plain process and a real container."""

from __future__ import annotations

import re
import signal
import sys
import uuid
from datetime import datetime
from pathlib import Path

from celery import Celery

from tests.helpers import read_records, wait_until
from tests.integration.conftest import REPO_ROOT
from tests.integration.docker_support import IMAGE, docker, host_binds
from tests.integration.entrypoints import (
    UNREACHABLE,
    Entrypoint,
    assert_ran_once_to_the_end,
    entrypoint_env,
    send,
    started,
    worker_argv,
)


def test_sigterm_drains_the_worker_then_exits_with_its_code(
    broker_url: str, celery_app: Celery, tmp_path: Path, entrypoints: list[Entrypoint]
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    ep = Entrypoint(worker_argv(f"ep-{queue}", queue), entrypoint_env(broker_url, records), tmp_path / "ep.log")
    entrypoints.append(ep)
    ep.wait_ready()

    long_task = send(celery_app, queue, 5)
    prefetched = send(celery_app, queue, 1)
    wait_until(lambda: started(records, long_task), 20, "the long task to start")
    ep.popen.send_signal(signal.SIGTERM)
    code = ep.popen.wait(40)
    log = ep.log()
    assert code == 0, log[-3000:]

    assert_ran_once_to_the_end(records, long_task, prefetched)
    events = [d["event"] for d in ep.lines()]
    assert "cancel_consumer sent" in events, log[-3000:]
    assert "sending SIGTERM to the worker (warm shutdown)" in events
    snapshot = next(d for d in ep.lines() if d["event"] == "snapshot")
    assert snapshot["queues"] == [queue]
    assert set(snapshot["held"]) == {long_task, prefetched}
    # SIGTERM reached the worker only after both tasks had ended.
    end = max(r["time"] for r in read_records(records))
    sent = next(d for d in ep.lines() if d["event"] == "sending SIGTERM to the worker (warm shutdown)")
    assert datetime.fromisoformat(sent["timestamp"]).timestamp() >= end


def test_without_a_broker_sigterm_is_forwarded_and_the_running_task_still_finishes(
    broker_url: str, celery_app: Celery, tmp_path: Path, entrypoints: list[Entrypoint]
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    env = entrypoint_env(broker_url, records, drainctl_broker=UNREACHABLE)
    ep = Entrypoint(worker_argv(f"ep-{queue}", queue), env, tmp_path / "ep.log")
    entrypoints.append(ep)
    ep.wait_ready()

    task = send(celery_app, queue, 2)
    wait_until(lambda: started(records, task), 20, "the task to start")
    ep.popen.send_signal(signal.SIGTERM)
    assert ep.popen.wait(30) == 0, ep.log()[-3000:]
    assert_ran_once_to_the_end(records, task)  # Celery's warm shutdown
    assert any(d["event"].startswith("broker unreachable: forwarding SIGTERM") for d in ep.lines())


def test_other_signals_pass_through_and_the_exit_code_is_the_workers(
    tmp_path: Path, entrypoints: list[Entrypoint]
) -> None:
    # A stand-in "worker": exits 7 on SIGUSR1, after it has left an orphan behind for PID 1 to reap.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
        "subprocess.Popen(['true'])\n"
        "print(' ready.', flush=True)\n"
        "time.sleep(30)\n"
    )
    ep = Entrypoint([sys.executable, "-c", script], {"DRAINCTL_BROKER_URL": UNREACHABLE}, tmp_path / "ep.log")
    entrypoints.append(ep)
    ep.wait_ready(20)
    ep.popen.send_signal(signal.SIGUSR1)
    assert ep.popen.wait(20) == 7, ep.log()
    first = ep.lines()[0]
    assert first["event"] == "worker started" and first["hostname_injected"] is True
    assert any(d["event"] == "signal forwarded" and d["signal"] == "SIGUSR1" for d in ep.lines())


def test_docker_stop_drains_the_worker_in_its_container(
    broker_url: str, celery_app: Celery, tmp_path: Path, docker_available: None
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    name = f"drainctl-entrypoint-{uuid.uuid4().hex[:8]}"
    env = entrypoint_env(broker_url, records)
    args = ["run", "-d", "--name", name, "--network", "host", "-w", str(REPO_ROOT)]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    for bind in (*host_binds(), f"{records}:{records}:rw"):
        args += ["-v", bind]
    args += [IMAGE, sys.executable, "-m", "drainctl", "entrypoint", "--log-format", "json", "--",
             *worker_argv(f"ep-{queue}", queue)]
    try:
        run = docker(*args)
        assert run.returncode == 0, run.stderr

        def logs() -> str:
            out = docker("logs", name)
            return out.stdout + out.stderr

        wait_until(lambda: re.search(r" ready\.\s*$", logs(), re.MULTILINE), 60, "the worker to be ready")
        long_task = send(celery_app, queue, 5)
        prefetched = send(celery_app, queue, 1)
        wait_until(lambda: started(records, long_task), 20, "the long task to start")
        stop = docker("stop", "-t", "60", name, timeout=90)
        assert stop.returncode == 0, stop.stderr
        state = docker("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", name)
        assert state.stdout.split() == ["0", "false"], logs()[-3000:]
        assert_ran_once_to_the_end(records, long_task, prefetched)
        text = logs()
        assert '"pid1": true' in text
        assert "sending SIGTERM to the worker (warm shutdown)" in text, text[-3000:]
    finally:
        docker("rm", "-f", name)
