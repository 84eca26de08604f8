"""Prometheus collectors that read the model at scrape time: a worker that leaves the model leaves /metrics.

Conventions (docs/observability.md): prefix ``drainctl_``, base units (seconds, bytes), counters
end in ``_total`` and exist from the first scrape at zero for every label value known in advance (every
outcome, reason and event type; every configured pool), so ``increase()`` and ``rate()`` in alert rules see
the first increment. Labels are bounded: pool, version, worker hostname, state, outcome, reason, type — never a
task id or anything an API caller chooses (``requested_by`` is free text and stays out of labels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from drainctl.core.drain import DURATION_BUCKETS, ESTIMATE_ERROR_BUCKETS, Outcome
from drainctl.core.events import TASK_EVENT_TYPES, WORKER_EVENT_TYPES
from drainctl.core.model import REMOTE_CONTROL_CHECK, WorkerState
from drainctl.core.rollout import Fleet
from drainctl.core.scaling import backlog
from drainctl.core.version_outcomes import RUNTIME_BUCKETS
from drainctl.metrics_workers import worker_series
from drainctl.readmodel import ReadModel, member_status, pool_pin

MALFORMED_REASONS = (
    "invalid-json", "wrong-content-type", "oversized-message", "too-many-events", "not-an-object",
    "missing-field", "wrong-type", "wrong-value", "oversized-field", "unknown-type",
)
RECONCILE_REASONS = (
    "startup", "worker-online", "worker-heartbeat", "reconnect", "heartbeat-active-mismatch", "events-enabled",
    REMOTE_CONTROL_CHECK,
)
ROLLOUT_OUTCOMES = ("succeeded", "failed", "superseded")
SCALE_DIRECTIONS = ("in", "out")
RELOAD_OUTCOMES = ("applied", "rejected")
POOL_WORKER_STATUSES = ("starting", "standby", "switching", "ready", "draining", "failed")


class RolloutTally:
    """Per-pool rollout counters, kept by watching rollout ids go by in the fleet.

    The core counts finished rollouts by outcome only (``Fleet.rollout_outcomes``); its history is a bounded
    deque, so counts derived from it directly would fall when it wraps. This tally counts each rollout id
    once, when first seen under way (started) and when first seen finished (outcome), and forgets an id once
    it has left the history (it never comes back). Exact as long as fewer than ``history`` (100) rollouts
    finish between two scrapes.
    """

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[tuple[str, str]] = Counter()
        self._started_ids: set[str] = set()
        self._finished_ids: set[str] = set()

    def update(self, fleet: Fleet) -> None:
        live: set[str] = set()
        for rollout in (*fleet.rollouts.values(), *fleet.history):
            live.add(rollout.id)
            if rollout.id not in self._started_ids:
                self._started_ids.add(rollout.id)
                self.started[rollout.pool] += 1
            if rollout.outcome is not None and rollout.id not in self._finished_ids:
                self._finished_ids.add(rollout.id)
                self.finished[(rollout.pool, rollout.outcome)] += 1
        self._started_ids &= live
        self._finished_ids &= live


class ModelCollector(Collector):
    def __init__(self, model: ReadModel) -> None:
        self.model = model
        self.rollouts = RolloutTally()

    def collect(self) -> Iterator[Metric]:
        yield from self._workers_by_state()
        yield from self._workers()
        yield from self._events()
        yield from self._reconciles()
        yield from self._drains()
        yield from self._versions()
        yield from self._pools()
        yield from self._scaling()
        yield from self._controller()

    # ------------------------------------------------------------------ workers and their tasks
    def _workers_by_state(self) -> Iterator[Metric]:
        members = self.model.fleet.members
        workers = GaugeMetricFamily(
            "drainctl_workers",
            "Workers in the event model, by state (online; offline: a warm shutdown has started; silent: "
            "heartbeats overdue), with their pool and version (empty for workers drainctl does not run).",
            labels=["pool", "version", "state"],
        )
        by_state: Counter[tuple[str, str, str]] = Counter({("", "", s.value): 0 for s in WorkerState})
        for worker in self.model.cluster:
            member = members.get(worker.hostname)
            pool, version = (member.pool, member.version) if member is not None else ("", "")
            by_state[(pool, version, worker.state.value)] += 1
        for labels, count in sorted(by_state.items()):
            workers.add_metric(list(labels), count)
        yield workers

    def _workers(self) -> Iterator[Metric]:
        """What sums the workers up; each worker's own series are `metrics_workers.worker_series`."""
        workers = list(self.model.cluster)
        yield GaugeMetricFamily(
            "drainctl_hostname_collisions", "Hostnames used by more than one live worker process.",
            value=sum(w.collision for w in workers),
        )
        yield from self._worker_totals(sum(w.not_answering for w in workers))

    def _worker_totals(self, deaf: int) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "drainctl_workers_not_answering_remote_control",
            "Workers that heartbeat but do not answer remote control (drainctl cannot drain them).", value=deaf,
        )
        yield GaugeMetricFamily(
            "drainctl_tasks_in_flight", "Tasks held by all workers (running, reserved, scheduled).",
            value=self.model.cluster.in_flight(),
        )

    # ------------------------------------------------------------------ event ingestion
    def _events(self) -> Iterator[Metric]:
        model = self.model
        cluster = model.cluster
        stats = model.stats

        task_events = CounterMetricFamily(
            "drainctl_task_events_total", "Celery task events (task-*) applied to the model, by type.",
            labels=["type"],
        )
        for etype in sorted(TASK_EVENT_TYPES):
            task_events.add_metric([etype], cluster.events_by_type.get(etype, 0))
        yield task_events
        worker_events = CounterMetricFamily(
            "drainctl_worker_events_total", "Celery worker events (worker-*) applied to the model, by type.",
            labels=["type"],
        )
        for etype in sorted(WORKER_EVENT_TYPES):
            worker_events.add_metric([etype], cluster.events_by_type.get(etype, 0))
        yield worker_events
        yield CounterMetricFamily("drainctl_events_consumed_total", "Events decoded from the event queue.",
                                  value=stats.events)
        yield CounterMetricFamily("drainctl_event_messages_consumed_total",
                                  "AMQP messages consumed from the event queue (one may carry many events).",
                                  value=stats.messages)
        yield CounterMetricFamily("drainctl_event_consumed_bytes_total",
                                  "Bytes of message bodies consumed from the event queue.", value=stats.bytes)
        malformed = CounterMetricFamily(
            "drainctl_events_malformed_total", "Event messages or list items rejected as malformed, by reason.",
            labels=["reason"],
        )
        for reason in sorted(set(MALFORMED_REASONS) | stats.malformed.keys()):
            malformed.add_metric([reason], stats.malformed.get(reason, 0))
        yield malformed
        yield CounterMetricFamily(
            "drainctl_events_dropped_total",
            "Events pushed out of the full event queue (x-max-length, drop-head) and dead-lettered: never applied.",
            value=stats.dropped,
        )
        yield CounterMetricFamily(
            "drainctl_late_events_total", "Task events ignored as older than what the model knows.",
            value=cluster.late_events,
        )
        # Before the first event: the start time, so "seconds since the last event" stays meaningful.
        last = stats.last_event_wall if stats.last_event_wall is not None else stats.started_wall
        yield GaugeMetricFamily(
            "drainctl_last_event_timestamp_seconds",
            "Unix time of the last event consumed (the controller's start time until the first one).",
            value=last,
        )

    def _reconciles(self) -> Iterator[Metric]:
        stats = self.model.stats
        reconciles = CounterMetricFamily(
            "drainctl_reconciles_total", "Reconciles (inspect of what workers hold) merged, by reason.",
            labels=["reason"],
        )
        for reason in sorted(set(RECONCILE_REASONS) | stats.reconciles.keys()):
            reconciles.add_metric([reason], stats.reconciles.get(reason, 0))
        yield reconciles
        yield CounterMetricFamily(
            "drainctl_reconciles_unanswered_total",
            "Targeted reconciles the worker did not answer in time (what it holds stays unknown, not empty).",
            value=stats.reconcile_no_reply,
        )

    # ------------------------------------------------------------------ drains
    def _drains(self) -> Iterator[Metric]:
        drains = self.model.drains
        yield CounterMetricFamily("drainctl_drains_started_total", "Drains started.", value=drains.started_total)
        finished = CounterMetricFamily("drainctl_drains_finished_total", "Drains finished, by outcome.",
                                       labels=["outcome"])
        outcomes = dict.fromkeys((o.value for o in Outcome), 0) | drains.outcomes
        for outcome, count in sorted(outcomes.items()):
            finished.add_metric([outcome], count)
        yield finished
        yield CounterMetricFamily(
            "drainctl_consumer_timeout_warnings_total",
            "Tasks a draining worker held unacknowledged (or, running, possibly so) for consumer_timeout_warn_at of "
            "RabbitMQ's consumer_timeout ([broker] consumer_timeout_s); one per task.",
            value=drains.consumer_timeout_warnings,
        )
        yield CounterMetricFamily(
            "drainctl_consumer_timeout_redeliveries_total",
            "Of those tasks, the ones another worker received while the draining worker held them: the broker "
            "delivered them again (most likely its consumer_timeout closed the draining worker's channel).",
            value=drains.consumer_timeout_redeliveries,
        )
        yield GaugeMetricFamily("drainctl_drains_in_progress", "Drains under way.", value=len(drains.active))
        yield GaugeMetricFamily("drainctl_drains_past_deadline", "Drains under way past their deadline.",
                                value=drains.past_deadline())
        yield HistogramMetricFamily("drainctl_drain_duration_seconds", "Time from a drain's start to its outcome.",
                                    buckets=_cumulative(DURATION_BUCKETS, drains.duration_buckets),
                                    sum_value=drains.duration_sum)
        yield HistogramMetricFamily(
            "drainctl_drain_estimate_error_seconds",
            "How far each finished drain's end was from the end estimated when it started (either way), for "
            "drains that had an estimate (from the runtimes of the tasks it waited for).",
            buckets=_cumulative(ESTIMATE_ERROR_BUCKETS, drains.estimate_error_buckets),
            sum_value=drains.estimate_error_sum)
        remaining = GaugeMetricFamily(
            "drainctl_drain_estimated_remaining_seconds",
            "For each drain under way with an estimate: the seconds until it is expected to end (0 when overdue).",
            labels=["hostname"])
        now = self.model.now()
        for drain in drains.active.values():
            if drain.estimated_end_at is not None:
                remaining.add_metric([drain.hostname], max(0.0, drain.estimated_end_at - now))
        yield remaining

    def _versions(self) -> Iterator[Metric]:
        tasks = CounterMetricFamily(
            "drainctl_pool_tasks_total",
            "Tasks the workers of each pool ended, by version and outcome (succeeded, failed, retried, rejected, "
            "revoked); the last few versions of each pool.", labels=["pool", "version", "outcome"])
        runtimes = HistogramMetricFamily(
            "drainctl_pool_task_runtime_seconds",
            "Runtimes of the tasks the workers of each pool ran (task-succeeded, task-failed), by version.",
            labels=["pool", "version"])
        for pool, version, ended in self.model.version_outcomes:
            for outcome, count in sorted(ended.outcomes.items()):
                tasks.add_metric([pool, version, outcome], count)
            runtimes.add_metric([pool, version], _cumulative(RUNTIME_BUCKETS, ended.runtime_buckets),
                                ended.runtime_sum)
        yield tasks
        yield runtimes

    # ------------------------------------------------------------------ pools and rollouts
    def _pools(self) -> Iterator[Metric]:
        model = self.model
        fleet = model.fleet
        drains = model.drains
        pools = sorted(model.pool_targets)

        pool_workers = GaugeMetricFamily(
            "drainctl_pool_workers",
            "Workers of each pool drainctl runs, by version and status (starting, standby, switching, ready, "
            "draining, failed).",
            labels=["pool", "version", "status"])
        replicas = GaugeMetricFamily(
            "drainctl_pool_replicas",
            "Workers each pool is kept at: its configured replicas, or an elastic pool's desired size.",
            labels=["pool"])
        for name in pools:
            target = model.pool_targets[name]
            replicas.add_metric([name], target.replicas)
            by_status: Counter[tuple[str, str]] = Counter(
                {(fleet.target(target), status): 0 for status in POOL_WORKER_STATUSES})
            for member in fleet.of_pool(name):
                by_status[(member.version, member_status(member, drains))] += 1
            for (version, status), count in sorted(by_status.items()):
                pool_workers.add_metric([name, version, status], count)
        yield pool_workers
        yield replicas

        tally = self.rollouts
        tally.update(fleet)
        known = sorted(set(pools) | set(tally.started) | {pool for pool, _ in tally.finished})
        started = CounterMetricFamily("drainctl_rollouts_started_total", "Rollouts started, by pool.",
                                      labels=["pool"])
        finished = CounterMetricFamily(
            "drainctl_rollouts_finished_total",
            "Rollouts finished, by pool and outcome (succeeded, failed, superseded).", labels=["pool", "outcome"])
        for name in known:
            started.add_metric([name], tally.started.get(name, 0))
            for outcome in sorted(set(ROLLOUT_OUTCOMES) | {o for p, o in tally.finished if p == name}):
                finished.add_metric([name, outcome], tally.finished.get((name, outcome), 0))
        yield started
        yield finished
        in_progress = GaugeMetricFamily("drainctl_rollouts_in_progress", "Rollouts under way, by pool.",
                                        labels=["pool"])
        pinned = GaugeMetricFamily(
            "drainctl_pool_pinned", "1 while a pool is pinned to an older version (failed rollout, rollback).",
            labels=["pool"])
        for name in pools:
            target = model.pool_targets[name]
            in_progress.add_metric([name], int(name in fleet.rollouts))
            pinned.add_metric([name], int(pool_pin(fleet, name, target) is not None))
        yield in_progress
        yield pinned
        yield from self._canary(pools)
        yield from self._engines()

    def _engines(self) -> Iterator[Metric]:
        fleet = self.model.fleet
        known = sorted({e for t in self.model.pool_targets.values() for e in t.engines} | set(fleet.engines.states))
        workers = GaugeMetricFamily("drainctl_engine_workers", "Pool workers on each Docker engine.",
                                    labels=["engine"])
        state = GaugeMetricFamily(
            "drainctl_engine_cordoned",
            "1 while a Docker engine takes no new worker, by state (cordoned, evacuating).", labels=["engine", "state"])
        up = GaugeMetricFamily("drainctl_engine_up", "1 while a Docker engine answers (its event stream is up).",
                               labels=["engine"])
        for name in known:
            up.add_metric([name], int(name not in fleet.engines.down))
            workers.add_metric([name], len(fleet.engines.workers_on(name, fleet.members.values())))
            for kind in ("cordoned", "evacuating"):
                state.add_metric([name, kind], int(fleet.engines.states.get(name) == kind))
        yield workers
        yield state
        yield up

    def _canary(self, pools: list[str]) -> Iterator[Metric]:
        holds = self.model.fleet.canary.holds
        step = GaugeMetricFamily(
            "drainctl_canary_step", "Canary rollouts: the step under way (1 = the first; 0: none).", labels=["pool"])
        seen = GaugeMetricFamily(
            "drainctl_canary_tasks_seen", "Canary rollouts: tasks of the new version ended in the current hold.",
            labels=["pool"])
        for name in pools:
            hold = holds.get(name) if name in self.model.fleet.rollouts else None
            step.add_metric([name], hold.step + 1 if hold is not None else 0)
            seen.add_metric([name], hold.seen() if hold is not None and hold.started_at is not None else 0)
        yield step
        yield seen

    # ------------------------------------------------------------------ elastic pools
    def _scaling(self) -> Iterator[Metric]:
        model = self.model
        desired = GaugeMetricFamily(
            "drainctl_pool_desired_replicas",
            "Elastic pools: the size the last decision asked for (min_replicas..max_replicas).", labels=["pool"])
        lowest = GaugeMetricFamily("drainctl_pool_min_replicas", "Elastic pools: min_replicas.", labels=["pool"])
        highest = GaugeMetricFamily("drainctl_pool_max_replicas", "Elastic pools: max_replicas.", labels=["pool"])
        waiting = GaugeMetricFamily(
            "drainctl_pool_backlog_messages",
            "Elastic pools: messages waiting for a slot at the last decision (ready in the pool's queues plus "
            "those its workers hold prefetched); absent until the queue depths are known.", labels=["pool"])
        events = CounterMetricFamily(
            "drainctl_pool_scale_events_total",
            "Elastic pools: size changes decided, by direction (out: workers added, in: one worker drained).",
            labels=["pool", "direction"])
        for name, target in sorted(model.pool_targets.items()):
            policy = target.scaling
            if policy is None:
                continue
            sizing = model.pool_sizing.get(name)
            desired.add_metric([name], sizing.desired if sizing is not None else target.replicas)
            lowest.add_metric([name], policy.min_replicas)
            highest.add_metric([name], policy.max_replicas)
            if sizing is not None and sizing.load is not None:
                waiting.add_metric([name], backlog(sizing.load))
            for direction in SCALE_DIRECTIONS:
                events.add_metric([name, direction], sizing.events.get(direction, 0) if sizing is not None else 0)
        yield from (desired, lowest, highest, waiting, events)

    # ------------------------------------------------------------------ the controller itself
    def _controller(self) -> Iterator[Metric]:
        model = self.model
        stats = model.stats
        reloads = CounterMetricFamily("drainctl_config_reloads_total", "Configuration reloads, by outcome.",
                                      labels=["outcome"])
        for outcome, count in sorted((dict.fromkeys(RELOAD_OUTCOMES, 0) | dict(model.reloads)).items()):
            reloads.add_metric([outcome], count)
        yield reloads
        yield GaugeMetricFamily("drainctl_broker_connected", "1 while connected to RabbitMQ.",
                                value=int(stats.connected))
        yield CounterMetricFamily("drainctl_broker_connects_total", "Successful connections to RabbitMQ.",
                                  value=stats.connects)
        yield GaugeMetricFamily("drainctl_synced", "1 once the start-up reconcile was merged (the model is complete).",
                                value=int(model.is_synced()))
        yield GaugeMetricFamily("drainctl_start_time_seconds", "Unix time the controller started.",
                                value=stats.started_wall)


def exposition(registry: CollectorRegistry, model: ReadModel) -> bytes:
    """The whole /metrics page: the registry's families, then each worker's series."""
    return generate_latest(registry) + worker_series(model.cluster, model.now()).encode()


def registry_for(model: ReadModel) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelCollector(model))
    return registry


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets from per-bucket counts (the last is +Inf)."""
    total = 0
    out: list[tuple[str, float]] = []
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        total += count
        out.append((bound, total))
    return out
