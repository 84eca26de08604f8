"""Canary rollouts of a real pool under load: a failing or slower version is aborted at its first step, a
healthy one is promoted through every step; no task is lost, duplicated or interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path

import anyio
import pytest
from celery import Celery

from drainctl import http
from drainctl.app import Controller
from drainctl.core.rollout import Rollout
from drainctl.runtime.process import ProcessRuntime
from tests.helpers import read_records
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import TOKEN, synced
from tests.integration.pools import PoolHarness, pool_at, running
from tests.integration.tasks import all_ended

pytestmark = pytest.mark.anyio

# Steps of 1 worker, then the whole pool of 3: one hold.
ONE_STEP = "canary = { steps = [1], min_tasks = 30, bake_s = 2, max_wait_s = 120 }\n"
NEVER_ENOUGH = "canary = { steps = [1], min_tasks = 100000, bake_s = 0, max_wait_s = 600 }\n"
TWO_STEPS = 'canary = { steps = [1, "50%"], min_tasks = 30, bake_s = 2, max_wait_s = 120 }\n'


async def send_work(app: Celery, queue: str, seconds: float) -> str:
    from tests.integration.taskapp import work

    result = await anyio.to_thread.run_sync(partial(work.apply_async, (seconds,), queue=queue))
    return str(result.id)


async def roll_out_under_load(harness: PoolHarness, ctl: Controller, app: Celery, v2_env: str, extra_pool: str,
                              until_outcome: str) -> tuple[list[str], list[int]]:
    """Roll the pool to v2 (with `v2_env`) while tasks flow; the task ids sent and, at each hold, its step."""
    sent: list[str] = []
    holds: list[int] = []

    def settled() -> bool:
        hold = ctl.fleet.canary.holds.get("p")
        if hold is not None and hold.started_at is not None and (not holds or holds[-1] != hold.step):
            holds.append(hold.step)
        ended = [r for r in ctl.fleet.history if r.to_version == "v2" and r.outcome == until_outcome]
        return bool(ended) and pool_at(ctl, "v2" if until_outcome == "succeeded" else "v1")

    async with anyio.create_task_group() as tg:
        async def load() -> None:
            with anyio.move_on_after(150):  # bounded in time and count
                for i in range(3000):
                    sent.append(await send_work(app, harness.queue, 0.05 + (i % 4) * 0.05))
                    await anyio.sleep(0.05)

        tg.start_soon(load)
        harness.write("v2", extra_env=v2_env, extra_pool=extra_pool)
        await ctl.reload("test")
        await ctl.wait_for(settled, 150)
        tg.cancel_scope.cancel()
    await all_ended(harness.records, sent)
    return sent, holds


def canary_rollout(ctl: Controller) -> Rollout:
    """The rollout to v2 (an aborted one is followed by the way back to v1)."""
    return next(r for r in ctl.fleet.history if r.to_version == "v2")


def check_every_task_ran_once(records_dir: Path, sent: list[str]) -> Counter[str]:
    """Every task sent started once and ended (0 lost, 0 duplicated, 0 interrupted); ends per version.
