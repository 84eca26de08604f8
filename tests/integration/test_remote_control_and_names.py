"""Workers drainctl cannot command by name: remote control turned off, and two workers under one name.

Real RabbitMQ, real `celery worker` processes. Celery 5.4 runs with the kombu of its time (5.4.x,
`.venv-celery54`), whose pidbox queue is not exclusive: two workers started with the same `-n` share
it. Celery/kombu 5.7 declare it exclusive: the second one crashes at start.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stderr
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from celery import Celery

from drainctl import config, http, logs
from drainctl.app import Controller
from drainctl.core.drain import DrainRefused, Outcome
from drainctl.core.model import WorkerState
from drainctl.core.snapshot import TaskState
from drainctl.metrics import exposition, registry_for
from drainctl.status import build_status
from tests.integration.conftest import REPO_ROOT, WorkerProc
from tests.integration.controllers import synced

pytestmark = pytest.mark.anyio

CELERY54 = str(REPO_ROOT / ".venv-celery54" / "bin" / "python")
TOKEN = "test-token-" + uuid.uuid4().hex


Lines = Callable[[], list[dict[str, Any]]]


@contextmanager
def drainctl_logs() -> Iterator[Lines]:
    """drainctl's structured log lines (JSON) written inside the block (entered in the test itself:
    pytest swaps sys.stderr between a fixture's setup and the test)."""
    captured = io.StringIO()
    with redirect_stderr(captured):
        logs.configure("json", "info")

        def lines() -> list[dict[str, Any]]:
            out = []
            for line in captured.getvalue().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            return out

        yield lines


@asynccontextmanager
async def controller(broker_url: str, **settings: Any) -> AsyncIterator[tuple[Controller, str, Lines]]:
    """A controller, the URL of its API, and its log lines."""
    ctl = Controller(config.from_mapping({
        "controller": {"id": f"names-{uuid.uuid4().hex[:8]}", **settings},
        "broker": {"reply_timeout_s": 1.0, "reconnect_max_backoff_s": 1.0},
        "events": {"queue_expires_s": 120},
    }), broker_url)
    with drainctl_logs() as lines:
        async with synced(ctl):
            runner = await http.start(ctl, "127.0.0.1", 0, TOKEN)
            try:
                yield ctl, f"http://127.0.0.1:{runner.addresses[0][1]}", lines
            finally:
                await runner.cleanup()


async def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRAINCTL_API_TOKEN": TOKEN}
    return await anyio.to_thread.run_sync(partial(
        subprocess.run, [sys.executable, "-m", "drainctl", *args, "--url", url], capture_output=True, text=True,
        timeout=60, env=env))


def metrics(ctl: Controller) -> str:
    return exposition(registry_for(ctl), ctl).decode()


def status_of(ctl: Controller, hostname: str) -> dict[str, Any]:
    (worker,) = [w for w in build_status(ctl)["workers"] if w["hostname"] == hostname]
    return worker


def notices(lines: Lines, event: str, hostname: str) -> list[dict[str, Any]]:
    return [line for line in lines() if line.get("event") == event and line.get("worker") == hostname]


async def start(factory: Any, name: str, queue: str, **kw: Any) -> WorkerProc:
    worker: WorkerProc = await anyio.to_thread.run_sync(partial(factory, name, queues=[queue], **kw))
    return worker


async def known(ctl: Controller, hostname: str, queue: str) -> None:
    await ctl.wait_for(lambda: (w := ctl.cluster.worker(hostname)) is not None and w.queues == (queue,), 20)


# --- remote control turned off -------------------------------------------------------------------------------

