"""Chaos: the Docker engine restarts in the middle of a rollout (``--live-restore``).

Runs on a PRIVATE dockerd (:mod:`tests.integration.private_dockerd`), never on the shared engine; the
controller finds it through ``[docker] host``. A pool of 2 Celery workers in containers (docker runtime,
the shared RabbitMQ) runs v1 under a light load of short tasks, and each v1 worker runs one long task.
A rollout to v2 starts; as soon as an old worker is being drained while its long task still runs (the
controller's drain phase and model, and the task's own start record), dockerd is stopped and started
again. With live-restore every container keeps running (same pid, same start time); the docker runtime
loses its event stream, resubscribes, and must still see the drained container exit once its task is
done. The rollout must end at v2, every task must run exactly once and to its end (counted by
(uuid, retries) from the tasks' own records), the queue must never be left with fewer consumers than
the pool's size (surge first) and the pool never more containers than its cap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest
from celery import Celery

from drainctl.app import Controller
from drainctl.core.drain import Outcome, Phase
from drainctl.runtime.base import LABEL_CONTROLLER
from drainctl.runtime.docker import DockerRuntime
from drainctl.runtime.process import ProcessRuntime
from tests.helpers import read_records
from tests.integration.controllers import synced
from tests.integration.docker_support import IMAGE, host_binds
from tests.integration.pools import ConsumerLog, PoolHarness, pool_at, toml_list
from tests.integration.private_dockerd import PrivateDockerd, PrivateDockerdError
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio

REPLICAS = 2
#: replicas + surge (1): containers of the pool alive at once, draining ones included.
CAP = REPLICAS + 1
#: The long task each v1 worker runs: it must outlast a new worker's start and the engine's restart.
LONG_S = 12.0
#: At the restart, the drained worker's long task has at least this long left to run.
MARGIN_S = 5.0
#: Whole-test budget (every wait below is bounded well within it).
TEST_BUDGET_S = 90


@pytest.fixture
def private_dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDockerd]:
    def unavailable(reason: str) -> None:
        # As for the shared engine (docker_support.require_docker): a skip under CI would hide a broken setup.
        message = f"no Docker engine can be started: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    if shutil.which("dockerd") is None:
        unavailable("`dockerd` is not installed; run `bash scripts/dockerd.sh` as root")
    if os.geteuid() != 0:
        unavailable("dockerd needs root")
    engine = PrivateDockerd(tmp_path_factory.mktemp("private-dockerd"))
    try:
        engine.__enter__()  # cleans up after itself when it fails
    except PrivateDockerdError as exc:
        unavailable(f"a private dockerd did not start: {exc}")
        raise
    try:
        yield engine
    finally:
        engine.close()


def _running(engine: PrivateDockerd, controller_id: str) -> dict[str, tuple[int, str]]:
    """The engine's running containers of this controller: id -> (pid, start time)."""
    ids = engine.docker("ps", "-q", "--no-trunc", "--filter", f"label={LABEL_CONTROLLER}={controller_id}").stdout
    if not ids.split():
        return {}
    out = engine.docker("inspect", *ids.split()).stdout
    return {c["Id"]: (c["State"]["Pid"], c["State"]["StartedAt"]) for c in json.loads(out) if c["State"]["Running"]}


def _write_docker_pool(harness: PoolHarness, version: str, engine: PrivateDockerd) -> None:
    """The harness's config at `version`: REPLICAS containers of the test image on the private engine."""
    binds = [*host_binds(), f"{harness.records}:{harness.records}:rw"]
    harness.write(version)
    text = harness.path.read_text().replace("replicas = 3", f"replicas = {REPLICAS}")
    text += f'runtime = "docker"\nimage = "{IMAGE}"\nbinds = {toml_list(binds)}\n'
    text += f'\n[docker]\nhost = "{engine.host}"\n'
    harness.path.write_text(text)


