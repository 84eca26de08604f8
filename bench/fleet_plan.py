"""`fleet.py --plan-cost`: what one reducer input costs, per input and per event, with N workers in the model.

No broker: a `Controller` is built but never run, so the executor has no task group and every command the
reducer returns is dropped unexecuted (as in `memory.py`). The model is filled through the reducer itself:
two ready members of a pool `bench` (so `Fleet.plan` runs after every input, as in production once synced),
then the deterministic Celery stream of celery_wire.py on `--workers` simulated workers until every worker is
known and tasks are in flight.

Then inputs of exactly n events (n = 1, 10, 100, 1000; messages of up to 2 events, as `task.multi` lists
mostly are at live rate) are timed, each variant in turn on the next inputs of the same stream:

- `handle`: `Reducer.handle` (ingest, then `Fleet.plan` and `DrainBook.evaluate`);
- `no-plan`: the same with the pool targets emptied for the call (`handle` skips `Fleet.plan`);
- `apply`: `Controller.apply` (handle, then the notices logged, the commands handed to the executor,
  `sync_leases`, and the waiters' `anyio.Event` swapped).

Alone: `Fleet.plan` and `DrainBook.evaluate` on the model as it is, and one `Tick` (`Cluster.tick` and
`Cluster.recheck` walk every worker) through `Controller.apply`.

Two scenarios: `steady` (the pool at its version, no drain) and `rollout` (the config asks for v2: one new
worker ready, one old worker draining, and the drain history full at its cap of 200 finished drains).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from celery_wire import CeleryEventStream

POOL_COMMAND = ["celery", "-A", "tests.integration.taskapp", "worker"]
SIZES = (1, 10, 100, 1000)
VARIANTS = ("handle", "no-plan", "apply")


def settings_for(state: Path, version: str) -> Any:
    from drainctl.config import from_mapping

    return from_mapping({
        "controller": {"id": "plan-cost", "state_dir": str(state)},
        "pool": [{"name": "bench", "queues": ["bench"], "replicas": 2, "concurrency": 2, "version": version,
                  "command": POOL_COMMAND}],
    })


class Feed:
    """The Celery stream as decoded events, handed out n at a time; its simulated time is the clock."""

    def __init__(self, workers: int, seed: int) -> None:
        from drainctl.core.events import decode_message

        self.decode = decode_message
        self.stream = CeleryEventStream(workers=workers, target_events=50_000_000, seed=seed)
        self.messages = iter(self.stream)
        self.events: Iterator[Any] = iter(())
        self.now = self.stream.start

    def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        for _ in range(n + 10_000):  # bounded: a message holds at most a few events
            if len(out) >= n:
                break
            event = next(self.events, None)
            if event is None:
                message = next(self.messages)
                self.events = iter(self.decode(message.body).events)
                continue
            out.append(event)
            self.now = event.timestamp
        return out

    def input(self, n: int) -> Any:
        from drainctl.core.events import Decoded
        from drainctl.inputs import EventsIn

        events = self.take(n)
        return EventsIn([Decoded(tuple(events[i:i + 2]), ()) for i in range(0, len(events), 2)], 400 * len(events))


def _wire(hostname: str, etype: str, clock: int, now: float, **fields: Any) -> Any:
    from drainctl.core.events import Decoded, WorkerEvent
    from drainctl.inputs import EventsIn

    event = WorkerEvent(type=etype, hostname=hostname, pid=4242, clock=clock, timestamp=now,  # type: ignore[arg-type]
                        freq=2.0, active=fields.get("active"), processed=0, sw_ver="5.7.0", sw_ident="py-celery",
                        loadavg=(0.1, 0.1, 0.1))
    return EventsIn([Decoded((event,), ())], 400)


def add_member(ctl: Any, hostname: str, version: str, now: float, *, adopt: bool = True) -> None:
    """A pool worker online, answering, consuming `bench`, ready (as after its readiness gate)."""
    if adopt:
        ctl.fleet.adopt(hostname, "bench", version, now)
    member = ctl.fleet.members[hostname]
    member.ready_at = now
    member.registered = frozenset({"taskapp.sleep"})
    ctl.apply(_wire(hostname, "worker-online", 1, now))
    ctl.cluster.set_queues(hostname, ("bench",))
    ctl.cluster.note_answered(hostname, now)
    ctl.apply(_wire(hostname, "worker-heartbeat", 2, now, active=0))


def fill_history(ctl: Any, now: float) -> None:
    from drainctl.core.drain import Drain, DrainPolicy, Outcome, Phase

    for i in range(ctl.drains.finished.maxlen or 200):
        ctl.drains.finished.append(Drain(
            hostname=f"bench-v0-{i:04x}@localhost", queues=("bench",), managed=True, policy=DrainPolicy(),
            started_at=now - 900 + i, pid=9000 + i, phase=Phase.DONE, outcome=Outcome.RETIRED,
            finished_at=now - 890 + i))


def start_rollout(ctl: Any, feed: Feed, state: Path) -> None:
    """The config now asks for v2: the planner opens the rollout and starts a worker; it becomes ready; the
    planner then drains an old one."""
    ctl.pools.apply(settings_for(state, "v2"))
    ctl.apply(feed.input(1))
    new = [m for m in ctl.fleet.members.values() if m.version == "v2"]
    assert len(new) == 1 and len(ctl.fleet.members) == 3, list(ctl.fleet.members)
    add_member(ctl, new[0].hostname, "v2", feed.now, adopt=False)
    ctl.apply(feed.input(1))
    assert len(ctl.drains.active) == 1, "an old worker should be draining"
    fill_history(ctl, feed.now)


def time_inputs(ctl: Any, feed: Feed, n: int, reps: int) -> dict[str, list[int]]:
    """Per variant, the ns of each input; variants interleaved, so the model drifts alike for all."""
    reducer = ctl.reducer
    targets = ctl.pools.targets
    timings: dict[str, list[int]] = {v: [] for v in VARIANTS}
    clock = time.perf_counter_ns
    for _ in range(reps):
        for variant in VARIANTS:
            item = feed.input(n)
            now = feed.now
            if variant == "handle":
                t0 = clock()
                reducer.handle(item, now)
                timings[variant].append(clock() - t0)
            elif variant == "no-plan":
                ctl.pools.targets = {}
                t0 = clock()
                reducer.handle(item, now)
                timings[variant].append(clock() - t0)
                ctl.pools.targets = targets
            else:  # the controller's clock is feed.now already
                t0 = clock()
                ctl.apply(item)
                timings[variant].append(clock() - t0)
    return timings


def time_alone(ctl: Any, feed: Feed, reps: int) -> dict[str, float]:
    from drainctl.inputs import Tick

    now = feed.now
    clock = time.perf_counter_ns
    targets = ctl.pools.targets
    t0 = clock()
    for _ in range(reps):
        ctl.fleet.plan(targets, ctl.cluster, ctl.drains, now, requested_by="config")
    plan = (clock() - t0) / reps / 1000
    t0 = clock()
    for _ in range(reps):
        ctl.drains.evaluate(ctl.cluster, now)
    evaluate = (clock() - t0) / reps / 1000
    history, ctl.drains.finished = ctl.drains.finished, deque(maxlen=ctl.drains.finished.maxlen)
    t0 = clock()
    for _ in range(reps):
        ctl.drains.evaluate(ctl.cluster, now)
    evaluate_bare = (clock() - t0) / reps / 1000
    ctl.drains.finished = history
    ticks = []
    for i in range(20):
        ctl.clock = lambda i=i: now + i
        t0 = clock()
        ctl.apply(Tick())
        ticks.append(clock() - t0)
    return {"plan_us": plan, "evaluate_us": evaluate, "evaluate_no_history_us": evaluate_bare,
            "tick_us": statistics.median(ticks) / 1000, **read_side(ctl)}


def read_side(ctl: Any, reps: int = 10) -> dict[str, float]:
    """What the HTTP handlers do, on this model: /status (build_status, orjson with indent) and /metrics
    (`drainctl.metrics.exposition`: prometheus_client's generate_latest, then the per-worker series).
    Median ms and the size."""
    import orjson

    from drainctl.metrics import exposition, registry_for
    from drainctl.status import build_status

    registry = registry_for(ctl)
    out: dict[str, float] = {}
    for name, render in (("status", lambda: orjson.dumps(build_status(ctl), option=orjson.OPT_INDENT_2)),
                         ("metrics", lambda: exposition(registry, ctl))):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            body = render()
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1000 * statistics.median(times)
        out[f"{name}_kb"] = len(body) / 1024
    return out


async def measure(workers: int, scenario: str, reps: dict[int, int], seed: int) -> dict[str, Any]:
    from drainctl.app import Controller
    from drainctl.runtime.process import ProcessRuntime

    with tempfile.TemporaryDirectory(prefix="drainctl-plan-cost-") as tmp:
        state = Path(tmp)
        feed = Feed(workers, seed)
        ctl = Controller(settings_for(state, "v1"), "amqp://guest:guest@127.0.0.1:5672/unused",
                         runtime=ProcessRuntime(state, "plan-cost"), clock=lambda: feed.now)
        ctl.pools.apply(ctl.settings)
        ctl.reducer.synced.set()
        names = ("bench-v1-aaaaaa@localhost", "bench-v1-bbbbbb@localhost")
        for name in names:  # both first: the planner then sees the pool full and starts nothing
            ctl.fleet.adopt(name, "bench", "v1", feed.now)
        for name in names:
            add_member(ctl, name, "v1", feed.now, adopt=False)
        assert len(ctl.fleet.members) == 2 and not ctl.fleet.rollouts, list(ctl.fleet.members)
        for _ in range(max(20_000, 12 * workers)):  # warm-up: every worker seen, tasks in flight
            ctl.apply(feed.input(1))
        if scenario == "rollout":
            start_rollout(ctl, feed, state)
        rows = []
        for n in SIZES:
            timings = time_inputs(ctl, feed, n, reps[n])
            rows.append({"n": n, "inputs": reps[n],
                         **{v: statistics.median(t) / 1000 for v, t in timings.items()},
                         **{f"{v}_mean": statistics.fmean(t) / 1000 for v, t in timings.items()}})
        alone = time_alone(ctl, feed, 5000)
        model = {"workers": len(ctl.cluster.workers), "in_flight": ctl.cluster.in_flight(),
                 "members": len(ctl.fleet.members), "drains_active": len(ctl.drains.active),
                 "drains_finished": len(ctl.drains.finished), "tombstones": ctl.cluster.tombstones()}
    return {"workers": workers, "scenario": scenario, "rows": rows, "alone": alone, "model": model}


def plan_cost_main(workers_list: list[int], reps_scale: float, seed: int) -> list[dict[str, Any]]:
    from drainctl import logs

    logs.configure("json", "error")  # the notices of discovery would flood the terminal
    reps = {n: max(20, int(r * reps_scale)) for n, r in zip(SIZES, (6000, 2000, 300, 40), strict=True)}
    results = []
    for workers in workers_list:
        for scenario in ("steady", "rollout"):
            started = time.perf_counter()
            result = anyio.run(measure, workers, scenario, reps, seed)
            results.append(result)
            report(result, time.perf_counter() - started)
    return results


def report(result: dict[str, Any], wall_s: float) -> None:
    model = result["model"]
    alone = result["alone"]
    print(f"\n{result['workers']} simulated workers, scenario {result['scenario']}: model {model}  ({wall_s:.1f} s)")
    print(f"  {'events/input':>12} {'inputs':>7} {'handle µs':>10} {'µs/event':>9} {'no-plan µs':>11} "
          f"{'plan+eval µs':>12} {'apply µs':>9} {'apply-handle':>12}   (medians per input; means in JSON)")
    for row in result["rows"]:
        n = row["n"]
        print(f"  {n:12} {row['inputs']:7} {row['handle']:10.1f} {row['handle'] / n:9.2f} {row['no-plan']:11.1f} "
              f"{row['handle'] - row['no-plan']:12.1f} {row['apply']:9.1f} {row['apply'] - row['handle']:12.1f}")
    print(f"  alone, per call: Fleet.plan {alone['plan_us']:.1f} µs, DrainBook.evaluate {alone['evaluate_us']:.1f} µs "
          f"({alone['evaluate_no_history_us']:.1f} µs with its finished-drain history emptied); "
          f"one Tick through Controller.apply {alone['tick_us']:.0f} µs")
    print(f"  read side: /status {alone['status_ms']:.1f} ms ({alone['status_kb']:.0f} KiB), "
          f"/metrics {alone['metrics_ms']:.1f} ms ({alone['metrics_kb']:.0f} KiB)")
