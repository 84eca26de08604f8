"""Discovery without gaps: a worker is drainable within a second of its worker-online, whatever the order in
which the controller, its start-up broadcast and the worker come up; a lost start-up broadcast is sent again."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from drainctl import config
from drainctl.app import Controller
from drainctl.core.drain import DrainRefused
from tests.integration.conftest import WorkerFactory, WorkerProc

pytestmark = pytest.mark.anyio

ROUNDS = 20


def controller(broker_url: str, state_dir: Path) -> Controller:
    settings = config.from_mapping({
        "controller": {"id": f"disc-{uuid.uuid4().hex[:8]}", "state_dir": str(state_dir)},
        "broker": {"reply_timeout_s": 1.0, "reconnect_max_backoff_s": 1.0},
    })
    return Controller(settings, broker_url)


def drainable(ctl: Controller, hostname: str) -> bool:
    try:
        ctl.drains.check(ctl.cluster, hostname, force=False)
    except DrainRefused:
        return False
    return True


async def stop(workers: list[WorkerProc]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        await anyio.to_thread.run_sync(worker.popen.wait, 30)


async def one_round(broker_url: str, celery_worker: WorkerFactory, state_dir: Path, workers_first: bool) -> list[float]:
    """Start a controller and two workers together; per worker, seconds from first seen to drainable."""
    queue = f"disc-{uuid.uuid4().hex[:8]}"
    names = [f"d{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    ctl = controller(broker_url, state_dir)
    workers: list[WorkerProc] = []
    first_drainable: dict[str, float] = {}

    def all_drainable() -> bool:
        for w in workers:
            if w.hostname not in first_drainable and drainable(ctl, w.hostname):
                first_drainable[w.hostname] = ctl.clock()
        return len(first_drainable) == len(workers)

    try:
        async with anyio.create_task_group() as tg:
            if workers_first:
                workers = [celery_worker(n, queues=[queue], wait_ready=False) for n in names]
                await tg.start(ctl.run)
            else:
                await tg.start(ctl.run)
                workers = [celery_worker(n, queues=[queue], wait_ready=False) for n in names]
            await ctl.wait_for(all_drainable, 90)
            lags = []
            for w in workers:
                seen = ctl.cluster.worker(w.hostname)
                assert seen is not None
                lags.append(first_drainable[w.hostname] - seen.first_seen)
            tg.cancel_scope.cancel()
    finally:
        await stop(workers)
    return lags


async def test_workers_started_with_the_controller_are_drainable_within_a_second_of_worker_online(
    broker_url: str, celery_worker: WorkerFactory, tmp_path: Path
) -> None:
    lags: list[float] = []
    for round_ in range(ROUNDS):
        # Alternate who comes first: the workers, or the controller (and its start-up broadcast).
        lags += await one_round(broker_url, celery_worker, tmp_path / f"state-{round_}", round_ % 2 == 0)
    assert max(lags) <= 1.0, sorted(lags)[-5:]


async def test_a_start_up_broadcast_lost_with_its_channel_is_sent_again(
    broker_url: str, celery_worker: WorkerFactory, tmp_path: Path
) -> None:
    queue = f"disc-{uuid.uuid4().hex[:8]}"
    workers = [celery_worker(f"lost-{i}-{uuid.uuid4().hex[:6]}", queues=[queue]) for i in range(2)]
    ctl = controller(broker_url, tmp_path / "state")
    try:
        async with anyio.create_task_group() as tg:
            started = ctl.clock()
            await tg.start(ctl.run)
            await ctl.wait_for(lambda: ctl.control is not None and not ctl.synced.is_set(), 30)
            control: Any = ctl.control
            # The broker closes the control channel (a channel error: a passive declare of a missing
            # exchange) while the broadcast waits for its replies, which came on that channel.
            with pytest.raises(Exception, match="NOT_FOUND"):
                await control._channel.get_exchange(f"missing-{uuid.uuid4().hex}", ensure=True)
            await ctl.wait_for(ctl.synced.is_set, 30)
            synced_after = ctl.clock() - started
            assert synced_after <= 5.0, synced_after
            assert ctl.stats.connects >= 2  # the session started afresh
            await ctl.wait_for(lambda: all(drainable(ctl, w.hostname) for w in workers), 10)
            tg.cancel_scope.cancel()
    finally:
        await stop(workers)
