"""Soak: consecutive rollouts of two pools under a steady, mixed load; counts every task's fate.

    .venv/bin/python bench/soak.py                       # 50 rollouts, tasks of 0.1-30 s (about 30 min)
    .venv/bin/python bench/soak.py --rollouts 3 --max-task 3 --json     # the short version CI runs

Two pools of real Celery workers (process runtime, 2 replicas x concurrency 2 each, surge 1) serve
a load published by a process of its own, with publisher confirms: tasks of 0.1 s up to --max-task
seconds (most of them short), some with an ETA, some that fail, some that retry themselves once or
twice. Meanwhile the controller rolls both pools out --rollouts times, alternating two versions,
each rollout started by a config rewrite + reload as soon as the previous one has finished.

Every execution records itself (`tests/integration/taskapp.py`), identified by (uuid, retries). At
the end, once every task has had the time to finish, it prints:

- sent / completed: tasks published (confirmed) and tasks whose every expected execution ended;
- lost: a task with an expected execution that never started;
- duplicated: an execution (uuid, retries) that started more than once;
- interrupted: an execution that started and never ended;
- redelivered: executions of a message the broker had delivered before (an ETA task handed over by
  a retired worker, as designed) — counted apart, not as a fault;
- stuck: rollouts that did not finish in time, drains that did not end `retired`, workers left over;
- queue wait (sent, or ETA, -> started) percentiles.

Exit code 0 when every bad count is zero, 1 otherwise. Bounded: --rollouts, --max-minutes, and a
final wait of at most --settle seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drainctl import config, logs  # noqa: E402
from drainctl.app import Controller  # noqa: E402
from drainctl.runtime.process import ProcessRuntime  # noqa: E402
from tests.helpers import read_records  # noqa: E402

POOLS = (("alpha", "soak-alpha"), ("beta", "soak-beta"))
REPLICAS = 2
CONCURRENCY = 2

# The load: one line per confirmed publish, "id kind queue sent_monotonic due_monotonic executions".
LOADER = """
import random, sys, time
from tests.integration.taskapp import app, broken, flaky, sleep
url, rate, max_task, eta_max, path, seed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
queues = sys.argv[7].split(",")
app.conf.broker_url = url
app.conf.broker_transport_options = {"confirm_publish": True}
rng = random.Random(seed)

def duration():
    r = rng.random()
    if r < 0.70:
        return rng.uniform(0.1, min(2.0, max_task))
    if r < 0.95:
        return rng.uniform(min(2.0, max_task), min(8.0, max_task))
    return rng.uniform(min(10.0, max_task), max_task)

next_at = time.monotonic()
with open(path, "a") as out:
    for i in range(1_000_000):
        queue = queues[i % len(queues)]
        seconds = duration()
        r = rng.random()
        countdown = 0.0
        executions = 1
        if r < 0.10:
            kind, task, args = "failing", broken, (seconds,)
        elif r < 0.20:
            failures = 1 + (i % 2)
            kind, task, args, executions = "retried", flaky, (seconds, failures), failures + 1
        elif r < 0.30:
            kind, task, args = "eta", sleep, (seconds,)
            countdown = rng.uniform(1.0, eta_max)
        else:
            kind, task, args = "plain", sleep, (seconds,)
        sent_at = time.monotonic()
        options = {"queue": queue}
        if countdown:
            options["countdown"] = countdown
        result = task.apply_async(args, **options)
        out.write(f"{result.id} {kind} {queue} {sent_at} {sent_at + countdown} {executions}\\n")
        out.flush()
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
"""

CONFIG = """
[controller]
id = "{controller_id}"
state_dir = "{state}"
[broker]
reply_timeout_s = 1.0
{pools}
"""

POOL = """
[[pool]]
name = "{name}"
queues = ["{queue}"]
replicas = {replicas}
concurrency = {concurrency}
surge = 1
version = "{version}"
command = ["{python}", "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-E", "--without-mingle",
           "--without-gossip", "-l", "WARNING"]
