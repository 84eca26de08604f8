"""Smoke tests of the integration fixtures themselves: a real worker runs real tasks."""

from __future__ import annotations

import signal

from celery import Celery

from tests.helpers import read_records, wait_until
from tests.integration.conftest import WorkerFactory, rabbitmqctl
from tests.integration.taskapp import add, sleep


def test_vhost_exists(rabbit_vhost: str, broker_url: str) -> None:
    assert rabbit_vhost in rabbitmqctl("-q", "list_vhosts").split()
    assert broker_url.endswith("/" + rabbit_vhost)


def test_worker_runs_tasks_and_answers_ping(celery_worker: WorkerFactory, celery_app: Celery) -> None:
    w = celery_worker("smoke-a@%h", queues=["default"], events=True)
    assert w.running
    assert "@" in w.hostname and "%" not in w.hostname

    replies = wait_until(
        lambda: celery_app.control.inspect(destination=[w.hostname], timeout=2).ping(),
        timeout=20,
        what=f"a ping reply from {w.hostname}",
    )
    assert replies == {w.hostname: {"ok": "pong"}}

    add.apply_async((2, 3), queue="default")
    sleep.apply_async((0.2,), {"tag": "smoke"}, queue="default")

    wait_until(lambda: "taskapp.add[" in w.log() and "succeeded" in w.log(), 20, "taskapp.add to succeed")
    records = wait_until(
        lambda: [r for r in read_records(w.record_dir) if r["tag"] == "smoke"][1:],
        timeout=20,
        what="start and end records of taskapp.sleep",
    )
    start, end = (r for r in read_records(w.record_dir) if r["tag"] == "smoke")
    assert records == [end]
    assert (start["event"], end["event"]) == ("start", "end")
    assert start["uuid"] == end["uuid"]
    assert start["hostname"] == w.hostname
    assert end["monotonic"] - start["monotonic"] >= 0.2


def test_worker_warm_shutdown_and_kill(celery_worker: WorkerFactory) -> None:
    a = celery_worker("smoke-b@%h", events=False, concurrency=2)
    b = celery_worker("smoke-c@%h", pool="threads", concurrency=2)
    assert "-E" not in a.popen.args and "-E" in b.popen.args

    a.terminate()
    assert a.wait(30) == 0
    assert not a.running

    b.kill()
    assert b.wait(10) == -signal.SIGKILL
