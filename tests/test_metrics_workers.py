"""The per-worker series drainctl writes itself are the text prometheus_client would write for them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from drainctl.core.model import Cluster
from drainctl.core.snapshot import TaskState
from drainctl.metrics_workers import COLLISION, HEARTBEAT_AGE, INFO, TASKS, UNANSWERED, worker_series
from tests.core.factories import feed, task_event, worker_event

NOW = 1_700_000_100.0
# Label values that need escaping in the exposition format, and one that Prometheus takes as it is.
HOSTS = ('plain@h', 'quote"d@h', "back\\slash@h", "new\nline@h", "ünï@h")


class Reference(Collector):
    """The families as prometheus_client's own objects, built the straightforward way."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(*TASKS, labels=["hostname", "state"])
        age = GaugeMetricFamily(*HEARTBEAT_AGE, labels=["hostname"])
        info = GaugeMetricFamily(*INFO, labels=["hostname", "state", "celery_version", "task_events"])
        collision = GaugeMetricFamily(*COLLISION, labels=["hostname"])
        unanswered = GaugeMetricFamily(*UNANSWERED, labels=["hostname"])
        for worker in self.cluster:
            counts = dict.fromkeys(TaskState, 0)
            for task in worker.tasks.values():
                counts[task.state] += 1
            for state, count in counts.items():
                tasks.add_metric([worker.hostname, state.value], count)
            if worker.last_heartbeat is not None:
                age.add_metric([worker.hostname], max(0.0, NOW - worker.last_heartbeat))
            info.add_metric([worker.hostname, worker.state.value, worker.sw_ver or "", worker.task_events.value], 1)
            collision.add_metric([worker.hostname], int(worker.collision))
            unanswered.add_metric([worker.hostname], int(worker.not_answering))
        yield from (tasks, age, info, collision, unanswered)


def a_fleet() -> Cluster:
    cluster = Cluster()
    for pid, host in enumerate(HOSTS, start=1):
        feed(cluster, [worker_event("online", 1, host=host, pid=pid)], now=NOW - 30)
        feed(cluster, [worker_event("heartbeat", 2, host=host, pid=pid)], now=NOW - pid * 1.37)
        events = [task_event("received", f"{host}-{n}", 10 + n, host=host, pid=pid) for n in range(pid)]
        events += [task_event("started", f"{host}-0", 20, host=host, pid=pid)]
        feed(cluster, events, now=NOW - 1)
    # A worker seen only through a task event: no heartbeat yet, no Celery version.
    feed(cluster, [task_event("received", "lone", 5, host="lone@h", pid=99)], now=NOW)
    cluster.worker(HOSTS[1]).collision_at = NOW  # type: ignore[union-attr]
    cluster.worker(HOSTS[2]).not_answering_since = NOW  # type: ignore[union-attr]
    return cluster


def reference_text(cluster: Cluster) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference(cluster))
    return generate_latest(registry).decode()


@pytest.mark.parametrize("cluster", [Cluster(), a_fleet()], ids=["empty", "fleet"])
def test_worker_series_are_what_prometheus_client_writes(cluster: Cluster) -> None:
    assert worker_series(cluster, NOW) == reference_text(cluster)


def test_worker_series_parse_back_to_the_model() -> None:
    cluster = a_fleet()
    families = {f.name: f for f in text_string_to_metric_families(worker_series(cluster, NOW))}
    running = {s.labels["hostname"]: s.value for s in families["drainctl_worker_tasks"].samples
               if s.labels["state"] == "running"}
    assert running == {host: 1.0 for host in HOSTS} | {"lone@h": 0.0}
    reserved = {s.labels["hostname"]: s.value for s in families["drainctl_worker_tasks"].samples
                if s.labels["state"] == "reserved"}
    assert reserved == {host: float(pid - 1) for pid, host in enumerate(HOSTS, start=1)} | {"lone@h": 1.0}
    ages = {s.labels["hostname"]: s.value for s in families["drainctl_worker_heartbeat_age_seconds"].samples}
    assert ages == pytest.approx({host: pid * 1.37 for pid, host in enumerate(HOSTS, start=1)})
    collided = [s.labels["hostname"] for s in families["drainctl_worker_hostname_collision"].samples if s.value]
    assert collided == [HOSTS[1]]
