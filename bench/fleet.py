"""Fleet: 1,000 simulated Celery workers at live rate while a real pool is rolled out; what the controller costs.

    .venv/bin/python bench/fleet.py                           # 1,000 workers, 2,000 tasks/s, 30 s warm-up + 60 s
    .venv/bin/python bench/fleet.py --workers 100 --rate 200 --warmup 10 --seconds 10    # a short check
    .venv/bin/python bench/fleet.py --plan-cost               # the reducer's cost per input and per event (no broker)

Processes, each measured or kept apart on purpose:

- the controller: `drainctl run --config F` (the CLI's own code: `drainctl.cli.main`), in a child process of
  its own, with the HTTP API on a free loopback port. The child wraps `Controller.apply` (the public hook
  every reducer input goes through) to record, for each event batch applied, the wall time, its event count
  and its oldest and newest event `timestamp`, and how long `apply` took; nothing in drainctl is changed;
- `--publishers` publisher processes (fleet_sim.py): the simulated workers, `worker-heartbeat` every 2 s
  each and tasks at `--rate` per second (received / started / succeeded, 5 % failed) in `task.multi` lists,
  paced on the wall clock in ticks of `--tick-ms`, published with py-amqp to `celeryev` in a throwaway vhost;
- a real pool `bench` (process runtime, 2 replicas x concurrency 2 of `celery worker` on
  tests/integration/taskapp.py), which the controller starts, under a light load of its own (`--pool-rate`
  tasks/s of 0.1-0.5 s, from a loader process, each execution recorded by the task); in the middle of the
  measurement window the config file is rewritten with version v2 and the controller gets SIGHUP (the CLI's
  reload: `controller.reload("sighup")`), so the pool is rolled out under the fleet's load;
- this parent: samples /proc/<controller pid>/stat and /status every `--sample-s`, and polls /status and
  /metrics (one persistent HTTP connection each, every `--poll-s`), timing each response to its last byte.

Simulated workers answer no remote control. The controller asks every worker it discovers what it holds
(5 inspect methods, up to 5 attempts) and turns its events on; a worker that stays silent is asked again
every no_remote_control_after_s / 3 and, after 3 unanswered questions over no_remote_control_after_s while it
heartbeats, is marked as not answering (a warning, once; drains of it refused) and then asked every
reconcile_min_interval_s. They are no pool members, so nothing else follows. The bench sets
reconcile_min_interval_s to `--reconcile-interval` (600 s) so that, once judged (during the warm-up), they
are not asked again during the window; `--reconcile-interval 30` shows drainctl's default.

Measured over the window [warm-up end, warm-up end + --seconds]:

- controller CPU % of one core (utime + stime deltas of its own process; its workers are processes of their
  own), RSS (VmRSS) at most and the kernel's VmHWM (peak since start, discovery included);
- event lag: for each batch applied, applied wall time - the oldest event's `timestamp` in it (the publisher
  stamps events as it builds each message, right before publishing): the worst event of each batch, counted
  once per event (an upper bound per event);
- /status and /metrics latency p50 / p99 / max;
- the publishers' achieved rate, and the rollout's duration (from the controller's journal: started ->
  finished) and outcome; every pool task sent is checked to have started exactly once and ended.

Targets: controller CPU <= 30 % of one core, RSS <= 80 MB, event lag p99 <= 50 ms, /status p99 <= 100 ms,
/metrics p99 <= 100 ms. Exit code 0 when all are met and the rollout succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CONTROLLER_ID = "fleet-bench"
POOL = "bench"
REPLICAS = 2
LAG_RECORD = struct.Struct("<ddIdd")  # applied wall, oldest timestamp, events, newest timestamp, apply seconds
TARGETS = {"cpu_pct": 30.0, "rss_mb": 80.0, "lag_p99_ms": 50.0, "status_p99_ms": 100.0, "metrics_p99_ms": 100.0}

CONFIG = """
[controller]
id = "{controller_id}"
state_dir = "{state}"
reconcile_min_interval_s = {reconcile_interval}
no_remote_control_after_s = {no_rc_after}
[broker]
reply_timeout_s = 1.0
[http]
listen = "127.0.0.1:{port}"
[[pool]]
name = "{pool}"
queues = ["{pool}"]
replicas = {replicas}
concurrency = 2
surge = 1
version = "{version}"
command = ["{python}", "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-E", "--without-mingle",
           "--without-gossip", "-l", "WARNING"]