class CapacityWatch:
    """The most members of pool "p" (the model's view) and running containers (the engine's) seen at once."""

    def __init__(self, ctl: Controller, engine: PrivateDockerd, controller_id: str) -> None:
        self.ctl = ctl
        self.engine = engine
        self.controller_id = controller_id
        self.peak = {"members": 0, "containers": 0}

    async def run(self) -> None:
        # The engine does not answer while it restarts: those samples are the model's only.
        filters = json.dumps({"label": [f"{LABEL_CONTROLLER}={self.controller_id}"], "status": ["running"]})
        async with aiodocker.Docker(url=self.engine.host) as client:
            for _ in range(int(TEST_BUDGET_S / 0.25)):
                self.peak["members"] = max(self.peak["members"], len(self.ctl.fleet.of_pool("p")))
                try:
                    with anyio.fail_after(2):
                        running = len(await client.containers.list(filters=filters))
                        self.peak["containers"] = max(self.peak["containers"], running)
                except (aiodocker.DockerError, OSError, TimeoutError):
                    pass
                await anyio.sleep(0.25)


def _drained_mid_task(ctl: Controller, v1: set[str], long_starts: Iterable[dict[str, Any]]) -> str | None:
    """A v1 worker whose drain waits for its long task, which still has MARGIN_S or more to run."""
    for hostname, drain in ctl.drains.active.items():
        worker = ctl.cluster.worker(hostname)
        if hostname not in v1 or drain.phase != Phase.WAITING or worker is None or not worker.tasks:
            continue
        if any(r["hostname"] == hostname and r["monotonic"] + LONG_S - time.monotonic() >= MARGIN_S
               for r in long_starts):
            return hostname
    return None