"""
    records = read_records(records_dir)
    starts = Counter(r["uuid"] for r in records if r["event"] == "start")
    ends = {r["uuid"]: r for r in records if r["event"] == "end"}
    assert len(sent) > 20
    assert [u for u in sent if starts[u] != 1] == [], "lost or duplicated"
    assert [u for u in sent if u not in ends] == [], "interrupted"
    return Counter(r["hostname"].split("-")[1] for r in ends.values())


async def test_a_version_failing_a_fifth_of_its_tasks_is_aborted_at_the_first_step(
    broker_url: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=ONE_STEP)
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        sent, holds = await roll_out_under_load(harness, ctl, celery_app, ', TASKAPP_WORK_FAIL_EVERY = "5"',
                                                ONE_STEP, "failed")
        detail = canary_rollout(ctl).detail
        assert "canary analysis: taskapp.work: " in detail and "failed on the new version" in detail, detail
        assert holds == [0]
    by_version = check_every_task_ran_once(harness.records, sent)
    v2_hosts = {r["hostname"] for r in read_records(harness.records) if "-v2-" in r["hostname"]}
    assert len(v2_hosts) == 1 and by_version["v2"] >= 10, (v2_hosts, by_version)


async def test_a_version_three_times_slower_is_aborted(broker_url: str, celery_app: Celery, tmp_path: Path) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=ONE_STEP)
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        sent, _ = await roll_out_under_load(harness, ctl, celery_app, ', TASKAPP_WORK_SLOWDOWN = "3"', ONE_STEP,
                                            "failed")
        detail = canary_rollout(ctl).detail
        assert "canary analysis: taskapp.work: runtime p50 " in detail, detail
    check_every_task_ran_once(harness.records, sent)


async def test_a_healthy_version_is_promoted_through_every_step(
    broker_url: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=TWO_STEPS)
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        sent, holds = await roll_out_under_load(harness, ctl, celery_app, "", TWO_STEPS, "succeeded")
        assert holds == [0, 1]  # held with 1 new worker, then with 2; the pool of 3 then whole on v2
        assert canary_rollout(ctl).detail == "p runs v2"
    by_version = check_every_task_ran_once(harness.records, sent)
    assert by_version["v2"] > 30


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRAINCTL_API_TOKEN": TOKEN, "USER": "ops"}
    return subprocess.run([sys.executable, "-m", "drainctl", "rollout", "--url", url, *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO_ROOT)


def holding(ctl: Controller, version: str) -> bool:
    hold = ctl.fleet.canary.holds.get("p")
    return hold is not None and hold.to_version == version and hold.started_at is not None


async def test_an_operator_sees_the_hold_and_promotes_or_aborts_it_from_the_cli(
    broker_url: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=NEVER_ENOUGH)
    sent: list[str] = []
    async with running(harness) as ctl:
        runner = await http.start(ctl, "127.0.0.1", 0, TOKEN)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
            async with anyio.create_task_group() as tg:
                async def load() -> None:
                    with anyio.move_on_after(120):
                        for i in range(2000):
                            sent.append(await send_work(celery_app, harness.queue, 0.05 + (i % 4) * 0.05))
                            await anyio.sleep(0.1)

                tg.start_soon(load)
                harness.write("v2", extra_pool=NEVER_ENOUGH)
                await ctl.reload("test")
                await ctl.wait_for(lambda: holding(ctl, "v2") and ctl.fleet.canary.holds["p"].seen() >= 3, 90)
                shown = (await anyio.to_thread.run_sync(cli, url, "status")).stdout
                assert "canary step 1/2 (1 new): holding" in shown and "/100000 tasks" in shown, shown
                assert "taskapp.work: new " in shown and " | old " in shown, shown
                metrics = await anyio.to_thread.run_sync(
                    lambda: urllib.request.urlopen(url + "/metrics", timeout=10).read().decode())
                assert 'drainctl_canary_step{pool="p"} 1.0' in metrics
                promoted = await anyio.to_thread.run_sync(cli, url, "promote", "--pool", "p")
                assert promoted.returncode == 0 and "canary rollout promoted" in promoted.stdout, promoted
                await ctl.wait_for(lambda: pool_at(ctl, "v2") and bool(ctl.fleet.history), 90)
                assert canary_rollout(ctl).outcome == "succeeded"

                harness.write("v3", extra_pool=NEVER_ENOUGH)
                await ctl.reload("test")
                await ctl.wait_for(lambda: holding(ctl, "v3"), 90)
                aborted = await anyio.to_thread.run_sync(cli, url, "abort", "--pool", "p")
                assert aborted.returncode == 0, aborted
                await ctl.wait_for(lambda: pool_at(ctl, "v2") and any(
                    r.to_version == "v3" and r.outcome == "failed" for r in ctl.fleet.history), 90)
                refused = await anyio.to_thread.run_sync(cli, url, "abort", "--pool", "p")
                assert refused.returncode == 3 and "drainctl rollback --pool p" in refused.stderr, refused
                tg.cancel_scope.cancel()
            await all_ended(harness.records, sent)
        finally:
            await runner.cleanup()
    detail = next(r for r in ctl.fleet.history if r.to_version == "v3").detail
    assert detail == "aborted, back to v2: canary analysis: aborted by cli:ops", detail
    check_every_task_ran_once(harness.records, sent)


async def test_a_restarted_controller_resumes_the_hold_at_its_step(
    broker_url: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=TWO_STEPS)
    sent: list[str] = []
    async with anyio.create_task_group() as tg:
        # Its own scope: the load stops, and the controller and its checks go on.
        stop_load = anyio.CancelScope()

        async def load() -> None:
            with stop_load, anyio.move_on_after(150):
                for i in range(3000):
                    sent.append(await send_work(celery_app, harness.queue, 0.05 + (i % 4) * 0.05))
                    await anyio.sleep(0.05)

        first = Controller(harness.settings(), broker_url,
                           runtime=ProcessRuntime(harness.state_dir, harness.controller_id), config_path=harness.path)
        async with synced(first):
            await first.wait_for(lambda: pool_at(first, "v1"), 90)
            tg.start_soon(load)
            harness.write("v2", extra_pool=TWO_STEPS)
            await first.reload("test")
            # The first step passed: the hold of the second (2 new workers) is under way when it stops.
            await first.wait_for(lambda: (h := first.fleet.canary.holds.get("p")) is not None and h.step == 1, 90)
        steps: list[int] = []
        async with running(harness) as ctl:

            def done() -> bool:
                hold = ctl.fleet.canary.holds.get("p")
                if hold is not None and (not steps or steps[-1] != hold.step):
                    steps.append(hold.step)
                return any(r.to_version == "v2" and r.outcome == "succeeded" for r in ctl.fleet.history)

            await ctl.wait_for(done, 120)
            stop_load.cancel()
            await ctl.wait_for(lambda: pool_at(ctl, "v2"), 60)
            await all_ended(harness.records, sent)
    assert steps[0] == 1 and 0 not in steps, steps  # resumed at its step, never back at the first
    check_every_task_ran_once(harness.records, sent)