env = {{ DRAINCTL_TEST_BROKER_URL = "{url}", TASKAPP_PREFETCH = "1", TASKAPP_ACKS_LATE = "1", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}" }}
cwd = "{root}"
stop_timeout_s = 60
"""


# --------------------------------------------------------------------------- children

def controller_child(config_path: str, lag_path: str, log_level: str) -> None:
    """`drainctl run --config F`, with `Controller.apply` wrapped to record each event batch applied."""
    from drainctl import launcher

    launcher.without_rich()  # as the `drainctl` command does
    from drainctl import cli
    from drainctl.app import Controller
    from drainctl.inputs import EventsIn

    out = open(lag_path, "wb", buffering=1 << 16)  # noqa: SIM115 - closed in finally, after the CLI returns
    pack = LAG_RECORD.pack
    original = Controller.apply
    clock = time.perf_counter
    flushed = [0.0]

    def apply(self: Controller, item: Any) -> None:
        if type(item) is not EventsIn:
            original(self, item)
            return
        began = clock()
        original(self, item)
        elapsed = clock() - began
        applied = time.time()
        stamps = [event.timestamp for decoded in item.batch for event in decoded.events]
        if stamps:
            out.write(pack(applied, min(stamps), len(stamps), max(stamps), elapsed))
            if applied - flushed[0] > 0.5:  # the parent reads the recent records to see the controller caught up
                flushed[0] = applied
                out.flush()

    Controller.apply = apply  # type: ignore[method-assign]
    pauses: dict[str, list[float]] = {}  # "second gen" -> [collections, seconds, longest]
    began_gc = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began_gc[0] = clock()
            return
        elapsed = clock() - began_gc[0]
        entry = pauses.setdefault(f"{int(time.time())} {info['generation']}", [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += elapsed
        entry[2] = max(entry[2], elapsed)

    gc.callbacks.append(on_gc)
    try:
        cli.main(["run", "--config", config_path, "--log-format", "json", "--log-level", log_level],
                 standalone_mode=False)
    finally:
        out.close()
        gc.callbacks.remove(on_gc)
        Path(lag_path).with_suffix(".gc.json").write_text(json.dumps(pauses))


LOADER = """
import signal, sys, time
from tests.integration.taskapp import app, sleep
url, rate, seconds, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
app.conf.broker_url = url
app.conf.broker_transport_options = {"confirm_publish": True}
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
next_at = time.monotonic()
end = next_at + seconds
with open(path, "a") as out:
    for i in range(int(rate * seconds) + 1):
        if stop or time.monotonic() > end:
            break
        result = sleep.apply_async((0.1 + (i % 5) * 0.1,), queue="bench")
        out.write(f"{result.id}\\n")
        out.flush()
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
"""


# --------------------------------------------------------------------------- parent: helpers

def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def weighted_percentile(pairs: list[tuple[float, int]], q: float) -> float:
    """Percentile of values each counted `weight` times."""
    if not pairs:
        return float("nan")
    ordered = sorted(pairs)
    total = sum(w for _, w in ordered)
    rank = q / 100 * (total - 1)
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen > rank:
            return value
    return ordered[-1][0]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> tuple[float, float, float, float] | None:
    """(CPU seconds of the process itself, VmRSS MB, VmHWM MB, seconds its main thread waited for a CPU),
    or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (children not included)
    mem = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines()
           if line.startswith(("VmRSS:", "VmHWM:"))}
    return cpu, mem.get("VmRSS", float("nan")), mem.get("VmHWM", float("nan")), waited


def machine_busy() -> tuple[float, float]:
    """(busy seconds, all seconds) of every CPU together, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


RABBITMQ_COMMS = ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")


def cpu_census(controller: int, publishers: set[int]) -> dict[int, tuple[str, float]]:
    """pid -> (what it is, CPU seconds so far) for every process on the machine."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if pid == controller:
            label = "controller"
        elif pid in publishers:
            label = "publisher(s)"
        elif pid == os.getpid():
            label = "bench (pollers)"
        elif b"import app, sleep" in cmdline:
            label = "pool loader"
        elif b"tests.integration.taskapp" in cmdline or b"celeryd" in cmdline:  # Celery rewrites its argv
            label = "pool workers"
        elif comm in RABBITMQ_COMMS:
            label = "rabbitmq"
        else:
            label = f"other: {comm}"
        out[pid] = (label, cpu)
    return out