async def test_rollout_survives_a_docker_engine_restart(
    private_dockerd: PrivateDockerd, broker_url: str, rabbit_vhost: str, celery_app: Celery, tmp_path: Path
) -> None:
    began = time.monotonic()
    engine = private_dockerd
    harness = PoolHarness(tmp_path, broker_url)

    _write_docker_pool(harness, "v1", engine)
    settings = harness.settings()
    assert settings.docker_host() == engine.host
    docker_runtime = DockerRuntime(harness.controller_id, settings.docker_host())
    ctl = Controller(settings, broker_url, runtime=ProcessRuntime(harness.state_dir, harness.controller_id),
                     runtimes={"docker": docker_runtime}, config_path=harness.path)

    sent: list[str] = []
    long_tasks: list[str] = []
    stop_load = anyio.Event()
    capacity = CapacityWatch(ctl, engine, harness.controller_id)
    peak = capacity.peak
    seen: dict[str, Any] = {}

    async def load() -> None:
        # Short tasks, bounded in count and time, before, during and after the restart.
        with anyio.move_on_after(TEST_BUDGET_S):
            for i in range(300):
                if stop_load.is_set():
                    return
                sent.append(await send(celery_app, harness.queue, 0.2 + (i % 4) * 0.3))
                await anyio.sleep(0.3)

    def long_starts() -> dict[str, dict[str, Any]]:
        return {r["uuid"]: r for r in read_records(harness.records) if r["event"] == "start" and r["uuid"] in long_tasks}

    def drained_mid_task(v1: set[str]) -> str | None:
        return _drained_mid_task(ctl, v1, long_starts().values())

    try:
        async with synced(ctl):
            await ctl.wait_for(lambda: pool_at(ctl, "v1", REPLICAS), 60)
            v1 = {m.hostname for m in ctl.fleet.of_pool("p")}
            consumers = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
            async with anyio.create_task_group() as tg:
                await tg.start(consumers.run)
                tg.start_soon(capacity.run)
                # One long task per idle v1 worker (prefetch 1: RabbitMQ hands them out one per consumer).
                long_tasks.extend([await send(celery_app, harness.queue, LONG_S) for _ in v1])
                await ctl.wait_for(lambda: {r["hostname"] for r in long_starts().values()} == v1, 15)
                tg.start_soon(load)
                _write_docker_pool(harness, "v2", engine)
                await ctl.reload("test")
                await ctl.wait_for(lambda: drained_mid_task(v1) is not None, LONG_S - MARGIN_S)
                drained = drained_mid_task(v1)
                assert drained is not None

                before = await anyio.to_thread.run_sync(_running, engine, harness.controller_id)
                seen["restart_at_s"] = time.monotonic() - began
                seen["outage_s"] = await anyio.to_thread.run_sync(engine.restart)
                restarted_at = time.monotonic()
                after = await anyio.to_thread.run_sync(_running, engine, harness.controller_id)
                await ctl.wait_for(lambda: docker_runtime.resubscriptions >= 1, 30)
                seen["resubscribed_after_s"] = time.monotonic() - restarted_at
                assert drained in ctl.drains.active, f"{drained} ended while the engine restarted"

                # The drained container's exit is seen on the new stream, once its long task is done.
                await ctl.wait_for(lambda: drained not in ctl.drains.active, LONG_S + 15)
                retired = ctl.drains.get(drained)
                await ctl.wait_for(lambda: pool_at(ctl, "v2", REPLICAS) and bool(ctl.fleet.history), 60)
                await anyio.sleep(1)  # a few tasks after the rollout too
                stop_load.set()

                def all_ended() -> bool:
                    ended = {r["uuid"] for r in read_records(harness.records) if r["event"] == "end"}
                    return set(sent) <= ended

                await ctl.wait_for(all_ended, 30)
                tg.cancel_scope.cancel()
            rollout = ctl.fleet.history[-1]
            members = {m.hostname: m.version for m in ctl.fleet.of_pool("p")}
            resubscriptions = docker_runtime.resubscriptions
            left = await anyio.to_thread.run_sync(_running, engine, harness.controller_id)
    finally:
        await docker_runtime.aclose()
        # The private engine removes every container it ran when the fixture ends.

    runs = read_records(harness.records)
    starts = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "start")
    ends = Counter((r["uuid"], r["retries"]) for r in runs if r["event"] == "end")
    report = (
        f"chaos report: dockerd restarted at {seen['restart_at_s']:.1f}s (down+up {seen['outage_s']:.1f}s) while "
        f"draining {drained}; runtime resubscribed {seen['resubscribed_after_s']:.1f}s after "
        f"({resubscriptions} resubscription(s)); containers before {len(before)}, after {len(after)}; "
        f"drained worker: {retired.outcome if retired else None} {retired.detail if retired else ''!r}; "
        f"tasks sent {len(sent) + len(long_tasks)}, ran {len(starts)}; peak members {peak['members']}, "
        f"containers {peak['containers']}; consumers min {consumers.minimum(initial=REPLICAS)}; "
        f"rollout {rollout.from_version}->{rollout.to_version} {rollout.outcome}; "
        f"total {time.monotonic() - began:.1f}s"
    )
    print(report)

    # live-restore: the same processes ran on, none was restarted
    assert after == before and len(before) == CAP, report
    # the runtime resubscribed and saw the drained worker's container exit (code 0) after the restart
    assert resubscriptions >= 1, report
    assert retired is not None and retired.outcome is Outcome.RETIRED, report
    assert retired.detail == "exited with code 0" and retired.finished_at is not None, report
    assert retired.finished_at > restarted_at, report
    # the rollout ended at the new version; every old container is gone
    assert (rollout.from_version, rollout.to_version, rollout.outcome) == ("v1", "v2", "succeeded"), report
    assert sorted(members.values()) == ["v2"] * REPLICAS, report
    assert ctl.drains.outcomes["retired"] == REPLICAS and ctl.drains.outcomes["lost"] == 0, report
    assert len(left) == REPLICAS, report
    # no task lost, run twice or interrupted
    assert {u for u, _ in starts} == set(sent) | set(long_tasks), f"a task was lost\n{report}"
    assert all(n == 1 for n in starts.values()), f"a task ran twice\n{report}"
    assert ends == starts, f"a task was interrupted\n{report}"
    # capacity: surge first (never fewer consumers than the pool's size), never more containers than the cap
    assert consumers.events, report
    assert consumers.minimum(initial=REPLICAS) >= REPLICAS, f"{consumers.events}\n{report}"
    assert peak["members"] <= CAP and peak["containers"] <= CAP, report
    assert time.monotonic() - began < TEST_BUDGET_S, report
