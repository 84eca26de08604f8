"""Prometheus collectors that read the model at scrape time: a worker that leaves the model leaves /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from drainctl.app import Controller
from drainctl.core.drain import DURATION_BUCKETS
from drainctl.core.events import TASK_EVENT_TYPES, WORKER_EVENT_TYPES
from drainctl.core.model import WorkerState
from drainctl.core.snapshot import TaskState

MALFORMED_REASONS = (
    "invalid-json", "wrong-content-type", "oversized-message", "too-many-events", "not-an-object",
    "missing-field", "wrong-type", "wrong-value", "oversized-field", "unknown-type",
)
RECONCILE_REASONS = (
    "startup", "worker-online", "worker-heartbeat", "reconnect", "heartbeat-active-mismatch", "events-enabled",
)


class ModelCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        controller = self.controller
        cluster = controller.cluster
        stats = controller.stats
        now = controller.clock()

        workers = GaugeMetricFamily("drainctl_workers", "Workers known to the model, by state.", labels=["state"])
        by_state = {s.value: 0 for s in WorkerState}
        collisions = 0
        tasks = GaugeMetricFamily(
            "drainctl_worker_tasks",
            "Tasks a worker holds, by state: running, reserved (prefetched) or scheduled (ETA).",
            labels=["hostname", "state"],
        )
        age = GaugeMetricFamily(
            "drainctl_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.", labels=["hostname"]
        )
        info = GaugeMetricFamily(
            "drainctl_worker_info", "Static facts about a worker (value is always 1).",
            labels=["hostname", "state", "celery_version", "task_events"],
        )
        for worker in cluster:
            by_state[worker.state.value] += 1
            collisions += worker.collision
            counts = {s: 0 for s in TaskState}
            for task in worker.tasks.values():
                counts[task.state] += 1
            for task_state, count in counts.items():
                tasks.add_metric([worker.hostname, task_state.value], count)
            if worker.last_heartbeat is not None:
                age.add_metric([worker.hostname], max(0.0, now - worker.last_heartbeat))
            info.add_metric([worker.hostname, worker.state.value, worker.sw_ver or "", worker.task_events.value], 1)
        for state_name, count in by_state.items():
            workers.add_metric([state_name], count)
        yield workers
        yield tasks
        yield age
        yield info
        yield GaugeMetricFamily(
            "drainctl_hostname_collisions", "Hostnames used by more than one live worker process.", value=collisions
        )
        yield GaugeMetricFamily(
            "drainctl_tasks_in_flight", "Tasks held by all workers (running, reserved, scheduled).",
            value=cluster.in_flight(),
        )

        by_type = CounterMetricFamily(
            "drainctl_task_events", "Celery events consumed, by type.", labels=["type"]
        )
        for etype in sorted(TASK_EVENT_TYPES | WORKER_EVENT_TYPES):
            by_type.add_metric([etype], cluster.events_by_type.get(etype, 0))
        yield by_type
        yield CounterMetricFamily("drainctl_events_consumed", "Events decoded from the event queue.",
                                  value=stats.events)
        yield CounterMetricFamily("drainctl_event_messages_consumed", "AMQP messages consumed from the event queue.",
                                  value=stats.messages)
        malformed = CounterMetricFamily(
            "drainctl_events_malformed", "Event messages or list items rejected, by reason.", labels=["reason"]
        )
        for reason in sorted(set(MALFORMED_REASONS) | stats.malformed.keys()):
            malformed.add_metric([reason], stats.malformed.get(reason, 0))
        yield malformed
        yield CounterMetricFamily(
            "drainctl_events_dropped", "Events pushed out of the full event queue (x-max-length) and dead-lettered.",
            value=stats.dropped,
        )
        yield CounterMetricFamily(
            "drainctl_late_events", "Task events ignored as older than what the model knows.",
            value=cluster.late_events,
        )
        reconciles = CounterMetricFamily(
            "drainctl_reconciles", "Reconciles (inspect of what workers hold) merged, by reason.", labels=["reason"]
        )
        for reason in sorted(set(RECONCILE_REASONS) | stats.reconciles.keys()):
            reconciles.add_metric([reason], stats.reconciles.get(reason, 0))
        yield reconciles
        yield GaugeMetricFamily("drainctl_broker_connected", "1 while connected to RabbitMQ.",
                                value=int(stats.connected))
        yield CounterMetricFamily("drainctl_broker_connects", "Successful connections to RabbitMQ.",
                                  value=stats.connects)
        if stats.last_event_wall is not None:
            yield GaugeMetricFamily("drainctl_last_event_timestamp_seconds",
                                    "Unix time of the last event consumed.", value=stats.last_event_wall)
        drains = controller.drains
        yield CounterMetricFamily("drainctl_drains_started", "Drains started.", value=drains.started_total)
        finished = CounterMetricFamily("drainctl_drains_finished", "Drains finished, by outcome.", labels=["outcome"])
        for outcome, count in sorted(drains.outcomes.items()):
            finished.add_metric([outcome], count)
        yield finished
        yield GaugeMetricFamily("drainctl_drains_in_progress", "Drains under way.", value=len(drains.active))
        yield GaugeMetricFamily("drainctl_drains_past_deadline", "Drains under way past their deadline.",
                                value=drains.past_deadline())
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), drains.duration_buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("drainctl_drain_duration_seconds", "Time from drain start to its outcome.",
                                    buckets=buckets, sum_value=drains.duration_sum)
        fleet = controller.fleet
        pool_workers = GaugeMetricFamily(
            "drainctl_pool_workers", "Workers of each pool drainctl runs, by version and status.",
            labels=["pool", "version", "status"])
        for name in sorted(controller.pool_targets):
            by_status: dict[tuple[str, str], int] = {}
            for member in fleet.of_pool(name):
                status = ("failed" if member.failed else "draining" if member.hostname in drains.active
                          else "ready" if member.ready_at is not None else "starting")
                by_status[(member.version, status)] = by_status.get((member.version, status), 0) + 1
            for (version, status), count in sorted(by_status.items()):
                pool_workers.add_metric([name, version, status], count)
        yield pool_workers
        rollouts = CounterMetricFamily("drainctl_rollouts", "Rollouts finished, by outcome.", labels=["outcome"])
        for outcome in ("succeeded", "failed", "superseded"):
            rollouts.add_metric([outcome], fleet.rollout_outcomes.get(outcome, 0))
        yield rollouts
        in_progress = GaugeMetricFamily("drainctl_rollouts_in_progress", "Rollouts under way, by pool.",
                                        labels=["pool"])
        pinned = GaugeMetricFamily("drainctl_pool_pinned", "1 while a pool is pinned (failed rollout, rollback).",
                                   labels=["pool"])
        for name, target in sorted(controller.pool_targets.items()):
            in_progress.add_metric([name], int(name in fleet.rollouts))
            pin = fleet.pins.get(name)
            pinned.add_metric([name], int(pin is not None and pin.config_version == target.version))
        yield in_progress
        yield pinned
        reloads = CounterMetricFamily("drainctl_config_reloads", "Configuration reloads, by outcome.",
                                      labels=["outcome"])
        for outcome, count in sorted(controller.reloads.items()):
            reloads.add_metric([outcome], count)
        yield reloads
        yield GaugeMetricFamily("drainctl_start_time_seconds", "Unix time the controller started.",
                                value=stats.started_wall)


def registry_for(controller: Controller) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelCollector(controller))
    return registry