def census_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
                 ) -> dict[str, float]:
    """% of one core by what, over the window; a process that started in it counts from 0 (one that
    ended in it is missing: the old pool workers)."""
    out: dict[str, float] = {}
    for pid, (label, cpu) in after.items():
        used = cpu - before.get(pid, (label, 0.0))[1]
        out[label] = out.get(label, 0.0) + 100 * used / seconds
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class Recorder:
    """Background samplers: /proc of the controller, and the two HTTP pollers."""

    pid: int
    port: int
    poll_s: float
    sample_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    proc: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # wall, cpu s, rss, hwm, wait s
    latency: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # path -> (wall, s, bytes)
    errors: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)  # the last /status document
    metrics: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (wall, fleet-wide series)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target, args in ((self._sample, ()), (self._poll, ("/status", 0.0)),
                             (self._poll, ("/metrics", self.poll_s / 2))):
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def _sample(self) -> None:
        for _ in range(1_000_000):  # bounded; ends with self.stop
            sample = proc_sample(self.pid)
            if sample is not None:
                self.proc.append((time.time(), *sample))
            if self.stop.wait(self.sample_s):
                return

    def _poll(self, path: str, offset: float) -> None:
        self.stop.wait(offset)
        records = self.latency.setdefault(path, [])
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic()
        for _ in range(1_000_000):  # bounded; ends with self.stop
            if self.stop.is_set():
                break
            wall, began = time.time(), time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - began
                if response.status != 200:
                    raise http.client.HTTPException(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException):
                self.errors[path] = self.errors.get(path, 0) + 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            else:
                records.append((wall, elapsed, len(body)))
                if path == "/status":
                    self.status = json.loads(body)
                else:
                    self.metrics.append((wall, fleet_series(body.decode())))
            next_at += self.poll_s
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        connection.close()


def http_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / every_s) + 2):
        try:
            if predicate():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:g} s")


def pool_doc(status: dict[str, Any]) -> dict[str, Any]:
    return next((p for p in status.get("pools", []) if p["name"] == POOL), {})


def pool_at(port: int, version: str) -> bool:
    pool = pool_doc(http_json(port, "/status"))
    return (pool.get("version_target") == version and pool.get("ready") == REPLICAS
            and pool.get("alive") == REPLICAS and pool.get("rollout") is None)


