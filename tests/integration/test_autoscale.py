"""An elastic pool of real Celery workers (process runtime) through idle, a burst of mixed tasks, and idle again."""

from __future__ import annotations

import itertools
import urllib.parse
from pathlib import Path

import anyio
import pytest
from celery import Celery

from tests.helpers import read_records
from tests.integration.elastic import ElasticHarness, PoolWatch, free_first_violations, mixed_durations, scaling, tally
from tests.integration.pools import ConsumerLog, pool_at, running
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio

LO, HI = 1, 4


async def test_a_burst_scales_the_pool_out_to_max_and_back_in_to_min_without_losing_a_task(
    broker_url: str, rabbit_vhost: str, celery_app: Celery, tmp_path: Path
) -> None:
    harness = ElasticHarness(tmp_path, broker_url)
    harness.write("v1", extra_pool=scaling(LO, HI, out_s=1.5, in_s=2.5))
    # 200 tasks: 190 of 0.1-1 s, 10 of 4-20 s; the long ones early, so that the burst ends with short ones.
    mixed = mixed_durations(200, seed=15, long_share=0.05, long=(4.0, 20.0))
    short, long = [d for d in mixed if d <= 1.0], [d for d in mixed if d > 1.0]
    durations = short[:30] + long + short[30:]
    sent: list[str] = []
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1", LO), 90)
        # Idle: the autoscaler has looked at the empty queue and holds the pool at its minimum.
        await ctl.wait_for(lambda: ctl.pool_sizing["p"].decided_at is not None, 30)
        idle = ctl.pool_sizing["p"]
        assert (idle.desired, idle.events["out"]) == (LO, 0), idle.reason

        def succeeded() -> int:
            return sum(t.outcomes.get("succeeded", 0) for pool, _, t in ctl.version_outcomes if pool == "p")

        log = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
        watch = PoolWatch(ctl)
        async with anyio.create_task_group() as tg:
            await tg.start(log.run)
            tg.start_soon(ctl.wait_for, watch, 300)
            for seconds in durations:
                sent.append(await send(celery_app, harness.queue, seconds))
            await ctl.wait_for(lambda: watch.most_ready == HI, 60)
            # Every task ran, and the pool is back at its minimum: nothing draining, none starting.
            await ctl.wait_for(lambda: succeeded() == len(sent) and ctl.pool_sizing["p"].desired == LO
                               and pool_at(ctl, "v1", LO), 150)
            tg.cancel_scope.cancel()
        sizing = ctl.pool_sizing["p"]
        finished = list(ctl.drains.finished)

    assert sizing.events["out"] >= 1 and sizing.events["in"] >= HI - LO, (sizing.events, sizing.reason)
    # One drain per scale-in, each of a worker the planner shed, each retired.
    assert {d.hostname for d in finished} == set(watch.drains), (finished, watch.drains)
    assert len(finished) == sizing.events["in"], (finished, sizing.events)
    assert all(d.outcome is not None and d.outcome.value == "retired" for d in finished), [d.detail for d in finished]
    assert all(d.requested_by == "rollout:p-reconcile" for d in watch.drains.values())
    # One scale-in at a time: a drain starts once the previous one has ended.
    ordered = sorted(finished, key=lambda d: d.started_at)
    assert all(a.finished_at is not None and a.finished_at <= b.started_at for a, b in itertools.pairwise(ordered))
    assert log.events, "the consumer log recorded nothing"
    assert log.minimum(initial=LO) >= 1, log.events

    records = read_records(harness.records)
    lost, duplicated, interrupted = tally(sent, records)
    assert (lost, duplicated, interrupted) == ([], [], []), "lost, duplicated, interrupted"
    assert {r["uuid"] for r in records if r["event"] == "start"} == set(sent)
    # The pool's workers all took part: the burst was spread over the pool at its largest.
    assert len({r["hostname"] for r in records}) >= HI
    # Each scale-in drained a worker that ran no more tasks than any other it could have drained.
    violations = free_first_violations(watch.drains.values(), records)
    assert not violations, violations
