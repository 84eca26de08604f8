"""Drain reaction latency: from a drained worker's last task end to the retire command.

drainctl (events, one confirming targeted inspect) against the polling approach drainctl replaces
(`cancel_consumer`, then `celery inspect active` in a loop with a 1 s and a 5 s sleep), measured in
the same run on the same machine, against real workers and the real RabbitMQ.

    .venv/bin/python bench/drain_latency.py [--drains 30] [--polls 10]

Latency is measured on the wall clock from the task's own `end` record (written by the task just
before it returns) to the moment each approach decides to retire the worker. Also printed: the
controller's CPU time per second while a drain waits on a long task (should be ≈ 0: no polling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drainctl import config  # noqa: E402
from drainctl.app import Controller  # noqa: E402
from drainctl.core.drain import Outcome  # noqa: E402
from drainctl.runtime.base import WorkerSpec  # noqa: E402
from drainctl.runtime.process import ProcessRuntime  # noqa: E402

VHOST = "drainctl-bench-drain"
HOST = socket.gethostname()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def worker_command(name: str, queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-n", f"{name}@{HOST}",
            "-Q", queue, "-c", "1", "-E", "--without-mingle", "--without-gossip", "-l", "WARNING"]


def worker_env(url: str, records: Path) -> dict[str, str]:
    return {"DRAINCTL_TEST_BROKER_URL": url, "TASKAPP_PREFETCH": "1", "TASKAPP_RECORD_DIR": str(records),
            "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def task_end(records: Path, task_id: str) -> float:
    """CLOCK_MONOTONIC of the task's `end` record: system-wide on Linux, so comparable with ours."""
    for path in records.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["uuid"] == task_id and record["event"] == "end":
                return float(record["monotonic"])
    raise LookupError(task_id)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def drainctl_latencies(url: str, drains: int, work_dir: Path) -> tuple[list[float], list[float], float]:
    from tests.integration.taskapp import app, sleep

    app.conf.broker_url = url
    records = work_dir / "records"
    records.mkdir(parents=True)
    settings = config.from_mapping({"controller": {"id": "bench-drain", "state_dir": str(work_dir / "state")},
                                    "broker": {"reply_timeout_s": 1.0}})
    ctl = Controller(settings, url, runtime=ProcessRuntime(work_dir / "state", "bench-drain"))
    end_to_end: list[float] = []
    reaction: list[float] = []
    idle_cpu_per_s = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        await ctl.wait_for(ctl.synced.is_set, 30)
        for i in range(drains + 1):
            queue = f"lat-{i}"
            hostname = f"lat{i}-{uuid.uuid4().hex[:6]}@{HOST}"
            spec = WorkerSpec(hostname=hostname, pool="bench", version="v1", queues=(queue,),
                              command=tuple(worker_command(hostname.split("@")[0], queue)),
                              env=worker_env(url, records), cwd=str(ROOT), stop_timeout_s=30)
            await ctl.start_worker(spec)
            await ctl.wait_for(lambda h=hostname, q=queue: (w := ctl.cluster.worker(h)) is not None  # type: ignore[misc]
                               and w.queues == (q,), 60)
            seconds = 10.0 if i == drains else 0.5
            result = await anyio.to_thread.run_sync(partial(sleep.apply_async, (seconds,), queue=queue))
            task_id = str(result.id)
            await ctl.wait_for(lambda h=hostname, t=task_id: (w := ctl.cluster.worker(h)) is not None  # type: ignore[misc]
                               and t in w.tasks and w.tasks[t].started_at is not None, 30)
            drain = await ctl.request_drain(hostname, force=True, requested_by="bench")
            if i == drains:
                # The last drain waits on a 10 s task: measure what the controller spends while it waits.
                before = resource.getrusage(resource.RUSAGE_SELF)
                started = time.monotonic()
                await ctl.wait_for(lambda d=drain: d.reaction_s is not None or not d.active, 60)  # type: ignore[misc]
                after = resource.getrusage(resource.RUSAGE_SELF)
                spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                idle_cpu_per_s = spent / (time.monotonic() - started)
            await ctl.wait_for(lambda d=drain: not d.active, 60)  # type: ignore[misc]
            assert drain.outcome is Outcome.RETIRED, drain.detail
            if i < drains and drain.shutdown_at is not None and drain.reaction_s is not None:
                # The controller's clock is time.monotonic too.
                end_to_end.append(drain.shutdown_at - task_end(records, task_id))
                reaction.append(drain.reaction_s)
            print(f"  drainctl drain {i + 1}/{drains + 1}: reaction {1000 * (drain.reaction_s or 0):.1f} ms",
                  file=sys.stderr)
        tg.cancel_scope.cancel()
    return end_to_end, reaction, idle_cpu_per_s


