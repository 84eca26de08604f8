"""Elastic pools against fixed ones under the same seeded load: queue wait, worker-seconds, tasks lost or run twice,
and how well the elastic pool's scale-in drains were predicted.

    .venv/bin/python bench/autoscale.py [--patterns burst,wave] [--configs elastic,fixed-max,fixed-min]
                                        [--min 1] [--max 4] [--burst-tasks 300] [--wave-tasks 240] [--seed 15]

Each arrival pattern is a seeded list of (send offset, task duration): mostly 0.1-1 s tasks, `--long-share` of
them 2-20 s, sent by a process of its own (so that nothing the controller does delays a publish):

- `burst`: 10 s idle, `--burst-tasks` tasks sent within 2 s, idle until 62 s;
- `wave`: 10 s idle, `--wave-tasks` tasks over 60 s at a rate that rises and falls (half a sine), idle until 90 s.

Each pattern runs three times, one configuration after the other, each with a controller of its own on a
queue of its own (same vhost): pool "p" (real Celery workers, process runtime, concurrency 2, acks_late,
prefetch multiplier 1) either elastic (`--min`..`--max`, `[controller] queue_depth_interval_s = 0.5`,
`scale_out_cooldown_s` / `scale_in_cooldown_s` from `--out-cooldown` / `--in-cooldown`) or fixed at
`--max` or at `--min` workers. A run's window is from the pattern's start until the pattern's end, every task
has run, and (elastic) the pool is back at `--min`, whichever is last. Windows differ (the pool at `--min`
works through its backlog long after the pattern's end; an elastic pool takes its scale-in cooldowns to come
back), so the worker-seconds are also given over the same span for every run of a pattern: its longest
window, each pool keeping from its own window's end the workers it then had (what a fixed pool costs while
it idles).

Printed per pattern and configuration: the queue wait (sent -> started, the task's own start record;
CLOCK_MONOTONIC is system-wide on Linux) p50 / p99 / max; the worker-seconds (each worker's alive time, its
process start to its exit as the controller saw them, within the window); the window's length; tasks lost
(never started), duplicated (started twice) and interrupted (started, never ended). For the elastic pool also:
its scale-outs and scale-ins, its largest size, and its scale-in drains: the prediction error of each drain's
end (|retired - estimated end|: what `drainctl_drain_estimate_error_seconds` counts; the estimate is made as
the drain starts, from the runtime history of the tasks the worker runs and holds) p50 / p90 / max, the signed
error, the same error measured at the `shutdown` (the held tasks done: the retire step left out), and the
drains whose worker ran more tasks, by the records, than another it could have drained.

Defaults: about 11 minutes on 2 cores (the pool at `--min` takes longest: its backlog).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drainctl import logs  # noqa: E402
from tests.helpers import read_records  # noqa: E402
from tests.integration.elastic import (  # noqa: E402
    ElasticHarness,
    PoolWatch,
    executions,
    free_first_violations,
    mixed_durations,
    read_sent,
    running_between,
    scaling,
    tally,
)
from tests.integration.pools import pool_at, running  # noqa: E402

# Per run: workers a crashed run left behind cannot join the next run's queues.
VHOST = f"drainctl-bench-autoscale-{uuid.uuid4().hex[:6]}"
PATTERNS = ("burst", "wave")
CONFIGS = ("elastic", "fixed-max", "fixed-min")
#: Seconds between starting the load process and its first send (its imports).
LOADER_LEAD_S = 3.0
#: A run's longest wait for its pool to come up, and for its window to close.
READY_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0

LOADER = """
import json, sys, time
from tests.integration.taskapp import app, sleep
url, queue, t0, schedule, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
app.conf.broker_url = url
app.conf.broker_transport_options = {"confirm_publish": True}
with open(schedule) as f:
    plan = json.load(f)
with open(path, "a") as out:
    for offset, seconds in plan:
        time.sleep(max(0.0, t0 + offset - time.monotonic()))
        sent_at = time.monotonic()
        result = sleep.apply_async((seconds,), queue=queue)
        out.write(f"{result.id} {sent_at}\\n")
        out.flush()
"""


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def pattern(name: str, args: argparse.Namespace) -> tuple[list[tuple[float, float]], float]:
    """(send offset s, task duration s) for each task, and the pattern's length (s)."""
    rng = random.Random(f"{args.seed}-{name}")
    if name == "burst":
        durations = mixed_durations(args.burst_tasks, args.seed, long_share=args.long_share, long=(2.0, 20.0))
        return [(10.0 + 2.0 * i / len(durations), d) for i, d in enumerate(durations)], 62.0
    durations = mixed_durations(args.wave_tasks, args.seed + 1, long_share=args.long_share, long=(2.0, 20.0))
    # Arrival times drawn from a density proportional to sin(pi x) over the 60 s (inverse CDF), sorted.
    offsets = sorted(10.0 + 60.0 * math.acos(1.0 - 2.0 * rng.random()) / math.pi for _ in durations)
    return list(zip(offsets, durations, strict=True)), 90.0