async def test_a_worker_without_remote_control_is_seen_online_named_and_never_drained(
    broker_url: str, celery_worker: Any
) -> None:
    started = time.monotonic()
    queue = f"q-{uuid.uuid4().hex[:8]}"
    name = f"deaf-{uuid.uuid4().hex[:6]}@%h"
    async with controller(broker_url, no_remote_control_after_s=4.0) as (ctl, url, log_lines):
        spare = await start(celery_worker, f"spare-{uuid.uuid4().hex[:6]}@%h", queue)
        deaf = await start(celery_worker, name, queue, extra_env={"TASKAPP_REMOTE_CONTROL": "0"})
        host = deaf.hostname
        await known(ctl, spare.hostname, queue)
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.not_answering, 30)
        worker = ctl.cluster.worker(host)
        assert worker is not None and worker.state is WorkerState.ONLINE and worker.pid == deaf.pid
        assert worker.queues is None  # it never said what it consumes

        # The drain is refused, saying why and what to do, through the API and the command line.
        with pytest.raises(DrainRefused) as refused:
            await ctl.request_drain(host, force=True)
        assert not refused.value.overridable
        for fragment in ("does not answer remote control", "worker_enable_remote_control", "SIGTERM"):
            assert fragment in refused.value.reason
        drained = await cli(url, "drain", host)
        assert drained.returncode == 3, drained.stderr
        assert "does not answer remote control" in drained.stderr and "warm shutdown" in drained.stderr
        assert ctl.drains.started_total == 0

        # /status, `drainctl status`, the metrics and one warning say so; the other worker answers.
        assert status_of(ctl, host)["remote_control"] == "not answering"
        assert status_of(ctl, host)["remote_control_unanswered"] >= 3
        assert status_of(ctl, spare.hostname)["remote_control"] == "answering"
        shown = await cli(url, "status")
        assert shown.returncode == 0, shown.stderr
        (row,) = [line for line in shown.stdout.splitlines() if line.startswith(host + " ")]
        assert "NO-REMOTE-CONTROL" in row
        assert f"{host}: does not answer remote control" in shown.stdout
        text = metrics(ctl)
        assert f'drainctl_worker_remote_control_unanswered{{hostname="{host}"}} 1.0' in text
        assert f'drainctl_worker_remote_control_unanswered{{hostname="{spare.hostname}"}} 0.0' in text
        assert "drainctl_workers_not_answering_remote_control 1.0" in text
        (warning,) = notices(log_lines, "remote control unanswered", host)
        assert warning["level"] == "warning" and "worker_enable_remote_control" in warning["detail"]

        # What the refusal advises: a warm shutdown. drainctl sees it leave.
        deaf.terminate()
        assert await anyio.to_thread.run_sync(deaf.wait, 30) == 0
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is None or w.state is WorkerState.OFFLINE, 10)
    assert time.monotonic() - started < 60


# --- two workers under one name ------------------------------------------------------------------------------

async def test_two_celery_54_workers_sharing_a_name_are_flagged_refused_then_cleared_and_drained(
    broker_url: str, celery_worker: Any
) -> None:
    if not Path(CELERY54).exists():
        pytest.fail(f"{CELERY54} is missing: scripts/setup.sh creates it")
    started = time.monotonic()
    queue = f"q-{uuid.uuid4().hex[:8]}"
    name = f"twin-{uuid.uuid4().hex[:6]}@%h"
    # A 4 s silent window: a collision clears 8 s after the last word of the second process.
    async with controller(broker_url, silent_after_s=2.0) as (ctl, url, log_lines):
        spare = await start(celery_worker, f"spare-{uuid.uuid4().hex[:6]}@%h", queue, python=CELERY54)
        first = await start(celery_worker, name, queue, python=CELERY54)
        host = first.hostname
        await known(ctl, host, queue)
        second = await start(celery_worker, name, queue, python=CELERY54)
        assert "is already using this process mailbox" in second.log()  # kombu 5.4 shares it
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.collision, 20)
        worker = ctl.cluster.worker(host)
        assert worker is not None and set(worker.pids) >= {first.pid, second.pid}

        for force in (False, True):
            with pytest.raises(DrainRefused) as refused:
                await ctl.request_drain(host, force=force)
            assert "used by two live processes" in refused.value.reason and "unique -n" in refused.value.reason
        drained = await cli(url, "drain", host)
        assert drained.returncode == 3 and "used by two live processes" in drained.stderr, drained.stderr
        assert ctl.drains.started_total == 0
        assert f"pids {first.pid} and {second.pid}" in (status_of(ctl, host)["collision"] or "")
        shown = await cli(url, "status")
        (row,) = [line for line in shown.stdout.splitlines() if line.startswith(host + " ")]
        assert "COLLISION" in row
        text = metrics(ctl)
        assert f'drainctl_worker_hostname_collision{{hostname="{host}"}} 1.0' in text
        assert "drainctl_hostname_collisions 1.0" in text
        assert len(notices(log_lines, "hostname collision", host)) == 1

        # Stop the process the model holds as the name's own: the other one takes the name over.
        current, other = (first, second) if worker.pid == first.pid else (second, first)
        current.terminate()
        assert await anyio.to_thread.run_sync(current.wait, 30) == 0
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and not w.collision, 30)
        worker = ctl.cluster.worker(host)
        assert worker is not None and worker.pid == other.pid and worker.state is WorkerState.ONLINE
        assert status_of(ctl, host)["collision"] is None
        assert f'drainctl_worker_hostname_collision{{hostname="{host}"}} 0.0' in metrics(ctl)
        assert notices(log_lines, "hostname collision cleared", host)

        # Now the drain works: the survivor is told to shut down and does.
        await known(ctl, host, queue)
        drain = await ctl.request_drain(host)
        await ctl.wait_for(lambda: not drain.active, 30)
        assert drain.outcome is Outcome.SHUTDOWN_REQUESTED, drain.detail
        assert await anyio.to_thread.run_sync(other.wait, 30) == 0
        assert spare.running
    assert time.monotonic() - started < 60


