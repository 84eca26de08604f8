"""Rollout cost: queue wait (sent -> started) during a rollout against steady state, same run; the overhead per
replaced worker beyond the work itself; and, under the same load in the same run, the two ways workers are
rolled without drainctl.

    .venv/bin/python bench/rollout.py [--rollouts 4] [--steady 10] [--rate 6] [--approaches A,B,..] [--timeline F]

A separate process publishes a steady load of short tasks (`--rate` per second, 0.1-0.9 s) to the queue
`bench` for the whole run. The queue wait of each task is measured from just before it is published to the
start record the task writes (CLOCK_MONOTONIC is system-wide on Linux). Three approaches each serve that
queue with a pool of 3 real workers (concurrency 2, the same Celery command line, environment and settings)
and roll it `--rollouts` times to a new version, each rollout after a steady window of `--steady` s:

- `drainctl`: the controller's pool (process runtime), rolled out surge-first with `reload`. Before each
  rollout a control window: the same process churn (3 Celery workers started and stopped on another queue)
  with no drainctl action at all.
- `stop-start`: one worker at a time, SIGTERM (Celery's warm shutdown: what `docker stop` or a rolling update
  without surge sends), wait until it has exited, start its replacement, wait until it answers `ping`.
- `trap`: one worker at a time, start the replacement and wait until it answers `ping`, then
  `cancel_consumer` on the old one and poll `inspect active` every 1 s until it runs nothing, then SIGTERM
  it and wait until it has exited (what a preStop / trap handler does).

The baselines' workers are plain processes the bench starts itself (each in its own session, ended by pid),
not through drainctl. The approaches run one after the other, in that order, on the same queue; only one
approach's workers consume in its windows. Between two approaches a handover: the next approach's 3
workers start, then the previous ones are drained (cancel_consumer, until they run and hold nothing) and
warm-stopped (drainctl's controller is stopped first). Every task belongs to the phase (approach, handover,
setup or end) in which it was sent. At the end the load stops and the queue is given up to
`--drain-timeout` s to empty.

Printed for each approach: queue wait p50/p99/max over its rollout windows, the mean rollout duration (per
pool rollout and per replaced worker), and from the tasks' own records the tasks sent in its phase that
were interrupted (an execution started and never ended), lost (never started by the end of the run) or
duplicated (started more than once). For drainctl also the steady and control windows and the targets: p99
during the rollout / p99 steady <= 1.2; per replaced worker, the overhead beyond start-up + readiness (last
task end -> retire) <= 0.5 s.

Defaults (4 rollouts per approach, 10 s steady windows): about 5.5 minutes on 2 cores; `--rollouts 3` about
4.5. `--approaches drainctl --rollouts 8 --steady 15` is drainctl's part alone as it ran before the baselines
(about 4.5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drainctl import config  # noqa: E402
from drainctl.app import Controller  # noqa: E402
from drainctl.config import PoolSettings  # noqa: E402
from drainctl.pools import command_for  # noqa: E402
from drainctl.runtime.process import ProcessRuntime  # noqa: E402
from tests.helpers import read_records  # noqa: E402

# Per run: workers a crashed run left behind cannot join the next run's queues.
VHOST = f"drainctl-bench-rollout-{uuid.uuid4().hex[:6]}"
HOST = socket.gethostname()
QUEUE = "bench"
APPROACHES = ("drainctl", "stop-start", "trap")
# Hostname prefix of each approach's workers (drainctl's pool is named "bench": bench-v2-xxxx@host).
PREFIXES = {"bench": "drainctl", "stopstart": "stop-start", "trap": "trap", "control": "control"}
#: The trap handler's poll interval (`inspect active` every 1 s) and how long it polls at most.
POLL_INTERVAL_S = 1.0
POLL_LIMIT_S = 120.0
#: Readiness: `ping` until the new worker answers, at most this long.
READY_TIMEOUT_S = 60.0
#: A queue wait this long is counted apart in the comparison (p99 of a few hundred tasks hides a handful).
SLOW_S = 0.5

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


def ms(values: list[float], q: float | None = None) -> str:
    """`values` at percentile `q` (the max if None) in ms, or '-' for no values."""
    if not values:
        return "-"
    return f"{1000 * (max(values) if q is None else percentile(values, q)):.1f}"


def seconds(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):.2f} s, max {max(values):.2f} s" if values else "-"


def approach_of(hostname: str) -> str:
    return PREFIXES.get(hostname.split("-", 1)[0], "?")


@dataclass
class Run:
    """What the phases record for the report. Times are CLOCK_MONOTONIC."""

    # (label, from): each label holds from its time to the next one's; a task belongs to the label current
    # when it was sent. Labels: setup, an approach, handover, end.
    boundaries: list[tuple[str, float]] = field(default_factory=list)
    windows: list[tuple[str, str, float, float]] = field(default_factory=list)  # (approach, kind, from, to)
    durations: dict[str, list[float]] = field(default_factory=dict)  # pool rollout durations by approach
    steps: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # baselines' steps by approach
    idle_noticed: list[tuple[str, float]] = field(default_factory=list)  # trap: (old worker, poll saw it idle)
    forced: Counter[str] = field(default_factory=Counter)  # SIGKILLs after stop_timeout_s, by approach
    poll_timeouts: int = 0
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, what, hostname): rollout steps
    # drainctl only
    overheads: list[tuple[float, float]] = field(default_factory=list)
    tails: list[float] = field(default_factory=list)

    def mark(self, label: str) -> None:
        self.boundaries.append((label, time.monotonic()))


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


def drain_quietly(app: Any, hostnames: list[str], timeout_s: float = 60.0) -> None:
    """Handover and end of run (not measured): cancel_consumer on each worker, then wait until none runs or
    holds a task (`active` and `reserved` both empty). Bounded by `timeout_s`."""
    if not hostnames:
        return
    app.control.cancel_consumer(QUEUE, destination=hostnames, reply=True, timeout=2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        inspect = app.control.inspect(destination=hostnames, timeout=2)
        active, reserved = inspect.active() or {}, inspect.reserved() or {}
        if all(active.get(h) == [] and reserved.get(h) == [] for h in hostnames):
            return
        time.sleep(0.2)
    print(f"  warning: {hostnames} still busy {timeout_s:g} s after cancel_consumer; stopping them anyway",
          file=sys.stderr)


@dataclass(eq=False)
class Plain:
    hostname: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


class PlainPool:
    """A baseline's workers: plain Celery processes the bench starts itself with the drainctl pool's command
    line (`-n <unique> -Q bench -c 2` appended as drainctl appends it), environment and cwd, each in its own
    session; a stop is SIGTERM to the main process (Celery's warm shutdown), by pid, and SIGKILL to its
    process group only after the pool's stop_timeout_s."""

    def __init__(self, approach: str, pool: PoolSettings, logs: Path, app: Any, marks: list[tuple[float, str, str]]
                 ) -> None:
        self.approach = approach
        self.marks = marks  # (monotonic, what, hostname), for --timeline
        self.prefix = approach.replace("-", "")
        self.pool = pool
        self.logs = logs
        self.app = app
        self.serving: list[Plain] = []
        self.started: list[Plain] = []
        self.forced = 0

    def start(self, version: str) -> Plain:
        hostname = f"{self.prefix}-{version}-{uuid.uuid4().hex[:6]}@{HOST}"
        log = (self.logs / f"{hostname}.log").open("ab")
        popen = subprocess.Popen(list(command_for(self.pool, version, hostname)), cwd=self.pool.cwd,
                                 env={**os.environ, **self.pool.env}, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        worker = Plain(hostname, popen, log)
        self.marks.append((time.monotonic(), "started", hostname))
        self.started.append(worker)
        self.serving.append(worker)
        return worker

    def wait_ready(self, worker: Plain) -> None:
        """Until the worker answers `ping` (its pidbox consumer starts after its task consumer)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.app.control.ping(destination=[worker.hostname], timeout=0.5):
            if worker.popen.poll() is not None:
                raise RuntimeError(f"{worker.hostname} exited with {worker.popen.returncode} before it answered "
                                   f"ping; see {self.logs}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.hostname} did not answer ping within {READY_TIMEOUT_S:g} s")
        self.marks.append((time.monotonic(), "ready", worker.hostname))

    def stop(self, worker: Plain) -> None:
        """SIGTERM (warm shutdown), wait until it has exited; SIGKILL its group after stop_timeout_s."""
        if worker in self.serving:
            self.serving.remove(worker)
        if worker.popen.poll() is None:
            self.marks.append((time.monotonic(), "sigterm", worker.hostname))
            worker.popen.terminate()  # Popen signals only a pid it has not reaped: never another process
            try:
                worker.popen.wait(self.pool.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.forced += 1
                print(f"  {worker.hostname} still running {self.pool.stop_timeout_s:g} s after SIGTERM: SIGKILL",
                      file=sys.stderr)
                os.killpg(worker.popen.pid, signal.SIGKILL)
                worker.popen.wait(30)
            self.marks.append((time.monotonic(), "exited", worker.hostname))
        worker.log.close()

    def start_pool(self, replicas: int) -> None:
        workers = [self.start("v1") for _ in range(replicas)]
        for worker in workers:
            self.wait_ready(worker)

    def retire_all(self) -> None:
        drain_quietly(self.app, [w.hostname for w in self.serving])
        for worker in list(self.serving):
            self.stop(worker)

    def cleanup(self) -> None:
        for worker in self.started:
            if worker.popen.poll() is None or not worker.log.closed:
                self.stop(worker)


def stop_then_start(plain: PlainPool, version: str, steps: dict[str, list[float]]) -> None:
    """(a) No surge: SIGTERM an old worker, wait for its exit, start its replacement, wait until it answers
    ping (a readiness probe), then the next one."""
    for old in list(plain.serving):
        began = time.monotonic()
        plain.stop(old)
        exited = time.monotonic()
        plain.wait_ready(plain.start(version))
        steps.setdefault("SIGTERM -> exited", []).append(exited - began)
        steps.setdefault("start -> answers ping", []).append(time.monotonic() - exited)


def trap_rollout(plain: PlainPool, version: str, steps: dict[str, list[float]], run: Run) -> None:
    """(b) The trap-handler way, one worker at a time: start the replacement, wait until it answers ping;
    cancel_consumer on the old one, `inspect active` every 1 s until it runs nothing; SIGTERM, wait for exit."""
    app = plain.app
    for old in list(plain.serving):
        began = time.monotonic()
        plain.wait_ready(plain.start(version))
        ready = time.monotonic()
        plain.marks.append((time.monotonic(), "cancel", old.hostname))
        app.control.cancel_consumer(QUEUE, destination=[old.hostname], reply=True, timeout=2)
        cancelled = time.monotonic()
        polls = 0
        while True:
            polls += 1
            active = app.control.inspect(destination=[old.hostname], timeout=2).active() or {}
            if active.get(old.hostname) == []:
                break
            if time.monotonic() - cancelled > POLL_LIMIT_S:
                run.poll_timeouts += 1
                break
            time.sleep(POLL_INTERVAL_S)
        idle = time.monotonic()
        plain.marks.append((idle, "idle", old.hostname))
        run.idle_noticed.append((old.hostname, idle))
        plain.stop(old)
        steps.setdefault("start -> answers ping", []).append(ready - began)
        steps.setdefault("cancel_consumer -> poll sees idle", []).append(idle - cancelled)
        steps.setdefault("polls", []).append(float(polls))
        steps.setdefault("SIGTERM -> exited", []).append(time.monotonic() - idle)


def baseline_phase(args: argparse.Namespace, plain: PlainPool, run: Run) -> None:
    """`--rollouts` rounds of a steady window, then a rollout of the whole pool; a short settle at the end."""
    approach = plain.approach
    steps = run.steps.setdefault(approach, {})
    durations = run.durations.setdefault(approach, [])
    for round_ in range(args.rollouts):
        steady_from = time.monotonic()
        time.sleep(args.steady)
        run.windows.append((approach, "steady", steady_from, time.monotonic()))
        version = f"v{round_ + 2}"
        began = time.monotonic()
        if approach == "stop-start":
            stop_then_start(plain, version, steps)
        else:
            trap_rollout(plain, version, steps, run)
        durations.append(time.monotonic() - began)
        run.windows.append((approach, "rollout", began, time.monotonic()))
        print(f"  {approach} rollout {round_ + 1}/{args.rollouts} to {version}: {durations[-1]:.1f} s", file=sys.stderr)
    time.sleep(3)
    run.forced[approach] += plain.forced


def wait_all_started(records: Path, sent_file: Path, timeout_s: float) -> None:
    """End of run: until every task sent has a start record, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sent = {line.split()[0] for line in sent_file.read_text().splitlines() if line.strip()}
        started = {r["uuid"] for r in read_records(records) if r["event"] == "start"}
        if sent <= started:
            return
        time.sleep(0.5)
    print(f"  warning: tasks not started {timeout_s:g} s after the load stopped (counted as lost)", file=sys.stderr)


async def run(args: argparse.Namespace) -> None:
    from tests.integration.taskapp import app

    work = Path(f"/tmp/drainctl-bench-rollout-{uuid.uuid4().hex[:6]}")
    records = work / "records"
    records.mkdir(parents=True)
    (work / "logs").mkdir()
    url = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
    app.conf.broker_url = url
    path = work / "drainctl.toml"

    def write(version: str) -> None:
        path.write_text(CONFIG.format(state=work / "state", version=version, python=sys.executable, url=url,
                                      records=records, root=ROOT, acks_late="0" if args.acks_early else "1"))

    write("v1")
    pool = config.load(path).pool[0]
    sent_file = work / "sent.txt"
    result = Run()
    result.mark("setup")
    # The load comes from a process of its own, so that the controller's work never delays a publish.
    loader = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        [sys.executable, "-c", LOADER, url, str(args.rate), str(args.task_min), str(args.task_max), str(sent_file)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    plains: list[PlainPool] = []
    retire_previous: Callable[[], Any] | None = None
    try:
        if "drainctl" in args.approaches:
            ctl = Controller(config.load(path), url, runtime=ProcessRuntime(work / "state", "bench-rollout"),
                             config_path=path)
            await drainctl_phase(args, ctl, url, records, write, result)
            retire_previous = partial(retire_drainctl_pool, work, app, pool.stop_timeout_s)
        for approach in APPROACHES[1:]:
            if approach not in args.approaches:
                continue
            if retire_previous is not None:
                result.mark("handover")
            plain = PlainPool(approach, pool, work / "logs", app, result.marks)
            plains.append(plain)
            await anyio.to_thread.run_sync(plain.start_pool, pool.replicas)
            if retire_previous is not None:
                await retire_previous()
            await anyio.sleep(3)
            result.mark(approach)
            await anyio.to_thread.run_sync(baseline_phase, args, plain, result)
            retire_previous = partial(anyio.to_thread.run_sync, plain.retire_all)
        result.mark("end")
        loader.terminate()
        await anyio.to_thread.run_sync(loader.wait, 30)
        await anyio.to_thread.run_sync(wait_all_started, records, sent_file, args.drain_timeout)
        if retire_previous is not None:
            await retire_previous()
    finally:
        if loader.poll() is None:
            loader.kill()
        with anyio.CancelScope(shield=True):
            runtime = ProcessRuntime(work / "state", "bench-rollout")
            for handle in await runtime.adopt():
                await runtime.stop(handle, 30)
            for plain in plains:
                await anyio.to_thread.run_sync(plain.cleanup)
    report(args, records, sent_file, result)
    print(f"\n(records, worker logs and the drainctl state in {work})")


async def retire_drainctl_pool(work: Path, app: Any, stop_timeout_s: float) -> None:
    """Handover: the controller is stopped; its workers are drained (cancel_consumer, until idle) and then
    warm-stopped (SIGTERM, by pid) through the process runtime's state files."""
    runtime = ProcessRuntime(work / "state", "bench-rollout")
    handles = await runtime.adopt()
    await anyio.to_thread.run_sync(drain_quietly, app, [h.hostname for h in handles])
    async with anyio.create_task_group() as tg:
        for handle in handles:
            tg.start_soon(runtime.stop, handle, stop_timeout_s)


async def drainctl_phase(args: argparse.Namespace, ctl: Controller, url: str, records: Path,
                         write: Callable[[str], None], run: Run) -> None:
    """drainctl's rounds: a steady window, a control window, a rollout; a last steady window; then the
    controller stops (its workers keep running until the handover retires them)."""
    def at(version: str) -> bool:
        members = ctl.fleet.of_pool("bench")
        return (len(members) == 3 and all(m.version == version and m.ready_at is not None for m in members)
                and not ctl.fleet.rollouts and not ctl.drains.active)

    durations = run.durations.setdefault("drainctl", [])
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        await ctl.wait_for(lambda: at("v1"), 120)
        await anyio.sleep(3)
        run.mark("drainctl")
        for round_ in range(args.rollouts):
            steady_from = time.monotonic()
            await anyio.sleep(args.steady)
            run.windows.append(("drainctl", "steady", steady_from, time.monotonic()))
            control_from = time.monotonic()
            await churn_without_drainctl(ctl, url, records)
            run.windows.append(("drainctl", "control", control_from, time.monotonic()))
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
            run.windows.append(("drainctl", "rollout", began_at, time.monotonic()))
            run.overheads.extend(ready.values())
            for member in ctl.fleet.of_pool("bench"):
                run.marks.append((member.started_at, "started", member.hostname))
                if member.hostname in seen:
                    run.marks.append((seen[member.hostname], "online", member.hostname))
                if member.ready_at is not None:
                    run.marks.append((member.ready_at, "ready", member.hostname))
            for drain in ctl.drains.finished:
                if drain.hostname in before:
                    run.marks.append((drain.started_at, "drain", drain.hostname))
                    if drain.shutdown_at is not None:
                        run.marks.append((drain.shutdown_at, "shutdown", drain.hostname))
                    if drain.finished_at is not None:
                        run.marks.append((drain.finished_at, "retired", drain.hostname))
            run.tails.extend(d.reaction_s for d in ctl.drains.finished
                             if d.hostname in before and d.reaction_s is not None)
            print(f"  drainctl rollout {round_ + 1}/{args.rollouts} to {version}: {durations[-1]:.1f} s",
                  file=sys.stderr)
        steady_from = time.monotonic()
        await anyio.sleep(args.steady)
        run.windows.append(("drainctl", "steady", steady_from, time.monotonic()))
        run.mark("handover")
        tg.cancel_scope.cancel()


@dataclass
class Tally:
    sent: int = 0
    redelivered: int = 0  # first start from a redelivered message: a worker held it and gave it back unrun
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


def report(args: argparse.Namespace, records: Path, sent_file: Path, run: Run) -> None:
    all_records = read_records(records)
    starts: dict[str, list[dict[str, Any]]] = {}
    ends: Counter[str] = Counter()
    for record in all_records:  # sorted by time: starts[t][0] is the first start
        if record["event"] == "start":
            starts.setdefault(record["uuid"], []).append(record)
        elif record["event"] == "end":
            ends[record["uuid"]] += 1
    began = {task_id: float(s[0]["monotonic"]) for task_id, s in starts.items()}
    sent: dict[str, tuple[float, str, tuple[str, str] | None]] = {}  # id -> (sent at, phase, window)
    for line in sent_file.read_text().splitlines():
        task_id, at_s = line.split()
        at = float(at_s)
        phase = next((label for label, since in reversed(run.boundaries) if since <= at), "setup")
        window = next(((a, kind) for a, kind, lo, hi in run.windows if lo <= at < hi), None)
        sent[task_id] = (at, phase, window)
    waits: dict[tuple[str, str], list[float]] = {}
    for task_id, (at, _, window) in sent.items():
        if window is not None and task_id in began:
            waits.setdefault(window, []).append(began[task_id] - at)
    tallies: dict[str, Tally] = {}
    for task_id, (_, phase, _) in sent.items():
        tally = tallies.setdefault(phase, Tally())
        tally.sent += 1
        count = len(starts.get(task_id, ()))
        if count and starts[task_id][0]["redelivered"]:
            tally.redelivered += 1
        if count == 0:
            tally.lost.append(task_id)
        if count > 1:
            tally.duplicated.append(task_id)
        if ends[task_id] < count:
            tally.interrupted.append(task_id)
    # Tasks sent in an approach's windows that a worker of another approach started: must be none.
    foreign = [(task_id, window[0], starts[task_id][0]["hostname"]) for task_id, (_, _, window) in sent.items()
               if window is not None and task_id in starts and approach_of(starts[task_id][0]["hostname"]) != window[0]]
    if args.timeline:
        Path(args.timeline).write_text(json.dumps({
            "boundaries": run.boundaries, "windows": run.windows, "marks": sorted(set(run.marks)),
            "tasks": [(at, began[t] - at, phase, window, starts[t][0]["hostname"])
                      for t, (at, phase, window) in sent.items() if t in began]}))
    acks = "acks-early" if args.acks_early else "acks_late"
    load = (f"{args.rate:g}/s of {args.task_min:g}-{args.task_max:g} s tasks on 3 workers x 2 slots, {acks}, "
            "prefetch multiplier 1")
    ran = [a for a in APPROACHES if a in args.approaches]
    if "drainctl" in ran:
        report_drainctl(args, run, waits, sent, began, load)
    for approach in (a for a in ran if a != "drainctl"):
        steps = run.steps.get(approach, {})
        print(f"\n{approach}, per replaced worker ({len(steps.get('SIGTERM -> exited', []))}):")
        for name, values in steps.items():
            if name == "polls":
                print(f"  inspect-active polls per drain: p50 {percentile(values, 50):.0f}, max {max(values):.0f}")
            else:
                print(f"  {name}: {seconds(values)}")
        if approach == "trap":
            last_end: dict[str, float] = {}
            for record in all_records:
                if record["event"] == "end":
                    last_end[record["hostname"]] = float(record["monotonic"])
            noticed = [at - last_end[h] for h, at in run.idle_noticed if h in last_end and last_end[h] <= at]
            print(f"  old worker's last task end -> poll sees idle: {seconds(noticed)} "
                  f"({run.poll_timeouts} polls gave up after {POLL_LIMIT_S:g} s)")

    print(f"\nall approaches, same run, same load ({load}); {args.rollouts} pool rollouts each")
    print("queue wait (sent -> started) of the tasks sent during the rollouts; interrupted / lost / duplicated of "
          "all tasks sent in the approach's phase")
    print(f"(> {SLOW_S:g} s: rollout-window tasks that waited longer; steady p99: the approach's steady windows; "
          "redeliv.: tasks of the phase first started from a redelivered message, one a worker held and gave back)")
    header = (f"{'approach':11} {'s/rollout':>9} {'s/worker':>8} {'tasks':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8} {f'> {SLOW_S:g} s':>7} {'steady p99':>10} {'sent':>6} {'interr.':>7} {'lost':>5} "
              f"{'dupl.':>5} {'redeliv.':>8}")
    print(header)
    for approach in ran:
        durations = run.durations.get(approach, [])
        mean = sum(durations) / len(durations) if durations else float("nan")
        rollout = waits.get((approach, "rollout"), [])
        tally = tallies.get(approach, Tally())
        print(f"{approach:11} {mean:9.1f} {mean / 3:8.2f} {len(rollout):6} {ms(rollout, 50):>8} {ms(rollout, 99):>8} "
              f"{ms(rollout):>8} {sum(w > SLOW_S for w in rollout):7} {ms(waits.get((approach, 'steady'), []), 99):>10} "
              f"{tally.sent:6} {len(tally.interrupted):7} {len(tally.lost):5} {len(tally.duplicated):5} "
              f"{tally.redelivered:8}")
    others = [(label, tally) for label, tally in tallies.items() if label not in ran]
    print("other tasks (sent before the first phase, during a handover or after the load stopped): " + "; ".join(
        f"{label} {t.sent} sent, {len(t.interrupted)}/{len(t.lost)}/{len(t.duplicated)} interrupted/lost/duplicated"
        for label, t in others))
    forced = sum(run.forced.values())
    print(f"baseline workers SIGKILLed after stop_timeout_s: {forced}; tasks of a phase's windows started by "
          f"another approach's worker: {len(foreign)}")
    for task_id, window_of, hostname in foreign[:5]:
        print(f"  {task_id} (sent in {window_of}'s windows) started on {hostname}")
    for label, tally in tallies.items():
        for what, ids in (("interrupted", tally.interrupted), ("lost", tally.lost), ("duplicated", tally.duplicated)):
            for task_id in ids[:5]:
                hosts = ", ".join(f"{r['hostname']} (redelivered {r['redelivered']})" for r in starts.get(task_id, ()))
                print(f"  {what} ({label}): {task_id}, sent at {sent[task_id][0]:.2f}, started on: {hosts or '-'}")


def report_drainctl(args: argparse.Namespace, run: Run, waits: dict[tuple[str, str], list[float]],
                    sent: dict[str, tuple[float, str, tuple[str, str] | None]], began: dict[str, float],
                    load: str) -> None:
    mine = {kind: waits.get(("drainctl", kind), []) for kind in ("steady", "control", "rollout")}
    print(f"\ndrainctl: queue wait (sent -> started), {load}")
    print(f"{'window':10} {'tasks':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, values in mine.items():
        print(f"{kind:10} {len(values):6} {ms(values, 50):>8} {ms(values, 99):>8} {ms(values):>8}")
    ratio = percentile(mine["rollout"], 99) / percentile(mine["steady"], 99)
    control = percentile(mine["rollout"], 99) / percentile(mine["control"], 99)
    print(f"p99 rollout / steady: {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}); "
          f"p99 rollout / control: {control:.2f}")
    print("(control: the same process churn — 3 workers started and stopped — with no drainctl action)")
    rollout_windows = [(lo, hi) for a, kind, lo, hi in run.windows if (a, kind) == ("drainctl", "rollout")]
    slow = [at for task_id, (at, _, window) in sent.items()
            if window == ("drainctl", "rollout") and task_id in began
            and began[task_id] - at > percentile(mine["steady"], 99)]
    print(churn_attribution(slow, rollout_windows, run.marks))
    durations = run.durations["drainctl"]
    print(f"({args.rollouts} rollouts, {sum(durations):.1f} s in all; steady windows of {args.steady:g} s between)")
    startup = [o[0] for o in run.overheads]
    gate = [o[1] for o in run.overheads]
    print(f"\ndrainctl, per replaced worker ({len(run.overheads)}): start-up (process start -> worker-online) p50 "
          f"{percentile(startup, 50):.2f} s; readiness gate after online p50 {1000 * percentile(gate, 50):.0f} ms, "
          f"max {1000 * max(gate):.0f} ms; last task end -> retire p50 {ms(run.tails, 50)} ms, "
          f"max {ms(run.tails)} ms")
    worst = max(gate) + max(run.tails)
    print(f"overhead beyond start-up, worst case: {worst:.3f} s (target <= 0.5 s: {'met' if worst <= 0.5 else 'NOT met'})")


def churn_attribution(slow: list[float], rollout_windows: list[tuple[float, float]],
                      marks: Iterable[tuple[float, str, str]]) -> str:
    """Where the rollout windows' slow tasks were sent: while a new worker process was starting (process start
    -> worker-online) or an old one was exiting (its last 0.1 s), against how much of the time that is."""
    by_host: dict[str, dict[str, float]] = {}
    for when, what, hostname in marks:
        if approach_of(hostname) == "drainctl":
            by_host.setdefault(hostname, {})[what] = when
    churn = [(m["started"], m["online"]) for m in by_host.values() if "started" in m and "online" in m]
    churn += [(m["retired"] - 0.1, m["retired"]) for m in by_host.values() if "retired" in m]
    total = sum(hi - lo for lo, hi in rollout_windows)
    covered = sum(max(0.0, min(hi, c_hi) - max(lo, c_lo)) for lo, hi in rollout_windows for c_lo, c_hi in churn)
    in_churn = sum(1 for at in slow if any(lo <= at <= hi for lo, hi in churn))
    return (f"rollout tasks slower than steady p99: {len(slow)}, of which {in_churn} were sent while a worker process "
            f"was starting or exiting ({100 * covered / total:.0f} % of the rollouts' time, overlaps counted twice)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steady", type=float, default=10.0, help="steady window before each rollout, s")
    parser.add_argument("--rollouts", type=int, default=4, help="pool rollouts per approach")
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--task-min", type=float, default=0.1)
    parser.add_argument("--task-max", type=float, default=0.9)
    parser.add_argument("--approaches", default=",".join(APPROACHES),
                        help=f"comma-separated, run in this order whatever the order given: {', '.join(APPROACHES)} "
                             "(default: all)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="at the end, how long the queue may take to empty once the load stops, s")
    parser.add_argument("--acks-early", action="store_true",
                        help="Celery's default acks instead of acks_late (Airflow's default): with acks-early a worker "
                             "whose slots are all busy still reserves tasks, which then wait for a slot")
    parser.add_argument("--timeline", help="write phases, windows, rollout steps and every task's wait to this JSON file")
    args = parser.parse_args()
    args.approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    unknown = set(args.approaches) - set(APPROACHES)
    if unknown or not args.approaches:
        parser.error(f"--approaches: unknown {sorted(unknown)}; choose from {', '.join(APPROACHES)}")
    if args.rollouts < 1:
        parser.error("--rollouts must be at least 1")
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    try:
        anyio.run(run, args)
    finally:
        rabbitmqctl("delete_vhost", VHOST)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
