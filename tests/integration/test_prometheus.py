"""A real Prometheus scrapes a real controller: every metric the dashboard and the alert rules use exists, and
every alert fires.

A private ``prometheus`` server (Debian's package, scripts/setup.d/prometheus.sh) runs on a free loopback port
with its own TSDB in tmp, scrapes the in-process controller's HTTP API every second and evaluates
compose/prometheus/alerts.yml every second. The test then provokes every alert against real workers:

* a drain of a worker running a 6 s task with a 1 s deadline,
  with consumer_timeout_s = 8 and a warning at half of it       -> DrainctlDrainPastDeadline, DrainctlConsumerTimeoutNear
* a worker started with remote control off                      -> DrainctlWorkerIgnoresRemoteControl
* a pool rollout v1 -> v2 (succeeds), then v3 that crash-loops -> DrainctlRolloutFailed
* an invalid configuration file on reload                       -> DrainctlConfigReloadRejected
* two live workers started under one hostname                   -> DrainctlHostnameCollision
* a burst of garbage on ``celeryev`` while the controller is
  stalled, into a small event queue (max_length 100)            -> DrainctlEventsMalformed, DrainctlEventsDropped
* every worker SIGSTOPped (then SIGCONTed)                      -> DrainctlWorkerSilent, DrainctlNoEvents

The pool is elastic at a fixed size (min_replicas = max_replicas = 1), so that the autoscaling series the dashboard
and DrainctlPoolAtMaxWithGrowingBacklog use exist. That alert needs a backlog growing for 10 minutes: it is
defined and healthy here, and seen firing only by ``promtool test rules``. So is DrainctlEngineUnreachable,
whose series exist only for pools spread over several Docker engines (tests/integration/test_engines.py).

Each alert must be seen ``firing`` in /api/v1/alerts. The rules run as written except two durations in the
test's copy of alerts.yml: DrainctlNoEvents' "no event for 60 s" becomes 3 s and DrainctlWorkerSilent's
``for: 2m`` becomes 1 s, so that the test does not have to freeze every worker for minutes (both rules are
unit-tested with their real durations by ``promtool test rules``; see tests/test_alert_rules.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import anyio
import pytest
from celery import Celery

from drainctl import config, http
from drainctl.app import Controller
from drainctl.core.drain import DrainPolicy, Outcome
from drainctl.core.snapshot import TaskState
from drainctl.errors import DrainctlError
from drainctl.runtime.base import WorkerSpec
from drainctl.runtime.process import ProcessRuntime
from tests.integration.conftest import REPO_ROOT
from tests.integration.pools import WORKER, PoolHarness
from tests.integration.tasks import send

pytestmark = pytest.mark.anyio

RULES = REPO_ROOT / "compose" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "grafana" / "dashboards" / "drainctl.json"
ALERTS = {
    "DrainctlDrainPastDeadline", "DrainctlRolloutFailed", "DrainctlWorkerSilent", "DrainctlNoEvents",
    "DrainctlEventsDropped", "DrainctlEventsMalformed", "DrainctlConfigReloadRejected", "DrainctlHostnameCollision",
    "DrainctlWorkerIgnoresRemoteControl", "DrainctlConsumerTimeoutNear",
}
# Every rule: those above, and one this test does not provoke (see the module docstring).
RULES_DEFINED = ALERTS | {"DrainctlPoolAtMaxWithGrowingBacklog", "DrainctlEngineUnreachable"}
# Series that exist only where pools spread over [[docker.engine]] tables: tests/integration/test_engines.py
# sees drainctl_engine_up go to 0 and back; promtool's unit test sees the alert fire.
ENGINE_ONLY = {"drainctl_engine_up"}
NO_EVENTS_RULE = "(time() - max by (instance, job) (drainctl_last_event_timestamp_seconds) > 60)"
NO_EVENTS_TEST = "(time() - max by (instance, job) (drainctl_last_event_timestamp_seconds) > 3)"

CONFIG = """
[controller]
id = "{controller_id}"
state_dir = "{state_dir}"
silent_after_s = 4
no_remote_control_after_s = 4
queue_depth_interval_s = 1

[broker]
reply_timeout_s = 1.0
reconnect_max_backoff_s = 1.0
# What the operator says RabbitMQ's consumer_timeout is (nothing enforces it here): the 6 s task of the
# drain past its deadline is held past 4 s of it.
consumer_timeout_s = 8
consumer_timeout_warn_at = 0.5

[events]
queue_expires_s = 120
# Small on purpose: the test overflows it once (see the module docstring).
max_length = 100
prefetch = 10

