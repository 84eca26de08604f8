"""Chaos: the broker restarts in the middle of a rollout under load.

Runs on a PRIVATE RabbitMQ node (:mod:`tests.integration.private_rabbit`), never on the shared one.
A pool of 3 real Celery workers (process runtime) runs v1; a rollout to v2 starts under a light load
of short tasks; as soon as an old worker is being drained the node is stopped and started again
(every connection drops; transient Celery events of the outage are lost). The controller must
reconnect, reconcile and still finish the rollout at v2, and every task whose publish was confirmed
must run to its end at least once. Duplicates (Celery redelivers unacked messages after a connection
loss) are reported, not asserted.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from celery import Celery

from drainctl.core.drain import Phase
from tests.helpers import read_records
from tests.integration.controllers import stop_workers
from tests.integration.pools import PoolHarness, pool_at, running
from tests.integration.private_rabbit import PrivateRabbit
from tests.integration.tasks import sender_app

pytestmark = pytest.mark.anyio

#: Whole-test budget (the load and every wait below are bounded well within it).
TEST_BUDGET_S = 120


@pytest.fixture
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    with PrivateRabbit(tmp_path_factory.mktemp("private-rabbit")) as rabbit:
        yield rabbit


class ConfirmedLoad:
    """A light load of short tasks, bounded in count and time, before, during and after the outage.

    `confirmed`: the ids of tasks whose publish the broker confirmed; `unconfirmed`: publishes that raised
    (during the outage), which may or may not have run."""

    def __init__(self, sender: Celery, queue: str) -> None:
        self.sender = sender
        self.queue = queue
        self.confirmed: list[str] = []
        self.unconfirmed: list[str] = []
        self.stop = anyio.Event()

    def _publish(self, i: int) -> str:
        task_id = f"chaos-{i:04d}-{time.monotonic_ns()}"
        try:
            self.sender.send_task("taskapp.sleep", args=(0.5 + (i % 4) * 0.5,), queue=self.queue, task_id=task_id)
        except Exception:
            self.unconfirmed.append(task_id)
            raise
        return task_id

    async def run(self) -> None:
        with anyio.move_on_after(90):
            for i in range(360):
                if self.stop.is_set():
                    return
                try:
                    with anyio.fail_after(15):
                        self.confirmed.append(await anyio.to_thread.run_sync(self._publish, i, abandon_on_cancel=True))
                except Exception:
                    await anyio.sleep(0.5)  # the broker is down: the publish was not confirmed
                await anyio.sleep(0.25)


async def test_rollout_survives_a_broker_restart(private_rabbit: PrivateRabbit, tmp_path: Path) -> None:
    began = time.monotonic()
    harness = PoolHarness(tmp_path, private_rabbit.url)
    harness.write("v1")
    sender = sender_app(private_rabbit.url)
    load = ConfirmedLoad(sender, harness.queue)
    confirmed = load.confirmed
    outage: dict[str, float] = {}

    try:
        async with running(harness) as ctl:
            await ctl.wait_for(lambda: pool_at(ctl, "v1"), 60)
            v1 = {m.hostname for m in ctl.fleet.of_pool("p")}
            connects_before = ctl.stats.connects
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await anyio.sleep(2)
                harness.write("v2")
                await ctl.reload("test")
                # An old worker is being drained: its consumer is cancelled and it still runs or holds
                # tasks (the load keeps every worker busy, so the first drain waits in practice).
                await ctl.wait_for(
                    lambda: any(h in v1 and d.phase == Phase.WAITING for h, d in ctl.drains.active.items()), 60
                )
                draining = {
                    h: f"{d.phase}, {len(getattr(ctl.cluster.workers.get(h), 'tasks', ()))} tasks"
                    for h, d in ctl.drains.active.items()
                }
                outage["down_s"] = await anyio.to_thread.run_sync(private_rabbit.restart)
                outage["at_s"] = time.monotonic() - began
                await ctl.wait_for(lambda: ctl.stats.connects > connects_before, 60)
                outage["controller_back_s"] = time.monotonic() - began - outage["at_s"]
                await ctl.wait_for(lambda: pool_at(ctl, "v2") and bool(ctl.fleet.history), 80)
                await anyio.sleep(1)  # a few tasks after the rollout too
                load.stop.set()
            rollout = ctl.fleet.history[-1]
            drain_outcomes = dict(ctl.drains.outcomes)
            members = {m.hostname: m.version for m in ctl.fleet.of_pool("p")}

            # Every confirmed task ends at least once (those redelivered after the restart included).
            def all_ended() -> bool:
                ended = {r["uuid"] for r in read_records(harness.records) if r["event"] == "end"}
                return set(confirmed) <= ended

            with contextlib.suppress(TimeoutError):  # re-checked on every controller tick; asserted below
                await ctl.wait_for(all_ended, 45)
    finally:
        sender.close()
        # running() stops the workers only when its block ends normally: make sure none outlives a failure.
        await stop_workers(harness.state_dir, harness.controller_id)

    runs = read_records(harness.records)
    starts = Counter(r["uuid"] for r in runs if r["event"] == "start")
    ends = Counter(r["uuid"] for r in runs if r["event"] == "end")
    report = (
        f"chaos report: restart of {private_rabbit.nodename} at {outage['at_s']:.1f}s while draining {draining}; "
        f"node down+up {outage['down_s']:.1f}s, controller reconnected {outage['controller_back_s']:.1f}s after; "
        f"{_tasks_report(load, starts, ends)}; drains={ {k: v for k, v in drain_outcomes.items() if v} }; "
        f"rollout {rollout.from_version}->{rollout.to_version} {rollout.outcome}; "
        f"total {time.monotonic() - began:.1f}s"
    )
    print(report)

    assert (rollout.from_version, rollout.to_version, rollout.outcome) == ("v1", "v2", "succeeded"), report
    assert sorted(members.values()) == ["v2", "v2", "v2"], (members, report)
    assert len(confirmed) > 20, report
    missing = [u for u in confirmed if ends[u] == 0]
    assert not missing, f"confirmed tasks that never ran to their end: {missing}\n{report}"
    assert time.monotonic() - began < TEST_BUDGET_S + 30, report


def _tasks_report(load: ConfirmedLoad, starts: Counter[str], ends: Counter[str]) -> str:
    """What became of the load's tasks (duplicates are Celery redelivering unacked messages: reported only)."""
    duplicates = {u: n for u, n in starts.items() if n > 1}
    interrupted = [u for u in starts if ends[u] < starts[u]]
    return (
        f"tasks confirmed={len(load.confirmed)} unconfirmed={len(load.unconfirmed)} "
        f"(of which ran: {sum(1 for u in load.unconfirmed if u in starts)}); "
        f"ran twice or more={len(duplicates)} {sorted(duplicates.items())}; "
        f"started-more-than-ended={len(interrupted)}"
    )
