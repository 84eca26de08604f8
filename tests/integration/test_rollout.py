"""Rollouts of a real pool (process runtime) under load, checked against RabbitMQ's own consumer log."""

from __future__ import annotations

import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from celery import Celery

from drainctl.app import Controller
from drainctl.errors import DrainctlError
from drainctl.runtime.process import ProcessRuntime
from tests.helpers import read_records
from tests.integration.controllers import connection_pids
from tests.integration.pools import WORKER, ConsumerLog, PoolHarness, pool_at, running, toml_list
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio


async def test_rollout_under_load_loses_duplicates_and_interrupts_nothing(
    broker_url: str, rabbit_vhost: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1")
    sent: list[str] = []
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        log = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
        async with anyio.create_task_group() as tg:
            await tg.start(log.run)

            async def load() -> None:
                # Continuous short tasks (bounded in count and time) throughout the rollout.
                with anyio.move_on_after(120):
                    for i in range(400):
                        sent.append(await send(celery_app, harness.queue, 0.2 + (i % 5) * 0.3))
                        await anyio.sleep(0.1)
                        if ctl.fleet.history and pool_at(ctl, "v2") and i > 20:
                            return

            tg.start_soon(load)
            await anyio.sleep(1)
            harness.write("v2")
            await ctl.reload("test")
            await ctl.wait_for(lambda: pool_at(ctl, "v2") and bool(ctl.fleet.history), 150)
            # every task sent runs to its end
            await ctl.wait_for(lambda: len(sent) > 20 and not any(
                w.tasks for w in ctl.cluster if w.hostname.startswith("p-")), 60)
            tg.cancel_scope.cancel()
        rollout = ctl.fleet.history[-1]
        assert (rollout.from_version, rollout.to_version, rollout.outcome) == ("v1", "v2", "succeeded")
        assert ctl.drains.outcomes["retired"] == 3
        assert log.events, "the consumer log recorded nothing"
        assert log.minimum(initial=3) >= 1, log.events
        # Every task the pool ran is counted once, under the version of the worker that ran it.
        by_version = {version: tasks for pool, version, tasks in ctl.version_outcomes if pool == "p"}
        assert set(by_version) == {"v1", "v2"}
        assert sum(t.outcomes.get("succeeded", 0) for t in by_version.values()) == len(sent)
        assert sum(sum(t.runtime_buckets) for t in by_version.values()) == len(sent)

    runs = read_records(harness.records)
    starts = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "start")
    ends = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "end")
    assert set(u for u, _ in starts) == set(sent), "a task was lost"
    assert all(n == 1 for n in starts.values()), "a task ran twice"
    assert ends == starts, "a task was interrupted"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("crash-loop", "before it was ready"), ("missing-task", "does not register taskapp.fail"),
     ("never-consumes", "consuming all of")],
)
async def test_a_bad_version_aborts_with_capacity_intact(
    broker_url: str, celery_app: Celery, tmp_path: Path, bad: str, reason: str
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1")
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        before = {m.hostname for m in ctl.fleet.of_pool("p")}
        if bad == "crash-loop":
            harness.write("v2", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
        elif bad == "never-consumes":
            # Starts, comes online, answers remote control, but consumes another queue (a wrong -Q, which
            # only a pool without quiet start lets a command name).
            harness.write("v2", command=[*WORKER, "-n", "{hostname}", "-Q", f"elsewhere-{harness.queue}"],
                          ready_timeout=8, extra_pool="quiet_start = false\n")
        else:
            harness.write("v2", extra_env=', TASKAPP_OMIT_FAIL = "1"')
        task = await send(celery_app, harness.queue, 0.5)
        await ctl.reload("test")
        await ctl.wait_for(lambda: any(r.outcome == "failed" for r in ctl.fleet.history), 90)
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        failed = next(r for r in ctl.fleet.history if r.outcome == "failed")
        assert reason in failed.detail
        assert {m.hostname for m in ctl.fleet.of_pool("p")} == before  # the old workers never left
        assert ctl.fleet.pins["p"].version == "v1"
        # pinned: reloading the same config does not try v2 again
        await ctl.reload("test")
        assert ctl.fleet.target(ctl.pool_targets["p"]) == "v1"
    runs = read_records(harness.records)
    assert [r["event"] for r in runs if r["uuid"] == task] == ["start", "end"]


async def test_an_invalid_config_on_reload_changes_nothing(broker_url: str, tmp_path: Path) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1")
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        harness.path.write_text(harness.path.read_text().replace("replicas = 3", "replicas = -3"))
        with pytest.raises(DrainctlError, match=r"pool\.0\.replicas"):
            await ctl.reload("test")
        assert ctl.reloads == {"applied": 0, "rejected": 1}
        assert ctl.pool_targets["p"].replicas == 3 and pool_at(ctl, "v1")
        harness.write("v1")
        harness.path.write_text(harness.path.read_text().replace(f'"{harness.queue}"', '"other"'))
        with pytest.raises(DrainctlError, match="no pool would consume"):
            await ctl.reload("test")
        assert pool_at(ctl, "v1") and ctl.reloads["rejected"] == 2
        # A valid file that also edits a section read only at start: applied to the pools, and said so.
        harness.write("v1")
        harness.path.write_text(harness.path.read_text().replace("reply_timeout_s = 1.0", "reply_timeout_s = 2.0"))
        answer = await ctl.reload("test")
        assert answer["restart_needed"] == ["broker"] and answer["changed"] == []
        assert ctl.settings.broker.reply_timeout_s == 1.0 and ctl.reloads["applied"] == 1


@pytest.mark.parametrize("stubborn", [False, True], ids=["warm-exit", "ignores-shutdown"])
async def test_rollout_on_the_docker_runtime(
    broker_url: str, celery_app: Celery, tmp_path: Path, docker_available: None, stubborn: bool
) -> None:
    """`stubborn`: the old workers do not exit after the remote `shutdown` (a hung exit hook), so the
    container must be stopped by the docker engine once the retire grace is over."""
    from drainctl.runtime.base import LABEL_CONTROLLER
    from drainctl.runtime.docker import DockerRuntime
    from tests.integration.docker_support import IMAGE, docker, host_binds

    harness = PoolHarness(tmp_path, broker_url)
    binds = [*host_binds(), f"{harness.records}:{harness.records}:rw"]

    replicas = 1 if stubborn else 2

    def write(version: str) -> None:
        hung = stubborn and version == "v1"
        harness.write(version, extra_env=', TASKAPP_SHUTDOWN_DELAY = "300"' if hung else "")
        text = harness.path.read_text().replace("replicas = 3", f"replicas = {replicas}")
        text = text.replace("stop_timeout_s = 30", f"stop_timeout_s = {3 if hung else 30}\nretire_grace_s = 3")
        text += f'runtime = "docker"\nimage = "{IMAGE}"\nbinds = {toml_list(binds)}\n'
        harness.path.write_text(text)

    write("v1")
    docker_runtime = DockerRuntime(harness.controller_id)
    ctl = Controller(harness.settings(), broker_url, runtime=ProcessRuntime(harness.state_dir, harness.controller_id),
                     runtimes={"docker": docker_runtime}, config_path=harness.path)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(ctl.run)
            await ctl.wait_for(lambda: pool_at(ctl, "v1", replicas), 120)
            tasks = [await send(celery_app, harness.queue, 1.0) for _ in range(4)]
            write("v2")
            await ctl.reload("test")
            await ctl.wait_for(lambda: pool_at(ctl, "v2", replicas) and bool(ctl.fleet.history), 150)
            assert ctl.fleet.history[-1].outcome == "succeeded"
            assert ctl.drains.outcomes["retired"] == replicas
            if stubborn:
                (drain,) = ctl.drains.finished
                assert "SIGTERM had no effect" in drain.detail, drain.detail
            tg.cancel_scope.cancel()
    finally:
        await docker_runtime.aclose()
        listed = docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={harness.controller_id}")
        if listed.stdout.split():
            docker("rm", "-f", *listed.stdout.split())
    runs = read_records(harness.records)
    starts = Counter(r["uuid"] for r in runs if r["event"] == "start" and r["uuid"] in tasks)
    ends = Counter(r["uuid"] for r in runs if r["event"] == "end" and r["uuid"] in tasks)
    assert starts == ends == Counter(dict.fromkeys(tasks, 1))


async def test_the_controllers_connection_closed_by_the_broker_mid_drain_the_rollout_finishes(
    broker_url: str, celery_app: Celery, tmp_path: Path
) -> None:
    from drainctl.core.drain import Phase
    from tests.integration.conftest import rabbitmqctl

    harness = PoolHarness(tmp_path, broker_url)
    harness.write("v1")
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        tasks = [await send(celery_app, harness.queue, 4.0) for _ in range(6)]
        harness.write("v2")
        await ctl.reload("test")
        await ctl.wait_for(lambda: any(d.phase is Phase.WAITING and d.held for d in ctl.drains), 60)
        connects = ctl.stats.connects
        # Every connection of this controller: events, remote control and the per-worker leases go with it.
        pids = await anyio.to_thread.run_sync(connection_pids, f"drainctl {ctl.settings.controller.id}")
        assert pids
        for pid in pids:
            await anyio.to_thread.run_sync(rabbitmqctl, "close_connection", pid, "test: closed by the broker")
        await ctl.wait_for(lambda: ctl.stats.connects > connects, 30)
        await ctl.wait_for(lambda: pool_at(ctl, "v2") and bool(ctl.fleet.history), 150)
        assert ctl.fleet.history[-1].outcome == "succeeded"
        assert ctl.drains.outcomes["retired"] == 3
        assert ctl.drains.outcomes["cancelled"] == ctl.drains.outcomes["lost"] == 0
        await ctl.wait_for(lambda: not any(w.tasks for w in ctl.cluster if w.hostname.startswith("p-")), 60)
    runs = read_records(harness.records)
    starts = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "start" and r["uuid"] in tasks)
    ends = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "end" and r["uuid"] in tasks)
    assert starts == ends == Counter({(t, 0): 1 for t in tasks})