[[pool]]
name = "p"
queues = ["{queue}"]
replicas = 1
min_replicas = 1
max_replicas = 1
version = "{version}"
command = {command}
env = {{ DRAINCTL_TEST_BROKER_URL = "{broker_url}", TASKAPP_PREFETCH = "1", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}" }}
cwd = "{root}"
ready_timeout_s = 60
stop_timeout_s = 30
"""


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus is missing: scripts/setup.d/prometheus.sh installs Debian's prometheus package"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prometheus_server(tmp: Path, target: str) -> Iterator[str]:
    """A private Prometheus scraping `target` every second; its base URL. Stopped by PID at the end."""
    binary = prometheus_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    rules = RULES.read_text()
    assert NO_EVENTS_RULE in rules, "DrainctlNoEvents changed: update NO_EVENTS_RULE in this test"
    assert rules.count("for: 2m") == 1, "the rules' `for:` durations changed: update this test's copy"
    (tmp / "alerts.yml").write_text(rules.replace(NO_EVENTS_RULE, NO_EVENTS_TEST).replace("for: 2m", "for: 1s"))
    (tmp / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "alerts.yml")],
        "scrape_configs": [{"job_name": "drainctl", "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if sys.exc_info()[0] is not None:
            print("prometheus log tail:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))


class Prom:
    """The Prometheus HTTP API, plus every alert ever seen pending or firing."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.seen: dict[str, str] = {}

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params,
                                    timeout=aiohttp.ClientTimeout(total=10)) as response:
            body = await response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def wait_ready(self, timeout_s: float) -> None:
        """Ready, and the controller scraped once: Prometheus applies its targets a few seconds after it is
        ready, and a counter's first increment must come after a sample of its zero for increase() to see it."""
        with anyio.fail_after(timeout_s):
            for _ in range(int(timeout_s * 10)):
                with contextlib.suppress(aiohttp.ClientError):
                    async with self.session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            break
                await anyio.sleep(0.1)
            for _ in range(int(timeout_s * 5)):
                if (await self.get("/api/v1/query", query='up{job="drainctl"} == 1'))["result"]:
                    return
                await anyio.sleep(0.2)

    async def watch_alerts(self) -> None:
        with anyio.move_on_after(180):  # bounded: the test is over well before
            for _ in range(1000):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    for alert in (await self.get("/api/v1/alerts"))["alerts"]:
                        name = alert["labels"]["alertname"]
                        if self.seen.get(name) != "firing":
                            self.seen[name] = alert["state"]
                await anyio.sleep(0.25)

    async def wait_alert(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.seen.get(name) != "firing":
            if time.monotonic() > deadline:
                raise AssertionError(f"alert {name} not seen after {timeout_s}s; seen: {self.seen}")
            await anyio.sleep(0.2)


def pool_at(ctl: Controller, version: str) -> bool:
    members = ctl.fleet.of_pool("p")
    return (len(members) == 1 and all(m.version == version and m.ready_at is not None for m in members)
            and not ctl.fleet.rollouts and not ctl.drains.active)


class Harness(PoolHarness):
    template = CONFIG
    prefix = "prom"

    def spec(self, name: str, queue: str) -> WorkerSpec:
        hostname = f"{name}@{socket.gethostname()}"
        return WorkerSpec(
            hostname=hostname, pool="solo", version="v1", queues=(queue,),
            command=(*WORKER, "-n", hostname, "-Q", queue, "-c", "1"),
            env={"DRAINCTL_TEST_BROKER_URL": self.broker_url, "TASKAPP_PREFETCH": "1",
                 "TASKAPP_RECORD_DIR": str(self.records), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)},
            cwd=str(REPO_ROOT), stop_timeout_s=30,
        )


@asynccontextmanager
async def running(harness: Harness) -> AsyncIterator[Controller]:
    ctl = Controller(config.load(harness.path), harness.broker_url, runtime=ProcessRuntime(harness.state_dir, harness.controller_id),
                     config_path=harness.path)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(ctl.run)
            try:
                await ctl.wait_for(ctl.synced.is_set, 20)
                yield ctl
            finally:
                tg.cancel_scope.cancel()
    finally:
        # Workers outlive the controller on purpose; stop the ones it started, by PID.
        runtime = ProcessRuntime(harness.state_dir, harness.controller_id)
        with anyio.move_on_after(60, shield=True):
            for handle in await runtime.adopt():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(handle.ref), signal.SIGCONT)
                await runtime.stop(handle, 20)


def selectors(text: str) -> set[str]:
    """Every `drainctl_...{...}` selector in PromQL text, with Grafana's variables replaced."""
    found = set()
    for name, matchers in re.findall(r"\b(drainctl_[a-zA-Z0-9_]+)(\{[^}]*\})?", text):
        matchers = re.sub(r"\$\{?(instance|pool)\}?", ".*", matchers)
        found.add(name + matchers)
    return found


