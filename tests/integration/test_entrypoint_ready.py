"""`drainctl entrypoint --ready-file`: the readiness probe of a worker pod, against a real worker and RabbitMQ.

The worker is held (tests/integration/taskapp.py, ``TASKAPP_CONSUME_GATE``) after its worker-online and
before its event loop starts: online, but consuming nothing. The probe is the command a pod runs,
`drainctl entrypoint-ready --ready-file PATH`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from tests.helpers import read_records, wait_until
from tests.integration.entrypoints import (
    UNREACHABLE,
    Entrypoint,
    assert_ran_once_to_the_end,
    entrypoint_env,
    send,
    started,
    worker_argv,
)

DRAINCTL = str(Path(sys.executable).with_name("drainctl"))  # the console script, as the kubelet runs it



def probe(ready: Path) -> int:
    result = subprocess.run([DRAINCTL, "entrypoint-ready", "--ready-file", str(ready)], capture_output=True,
                            text=True, timeout=30, check=False)
    return result.returncode


def consumers(app: Celery, queue: str) -> int:
    with app.connection_for_write() as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).consumer_count)


def events(ep: Entrypoint, name: str) -> list[dict[str, Any]]:
    return [line for line in ep.lines() if line["event"] == name]


def up(ep: Entrypoint) -> bool:
    if ep.popen.poll() is not None:
        raise AssertionError(f"entrypoint exited with {ep.popen.returncode}:\n{ep.log()[-3000:]}")
    return True


def ended(records: Path, task_id: str) -> bool:
    return any(r["uuid"] == task_id and r["event"] == "end" for r in read_records(records))


def test_ready_once_the_worker_consumes_and_not_ready_from_the_moment_the_drain_starts(
    broker_url: str, celery_app: Celery, tmp_path: Path, entrypoints: list[Entrypoint]
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    ready = tmp_path / "ready"
    ready.write_text("left by the previous container\n")  # an emptyDir outlives its containers
    gate = tmp_path / "gate"
    env = {**entrypoint_env(broker_url, records), "TASKAPP_CONSUME_GATE": str(gate)}
    ep = Entrypoint(worker_argv(f"ready-{queue}", queue), env, tmp_path / "ep.log",
                    options=["--ready-file", str(ready)])
    entrypoints.append(ep)

    # Online (its worker-online is out), its consumer set up, its event loop held: it consumes nothing.
    wait_until(lambda: up(ep) and Path(f"{gate}.reached").exists(), 60, "the worker to be held at the gate")
    unanswered = len(events(ep, "the worker does not consume yet"))
    wait_until(lambda: up(ep) and len(events(ep, "the worker does not consume yet")) > unanswered, 30,
               "the entrypoint to ask the held worker")
    assert probe(ready) == 1
    assert consumers(celery_app, queue) == 0

    gate.touch()
    wait_until(lambda: up(ep) and ready.exists(), 60, "the ready file")
    assert probe(ready) == 0
    assert consumers(celery_app, queue) == 1  # ready means: it consumes
    assert events(ep, "ready: the worker consumes")[0]["queues"] == [queue]

    task = send(celery_app, queue, 6)
    wait_until(lambda: started(records, task), 20, "the task to start")
    ep.popen.send_signal(signal.SIGTERM)
    wait_until(lambda: not ready.exists(), 5, "the ready file to go")
    assert probe(ready) == 1
    assert not ended(records, task), "not ready only once the task had ended: too late"

    assert ep.popen.wait(40) == 0, ep.log()[-3000:]
    assert_ran_once_to_the_end(records, task)
    order = [line["event"] for line in ep.lines()]
    # Not ready first, then the drain: its broker connection, its cancel_consumer.
    assert order.index("not ready: ready file removed") < order.index("cancel_consumer sent")
    assert events(ep, "not ready: ready file removed")[0]["reason"] == "SIGTERM"
    assert not ready.exists()


def test_without_a_broker_it_stays_not_ready_and_still_stops(tmp_path: Path, entrypoints: list[Entrypoint]) -> None:
    # A stand-in "worker" that exits 0 on SIGTERM; the broker is unreachable for the watch and the drain.
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print(' ready.', flush=True)\n"
        "time.sleep(60)\n"
    )
    ready = tmp_path / "ready"
    ready.write_text("left by the previous container\n")
    ep = Entrypoint([sys.executable, "-c", script], {"DRAINCTL_BROKER_URL": UNREACHABLE}, tmp_path / "ep.log",
                    options=["--ready-file", str(ready)])
    entrypoints.append(ep)
    wait_until(lambda: up(ep) and events(ep, "readiness watch: broker session failed, retrying"), 30,
               "the readiness watch to fail and retry")
    ep.wait_ready(20)
    assert probe(ready) == 1  # the stale file went at start
    ep.popen.send_signal(signal.SIGTERM)
    assert ep.popen.wait(30) == 0, ep.log()
    assert any(line["event"].startswith("broker unreachable: forwarding SIGTERM") for line in ep.lines())
    assert not ready.exists()
