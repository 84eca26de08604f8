"""The live model against a real RabbitMQ and real `celery worker` processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aio_pika
import anyio
import orjson
import pytest
from celery import Celery

from drainctl import config
from drainctl.app import Controller
from drainctl.core.model import TaskEvents, WorkerState
from drainctl.core.snapshot import TaskState
from drainctl.status import build_status
from tests.integration.conftest import rabbitmqctl
from tests.integration.controllers import connection_pids, synced
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running_controller(broker_url: str, **controller: Any) -> AsyncIterator[Controller]:
    settings = config.from_mapping({
        "controller": {"id": f"test-{uuid.uuid4().hex[:8]}", **controller},
        "broker": {"reply_timeout_s": 1.0, "reconnect_max_backoff_s": 1.0},
        "events": {"queue_expires_s": 120},
    })
    ctl = Controller(settings, broker_url)
    async with synced(ctl):
        yield ctl


def queue_name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def ids(ctl: Controller, hostname: str, state: TaskState) -> set[str]:
    worker = ctl.cluster.worker(hostname)
    return set(worker.task_ids(state)) if worker else set()


async def inspect_ids(app: Celery, hostname: str) -> dict[TaskState, set[str]]:
    def ask() -> dict[TaskState, set[str]]:
        insp = app.control.inspect(destination=[hostname], timeout=2.0)
        active = (insp.active() or {}).get(hostname, [])
        reserved = (insp.reserved() or {}).get(hostname, [])
        scheduled = (insp.scheduled() or {}).get(hostname, [])
        return {
            TaskState.RUNNING: {t["id"] for t in active},
            TaskState.RESERVED: {t["id"] for t in reserved},
            TaskState.SCHEDULED: {t["request"]["id"] for t in scheduled},
        }

    return await anyio.to_thread.run_sync(ask)


async def test_model_equals_inspect_with_running_prefetched_and_eta_tasks(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(
        partial(celery_worker, "model", queues=[queue], concurrency=2, prefetch=2)
    )
    async with running_controller(broker_url) as ctl:
        host = worker.hostname
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.task_events is not
                           TaskEvents.UNKNOWN, 10)
        sent = [await send(celery_app, queue, 8) for _ in range(4)]
        etas = [await send(celery_app, queue, 0.1, countdown=120) for _ in range(2)]

        def quiet() -> bool:
            return (len(ids(ctl, host, TaskState.RUNNING)) == 2 and len(ids(ctl, host, TaskState.RESERVED)) == 2
                    and len(ids(ctl, host, TaskState.SCHEDULED)) == 2)

        await ctl.wait_for(quiet, 15)
        truth = await inspect_ids(celery_app, host)
        assert {s: ids(ctl, host, s) for s in TaskState} == truth
        assert ids(ctl, host, TaskState.RUNNING) | ids(ctl, host, TaskState.RESERVED) == set(sent)
        assert ids(ctl, host, TaskState.SCHEDULED) == set(etas)
        document = build_status(ctl)
        row = next(w for w in document["workers"] if w["hostname"] == host)
        assert (row["running"], row["reserved"], row["scheduled"]) == (2, 2, 2)
        assert row["queues"] == [queue]


async def test_sigkilled_worker_turns_silent_with_its_tasks_listed(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "killed", queues=[queue]))
    async with running_controller(broker_url, silent_after_s=3.0) as ctl:
        host = worker.hostname
        task = await send(celery_app, queue, 30)
        await ctl.wait_for(lambda: ids(ctl, host, TaskState.RUNNING) == {task}, 15)
        worker.kill()
        killed_at = anyio.current_time()
        await ctl.wait_for(lambda: ctl.cluster.workers[host].state is WorkerState.SILENT, 15)
        # window: max(silent_after_s, 2 x freq) = 4 s after the last heartbeat, plus one tick
        assert anyio.current_time() - killed_at < 4.0 + 2.0 + 1.5
        assert ids(ctl, host, TaskState.RUNNING) == {task}
        row = next(w for w in build_status(ctl)["workers"] if w["hostname"] == host)
        assert row["state"] == "silent"
        assert [t["id"] for t in row["tasks"]["running"]] == [task]


async def _close_and_come_back(ctl: Any, connection_name: str, celery_app: Celery, queue: str, tasks: int) -> list[str]:
    """The broker closes the controller's connection named `connection_name`; `tasks` tasks run meanwhile.
    Returns once the controller has reconnected and applied every one of them."""
    before = ctl.cluster.events_by_type.get("task-succeeded", 0)
    pids = await anyio.to_thread.run_sync(connection_pids, connection_name)
    assert len(pids) == 1
    connects = ctl.stats.connects
    await anyio.to_thread.run_sync(rabbitmqctl, "close_connection", pids[0], "test: closed by the broker")
    sent = [await send(celery_app, queue, 0.2) for _ in range(tasks)]
    await ctl.wait_for(lambda: ctl.stats.connects > connects, 20)
    await ctl.wait_for(lambda: ctl.cluster.events_by_type.get("task-succeeded", 0) - before == tasks, 20)
    return sent


async def test_connection_closed_by_broker_reconnects_and_loses_no_event(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "reconn", queues=[queue], concurrency=2))
    async with running_controller(broker_url) as ctl:
        host = worker.hostname
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.task_events is not
                           TaskEvents.UNKNOWN, 10)
        # While the controller is away, the durable event queue keeps what happens.
        sent = await _close_and_come_back(ctl, f"drainctl {ctl.settings.controller.id}", celery_app, queue, 6)
        for kind in ("task-received", "task-started"):
            assert ctl.cluster.events_by_type.get(kind, 0) >= 6
        assert ctl.cluster.workers[host].tasks == {}
        # The reconnect's reconcile is merged when its replies are in: it may still be under way here.
        await ctl.wait_for(lambda: ctl.stats.reconciles.get("reconnect", 0) >= 1, 20)
        assert len(set(sent)) == 6
        # The event stream has a connection of its own: losing it starts the session afresh too.
        await ctl.wait_for(lambda: ctl.stats.connected, 20)
        await _close_and_come_back(ctl, f"drainctl-events {ctl.settings.controller.id}", celery_app, queue, 3)
        assert ctl.cluster.workers[host].tasks == {}


async def test_garbage_on_the_event_exchange_is_counted_and_ingestion_goes_on(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "garbage", queues=[queue]))
    async with running_controller(broker_url) as ctl:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("celeryev")
            garbage = [
                (b"\xff\xfe\x00 not json", "application/json", "worker.heartbeat"),
                (b'{"type": "worker-heartbeat"}', "application/x-python-serialize", "worker.heartbeat"),
                (orjson.dumps([{"type": "task-started", "hostname": "x@y"}, 42]), "application/json", "task.multi"),
                (orjson.dumps({"type": "task-exploded", "hostname": "x@y"}), "application/json", "task.exploded"),
                (orjson.dumps({"type": "worker-heartbeat", "hostname": "x@y", "freq": "fast"}), "application/json",
                 "worker.heartbeat"),
                (b"[" * 100_000 + b"]" * 100_000, "application/json", "task.multi"),
            ]
            for body, content_type, key in garbage:
                await exchange.publish(aio_pika.Message(body, content_type=content_type), routing_key=key)
        await ctl.wait_for(lambda: sum(ctl.stats.malformed.values()) >= 7, 10)
        assert ctl.stats.malformed.get("invalid-json", 0) >= 1
        assert ctl.stats.malformed["wrong-content-type"] == 1
        assert ctl.stats.malformed["unknown-type"] == 1
        assert ctl.stats.malformed["wrong-type"] == 1
        assert ctl.stats.malformed["missing-field"] == 1
        assert ctl.stats.malformed["not-an-object"] == 1
        assert "x@y" not in ctl.cluster.workers
        # ingestion goes on: a real task is still followed end to end
        task = await send(celery_app, queue, 0.1)
        await ctl.wait_for(lambda: ctl.cluster.events_by_type.get("task-succeeded", 0) >= 1, 15)
        assert ids(ctl, worker.hostname, TaskState.RUNNING) == set()
        assert task


async def test_controller_started_while_tasks_run_sees_them_through_reconcile(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "late", queues=[queue], concurrency=2))
    running = [await send(celery_app, queue, 10) for _ in range(2)]
    eta = await send(celery_app, queue, 0.1, countdown=120)

    def started() -> bool:
        truth = anyio.from_thread.run(inspect_ids, celery_app, worker.hostname)
        return truth[TaskState.RUNNING] == set(running) and truth[TaskState.SCHEDULED] == {eta}

    deadline = anyio.current_time() + 15
    while not await anyio.to_thread.run_sync(started):
        assert anyio.current_time() < deadline, "the worker never started the tasks"
    async with running_controller(broker_url) as ctl:
        assert ids(ctl, worker.hostname, TaskState.RUNNING) == set(running)
        assert ids(ctl, worker.hostname, TaskState.SCHEDULED) == {eta}
        assert ctl.stats.reconciles["startup"] == 1


async def test_worker_without_task_events_gets_them_turned_on(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "noevents", queues=[queue], events=False))
    async with running_controller(broker_url) as ctl:
        host = worker.hostname
        await ctl.wait_for(lambda: ctl.cluster.workers[host].task_events is TaskEvents.ENABLED, 10)
        task = await send(celery_app, queue, 3)
        await ctl.wait_for(lambda: ids(ctl, host, TaskState.RUNNING) == {task}, 10)
        await ctl.wait_for(lambda: ctl.cluster.workers[host].tasks == {}, 15)
        assert "Events of group {task} enabled by remote" in worker.log()


async def test_status_cli_and_metrics_and_retired_workers_leave(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    from drainctl import http

    queue = queue_name()
    worker = await anyio.to_thread.run_sync(partial(celery_worker, "api", queues=[queue]))
    async with running_controller(broker_url, offline_retention_s=0) as ctl:
        runner = await http.start(ctl, "127.0.0.1", 0)
        try:
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}"
            await send(celery_app, queue, 0.1, countdown=120)
            host = worker.hostname
            await ctl.wait_for(lambda: ids(ctl, host, TaskState.SCHEDULED) != set(), 10)
            await ctl.wait_for(lambda: ctl.cluster.workers[host].last_heartbeat is not None, 10)

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "drainctl", *args, "--url", url],
                                      capture_output=True, text=True, timeout=30)

            result = await anyio.to_thread.run_sync(cli, "status", "--json")
            assert result.returncode == 0, result.stderr
            document = orjson.loads(result.stdout)
            row = next(w for w in document["workers"] if w["hostname"] == host)
            assert {k: type(row[k]) for k in ("running", "reserved", "scheduled")} == dict.fromkeys(
                ("running", "reserved", "scheduled"), int)
            assert row["scheduled"] == 1 and row["state"] == "online"
            assert isinstance(row["last_heartbeat_age_s"], float)
            assert "guest:guest" not in result.stdout
            table = await anyio.to_thread.run_sync(cli, "status")
            assert host in table.stdout and "online" in table.stdout

            def metrics() -> str:
                import urllib.request
                with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                    return str(response.read().decode())

            text = await anyio.to_thread.run_sync(metrics)
            assert f'drainctl_worker_tasks{{hostname="{host}",state="scheduled"}} 1.0' in text
            assert "guest:guest" not in text
            worker.terminate()
            await anyio.to_thread.run_sync(worker.wait, 30)
            await ctl.wait_for(lambda: host not in ctl.cluster.workers, 15)
            text = await anyio.to_thread.run_sync(metrics)
            assert host not in text
        finally:
            await runner.cleanup()


def test_unreachable_controller_gives_a_clear_error() -> None:
    result = subprocess.run([sys.executable, "-m", "drainctl", "status", "--url", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot reach the controller at http://127.0.0.1:9/status" in result.stderr