def grafana_queries(board: dict[str, Any]) -> list[str]:
    queries = []
    for panel in board["panels"]:
        queries.extend(t["expr"] for t in panel.get("targets", []))
    queries.extend(a["expr"] for a in board["annotations"]["list"] if a.get("expr"))
    return queries


def as_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "10s").replace("$__range", "5m")
    return re.sub(r"\$\{?(instance|pool)\}?", ".*", expr)


def publish_garbage(app: Celery, count: int) -> None:
    """`count` non-JSON messages on celeryev, published synchronously (blocking the caller's thread)."""
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for i in range(count):
            producer.publish(b"{not json " + str(i).encode(), exchange="celeryev", routing_key="worker.noise",
                             content_type="application/json", content_encoding="utf-8", retry=False)


async def test_prometheus_sees_every_metric_the_dashboard_and_alerts_use_and_every_alert_fires(
    broker_url: str, celery_worker: Any, celery_app: Celery, tmp_path: Path
) -> None:
    started = time.monotonic()
    harness = Harness(tmp_path, broker_url)
    harness.write("v1")
    twin_queue = f"q-{uuid.uuid4().hex[:8]}"
    twin_name = f"twin-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    stopped: list[int] = []
    async with running(harness) as ctl:
        runner = await http.start(ctl, "127.0.0.1", 0, "token-" + uuid.uuid4().hex)
        target = f"127.0.0.1:{runner.addresses[0][1]}"
        try:
            with prometheus_server(tmp_path / "prometheus", target) as url:
                async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
                    prom = Prom(session, url)
                    await prom.wait_ready(30)
                    tg.start_soon(prom.watch_alerts)
                    try:
                        async with anyio.create_task_group() as steps:
                            steps.start_soon(drain_past_deadline, ctl, harness, celery_app, prom)
                            steps.start_soon(rollouts, ctl, harness, celery_app, prom)
                            steps.start_soon(collision, ctl, celery_worker, twin_name, twin_queue, prom)
                            steps.start_soon(ignores_remote_control, ctl, harness, prom)
                        await events_malformed_and_dropped(ctl, celery_app, prom)
                        # Every worker freezes: no heartbeat, no event.
                        pids = [w.pid for w in celery_worker.workers if w.running]
                        pids += [int(h.ref) for h in ctl.managed.values() if h.runtime == "process"]
                        for pid in pids:
                            os.kill(pid, signal.SIGSTOP)
                            stopped.append(pid)
                        await prom.wait_alert("DrainctlNoEvents", 20)
                        await prom.wait_alert("DrainctlWorkerSilent", 20)
                    finally:
                        for pid in stopped:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGCONT)
                    assert {n for n, state in prom.seen.items() if state == "firing"} >= ALERTS, prom.seen
                    print(f"alerts seen: {prom.seen}")
                    await every_selector_has_series(prom)
                    tg.cancel_scope.cancel()
        finally:
            await runner.cleanup()
    assert time.monotonic() - started < 120


async def ignores_remote_control(ctl: Controller, harness: Harness, prom: Prom) -> None:
    spec = harness.spec(f"deaf-{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:8]}")
    spec = replace(spec, env={**spec.env, "TASKAPP_REMOTE_CONTROL": "0"})
    await ctl.start_worker(spec)
    await prom.wait_alert("DrainctlWorkerIgnoresRemoteControl", 40)
    worker = ctl.cluster.worker(spec.hostname)
    assert worker is not None and worker.not_answering


async def drain_past_deadline(ctl: Controller, harness: Harness, app: Celery, prom: Prom) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    spec = harness.spec(f"deadline-{uuid.uuid4().hex[:6]}", queue)
    await ctl.start_worker(spec)
    host = spec.hostname
    await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None and w.queues == (queue,), 60)
    task = await send(app, queue, 6)
    await ctl.wait_for(lambda: (w := ctl.cluster.worker(host)) is not None
                       and set(w.task_ids(TaskState.RUNNING)) == {task}, 20)
    # The only consumer of its queue: forced. Past its 1 s deadline it keeps waiting (on_deadline = wait).
    drain = await ctl.request_drain(host, force=True, policy=DrainPolicy(deadline_s=1.0))
    await prom.wait_alert("DrainctlDrainPastDeadline", 15)
    await prom.wait_alert("DrainctlConsumerTimeoutNear", 15)
    assert drain.timeout_warned == {task}
    await ctl.wait_for(lambda: not drain.active, 40)
    assert drain.outcome is Outcome.RETIRED, drain.detail
    assert drain.past_deadline