env = {{ DRAINCTL_TEST_BROKER_URL = "{url}", TASKAPP_PREFETCH = "1", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}" }}
cwd = "{root}"
stop_timeout_s = 120
"""


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Sent:
    def __init__(self, line: str) -> None:
        task_id, kind, queue, sent_at, due_at, executions = line.split()
        self.id = task_id
        self.kind = kind
        self.queue = queue
        self.sent_at = float(sent_at)
        self.due_at = float(due_at)
        self.executions = int(executions)


def read_sent(path: Path) -> dict[str, Sent]:
    out: dict[str, Sent] = {}
    for line in path.read_text().splitlines():
        if line.count(" ") == 5:  # a line the loader was writing when it was stopped is incomplete
            task = Sent(line)
            out[task.id] = task
    return out


def tally(sent: dict[str, Sent], records: list[dict[str, Any]]) -> dict[str, Any]:
    starts = Counter((r["uuid"], r["retries"]) for r in records if r["event"] == "start")
    ends = Counter((r["uuid"], r["retries"]) for r in records if r["event"] == "end")
    first_start: dict[str, float] = {}
    for r in records:
        if r["event"] == "start" and r["retries"] == 0:
            first_start.setdefault(r["uuid"], float(r["monotonic"]))
    lost = [t.id for t in sent.values() if any((t.id, n) not in starts for n in range(t.executions))]
    completed = [t.id for t in sent.values() if all(ends[(t.id, n)] >= 1 for n in range(t.executions))]
    unknown = sorted({u for u, _ in starts} - set(sent))
    waits = [first_start[t.id] - t.due_at for t in sent.values() if t.id in first_start]
    by_kind = Counter(t.kind for t in sent.values())
    return {
        "sent": len(sent),
        "sent_by_kind": dict(sorted(by_kind.items())),
        "executions": sum(starts.values()),
        "completed": len(completed),
        "lost": sorted(lost),
        "duplicated": sorted(f"{u}/{n}" for (u, n), c in starts.items() if c > 1),
        "interrupted": sorted(f"{u}/{n}" for (u, n), c in starts.items() if ends[(u, n)] < c),
        "unexpected": unknown,
        "redelivered": sum(1 for r in records if r["event"] == "start" and r.get("redelivered")),
        "queue_wait_ms": {f"p{q}": round(1000 * percentile(waits, q), 1) for q in (50, 90, 99)}
        | {"max": round(1000 * max(waits, default=float("nan")), 1)},
    }


async def run(args: argparse.Namespace, vhost: str) -> dict[str, Any]:
    from tests.integration.taskapp import app

    work = Path(args.work or f"/tmp/drainctl-soak-{uuid.uuid4().hex[:6]}")
    records = work / "records"
    records.mkdir(parents=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    app.conf.broker_url = url
    path = work / "drainctl.toml"
    controller_id = f"soak-{uuid.uuid4().hex[:6]}"

    def write(version: str) -> None:
        pools = "".join(
            POOL.format(name=name, queue=queue, replicas=REPLICAS, concurrency=CONCURRENCY, version=version,
                        python=sys.executable, url=url, records=records, root=ROOT)
            for name, queue in POOLS)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(CONFIG.format(controller_id=controller_id, state=work / "state", pools=pools))
        os.replace(tmp, path)

    write("v1")
    ctl = Controller(config.load(path), url, runtime=ProcessRuntime(work / "state", controller_id),
                     config_path=path)
    sent_file = work / "sent.txt"

    def at(version: str) -> bool:
        return (not ctl.fleet.rollouts and not ctl.drains.active
                and all(len(ctl.fleet.of_pool(name)) == REPLICAS
                        and all(m.version == version and m.ready_at is not None for m in ctl.fleet.of_pool(name))
                        for name, _ in POOLS))

    stuck: list[str] = []
    max_alive = 0
    durations: list[float] = []
    deadline = time.monotonic() + 60 * args.max_minutes
    loader: subprocess.Popen[bytes] | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(ctl.run)
            await ctl.wait_for(lambda: at("v1"), 120)
            # The load comes from a process of its own, so that the controller's work never delays a publish.
            loader = subprocess.Popen(  # noqa: ASYNC220 - started once, before the rollouts
                [sys.executable, "-c", LOADER, url, str(args.rate), str(args.max_task), str(args.eta_max),
                 str(sent_file), str(args.seed), ",".join(q for _, q in POOLS)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

            async def watch_alive() -> None:
                nonlocal max_alive
                while True:  # sampled for the report; the cap itself is enforced (and tested) elsewhere
                    max_alive = max(max_alive, len(ctl.fleet.members))
                    await anyio.sleep(0.2)

            tg.start_soon(watch_alive)
            await anyio.sleep(args.warmup)
            for round_ in range(args.rollouts):
                if time.monotonic() > deadline:
                    stuck.append(f"time limit of {args.max_minutes:g} min reached after {round_} rollouts")
                    break
                version = "v2" if round_ % 2 == 0 else "v1"
                write(version)
                began = time.monotonic()
                await ctl.reload("soak")
                with contextlib.suppress(TimeoutError):
                    await ctl.wait_for(partial(at, version), args.rollout_timeout)
                durations.append(time.monotonic() - began)
                if not at(version):
                    stuck.append(f"rollout {round_ + 1} to {version} not finished after {args.rollout_timeout:g} s")
                    break
                print(f"  rollout {round_ + 1}/{args.rollouts} to {version}: {durations[-1]:.1f} s "
                      f"(tasks sent so far: {len(read_sent(sent_file))})", file=sys.stderr, flush=True)
            loader.terminate()
            loader.wait(30)
            sent = read_sent(sent_file)
            # Let every task end: the longest task, its ETA and its retries (1 s countdown each).
            settle_until = time.monotonic() + args.settle
            while time.monotonic() < settle_until:
                if not tally(sent, read_records(records))["lost"] and not any(w.tasks for w in ctl.cluster):
                    break
                await anyio.sleep(1)
            outcomes = dict(ctl.drains.outcomes)
            rollouts = Counter(r.outcome for r in ctl.fleet.history)
            leftover = [w.hostname for w in ctl.cluster if w.hostname.split("-")[0] in dict(POOLS)
                        and w.hostname not in ctl.fleet.members
                        and w.state.value != "offline"]
            tg.cancel_scope.cancel()
    finally:
        if loader is not None and loader.poll() is None:
            loader.kill()
        runtime = ProcessRuntime(work / "state", controller_id)
        handles = await runtime.adopt()
        for handle in handles:
            await runtime.stop(handle, 60)
    result = tally(read_sent(sent_file), read_records(records))
    if leftover:
        stuck.append(f"workers left over: {', '.join(leftover)}")
    not_retired = {k: v for k, v in outcomes.items() if k != "retired" and v}
    if not_retired:
        stuck.append(f"drains that did not end retired: {not_retired}")
    if len(handles) != REPLICAS * len(POOLS):
        stuck.append(f"{len(handles)} worker processes at the end, expected {REPLICAS * len(POOLS)}")
    result.update({
        "rollouts": len(durations),
        "rollout_outcomes": dict(rollouts),
        "rollout_seconds": {"p50": round(percentile(durations, 50), 1), "max": round(max(durations, default=0), 1)},
        "drain_outcomes": outcomes,
        "max_workers_alive": max_alive,
        "cap": (REPLICAS + 1) * len(POOLS),
        "stuck": stuck,
        "work_dir": str(work),
    })
    return result


def report(result: dict[str, Any]) -> None:
    bad = {k: len(result[k]) for k in ("lost", "duplicated", "interrupted", "unexpected", "stuck")}
    print(f"\nsoak: {result['rollouts']} rollouts of 2 pools ({result['rollout_outcomes']}), "
          f"rollout duration p50 {result['rollout_seconds']['p50']} s, max {result['rollout_seconds']['max']} s")
    print(f"tasks sent {result['sent']} {result['sent_by_kind']}, executions {result['executions']}, "
          f"completed {result['completed']}")
    print("lost {lost}, duplicated {duplicated}, interrupted {interrupted}, unexpected {unexpected}, "
          "stuck {stuck}".format(**bad))
    print(f"redelivered (ETA tasks handed over by retired workers): {result['redelivered']}")
    print(f"queue wait (sent or ETA -> started): {result['queue_wait_ms']} ms")
    print(f"drains {result['drain_outcomes']}; workers alive at most {result['max_workers_alive']} "
          f"(cap {result['cap']})")
    for line in result["stuck"]:
        print(f"  stuck: {line}")
    for key in ("lost", "duplicated", "interrupted", "unexpected"):
        if result[key]:
            print(f"  {key}: {', '.join(result[key][:20])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1.5, help="tasks per second, both pools together")
    parser.add_argument("--max-task", type=float, default=30.0, help="longest task, seconds (shortest: 0.1)")
    parser.add_argument("--eta-max", type=float, default=20.0, help="longest ETA countdown, seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first rollout")
    parser.add_argument("--rollout-timeout", type=float, default=300.0)
    parser.add_argument("--max-minutes", type=float, default=90.0)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", help="work directory (default: a new one under /tmp)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--log-level", default="warning", help="the controller's log level (stderr)")
    args = parser.parse_args()
    logs.configure(level=args.log_level)
    vhost = f"drainctl-soak-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        result = anyio.run(run, args, vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    bad = any(result[k] for k in ("lost", "duplicated", "interrupted", "unexpected", "stuck"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
