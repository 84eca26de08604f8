"""Drains against a real RabbitMQ, real `celery worker` processes and the process runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from celery import Celery

from drainctl import http
from drainctl.core.drain import DrainRefused, Outcome
from drainctl.core.snapshot import TaskState
from tests.helpers import read_records
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import TOKEN, controller_with_runtime, held
from tests.integration.tasks import send, worker_spec

pytestmark = pytest.mark.anyio

CELERY_PYTHONS = {
    "celery-current": sys.executable,
    "celery-5.4": str(REPO_ROOT / ".venv-celery54" / "bin" / "python"),
}


@pytest.mark.parametrize(
    ("runtime", "celery"),
    [("process", "celery-current"), ("process", "celery-5.4"), ("docker", "celery-current")],
)
async def test_drain_waits_for_running_and_prefetched_and_hands_the_eta_task_over(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path, celery: str, runtime: str,
    request: pytest.FixtureRequest,
) -> None:
    if runtime == "docker":
        request.getfixturevalue("docker_available")
    python = CELERY_PYTHONS[celery]
    if not Path(python).exists():
        pytest.fail(f"{python} is missing: scripts/setup.sh creates it")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    async with controller_with_runtime(broker_url, tmp_path / "state", runtime) as ctl:
        spec = worker_spec(f"drained-{runtime}", queue, broker_url, records, python=python, runtime=runtime)
        await ctl.start_worker(spec)
        host = spec.hostname
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.queues == (queue,), 60)

        running = await send(celery_app, queue, 4)
        prefetched = await send(celery_app, queue, 1.5)
        eta = await send(celery_app, queue, 0.2, countdown=14)
        await ctl.wait_for(lambda: held(ctl, host, TaskState.RUNNING) == {running}
                           and held(ctl, host, TaskState.RESERVED) == {prefetched}
                           and held(ctl, host, TaskState.SCHEDULED) == {eta}, 20)

        other = await anyio.to_thread.run_sync(partial(
            celery_worker, "other", queues=[queue], python=python, record_dir=records))
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(other.hostname)) is not None and w.queues == (queue,), 20)

        drain = await ctl.request_drain(host)
        await ctl.wait_for(lambda: not drain.active, 60)
        assert drain.outcome is Outcome.RETIRED, drain.detail
        assert drain.reaction_s is not None
        assert host not in ctl.managed  # the process exited

        # The ETA task is handed to the other worker when the drained one closes its connection.
        seen: set[str] = set()

        def eta_ran_on_other() -> bool:
            worker = ctl.cluster.worker(other.hostname)
            if worker is not None and eta in worker.tasks:
                seen.add(eta)
                return False
            return bool(seen)

        await ctl.wait_for(eta_ran_on_other, 30)

    runs = read_records(records)
    starts = Counter(r["uuid"] for r in runs if r["event"] == "start")
    ends = Counter(r["uuid"] for r in runs if r["event"] == "end")
    assert starts == Counter({running: 1, prefetched: 1, eta: 1}), runs
    assert ends == starts, "a task started but never finished: it was interrupted"
    where = {r["uuid"]: r["hostname"] for r in runs}
    assert where[running] == host and where[prefetched] == host
    assert where[eta] == other.hostname


async def test_concurrent_drains_of_a_queues_last_two_consumers_refuse_the_second(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    first = await anyio.to_thread.run_sync(partial(celery_worker, "last-a", queues=[queue]))
    second = await anyio.to_thread.run_sync(partial(celery_worker, "last-b", queues=[queue]))
    async with controller_with_runtime(broker_url, tmp_path / "state") as ctl:
        for w in (first, second):
            await ctl.wait_for(lambda w=w: (x := ctl.cluster.worker(w.hostname)) is not None  # type: ignore[misc]
                               and x.queues == (queue,), 20)
        runner = await http.start(ctl, "127.0.0.1", 0, TOKEN)
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"

            def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
                env = {k: v for k, v in os.environ.items() if k != "DRAINCTL_API_TOKEN"}
                if token is not None:
                    env["DRAINCTL_API_TOKEN"] = token
                return subprocess.run([sys.executable, "-m", "drainctl", *args, "--url", url],
                                      capture_output=True, text=True, timeout=60, env=env)

            # Each worker runs a task, so the first drain is still under way when the second is asked for.
            tasks = [await send(celery_app, queue, 4) for _ in range(2)]
            await ctl.wait_for(lambda: held(ctl, first.hostname, TaskState.RUNNING) | held(
                ctl, second.hostname, TaskState.RUNNING) == set(tasks), 20)
            denied = await anyio.to_thread.run_sync(partial(cli, "drain", first.hostname, token="wrong"))
            assert denied.returncode == 2 and "bearer token" in denied.stderr
            assert ctl.drains.started_total == 0

            accepted = await anyio.to_thread.run_sync(cli, "drain", first.hostname)
            assert accepted.returncode == 0, accepted.stderr
            refused = await anyio.to_thread.run_sync(cli, "drain", second.hostname)
            assert refused.returncode == 3
            assert f"queue '{queue}' would have no consumer" in refused.stderr
            with pytest.raises(DrainRefused):
                await ctl.request_drain(second.hostname)

            # Joining the drain under way; the worker is not ours: remote shutdown, outcome shutdown-requested.
            waited = await anyio.to_thread.run_sync(cli, "drain", first.hostname, "--wait", "--json")
            assert waited.returncode == 0, waited.stderr
            document = orjson.loads(waited.stdout)
            assert document["outcome"] == "shutdown-requested"
            assert await anyio.to_thread.run_sync(first.wait, 30) == 0
        finally:
            await runner.cleanup()


async def test_two_controllers_never_act_on_one_worker(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    target = await anyio.to_thread.run_sync(partial(celery_worker, "leased", queues=[queue]))
    await anyio.to_thread.run_sync(partial(celery_worker, "spare", queues=[queue]))
    async with controller_with_runtime(broker_url, tmp_path / "a") as first, \
            controller_with_runtime(broker_url, tmp_path / "b") as second:
        host = target.hostname
        for ctl in (first, second):
            await ctl.wait_for(lambda c=ctl: (w := c.cluster.worker(host)) is not None  # type: ignore[misc]
                               and w.queues == (queue,), 20)
        task = await send(celery_app, queue, 4)
        await first.wait_for(lambda: task in held(first, host, TaskState.RUNNING)
                             or task in held(first, f"spare@{host.split('@')[1]}", TaskState.RUNNING), 20)
        drain_a = await first.request_drain(host, force=True)
        await first.wait_for(lambda: host in (first.leases.held if first.leases else set()), 10)
        drain_b = await second.request_drain(host, force=True)
        await second.wait_for(lambda: not drain_b.active, 10)
        assert drain_b.outcome is Outcome.CANCELLED and "lease" in drain_b.detail
        await first.wait_for(lambda: not drain_a.active, 30)
        assert drain_a.outcome is Outcome.SHUTDOWN_REQUESTED, drain_a.detail
        await first.wait_for(lambda: not (first.leases and first.leases.held), 10)


async def test_a_worker_killed_while_draining_ends_lost_with_exactly_the_tasks_it_held(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    async with controller_with_runtime(broker_url, tmp_path / "state") as ctl:
        spec = worker_spec("doomed", queue, broker_url, records)
        handle = await ctl.start_worker(spec)
        host = spec.hostname
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.queues == (queue,), 60)
        running = await send(celery_app, queue, 8)
        prefetched = await send(celery_app, queue, 0.5)
        await ctl.wait_for(lambda: held(ctl, host, TaskState.RUNNING) == {running}
                           and held(ctl, host, TaskState.RESERVED) == {prefetched}, 20)
        other = await anyio.to_thread.run_sync(partial(celery_worker, "survivor", queues=[queue], record_dir=records))
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(other.hostname)) is not None and w.queues == (queue,), 20)
        drain = await ctl.request_drain(host)
        await ctl.wait_for(lambda: drain.phase.value == "waiting", 10)
        os.killpg(int(handle.ref), signal.SIGKILL)
        await ctl.wait_for(lambda: not drain.active, 30)
        assert drain.outcome is Outcome.LOST
        assert set(drain.lost_tasks) == {running, prefetched}
        assert running in drain.detail and "acks-early" in drain.detail
        # Celery itself loses the running (acks-early) task; the prefetched one was never acked and
        # comes back to the queue, where the survivor runs it.
        seen: set[str] = set()

        def survivor_ran_it() -> bool:
            worker = ctl.cluster.worker(other.hostname)
            if worker is not None and prefetched in worker.tasks:
                seen.add(prefetched)
                return False
            return bool(seen)

        await ctl.wait_for(survivor_ran_it, 30)
    runs = read_records(records)
    assert [(r["event"], r["hostname"]) for r in runs if r["uuid"] == running] == [("start", host)]
    assert [(r["event"], r["hostname"]) for r in runs if r["uuid"] == prefetched] == [
        ("start", other.hostname), ("end", other.hostname)]


async def test_a_drain_estimates_its_end_from_the_runtimes_the_model_learnt(
    broker_url: str, celery_app: Celery, tmp_path: Path,
) -> None:
    """Three 1 s tasks teach the model the runtime of `taskapp.sleep`; a drain that waits for a fourth,
    just started, is estimated to end within a second; /status shows it; the estimate's error is counted
    once the drain ends. (Forced: the worker is its queue's only consumer.)"""
    from drainctl.status import drain_document

    queue = f"q-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records"
    records.mkdir()
    async with controller_with_runtime(broker_url, tmp_path / "state", "process") as ctl:
        spec = worker_spec("estimated", queue, broker_url, records, prefetch=1)
        await ctl.start_worker(spec)
        host = spec.hostname
        await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.queues == (queue,), 60)
        for _ in range(3):
            await send(celery_app, queue, 1.0)
        await ctl.wait_for(lambda: ctl.cluster.runtimes.learnt >= 3, 30)

        running = await send(celery_app, queue, 1.0)
        await ctl.wait_for(lambda: held(ctl, host, TaskState.RUNNING) == {running}, 20)
        worker = ctl.cluster.worker(host)
        assert worker is not None
        learnt = ctl.cluster.runtimes.samples(worker.tasks[running].name)
        drain = await ctl.request_drain(host, force=True)
        assert drain.estimated_end_at is not None
        remaining = drain.estimated_end_at - drain.started_at
        assert len(learnt) == 3 and 0.0 < remaining <= max(learnt), (remaining, learnt)
        document = drain_document(ctl, drain)
        assert document["estimated_duration_s"] == round(remaining, 3)
        assert document["estimated_remaining_s"] is not None
        await ctl.wait_for(lambda: not drain.active, 60)
        assert drain.outcome is Outcome.RETIRED, drain.detail
        assert sum(ctl.drains.estimate_error_buckets) == 1
        assert drain_document(ctl, drain)["estimated_remaining_s"] is None  # it ended: only the actual is left
