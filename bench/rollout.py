"""Rollout cost: queue wait (sent -> started) during a rollout against steady state, same run, and the
overhead per replaced worker beyond the work itself.

    .venv/bin/python bench/rollout.py [--rollouts 8] [--steady 15] [--rate 6] [--timeline FILE]

A pool of 3 real workers (process runtime, concurrency 2) serves a steady load of short tasks. The
queue wait of each task is measured from just before it is published to the start record the task
writes (CLOCK_MONOTONIC is system-wide on Linux). Then the pool is rolled out to a new version under
the same load. Targets: p99 during the rollout / p99 steady <= 1.2; per replaced worker, the
overhead beyond start-up + readiness (last task end -> retire) <= 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drainctl import config  # noqa: E402
from drainctl.app import Controller  # noqa: E402
from drainctl.runtime.process import ProcessRuntime  # noqa: E402

# Per run: workers a crashed run left behind cannot join the next run's queues.
VHOST = f"drainctl-bench-rollout-{uuid.uuid4().hex[:6]}"

LOADER = """
import sys, time
from tests.integration.taskapp import app, sleep
url, rate, lo, hi, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
app.conf.broker_url = url
app.conf.broker_transport_options = {"confirm_publish": True}
next_at = time.monotonic()
with open(path, "a") as out:
    for i in range(100_000):
        sent_at = time.monotonic()
        result = sleep.apply_async((lo + (i % 5) * (hi - lo) / 4,), queue="bench")
        out.write(f"{result.id} {sent_at}\\n")
        out.flush()
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
"""

CONFIG = """
[controller]
id = "bench-rollout"
state_dir = "{state}"
[broker]
reply_timeout_s = 1.0
[[pool]]
name = "bench"
queues = ["bench"]
replicas = 3
concurrency = 2
version = "{version}"
command = ["{python}", "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-E", "--without-mingle",
           "--without-gossip", "-l", "WARNING"]