async def test_with_celery_57_a_duplicate_crashes_at_start_and_the_first_worker_keeps_its_name(
    broker_url: str, celery_worker: Any, celery_app: Celery
) -> None:
    from tests.integration.taskapp import sleep

    started = time.monotonic()
    queue = f"q-{uuid.uuid4().hex[:8]}"
    name = f"dup-{uuid.uuid4().hex[:6]}@%h"
    async with controller(broker_url) as (ctl, _, log_lines):
        first = await start(celery_worker, name, queue)
        host = first.hostname
        await known(ctl, host, queue)
        result = await anyio.to_thread.run_sync(partial(sleep.apply_async, (8,), queue=queue))
        task = str(result.id)
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None
                           and w.task_ids(TaskState.RUNNING) == [task], 20)

        duplicate = await start(celery_worker, name, queue, wait_ready=False)
        code = await anyio.to_thread.run_sync(duplicate.wait, 60)
        assert code != 0 and "RESOURCE_LOCKED" in duplicate.log()
        # Whether it gets to announce itself (worker-online) before it crashes varies from run to run:
        # if it did, it also said worker-offline, and drainctl reports that once. Two heartbeats later
        # the first worker is exactly as it was.
        left = ctl.clock()
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None
                           and w.last_heartbeat is not None and w.last_heartbeat > left + 2.5, 10)
        heard = duplicate.pid in (ctl.cluster.workers[host].pids)
        assert len(notices(log_lines, "hostname contender left", host)) == int(heard)
        worker = ctl.cluster.worker(host)
        assert worker is not None and not worker.collision
        assert worker.pid == first.pid and worker.state is WorkerState.ONLINE and worker.queues == (queue,)
        assert worker.task_ids(TaskState.RUNNING) == [task]
        assert not notices(log_lines, "hostname collision", host)
        assert not notices(log_lines, "worker restarted", host) and not notices(log_lines, "tasks lost", host)
        assert "drainctl_hostname_collisions 0.0" in metrics(ctl)

        # And it drains as usual, waiting for its task.
        drain = await ctl.request_drain(host, force=True)
        await ctl.wait_for(lambda: not drain.active, 30)
        assert drain.outcome is Outcome.SHUTDOWN_REQUESTED, drain.detail
        assert await anyio.to_thread.run_sync(first.wait, 30) == 0
    assert time.monotonic() - started < 60


async def test_a_new_version_without_remote_control_aborts_the_rollout_and_is_left_to_its_operator(
    broker_url: str, tmp_path: Path
) -> None:
    from drainctl.status import pools_document
    from tests.integration.pools import PoolHarness, running

    started = time.monotonic()
    harness = PoolHarness(tmp_path, broker_url)

    def write(version: str, extra_env: str = "") -> None:
        # Started consuming (quiet start off): a worker that may hold pool messages is never just stopped.
        # (Started quiet, it holds none and is stopped: test_rollout's backlog test.)
        harness.write(version, extra_env=extra_env, extra_pool="quiet_start = false\n")
        text = harness.path.read_text().replace("replicas = 3", "replicas = 1")
        harness.path.write_text(text.replace("[controller]\n", "[controller]\nno_remote_control_after_s = 4.0\n"))

    write("v1")
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: [m.ready_at is not None for m in ctl.fleet.of_pool("p")] == [True], 60)
        (old,) = [m.hostname for m in ctl.fleet.of_pool("p")]
        write("v2", extra_env=', TASKAPP_REMOTE_CONTROL = "0"')
        await ctl.reload("test")
        await ctl.wait_for(lambda: any(r.outcome == "failed" for r in ctl.fleet.history), 40)
        (rollout,) = ctl.fleet.history
        assert "does not answer remote control" in rollout.detail and "readiness gate" in rollout.detail
        (new,) = [m.hostname for m in ctl.fleet.of_pool("p") if m.version == "v2"]
        assert new in rollout.detail

        # The failed worker cannot be drained: it is reported blocked, not killed; v1 keeps serving.
        await ctl.wait_for(lambda: new in ctl.fleet.blocked, 10)
        assert "SIGTERM" in ctl.fleet.blocked[new]
        (pool,) = pools_document(ctl)
        assert pool["pinned"] and pool["version_target"] == "v1"
        assert {w["hostname"]: w["blocked"] for w in pool["workers"]} == {old: None, new: ctl.fleet.blocked[new]}
        assert not ctl.drains.active and ctl.drains.started_total == 0
        assert new in ctl.managed and ctl.fleet.members[old].ready_at is not None

        # Its operator does what the report says: a warm shutdown. The pool is back to v1 alone.
        os.kill(int(ctl.managed[new].ref), signal.SIGTERM)
        await ctl.wait_for(lambda: new not in ctl.fleet.members and new not in ctl.fleet.blocked, 30)
        assert [m.hostname for m in ctl.fleet.of_pool("p")] == [old]
    assert time.monotonic() - started < 60