@dataclass
class Result:
    pattern: str
    config: str
    sent: int = 0
    waits: list[float] = field(default_factory=list)
    worker_seconds: float = 0.0
    window_s: float = 0.0
    alive_at_end: int = 0  # workers alive as the window closed
    lost: int = 0
    duplicated: int = 0
    interrupted: int = 0
    # elastic only
    scale_out: int = 0
    scale_in: int = 0
    largest: int = 0
    errors: list[float] = field(default_factory=list)  # retired - estimated end, per scale-in drain
    errors_at_shutdown: list[float] = field(default_factory=list)
    unestimated: int = 0
    not_free_first: list[str] = field(default_factory=list)
    busy_drains: int = 0  # scale-in drains of a worker that ran a task as the drain started (records)
    to_largest_s: float | None = None  # from the first send until the pool first had its largest size ready


async def run_one(args: argparse.Namespace, work: Path, url: str, name: str, config: str) -> Result:
    lo, hi = args.min, args.max
    (work / f"{name}-{config}").mkdir()
    harness = ElasticHarness(work / f"{name}-{config}", url)
    if config == "elastic":
        harness.write("v1", extra_pool=scaling(lo, hi, out_s=args.out_cooldown, in_s=args.in_cooldown))
    else:
        harness.write("v1", extra_pool=f"replicas = {hi if config == 'fixed-max' else lo}\n")
    size = hi if config == "fixed-max" else lo
    plan, length = pattern(name, args)
    schedule = harness.path.parent / "schedule.json"
    schedule.write_text(json.dumps(plan))
    sent_file = harness.path.parent / "sent.txt"
    result = Result(name, config)
    async with running(harness) as ctl:
        await ctl.wait_for(lambda: pool_at(ctl, "v1", size), READY_TIMEOUT_S)
        watch = PoolWatch(ctl)

        def succeeded() -> int:
            return sum(t.outcomes.get("succeeded", 0) for pool, _, t in ctl.version_outcomes if pool == "p")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ctl.wait_for, watch, RUN_TIMEOUT_S + READY_TIMEOUT_S)
            t0 = time.monotonic() + LOADER_LEAD_S
            loader = subprocess.Popen(  # noqa: ASYNC220 - started once, before the window
                [sys.executable, "-c", LOADER, url, harness.queue, str(t0), str(schedule), str(sent_file)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                code = await anyio.to_thread.run_sync(loader.wait)
            finally:
                if loader.poll() is None:
                    loader.kill()  # by its Popen: a pid this script started and has not reaped
                    loader.wait(10)
            if code != 0:
                raise RuntimeError(f"the load process exited with {code}")
            sent = read_sent(sent_file)

            def closed() -> bool:
                done = succeeded() >= len(sent) and ctl.clock() >= t0 + length
                return done and (config != "elastic" or (
                    ctl.pool_sizing["p"].desired == lo and pool_at(ctl, "v1", lo)))

            await ctl.wait_for(closed, RUN_TIMEOUT_S)
            t_end = ctl.clock()
            watch()
            tg.cancel_scope.cancel()
        result.worker_seconds = watch.worker_seconds(t0, t_end)
        result.window_s = t_end - t0
        result.alive_at_end = sum(1 for h in watch.started if h not in watch.gone)
        result.largest = watch.most_ready
        if config == "elastic":
            sizing = ctl.pool_sizing["p"]
            result.scale_out, result.scale_in = sizing.events["out"], sizing.events["in"]
            for drain in ctl.drains.finished:
                if drain.hostname not in watch.drains or drain.finished_at is None:
                    continue
                if drain.estimated_end_at is None:
                    result.unestimated += 1
                    continue
                result.errors.append(drain.finished_at - drain.estimated_end_at)
                if drain.shutdown_at is not None:
                    result.errors_at_shutdown.append(drain.shutdown_at - drain.estimated_end_at)
    records = read_records(harness.records)
    if config == "elastic":
        result.not_free_first = free_first_violations(watch.drains.values(), records)
        runs = executions(records)
        result.busy_drains = sum(1 for d in watch.drains.values()
                                 if running_between(runs.get(d.hostname, ()), d.started_at, 0.0)[0] > 0)
        first_sent = min(sent.values(), default=t0)
        result.to_largest_s = watch.reached[watch.most_ready] - first_sent if watch.most_ready in watch.reached else None
    started: dict[str, float] = {}
    for record in records:  # sorted by time: the first start of each task
        if record["event"] == "start":
            started.setdefault(record["uuid"], float(record["monotonic"]))
    result.sent = len(sent)
    result.waits = [started[t] - at for t, at in sent.items() if t in started]
    lost, duplicated, interrupted = tally(sent, records)
    result.lost, result.duplicated, result.interrupted = len(lost), len(duplicated), len(interrupted)
    return result


def seconds(values: list[float], q: float | None = None) -> str:
    if not values:
        return "-"
    return f"{max(values) if q is None else percentile(values, q):.2f}"


def report(args: argparse.Namespace, results: list[Result]) -> None:
    print(f"\npool p: concurrency 2, acks_late, prefetch multiplier 1; elastic {args.min}..{args.max} (cooldowns "
          f"out {args.out_cooldown:g} s, in {args.in_cooldown:g} s, queue depths every 0.5 s), fixed at {args.max}, "
          f"fixed at {args.min}; seed {args.seed}")
    print("worker-s: within the run's window; 'same span': as if every run of the pattern lasted as long as its "
          "longest, each pool keeping the workers it had at its end")
    print(f"{'pattern':7} {'config':10} {'sent':>5} {'wait p50 s':>10} {'p99 s':>7} {'max s':>7} "
          f"{'worker-s':>9} {'window s':>9} {'same span':>10} {'lost':>5} {'dupl.':>5} {'interr.':>7}")
    span = {p: max(r.window_s for r in results if r.pattern == p) for p in {r.pattern for r in results}}
    for r in results:
        same = r.worker_seconds + r.alive_at_end * (span[r.pattern] - r.window_s)
        print(f"{r.pattern:7} {r.config:10} {r.sent:5} {seconds(r.waits, 50):>10} {seconds(r.waits, 99):>7} "
              f"{seconds(r.waits):>7} {r.worker_seconds:9.1f} {r.window_s:9.1f} {same:10.1f} {r.lost:5} "
              f"{r.duplicated:5} {r.interrupted:7}")
    for r in results:
        if r.config != "elastic":
            continue
        absolute = [abs(e) for e in r.errors]
        print(f"\n{r.pattern}, elastic: {r.scale_out} scale-out(s), {r.scale_in} scale-in(s), largest {r.largest} "
              f"ready workers ({seconds([r.to_largest_s] if r.to_largest_s is not None else [])} s after the first "
              f"send); {len(r.errors)} scale-in drains estimated ({r.busy_drains} of a worker running a task as its "
              f"drain started), {r.unestimated} not")
        print(f"  drain end prediction error |retired - estimated|: p50 {seconds(absolute, 50)} s, "
              f"p90 {seconds(absolute, 90)} s, max {seconds(absolute)} s; signed p50 {seconds(r.errors, 50)} s "
              f"(positive: later than estimated)")
        at_shutdown = [abs(e) for e in r.errors_at_shutdown]
        print(f"  at the shutdown (held tasks done, retire left out): p50 {seconds(at_shutdown, 50)} s, "
              f"p90 {seconds(at_shutdown, 90)} s, max {seconds(at_shutdown)} s; signed p50 "
              f"{seconds(r.errors_at_shutdown, 50)} s")
        print(f"  scale-in drains of a worker that ran more tasks than another candidate (records): "
              f"{len(r.not_free_first)}")
        for line in r.not_free_first[:5]:
            print(f"    {line}")


async def run(args: argparse.Namespace, work: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
    results = []
    for name in args.patterns:
        for config in args.configs:
            began = time.monotonic()
            results.append(await run_one(args, work, url, name, config))
            print(f"  {name} / {config}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    report(args, results)
    print(f"\n(records, worker logs and the drainctl state in {work})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patterns", default=",".join(PATTERNS), help=f"comma-separated: {', '.join(PATTERNS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--min", type=int, default=1, help="the elastic pool's min_replicas, and the small fixed pool")
    parser.add_argument("--max", type=int, default=4, help="the elastic pool's max_replicas, and the large fixed pool")
    parser.add_argument("--burst-tasks", type=int, default=300)
    parser.add_argument("--wave-tasks", type=int, default=240)
    parser.add_argument("--long-share", type=float, default=0.04, help="share of 2-20 s tasks (others 0.1-1 s)")
    parser.add_argument("--out-cooldown", type=float, default=2.0, help="scale_out_cooldown_s of the elastic pool")
    parser.add_argument("--in-cooldown", type=float, default=5.0, help="scale_in_cooldown_s of the elastic pool")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--log-level", default="warning",
                        help="the controllers' log level (info: every scaling decision, as pool-scaled-out/-in)")
    args = parser.parse_args()
    args.patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if set(args.patterns) - set(PATTERNS) or not args.patterns:
        parser.error(f"--patterns: choose from {', '.join(PATTERNS)}")
    if set(args.configs) - set(CONFIGS) or not args.configs:
        parser.error(f"--configs: choose from {', '.join(CONFIGS)}")
    if not 1 <= args.min <= args.max or not 1 <= args.burst_tasks <= 2000 or not 1 <= args.wave_tasks <= 2000:
        parser.error("need 1 <= --min <= --max and 1..2000 tasks per pattern")
    logs.configure(level=args.log_level)
    work = Path(f"/tmp/drainctl-bench-autoscale-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    try:
        anyio.run(run, args, work)
    finally:
        rabbitmqctl("delete_vhost", VHOST)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