def polling_latencies(url: str, polls: int, sleep_s: float, work_dir: Path) -> tuple[list[float], list[float]]:
    """The approach drainctl replaces: cancel_consumer, then `celery inspect active` every `sleep_s`."""
    from tests.integration.taskapp import app, sleep

    app.conf.broker_url = url
    records = work_dir / f"poll-{sleep_s:g}"
    records.mkdir(parents=True)
    env = {**os.environ, **worker_env(url, records)}
    latencies: list[float] = []
    inspect_cpu: list[float] = []
    for i in range(polls):
        queue = f"poll-{sleep_s:g}-{i}"
        name = f"poll{i}-{uuid.uuid4().hex[:6]}"
        hostname = f"{name}@{HOST}"
        log = open(work_dir / f"{name}.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(worker_command(name, queue), env=env, cwd=ROOT, stdout=log, stderr=log,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not app.control.ping(destination=[hostname], timeout=0.5):
                assert time.monotonic() < deadline, "worker did not start"
            result = sleep.apply_async((0.5 + (i % 5) * 0.3,), queue=queue)
            app.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=2)
            while True:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run(
                    [sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "inspect", "active",
                     "-d", hostname, "-j"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                inspect_cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
                noticed = time.monotonic()
                replies = json.loads(out.stdout or "{}")
                active = replies.get(hostname)
                if active == [] and any(r for r in records.glob("*.jsonl")):
                    try:
                        latencies.append(noticed - task_end(records, str(result.id)))
                        break
                    except LookupError:
                        pass  # not even started yet (still prefetched)
                time.sleep(sleep_s)
            print(f"  polling {sleep_s:g}s {i + 1}/{polls}: {latencies[-1]:.2f} s", file=sys.stderr)
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
    return latencies, inspect_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drains", type=int, default=30)
    parser.add_argument("--polls", type=int, default=10)
    args = parser.parse_args()
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
    work_dir = Path(f"/tmp/drainctl-bench-drain-{uuid.uuid4().hex[:6]}")
    try:
        end_to_end, reaction, idle_cpu = anyio.run(drainctl_latencies, url, args.drains, work_dir)
        poll1, cpu1 = polling_latencies(url, args.polls, 1.0, work_dir)
        poll5, cpu5 = polling_latencies(url, args.polls, 5.0, work_dir)
    finally:
        rabbitmqctl("delete_vhost", VHOST)
    rows = [
        ("drainctl (events + 1 targeted inspect)", end_to_end),
        ("polling, 1 s sleep", poll1),
        ("polling, 5 s sleep", poll5),
    ]
    print(f"\ndrain reaction latency: last task end -> retire decision ({len(end_to_end)} drainctl drains, "
          f"{args.polls} polled drains each)")
    print(f"{'approach':40} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10}")
    for label, values in rows:
        if not values:  # --polls 0
            continue
        print(f"{label:40} {1000 * percentile(values, 50):10.1f} {1000 * percentile(values, 99):10.1f} "
              f"{1000 * max(values):10.1f}")
    print(f"\ndrainctl, controller side only (task-succeeded received -> shutdown sent): "
          f"p50 {1000 * percentile(reaction, 50):.1f} ms, p99 {1000 * percentile(reaction, 99):.1f} ms")
    if poll1 and poll5:
        print(f"ratio p50 polling-1s / drainctl: {percentile(poll1, 50) / percentile(end_to_end, 50):.0f}x; "
              f"polling-5s / drainctl: {percentile(poll5, 50) / percentile(end_to_end, 50):.0f}x")
        print(f"one `celery inspect active` call costs {statistics.mean(cpu1 + cpu5):.2f} s CPU on average")
    print(f"controller CPU while a drain waits on a 10 s task: {1000 * idle_cpu:.1f} ms per second")
    target = percentile(end_to_end, 99) <= 0.025
    print(f"target p99 <= 25 ms: {'met' if target else 'NOT met'}")


if __name__ == "__main__":
    main()