env = {{ DRAINCTL_TEST_BROKER_URL = "{url}", TASKAPP_PREFETCH = "1", TASKAPP_ACKS_LATE = "{acks_late}", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}" }}
cwd = "{root}"
stop_timeout_s = 60
"""


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def first_starts(records: Path) -> dict[str, dict[str, Any]]:
    """Each task's first start record, by task id."""
    out: dict[str, dict[str, Any]] = {}
    for path in records.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["event"] == "start":
                out.setdefault(record["uuid"], record)
    return out


def online(ctl: Controller, hostname: str) -> bool:
    worker = ctl.cluster.worker(hostname)
    return worker is not None and worker.state.value == "online"


async def churn_without_drainctl(ctl: Controller, url: str, records: Path) -> None:
    """The control window: the process churn of a rollout (3 Celery workers started, each stopped once
    online), with no drainctl action at all. What a rollout costs beyond this is drainctl's."""
    for _ in range(3):
        hostname = f"control-{uuid.uuid4().hex[:6]}@bench"
        worker = subprocess.Popen(  # noqa: ASYNC220 - the control, outside the controller on purpose
            [sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-E", "--without-mingle",
             "--without-gossip", "-l", "WARNING", "-n", hostname, "-Q", "bench-control", "-c", "2"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "DRAINCTL_TEST_BROKER_URL": url,
                           "TASKAPP_RECORD_DIR": str(records)})
        try:
            await ctl.wait_for(partial(online, ctl, hostname), 60)
        finally:
            worker.terminate()
            await anyio.to_thread.run_sync(worker.wait, 60)


async def run(args: argparse.Namespace) -> None:
    from tests.integration.taskapp import app

    work = Path(f"/tmp/drainctl-bench-rollout-{uuid.uuid4().hex[:6]}")
    records = work / "records"
    records.mkdir(parents=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
    app.conf.broker_url = url
    path = work / "drainctl.toml"

    def write(version: str) -> None:
        path.write_text(CONFIG.format(state=work / "state", version=version, python=sys.executable, url=url,
                                      records=records, root=ROOT, acks_late="0" if args.acks_early else "1"))

    write("v1")
    ctl = Controller(config.load(path), url, runtime=ProcessRuntime(work / "state", "bench-rollout"),
                     config_path=path)
    sent_file = work / "sent.txt"
    windows: list[tuple[str, float, float]] = []  # (phase, start, end) on CLOCK_MONOTONIC
    # The load comes from a process of its own, so that the controller's work never delays a publish.
    loader = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        [sys.executable, "-c", LOADER, url, str(args.rate), str(args.task_min), str(args.task_max), str(sent_file)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    overheads: list[tuple[float, float]] = []
    marks: list[tuple[float, str, str]] = []  # (monotonic, what, hostname): the rollouts' steps, for --timeline
    tails: list[float] = []
    durations: list[float] = []
    try:
        await measure(args, ctl, url, records, write, loader, windows, marks, overheads, tails, durations)
    finally:
        loader.kill()
        runtime = ProcessRuntime(work / "state", "bench-rollout")
        with anyio.CancelScope(shield=True):
            for handle in await runtime.adopt():
                await runtime.stop(handle, 30)
    report(args, records, sent_file, windows, marks, overheads, tails, durations)


async def measure(args: argparse.Namespace, ctl: Controller, url: str, records: Path, write: Callable[[str], None],
                  loader: subprocess.Popen[bytes], windows: list[tuple[str, float, float]],
                  marks: list[tuple[float, str, str]], overheads: list[tuple[float, float]], tails: list[float],
                  durations: list[float]) -> None:
    def at(version: str) -> bool:
        members = ctl.fleet.of_pool("bench")
        return (len(members) == 3 and all(m.version == version and m.ready_at is not None for m in members)
                and not ctl.fleet.rollouts and not ctl.drains.active)

    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        await ctl.wait_for(lambda: at("v1"), 120)
        await anyio.sleep(3)
        for round_ in range(args.rollouts):
            steady_from = time.monotonic()
            await anyio.sleep(args.steady)
            windows.append(("steady", steady_from, time.monotonic()))
            control_from = time.monotonic()
            await churn_without_drainctl(ctl, url, records)
            windows.append(("control", control_from, time.monotonic()))
            version = f"v{round_ + 2}"
            before = {m.hostname for m in ctl.fleet.of_pool("bench")}
            seen: dict[str, float] = {}
            ready: dict[str, tuple[float, float]] = {}

            def track(version: str = version, before: set[str] = before, seen: dict[str, float] = seen,
                      ready: dict[str, tuple[float, float]] = ready) -> bool:
                for member in ctl.fleet.of_pool("bench"):
                    if member.hostname in before:
                        continue
                    worker = ctl.cluster.worker(member.hostname)
                    if worker is not None:
                        seen.setdefault(member.hostname, worker.first_seen)
                    if member.ready_at is not None and member.hostname not in ready:
                        online = seen.get(member.hostname, member.ready_at)
                        ready[member.hostname] = (online - member.started_at, member.ready_at - online)
                return at(version)

            write(version)
            began_at = time.monotonic()
            await ctl.reload("bench")
            await ctl.wait_for(track, 300)
            durations.append(time.monotonic() - began_at)
            windows.append(("rollout", began_at, time.monotonic()))
            overheads.extend(ready.values())
            for member in ctl.fleet.of_pool("bench"):
                marks.append((member.started_at, "started", member.hostname))
                if member.hostname in seen:
                    marks.append((seen[member.hostname], "online", member.hostname))
                if member.ready_at is not None:
                    marks.append((member.ready_at, "ready", member.hostname))
            for drain in ctl.drains.finished:
                if drain.hostname in before:
                    marks.append((drain.started_at, "drain", drain.hostname))
                    if drain.shutdown_at is not None:
                        marks.append((drain.shutdown_at, "shutdown", drain.hostname))
                    if drain.finished_at is not None:
                        marks.append((drain.finished_at, "retired", drain.hostname))
            tails.extend(d.reaction_s for d in ctl.drains.finished if d.hostname in before and d.reaction_s is not None)
            print(f"  rollout {round_ + 1}/{args.rollouts} to {version}: {durations[-1]:.1f} s", file=sys.stderr)
        steady_from = time.monotonic()
        await anyio.sleep(args.steady)
        windows.append(("steady", steady_from, time.monotonic()))
        loader.terminate()
        loader.wait(30)
        await anyio.sleep(3)
        tg.cancel_scope.cancel()


def report(args: argparse.Namespace, records: Path, sent_file: Path, windows: list[tuple[str, float, float]],
           marks: list[tuple[float, str, str]], overheads: list[tuple[float, float]], tails: list[float],
           durations: list[float]) -> None:
    start_records = first_starts(records)
    began = {task_id: float(record["monotonic"]) for task_id, record in start_records.items()}
    waits: dict[str, list[float]] = {"steady": [], "control": [], "rollout": []}
    sent: dict[str, tuple[float, str]] = {}
    for line in sent_file.read_text().splitlines():
        task_id, at_s = line.split()
        when = next((phase for phase, lo, hi in windows if lo <= float(at_s) < hi), "other")
        sent[task_id] = (float(at_s), when)
    for task_id, (sent_at, when) in sent.items():
        if when in waits and task_id in began:
            waits[when].append(began[task_id] - sent_at)
    if args.timeline:
        Path(args.timeline).write_text(json.dumps({
            "windows": windows, "marks": sorted(set(marks)),
            "tasks": [(at_s, began[t] - at_s, when, start_records[t]["hostname"])
                      for t, (at_s, when) in sent.items() if t in began]}))
    lost = [t for t, (_, when) in sent.items() if when in waits and t not in began]
    print(f"\nqueue wait (sent -> started), {args.rate:g}/s of {args.task_min:g}-{args.task_max:g} s tasks "
          f"on 3 workers x 2 slots, {'acks-early' if args.acks_early else 'acks_late'}, prefetch multiplier 1")
    print(f"{'phase':10} {'tasks':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for when, values in waits.items():
        print(f"{when:10} {len(values):6} {1000 * percentile(values, 50):8.1f} {1000 * percentile(values, 99):8.1f} "
              f"{1000 * max(values):8.1f}")
    ratio = percentile(waits["rollout"], 99) / percentile(waits["steady"], 99)
    control = percentile(waits["rollout"], 99) / percentile(waits["control"], 99)
    print(f"p99 rollout / steady: {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}); "
          f"p99 rollout / control: {control:.2f}; tasks not started: {len(lost)}")
    print("(control: the same process churn — 3 workers started and stopped — with no drainctl action)")
    print(churn_attribution(waits, sent, began, windows, marks))
    rollout_seconds = sum(durations)
    print(f"({args.rollouts} rollouts, {rollout_seconds:.1f} s in all; steady windows of {args.steady:g} s between)")
    startup = [o[0] for o in overheads]
    gate = [o[1] for o in overheads]
    print(f"\nper replaced worker ({len(overheads)}): start-up (process start -> worker-online) p50 "
          f"{percentile(startup, 50):.2f} s; readiness gate after online p50 {1000 * percentile(gate, 50):.0f} ms, "
          f"max {1000 * max(gate):.0f} ms; last task end -> retire p50 {1000 * percentile(tails, 50):.1f} ms, "
          f"max {1000 * max(tails):.1f} ms")
    worst = max(gate) + max(tails)
    print(f"overhead beyond start-up, worst case: {worst:.3f} s (target <= 0.5 s: {'met' if worst <= 0.5 else 'NOT met'})")


def churn_attribution(waits: dict[str, list[float]], sent: dict[str, tuple[float, str]], began: dict[str, float],
                      windows: list[tuple[str, float, float]], marks: list[tuple[float, str, str]]) -> str:
    """Where the rollout windows' slow tasks were sent: while a new worker process was starting (process start
    -> worker-online) or an old one was exiting (its last 0.1 s), against how much of the time that is."""
    by_host: dict[str, dict[str, float]] = {}
    for when, what, hostname in marks:
        by_host.setdefault(hostname, {})[what] = when
    churn = [(m["started"], m["online"]) for m in by_host.values() if "started" in m and "online" in m]
    churn += [(m["retired"] - 0.1, m["retired"]) for m in by_host.values() if "retired" in m]
    rollout_windows = [(lo, hi) for phase, lo, hi in windows if phase == "rollout"]
    total = sum(hi - lo for lo, hi in rollout_windows)
    covered = sum(max(0.0, min(hi, c_hi) - max(lo, c_lo)) for lo, hi in rollout_windows for c_lo, c_hi in churn)
    threshold = percentile(waits["steady"], 99)
    slow = [at for task_id, (at, when) in sent.items()
            if when == "rollout" and task_id in began and began[task_id] - at > threshold]
    in_churn = sum(1 for at in slow if any(lo <= at <= hi for lo, hi in churn))
    return (f"rollout tasks slower than steady p99: {len(slow)}, of which {in_churn} were sent while a worker process "
            f"was starting or exiting ({100 * covered / total:.0f} % of the rollouts' time, overlaps counted twice)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steady", type=float, default=15.0)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--task-min", type=float, default=0.1)
    parser.add_argument("--task-max", type=float, default=0.9)
    parser.add_argument("--acks-early", action="store_true",
                        help="Celery's default acks instead of acks_late (Airflow's default): with acks-early a worker "
                             "whose slots are all busy still reserves tasks, which then wait for a slot")
    parser.add_argument("--timeline", help="write windows, rollout steps and every task's wait to this JSON file")
    args = parser.parse_args()
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    try:
        anyio.run(run, args)
    finally:
        rabbitmqctl("delete_vhost", VHOST)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