async def rollouts(ctl: Controller, harness: Harness, app: Celery, prom: Prom) -> None:
    await ctl.wait_for(lambda: pool_at(ctl, "v1"), 60)
    # A task that succeeds and one that fails on the pool: the per-version series the Canary row reads.
    await send(app, harness.queue, 0.1)
    await anyio.to_thread.run_sync(lambda: app.send_task("taskapp.fail", queue=harness.queue))
    await ctl.wait_for(lambda: {"succeeded", "failed"} <= {o for _, _, t in ctl.version_outcomes for o in t.outcomes},
                       30)
    harness.write("v2")
    await ctl.reload("test")
    await ctl.wait_for(lambda: pool_at(ctl, "v2") and bool(ctl.fleet.history), 60)
    assert ctl.fleet.history[-1].outcome == "succeeded"
    harness.write("v3", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    await ctl.reload("test")
    await ctl.wait_for(lambda: any(r.outcome == "failed" for r in ctl.fleet.history), 30)
    await prom.wait_alert("DrainctlRolloutFailed", 15)
    harness.path.write_text(harness.path.read_text().replace("\nreplicas = 1", "\nreplicas = -1"))
    with pytest.raises(DrainctlError, match=r"pool\.0\.replicas"):
        await ctl.reload("test")
    await prom.wait_alert("DrainctlConfigReloadRejected", 15)
    await ctl.wait_for(lambda: pool_at(ctl, "v2"), 30)  # pinned to v2, capacity intact


async def collision(ctl: Controller, celery_worker: Any, name: str, queue: str, prom: Prom) -> None:
    """Two processes heartbeating under one name. Celery >= 5.3 (kombu's exclusive pidbox queue) makes
    a second real worker with a taken name crash at start-up, so the two are played on the wire:
    the same heartbeats two workers would publish, from two pids, interleaved."""
    del celery_worker, queue
    connection = await aio_pika.connect(ctl.broker_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("celeryev")
        for clock in range(1, 5):
            for pid in (4001, 4002):
                body = json.dumps({"type": "worker-heartbeat" if clock > 1 else "worker-online", "hostname": name,
                                   "pid": pid, "clock": clock, "timestamp": time.time(), "freq": 2.0,
                                   "active": 0, "processed": 0, "sw_ver": "5.3.0", "sw_ident": "py-celery"})
                await exchange.publish(aio_pika.Message(body.encode(), content_type="application/json"),
                                       routing_key="worker.heartbeat")
    await ctl.wait_for(lambda: (w := ctl.cluster.worker(name)) is not None and w.collision, 30)
    await prom.wait_alert("DrainctlHostnameCollision", 15)


async def events_malformed_and_dropped(ctl: Controller, app: Celery, prom: Prom) -> None:
    dropped_before = ctl.stats.dropped
    # Published from the event loop's own thread: the controller cannot consume meanwhile, so at most
    # `prefetch` (10) messages leave the queue and the rest overflow its max_length (100).
    publish_garbage(app, 600)
    await ctl.wait_for(lambda: ctl.stats.dropped > dropped_before and ctl.stats.malformed.get("invalid-json", 0) > 0,
                       20)
    await prom.wait_alert("DrainctlEventsMalformed", 15)
    await prom.wait_alert("DrainctlEventsDropped", 15)


async def every_selector_has_series(prom: Prom) -> None:
    board = json.loads(DASHBOARD.read_text())
    queries = grafana_queries(board)
    variables = [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    rules = await prom.get("/api/v1/rules")
    rule_queries = [r["query"] for g in rules["groups"] for r in g["rules"]]
    assert {r["name"] for g in rules["groups"] for r in g["rules"]} == RULES_DEFINED
    assert all(r["health"] == "ok" for g in rules["groups"] for r in g["rules"]), rules
    wanted = {s for s in selectors("\n".join(queries + variables + rule_queries + [RULES.read_text()]))
              if s.split("{")[0] not in ENGINE_ONLY}
    assert len(wanted) > 20
    missing = [s for s in sorted(wanted) if not await prom.get("/api/v1/series", **{"match[]": s})]
    assert not missing, f"selectors matching no series in Prometheus: {missing}"
    print(f"{len(wanted)} selectors, each matching series: {sorted(wanted)}")
    # Every dashboard query is valid PromQL, and the rollout annotations found the rollouts.
    for query in queries:
        await prom.get("/api/v1/query", query=as_promql(query))
    for annotation in board["annotations"]["list"]:
        if "rollouts_" in annotation.get("expr", ""):
            result = await prom.get("/api/v1/query_range", query=as_promql(annotation["expr"]),
                                    start=str(time.time() - 120), end=str(time.time()), step="1")
            assert result["result"], annotation["name"]
