"""`drainctl drain` keeps its word, against a real RabbitMQ and real Celery workers: `--wait --timeout`
gives up with exit 4, a temporary refusal is retried into a drain, and an API drain of a pool member
gets its pool's drain policy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

from drainctl import http
from drainctl.app import Controller
from drainctl.core.drain import Outcome
from drainctl.core.snapshot import TaskState
from tests.helpers import read_records, wait_until
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import TOKEN, controller_with_runtime, held
from tests.integration.pools import CONFIG, PoolHarness, pool_at, running
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def api_of(ctl: Controller) -> AsyncIterator[str]:
    runner = await http.start(ctl, "127.0.0.1", 0, TOKEN)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def cli_command(url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "drainctl", *args, "--url", url], {**os.environ, "DRAINCTL_API_TOKEN": TOKEN}


def cli(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    argv, env = cli_command(url, *args)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env, cwd=REPO_ROOT)
    return done, time.monotonic() - started


def start_cli(errors: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """The command in the background: stdout to a pipe, stderr to `errors` (to watch while it runs)."""
    argv, env = cli_command(url, *args)
    with errors.open("w") as stderr:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO_ROOT)


def consumes(ctl: Controller, hostname: str, queue: str) -> bool:
    worker = ctl.cluster.worker(hostname)
    return worker is not None and worker.queues is not None and queue in worker.queues


async def test_wait_with_a_timeout_gives_up_with_4_while_a_long_task_runs_and_the_drain_goes_on(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    workers = [await anyio.to_thread.run_sync(partial(celery_worker, f"{name}-{uuid.uuid4().hex[:6]}",
                                                      queues=[queue])) for name in ("long-a", "long-b")]
    async with controller_with_runtime(broker_url, tmp_path / "state") as ctl, api_of(ctl) as url:
        for w in workers:
            await ctl.wait_for(partial(consumes, ctl, w.hostname, queue), 20)
        task = await send(celery_app, queue, 10)
        await ctl.wait_for(lambda: any(task in held(ctl, w.hostname, TaskState.RUNNING) for w in workers), 20)
        busy = next(w for w in workers if task in held(ctl, w.hostname, TaskState.RUNNING))

        done, took = await anyio.to_thread.run_sync(
            partial(cli, url, "drain", busy.hostname, "--wait", "--timeout", "2"))
        assert done.returncode == 4, done.stderr
        assert 2 <= took < 8
        assert f"drain of {busy.hostname} started" in done.stdout
        assert re.search(r"gave up waiting after 2\.\ds \(--timeout 2\): the drain of \S+ goes on", done.stderr), \
            done.stderr
        drain = ctl.drains.get(busy.hostname)
        assert drain is not None and drain.active
        # The same --timeout is the drain's deadline, counted from the command's start.
        assert drain.policy.deadline_s is not None and drain.policy.deadline_s <= 2
        await ctl.wait_for(lambda: drain.past_deadline, 5)
        # Giving up waiting interrupts nothing: the drain ends when the task does.
        await ctl.wait_for(lambda: not drain.active, 40)
        assert drain.outcome is Outcome.SHUTDOWN_REQUESTED, drain.detail
    runs = read_records(celery_worker.record_dir)
    assert Counter((r["event"], r["hostname"]) for r in runs if r["uuid"] == task) == Counter(
        {("start", busy.hostname): 1, ("end", busy.hostname): 1})


async def test_a_drain_asked_before_the_worker_is_seen_is_retried_into_a_drain(
    broker_url: str, celery_worker: Any, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    spare = await anyio.to_thread.run_sync(partial(celery_worker, f"spare-{uuid.uuid4().hex[:6]}", queues=[queue]))
    name = f"late-{uuid.uuid4().hex[:6]}"
    hostname = host_format(default_nodename(name))  # as celery_worker names it
    async with controller_with_runtime(broker_url, tmp_path / "state") as ctl, api_of(ctl) as url:
        await ctl.wait_for(partial(consumes, ctl, spare.hostname, queue), 20)
        errors = tmp_path / "cli.stderr"
        started = time.monotonic()
        proc = await anyio.to_thread.run_sync(partial(
            start_cli, errors, url, "drain", hostname, "--wait", "--timeout", "60"))
        try:
            await anyio.to_thread.run_sync(partial(
                wait_until, lambda: "refused for now: unknown worker" in errors.read_text(), 30,
                "the command's first (temporary) refusal"))
            late = await anyio.to_thread.run_sync(partial(celery_worker, name, queues=[queue]))
            assert late.hostname == hostname
            out, _ = await anyio.to_thread.run_sync(partial(proc.communicate, timeout=60))
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, errors.read_text()
        assert f"drain of {hostname} started" in out and f"{hostname}: shutdown-requested" in out
        # Retried, never refused for good; on stderr a line per reason (unknown worker, maybe its queues not
        # known yet) and one every 5 s while it stays the same, not one per attempt. A single drain.
        lines = errors.read_text().splitlines()
        assert lines and all(line.startswith("drainctl: refused for now: ") for line in lines), lines
        assert len(lines) <= 2 + took / 5, lines
        drain = ctl.drains.get(hostname)
        assert drain is not None and drain.outcome is Outcome.SHUTDOWN_REQUESTED, drain
        assert ctl.drains.started_total == 1
        assert await anyio.to_thread.run_sync(late.wait, 30) == 0


class PolicyHarness(PoolHarness):
    """Pool "p" with a drain policy of its own, none of it the defaults."""

    template = CONFIG.replace("stop_timeout_s = 30\n", 'stop_timeout_s = 33\nretire_grace_s = 7\n'
                              'drain_deadline_s = 900\non_drain_deadline = "escalate"\n')
    prefix = "policy"


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
        return dict(json.loads(response.read()))


async def test_an_api_drain_of_a_pool_member_gets_the_pools_drain_policy(broker_url: str, tmp_path: Path) -> None:
    harness = PolicyHarness(tmp_path, broker_url)
    harness.write("v1")
    async with running(harness) as ctl, api_of(ctl) as url:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        first, second = (m.hostname for m in ctl.fleet.of_pool("p")[:2])
        # The command line with a deadline of its own, and the API with none.
        done, _ = await anyio.to_thread.run_sync(partial(cli, url, "drain", first, "--timeout", "50"))
        assert done.returncode == 0, done.stderr
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/drain", json={"hostname": second}, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 202, await response.text()
        drains = {d["hostname"]: d for d in (await anyio.to_thread.run_sync(_status, url))["drains"]}
        pools = {"on_deadline": "escalate", "stop_timeout_s": 33, "retire_grace_s": 7}
        assert {k: drains[first][k] for k in pools} == pools and 40 < drains[first]["deadline_s"] <= 50
        assert {k: drains[second][k] for k in pools} == pools and drains[second]["deadline_s"] == 900
        for hostname in (first, second):
            drain = ctl.drains.get(hostname)
            assert drain is not None
            await ctl.wait_for(lambda d=drain: not d.active, 60)  # type: ignore[misc]
            assert drain.outcome is Outcome.RETIRED, drain.detail