def fleet_series(body: str) -> dict[str, float]:
    """The series of a /metrics scrape that are not per worker: {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("drainctl_") and not line.startswith("drainctl_worker_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def recent_lag_ms(path: Path, seconds: float) -> list[float]:
    """Lag of the batches applied in the last `seconds` (from the tail of the lag file)."""
    size = LAG_RECORD.size
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(0, end - end % size - 20_000 * size)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    now = time.time()
    records = (LAG_RECORD.unpack_from(data, i) for i in range(0, len(data) - size + 1, size))
    return [1000 * (r[0] - r[1]) for r in records if r[0] >= now - seconds]


def read_lag(path: Path) -> list[tuple[float, float, int, float, float]]:
    data = path.read_bytes()
    size = LAG_RECORD.size
    return [LAG_RECORD.unpack_from(data, i) for i in range(0, len(data) - size + 1, size)]


# --------------------------------------------------------------------------- parent: the run

@dataclass
class Run:
    args: argparse.Namespace
    vhost: str
    work: Path
    port: int = field(default_factory=free_port)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    publishers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)  # the machine's CPU over the window, by process

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def write_config(self, version: str) -> None:
        args = self.args
        text = CONFIG.format(
            controller_id=CONTROLLER_ID, state=self.work / "state", reconcile_interval=args.reconcile_interval,
            no_rc_after=args.no_remote_control_after, port=self.port, pool=POOL, replicas=REPLICAS,
            version=version, python=sys.executable, url=self.url, records=self.work / "records", root=ROOT)
        path = self.work / "drainctl.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None, **kwargs: Any
              ) -> subprocess.Popen[bytes]:
        with (self.work / log).open("ab") as err:
            child = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stderr=err,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kwargs)
        self.children.append(child)
        return child

    def start_controller(self) -> subprocess.Popen[bytes]:
        self.write_config("v1")
        return self.spawn([__file__, "--role", "controller", "--config", str(self.work / "drainctl.toml"),
                           "--lag-file", str(self.work / "lag.bin"), "--log-level", self.args.log_level],
                          "controller.log", {"DRAINCTL_BROKER_URL": self.url}, stdout=subprocess.DEVNULL)

    def start_publishers(self) -> None:
        args = self.args
        share = args.workers // args.publishers
        duration = args.max_warmup + args.seconds + args.rollout_timeout + 10  # stopped by SIGTERM before
        for i in range(args.publishers):
            first = i * share
            count = share if i < args.publishers - 1 else args.workers - first
            self.publishers.append(self.spawn(
                [__file__, "--role", "publisher", "--url", self.url, "--first", str(first), "--count", str(count),
                 "--workers", str(args.workers), "--rate", str(args.rate * count / args.workers),
                 "--duration", str(duration), "--tick-ms", str(args.tick_ms), "--seed", str(args.seed + i),
                 "--task-mean", str(args.task_mean), "--ramp", str(args.ramp)],
                f"publisher-{i}.log", stdout=subprocess.PIPE))

    def stop_publishers(self) -> None:
        for child in self.publishers:
            child.send_signal(signal.SIGTERM)
        for index, child in enumerate(self.publishers):
            try:
                out, _ = child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate(timeout=10)
            lines = out.decode().strip().splitlines()
            if lines:
                self.results.append(json.loads(lines[-1]))
            else:
                print(f"  publisher {index} left no result (exit code {child.returncode}); see publisher-{index}.log",
                      file=sys.stderr)

    def stop_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def stop_pool_workers(work: Path) -> int:
    """The pool's workers outlive the controller (own sessions): stop them by pid through the runtime's state."""
    import anyio

    from drainctl.runtime.process import ProcessRuntime

    async def stop() -> int:
        runtime = ProcessRuntime(work / "state", CONTROLLER_ID)
        handles = await runtime.adopt()
        async with anyio.create_task_group() as tg:
            for handle in handles:
                tg.start_soon(runtime.stop, handle, 60)
        return len(handles)

    return anyio.run(stop)


def pool_tasks(work: Path) -> dict[str, Any]:
    from tests.helpers import read_records

    sent_path = work / "pool-sent.txt"
    sent = set(sent_path.read_text().split()) if sent_path.exists() else set()
    records = read_records(work / "records")
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    for record in records:
        book = starts if record["event"] == "start" else ends
        book[record["uuid"]] = book.get(record["uuid"], 0) + 1
    return {"sent": len(sent), "started": sum(1 for t in sent if t in starts),
            "lost": sorted(t for t in sent if t not in starts),
            "duplicated": sorted(t for t, n in starts.items() if n > 1),
            "interrupted": sorted(t for t, n in starts.items() if ends.get(t, 0) < n)}


def execute(run: Run) -> Recorder:
    """Start everything, wait out warm-up and window (the reload in its middle), then stop the load."""
    args, marks = run.args, run.marks
    (run.work / "records").mkdir(parents=True)
    controller = run.start_controller()
    wait_until("controller synced", lambda: http_json(run.port, "/healthz")["synced"], 60)
    wait_until("pool ready at v1", lambda: pool_at(run.port, "v1"), 180, 0.5)
    recorder = Recorder(controller.pid, run.port, args.poll_s, args.sample_s)
    recorder.start()
    run.spawn(["-c", LOADER, run.url, str(args.pool_rate), str(args.max_warmup + args.seconds + args.rollout_timeout),
               str(run.work / "pool-sent.txt")], "loader.log")
    run.start_publishers()
    marks["load"] = time.time()
    print(f"load started: {args.workers} workers joining over {args.ramp:g} s", file=sys.stderr, flush=True)
    marks["window_from"] = wait_settled(run)
    marks["window_to"] = marks["window_from"] + args.seconds
    print(f"window of {args.seconds:g} s from {marks['window_from'] - marks['load']:.0f} s after the load started",
          file=sys.stderr, flush=True)
    publishers = {p.pid for p in run.publishers}
    census = (time.time(), machine_busy(), cpu_census(controller.pid, publishers))
    time.sleep(max(0.0, marks["window_from"] + args.reload_at * args.seconds - time.time()))
    run.write_config("v2")
    marks["reload"] = time.time()
    controller.send_signal(signal.SIGHUP)
    print("config rewritten with v2; SIGHUP sent", file=sys.stderr, flush=True)
    time.sleep(max(0.0, marks["window_to"] - time.time()))
    seconds = time.time() - census[0]
    busy, total = machine_busy()
    run.cpu = {"by_process": census_delta(census[2], cpu_census(controller.pid, publishers), seconds),
               "machine_pct": 100 * (busy - census[1][0]) / seconds,
               "machine_cores": round((total - census[1][1]) / seconds)}
    try:
        wait_until("rollout to v2 finished", lambda: rollout_of(recorder.status) is not None,
                   max(1.0, marks["reload"] + args.rollout_timeout - time.time()), 0.5)
    except TimeoutError as exc:
        print(f"  {exc}", file=sys.stderr)
    marks["load_end"] = time.time()
    for child in run.children[1:]:
        if child not in run.publishers and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the pool loader
    run.stop_publishers()
    try:
        wait_until("every pool task started", lambda: not pool_tasks(run.work)["lost"], 60, 1.0)
    except TimeoutError as exc:
        print(f"  {exc}", file=sys.stderr)
    recorder.close()
    return recorder


def wait_settled(run: Run) -> float:
    """The window starts after --warmup, once the controller has caught up: the p99 lag of the last 3 s under
    --settled-ms; at --max-warmup at the latest (then the report says so)."""
    args = run.args
    load = run.marks["load"]
    time.sleep(max(0.0, load + args.warmup - time.time()))
    for _ in range(int(args.max_warmup) + 2):
        lags = recent_lag_ms(run.work / "lag.bin", 3.0)
        if lags and percentile(lags, 99) <= args.settled_ms:
            return time.time()
        if time.time() >= load + args.max_warmup:
            run.marks["unsettled_p99_ms"] = percentile(lags, 99) if lags else float("nan")
            print(f"  not caught up after {args.max_warmup:g} s (lag p99 of the last 3 s: "
                  f"{run.marks['unsettled_p99_ms']:.0f} ms): measuring anyway", file=sys.stderr, flush=True)
            return time.time()
        time.sleep(1.0)
    return time.time()


def rollout_of(status: dict[str, Any]) -> dict[str, Any] | None:
    """The finished rollout to v2 in /status (from the controller's journal), if any."""
    for entry in pool_doc(status).get("history", []):
        if entry["to_version"] == "v2" and entry["outcome"] is not None:
            return entry
    return None


# --------------------------------------------------------------------------- parent: the figures

def window_cpu(proc: list[tuple[float, float, float, float, float]], lo: float, hi: float) -> dict[str, float]:
    inside = [s for s in proc if lo <= s[0] <= hi]
    if len(inside) < 2:
        return {"cpu_pct": float("nan"), "cpu_pct_max_interval": float("nan"), "rss_mb_max": float("nan")}
    first, last = inside[0], inside[-1]
    steps = [100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(inside) if b[0] > a[0]]
    return {"cpu_pct": 100 * (last[1] - first[1]) / (last[0] - first[0]), "cpu_pct_max_interval": max(steps),
            "cpu_s": last[1] - first[1], "seconds": last[0] - first[0],
            "runqueue_wait_ms_per_s": 1000 * (last[4] - first[4]) / (last[0] - first[0]),
            "rss_mb_max": max(s[2] for s in inside), "rss_mb_min": min(s[2] for s in inside)}


def window_lag(records: list[tuple[float, float, int, float, float]], lo: float, hi: float) -> dict[str, float]:
    inside = [r for r in records if lo <= r[0] <= hi]
    pairs = [(1000 * (applied - oldest), n) for applied, oldest, n, _, _ in inside]
    applies = [1e6 * r[4] for r in inside]
    events = sum(n for _, n in pairs)
    return {"batches": len(inside), "events": events, "events_per_batch": events / max(1, len(inside)),
            "p50_ms": weighted_percentile(pairs, 50), "p99_ms": weighted_percentile(pairs, 99),
            "max_ms": max((v for v, _ in pairs), default=float("nan")),
            "newest_p50_ms": percentile([1000 * (r[0] - r[3]) for r in inside], 50),
            "apply_us_p50": percentile(applies, 50), "apply_us_p99": percentile(applies, 99),
            "apply_us_per_event": sum(applies) / max(1, events)}


def lag_by_request(records: list[tuple[float, float, int, float, float]], latency: dict[str, list[tuple[float, float, int]]],
                   lo: float, hi: float) -> dict[str, dict[str, float]]:
    """Event lag of the batches applied while a /status or /metrics response was being produced (both run on
    the controller's event loop), or within 0.1 s after, against the others."""
    spans = sorted((wall, wall + seconds + 0.1, path) for path, recs in latency.items() for wall, seconds, _ in recs)
    groups: dict[str, list[tuple[float, int]]] = {}
    for applied, oldest, n, _, _ in records:
        if not lo <= applied <= hi:
            continue
        path = next((p for a, b, p in spans if a <= applied <= b), "neither")
        groups.setdefault(path, []).append((1000 * (applied - oldest), n))
    return {path: {"events": sum(n for _, n in pairs), "p50_ms": weighted_percentile(pairs, 50),
                   "p99_ms": weighted_percentile(pairs, 99), "max_ms": max(v for v, _ in pairs)}
            for path, pairs in sorted(groups.items())}


def window_gc(path: Path, lo: float, hi: float) -> dict[str, dict[str, float]]:
    """The controller's garbage collections by generation over the window: count, total and longest ms."""
    pauses = json.loads(path.read_text()) if path.exists() else {}
    out: dict[str, dict[str, float]] = {}
    for key, (count, total, longest) in pauses.items():
        second, gen = key.split()
        if lo <= int(second) < hi:
            entry = out.setdefault(f"gen{gen}", {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
            entry["count"] += count
            entry["total_ms"] += 1000 * total
            entry["max_ms"] = max(entry["max_ms"], 1000 * longest)
    return dict(sorted(out.items()))


def window_http(records: list[tuple[float, float, int]], lo: float, hi: float) -> dict[str, float]:
    inside = [r for r in records if lo <= r[0] <= hi]
    latencies = [1000 * r[1] for r in inside]
    return {"requests": len(inside), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan")),
            "kb": sum(r[2] for r in inside) / max(1, len(inside)) / 1024}


def window_publish(results: list[dict[str, Any]], lo: float, hi: float) -> dict[str, float]:
    """Published per second over the whole seconds inside the window, all publishers together."""
    seconds = range(int(lo) + 1, int(hi))
    out: dict[str, float] = {}
    for kind in ("tasks", "events", "messages", "bytes"):
        total = sum(r["counts"][kind].get(str(s), 0) for r in results for s in seconds)
        out[f"{kind}_per_s"] = total / max(1, len(seconds))
    out["cpu_s"] = sum(r["cpu_s"] for r in results)
    out["late_ticks"] = sum(r["late_ticks"] for r in results)
    out["ticks"] = sum(r["ticks"] for r in results)
    out["late_ms_max"] = max((r["late_ms_max"] for r in results), default=0.0)
    return out


def series_at(metrics: list[tuple[float, dict[str, float]]], when: float) -> dict[str, float]:
    """The scrape closest to `when`."""
    return min(metrics, key=lambda m: abs(m[0] - when))[1] if metrics else {}


def remote_control_traffic(metrics: list[tuple[float, dict[str, float]]], marks: dict[str, float]) -> dict[str, Any]:
    """Reconciles merged by reason (answered or not) during warm-up and window, and the workers judged."""
    start, lo, hi = (series_at(metrics, marks[k]) for k in ("load", "window_from", "window_to"))

    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, int]:
        keys = [k for k in b if k.startswith(("drainctl_reconciles_total", "drainctl_reconciles_unanswered_total"))]
        return {k.split("{", 1)[0].removeprefix("drainctl_") + "{" + k.split("{", 1)[1] if "{" in k else k:
                int(b[k] - a.get(k, 0.0)) for k in keys if b[k] - a.get(k, 0.0)}

    not_answering = "drainctl_workers_not_answering_remote_control"
    return {"warm_up": delta(start, lo), "window": delta(lo, hi),
            "not_answering_at_window_start": lo.get(not_answering), "not_answering_at_window_end": hi.get(not_answering),
            "late_events_window": hi.get("drainctl_late_events_total", 0) - lo.get("drainctl_late_events_total", 0),
            "dropped_events": hi.get("drainctl_events_dropped_total"),
            "in_flight_at_window_end": hi.get("drainctl_tasks_in_flight")}


def analyse(run: Run, recorder: Recorder, hwm_mb: float) -> dict[str, Any]:
    lo, hi = run.marks["window_from"], run.marks["window_to"]
    rollout = rollout_of(recorder.status)
    lag_records = read_lag(run.work / "lag.bin")
    result: dict[str, Any] = {
        "args": vars(run.args), "window": [lo, hi], "marks": run.marks,
        "controller": {**window_cpu(recorder.proc, lo, hi), "vm_hwm_mb": hwm_mb},
        "lag": window_lag(lag_records, lo, hi),
        "lag_by_request": lag_by_request(lag_records, recorder.latency, lo, hi),
        "gc": window_gc(run.work / "lag.gc.json", lo, hi),
        "http": {path: window_http(records, lo, hi) for path, records in recorder.latency.items()},
        "http_errors": recorder.errors,
        "published": window_publish(run.results, lo, hi),
        "machine": run.cpu,
        "remote_control": remote_control_traffic(recorder.metrics, run.marks),
        "rollout": rollout,
        "pool_tasks": pool_tasks(run.work),
        "work": str(run.work),
    }
    if rollout is not None:
        result["rollout_s"] = rollout["finished_at"] - rollout["started_at"]
        result["reload_to_rollout_s"] = rollout["started_at"] - run.marks["reload"]
    return result


def verdicts(result: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    c, lag, http_ = result["controller"], result["lag"], result["http"]
    return [
        ("controller CPU, % of one core", c["cpu_pct"], TARGETS["cpu_pct"], "%"),
        ("controller RSS, max in window", c["rss_mb_max"], TARGETS["rss_mb"], "MB"),
        ("event lag p99", lag["p99_ms"], TARGETS["lag_p99_ms"], "ms"),
        ("/status p99", http_.get("/status", {}).get("p99_ms", float("nan")), TARGETS["status_p99_ms"], "ms"),
        ("/metrics p99", http_.get("/metrics", {}).get("p99_ms", float("nan")), TARGETS["metrics_p99_ms"], "ms"),
    ]


def report(result: dict[str, Any]) -> bool:
    args = result["args"]
    pub, c, lag, rc = result["published"], result["controller"], result["lag"], result["remote_control"]
    marks = result["marks"]
    settled = ("caught up" if "unsettled_p99_ms" not in marks
               else f"NOT caught up (lag p99 {marks['unsettled_p99_ms']:.0f} ms)")
    print(f"\nfleet: {args['workers']} simulated workers (heartbeat every 2 s, joining over {args['ramp']:g} s), "
          f"{args['rate']:g} tasks/s asked; window {args['seconds']:g} s from "
          f"{marks['window_from'] - marks['load']:.0f} s after the load started ({settled}); pool {POOL} "
          f"({REPLICAS} x 2) rolled v1 -> v2 at {args['reload_at']:.0%} of the window")
    print(f"published (window, {args['publishers']} publisher process(es)): {pub['tasks_per_s']:,.0f} tasks/s, "
          f"{pub['events_per_s']:,.0f} events/s in {pub['messages_per_s']:,.0f} messages/s "
          f"({pub['bytes_per_s'] / 1024:,.0f} KiB/s); publisher CPU {pub['cpu_s']:.1f} s in all; "
          f"{pub['late_ticks']:.0f} of {pub['ticks']:.0f} ticks late (max {pub['late_ms_max']:.1f} ms)")
    print(f"controller: CPU {c['cpu_pct']:.1f} % of one core ({c.get('cpu_s', float('nan')):.1f} s over "
          f"{c.get('seconds', float('nan')):.1f} s; busiest {args['sample_s']:g} s interval {c['cpu_pct_max_interval']:.1f} %), "
          f"RSS {c.get('rss_mb_min', float('nan')):.1f}-{c['rss_mb_max']:.1f} MB, VmHWM {c['vm_hwm_mb']:.1f} MB; "
          f"its main thread waited {c.get('runqueue_wait_ms_per_s', float('nan')):.0f} ms/s for a CPU")
    machine = result["machine"]
    if machine:
        shares = ", ".join(f"{label} {pct:.0f}" for label, pct in machine["by_process"].items() if pct >= 1.5)
        print(f"machine in the window: {machine['machine_pct']:.0f} % of one core used of {machine['machine_cores'] * 100} "
              f"({shares}; % of one core)")
    gcs = ", ".join(f"{g} {v['count']:.0f}x {v['total_ms']:.0f} ms (max {v['max_ms']:.1f})" for g, v in result["gc"].items())
    print(f"controller garbage collections in the window: {gcs or 'none recorded'}")
    print(f"event lag (applied - oldest event timestamp of its batch, per event): p50 {lag['p50_ms']:.1f} ms, "
          f"p99 {lag['p99_ms']:.1f} ms, max {lag['max_ms']:.1f} ms; {lag['batches']:,} batches, "
          f"{lag['events_per_batch']:.2f} events/batch; Controller.apply p50 {lag['apply_us_p50']:.0f} µs, "
          f"p99 {lag['apply_us_p99']:.0f} µs, {lag['apply_us_per_event']:.1f} µs per event")
    split = "; ".join(f"{path}: {v['events']:,} events, p99 {v['p99_ms']:.1f} ms, max {v['max_ms']:.1f} ms"
                      for path, v in result["lag_by_request"].items())
    print(f"  event lag by what the loop was doing (a response being built, or 0.1 s after it): {split}")
    for path, h in result["http"].items():
        print(f"{path}: p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms "
              f"({h['requests']} requests, {h['kb']:,.0f} KiB each)")
    if result["http_errors"]:
        print(f"HTTP errors: {result['http_errors']}")
    print(f"remote control: reconciles during warm-up {rc['warm_up']}; during the window {rc['window']}; "
          f"workers judged not answering: {rc['not_answering_at_window_start']} at window start, "
          f"{rc['not_answering_at_window_end']} at its end; late events in window {rc['late_events_window']:.0f}, "
          f"dropped {rc['dropped_events']}, in flight {rc['in_flight_at_window_end']}")
    rollout = result["rollout"]
    if rollout is None:
        print(f"rollout: NOT finished within {args['rollout_timeout']:g} s of the reload")
    else:
        print(f"rollout {rollout['id']} v1 -> v2: {rollout['outcome']} in {result['rollout_s']:.1f} s "
              f"(started {result['reload_to_rollout_s']:.2f} s after SIGHUP): {rollout['detail']}")
    t = result["pool_tasks"]
    print(f"pool tasks: {t['sent']} sent, {t['started']} started; lost {len(t['lost'])}, "
          f"duplicated {len(t['duplicated'])}, interrupted {len(t['interrupted'])}")
    print("\ntargets:")
    met = 0
    rows = verdicts(result)
    for name, value, target, unit in rows:
        ok = value <= target
        met += ok
        print(f"  {name:32} {value:8.1f} {unit:2} (<= {target:g})  {'MET' if ok else 'NOT MET'}")
    good = rollout is not None and rollout["outcome"] == "succeeded" and not (t["lost"] or t["duplicated"])
    print(f"verdict: {met} of {len(rows)} targets met; rollout {rollout['outcome'] if rollout else 'unfinished'}; "
          f"pool tasks {'all ran once' if good else 'NOT all ran once'}")
    print(f"(controller log, lag records and worker logs in {result['work']})")
    return met == len(rows) and good


def bench_main(args: argparse.Namespace) -> int:
    vhost = f"drainctl-fleet-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="drainctl-bench-fleet-"))
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    run = Run(args, vhost, work)
    try:
        recorder = execute(run)
        last = proc_sample(run.children[0].pid)
        hwm = last[2] if last is not None else float("nan")
    finally:
        run.stop_children()
        stopped = stop_pool_workers(work)
        rabbitmqctl("delete_vhost", vhost)
    print(f"stopped: controller, load, {stopped} pool worker(s); vhost {vhost} deleted", file=sys.stderr)
    result = analyse(run, recorder, hwm)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0 if report(result) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers")
    parser.add_argument("--rate", type=float, default=2000.0, help="tasks per second across the simulated workers")
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window, s")
    parser.add_argument("--ramp", type=float, default=20.0,
                        help="the simulated workers join evenly over this many seconds; the task rate grows with them")
    parser.add_argument("--warmup", type=float, default=40.0,
                        help="load before the window at least, s (the ramp, and the controller's questions to every "
                             "worker it discovers)")
    parser.add_argument("--max-warmup", type=float, default=180.0,
                        help="the window starts at the latest this long after the load, caught up or not")
    parser.add_argument("--settled-ms", type=float, default=100.0,
                        help="caught up: event lag p99 over the last 3 s at most this")
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes")
    parser.add_argument("--tick-ms", type=float, default=10.0, help="publisher tick: events are flushed once per tick")
    parser.add_argument("--task-mean", type=float, default=0.25, help="mean task runtime, s (exponential)")
    parser.add_argument("--pool-rate", type=float, default=4.0, help="tasks/s sent to the real pool")
    parser.add_argument("--reload-at", type=float, default=0.5, help="when in the window the pool is rolled out (0-1)")
    parser.add_argument("--rollout-timeout", type=float, default=180.0)
    parser.add_argument("--poll-s", type=float, default=1.0, help="each of /status and /metrics polled this often")
    parser.add_argument("--sample-s", type=float, default=1.0, help="/proc sampling interval")
    parser.add_argument("--reconcile-interval", type=float, default=600.0,
                        help="[controller] reconcile_min_interval_s (drainctl's default: 30)")
    parser.add_argument("--no-remote-control-after", type=float, default=3600.0,
                        help="[controller] no_remote_control_after_s (drainctl's default: 20); a silent worker is "
                             "asked again after a third of it")
    parser.add_argument("--log-level", default="info", help="the controller's log level")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--plan-cost", action="store_true", help="only the in-process reducer micro-measure")
    parser.add_argument("--plan-workers", default="10,1000", help="--plan-cost: workers in the model, comma-separated")
    parser.add_argument("--plan-reps", type=float, default=1.0, help="--plan-cost: scale the number of inputs timed")
    # children
    parser.add_argument("--role", choices=("controller", "publisher"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--lag-file", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "controller":
        controller_child(args.config, args.lag_file, args.log_level)
    elif args.role == "publisher":
        from fleet_sim import publisher_main

        result = publisher_main(args.url, args.first, args.count, args.workers, args.rate, args.duration,
                                args.tick_ms / 1000, args.seed, args.task_mean, args.ramp)
        print(json.dumps(result), flush=True)
    elif args.plan_cost:
        from fleet_plan import plan_cost_main

        results = plan_cost_main([int(w) for w in args.plan_workers.split(",")], args.plan_reps, args.seed)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    else:
        sys.exit(bench_main(args))


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