@pytest.mark.parametrize(
    ("bad", "extra_env", "reason"),
    [("lacks-the-task", ', TASKAPP_OMIT = "taskapp.sleep"', "does not register taskapp.sleep"),
     ("exits-after-online", ', TASKAPP_EXIT_WHEN_READY = "1"', "before it was ready"),
     ("remote-control-off", ', TASKAPP_REMOTE_CONTROL = "0"', "not ready after")],
)
async def test_a_bad_version_under_a_backlog_never_takes_a_pool_message(
    broker_url: str, celery_app: Celery, tmp_path: Path, bad: str, extra_env: str, reason: str
) -> None:
    """Quiet start: the new worker is judged on its standby queue, so a backlog waits for the old version."""
    harness = PoolHarness(tmp_path, broker_url)

    def write(version: str, **kw: Any) -> None:
        harness.write(version, **kw)  # then Celery's default window, which a worker takes in one go
        harness.path.write_text(harness.path.read_text().replace('TASKAPP_PREFETCH = "1"', 'TASKAPP_PREFETCH = "4"'))

    write("v1")
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1"), 90)
        tasks = [await send(celery_app, harness.queue, 0.3) for _ in range(200)]
        write("v2", extra_env=extra_env, ready_timeout=8)
        await ctl.reload("test")
        await ctl.wait_for(lambda: any(r.outcome == "failed" for r in ctl.fleet.history), 90)
        failed = next(r for r in ctl.fleet.history if r.outcome == "failed")
        assert reason in failed.detail
        await ctl.wait_for(lambda: pool_at(ctl, "v1") and not any(w.tasks for w in ctl.cluster), 120)
    runs = read_records(harness.records)
    started = Counter(r["uuid"] for r in runs if r["event"] == "start")
    ended = Counter(r["uuid"] for r in runs if r["event"] == "end")
    assert started == ended == Counter(tasks), "every task of the backlog ran once, to its end"
    assert {r["hostname"].split("-")[1] for r in runs} == {"v1"}
    logs = "".join(p.read_text(errors="replace") for p in (harness.state_dir / "logs").glob("*.log"))
    assert "Received unregistered task" not in logs
    assert "drainctl.standby." in logs or bad == "remote-control-off"
