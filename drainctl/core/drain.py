"""The drain state machine: stop a worker taking work, wait (on events) until it holds nothing, retire it.

Pure: every input (a control reply, a runtime exit, a model change, the passing of time) goes through
`DrainBook`, which returns the commands to run. Phases:

    cancelling ──replies ok──► waiting ──model: 0 running, 0 prefetched──► verifying
        │ reply missing              ▲                                         │ targeted inspect
        ▼                            └────────── still holds tasks ◄───────────┤
    confirming-queues (active_queues)                                          ▼ holds nothing
                                                                retiring (remote `shutdown`)
                                                                     │ managed, still alive after grace
                                                                     ▼
                                                                stopping (runtime stop)  ──exit──► done

ETA tasks never hold a drain: the worker keeps them unacknowledged and the broker hands them to
another worker when the drained one closes its connection. While it drains, the tasks a worker holds
for long are checked against RabbitMQ's consumer_timeout (`drainctl.core.consumer_timeout`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from drainctl.core import refusals
from drainctl.core.commands import (
    AddConsumers,
    CancelConsumers,
    Command,
    EscalateWorker,
    QueryQueues,
    Reconcile,
    ShutdownWorker,
    StopWorker,
)
from drainctl.core.consumer_timeout import DEFAULT_CONSUMER_TIMEOUT_S, ConsumerTimeout, near_timeout, redelivered
from drainctl.core.model import Cluster
from drainctl.core.notices import Notice
from drainctl.core.policy import DrainPolicy
from drainctl.core.refusals import DrainRefused
from drainctl.core.scaling import drain_estimate
from drainctl.core.worker import Worker, WorkerState, held

# What code outside the core imports from here, wherever it is defined.
__all__ = [
    "CONFIRM_REASON", "DEFAULT_CONSUMER_TIMEOUT_S", "DURATION_BUCKETS", "ESTIMATE_ERROR_BUCKETS", "ConsumerTimeout",
    "Drain", "DrainBook",
    "DrainPolicy", "DrainRefused", "Outcome", "Phase",
]

DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# How far a drain's actual end was from its estimate, in seconds either way.
# How many retired workers' shutdown-to-exit times a drain's estimate learns from.
RETIRE_HISTORY: Final = 50
ESTIMATE_ERROR_BUCKETS: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0)
RESTART_WINDOW_S: Final = 300.0
CONFIRM_REASON: Final = "drain-confirm"


class Phase(StrEnum):
    CANCELLING = "cancelling"
    CONFIRMING_QUEUES = "confirming-queues"
    WAITING = "waiting"
    VERIFYING = "verifying"
    RETIRING = "retiring"
    STOPPING = "stopping"
    DONE = "done"


class Outcome(StrEnum):
    RETIRED = "retired"  # drainctl saw the process/container exit
    SHUTDOWN_REQUESTED = "shutdown-requested"  # not ours: `shutdown` sent, worker-offline seen
    RESTARTED_BY_SUPERVISOR = "restarted-by-supervisor"  # ...and it came back under the same name
    LOST = "lost"  # it died before drainctl retired it
    CANCELLED = "cancelled"  # the drain was called off; the worker consumes again


@dataclass(slots=True)
class Drain:
    hostname: str
    queues: tuple[str, ...]
    managed: bool
    policy: DrainPolicy
    started_at: float
    pid: int | None
    requested_by: str = "api"
    forced: bool = False
    phase: Phase = Phase.CANCELLING
    phase_since: float = 0.0
    unconfirmed: set[str] = field(default_factory=set)
    asked_at: float | None = None
    held: tuple[str, ...] = ()
    shutdown_at: float | None = None
    past_deadline: bool = False
    escalated: bool = False
    outcome: Outcome | None = None
    finished_at: float | None = None
    # When it was expected to end, from the runtime history, as it started (None: unknown); it ended at
    # `finished_at`.
    estimated_end_at: float | None = None
    detail: str = ""
    lost_tasks: tuple[str, ...] = ()
    # Seconds from the worker's last task end (or the drain's start, if later) to the `shutdown` command.
    reaction_s: float | None = None
    # Tasks already reported as near RabbitMQ's consumer_timeout (one notice per task), and those of them
    # another worker received since (the broker delivered them again).
    timeout_warned: set[str] = field(default_factory=set)
    redelivered: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.phase is not Phase.DONE

    def duration(self, now: float) -> float:
        return (self.finished_at if self.finished_at is not None else now) - self.started_at


class DrainBook:
    """Every drain, active and recently finished, plus the counters /metrics reads."""

    def __init__(self, history: int = 200, consumer_timeout: ConsumerTimeout | None = None) -> None:
        self.consumer_timeout = consumer_timeout or ConsumerTimeout()
        self.consumer_timeout_warnings = 0
        self.consumer_timeout_redeliveries = 0
        self.active: dict[str, Drain] = {}
        self.finished: deque[Drain] = deque(maxlen=history)
        self.started_total = 0
        self.outcomes: dict[str, int] = {o.value: 0 for o in Outcome}
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.estimate_error_buckets = [0] * (len(ESTIMATE_ERROR_BUCKETS) + 1)
        self.estimate_error_sum = 0.0
        # How long retired workers took from the remote shutdown to their exit: a drain ends when its
        # worker has exited, so every estimate adds the median of these.
        self.retire_times: deque[float] = deque(maxlen=RETIRE_HISTORY)

    # ------------------------------------------------------------------ queries
    def __iter__(self) -> Iterator[Drain]:
        return iter(self.active.values())

    def get(self, hostname: str) -> Drain | None:
        drain = self.active.get(hostname)
        if drain is not None:
            return drain
        return next((d for d in reversed(self.finished) if d.hostname == hostname), None)

    def past_deadline(self) -> int:
        return sum(1 for d in self.active.values() if d.past_deadline)

    # ------------------------------------------------------------------ refusal rules
    def check(self, cluster: Cluster, hostname: str, *, force: bool) -> tuple[str, ...]:
        """The queues to drain, or DrainRefused saying why not (see `drainctl.core.refusals`)."""
        return refusals.check(cluster, hostname, self.active, force=force)

    # ------------------------------------------------------------------ inputs
    def start(
        self, cluster: Cluster, hostname: str, now: float, *, policy: DrainPolicy, managed: bool,
        force: bool = False, requested_by: str = "api",
    ) -> tuple[Drain, list[Command]]:
        existing = self.active.get(hostname)
        if existing is not None:
            return existing, []  # idempotent: a repeated request joins the drain under way
        queues = self.check(cluster, hostname, force=force)
        worker = cluster.worker(hostname)
        assert worker is not None
        drain = Drain(
            hostname=hostname, queues=queues, managed=managed, policy=policy, started_at=now, pid=worker.pid,
            requested_by=requested_by, forced=force, phase_since=now, unconfirmed=set(queues), asked_at=now,
            held=held(worker) or (), estimated_end_at=self._estimate(worker, cluster, now),
        )
        self.active[hostname] = drain
        self.started_total += 1
        if not queues:
            drain.phase = Phase.WAITING
            return drain, []
        return drain, [CancelConsumers(hostname, queues)]

    def resume(
        self, cluster: Cluster, hostname: str, queues: tuple[str, ...], now: float, *, policy: DrainPolicy,
        managed: bool, requested_by: str,
    ) -> Drain:
        """Take up a drain a previous controller started (its journal says it cancelled the consumers)."""
        existing = self.active.get(hostname)
        if existing is not None:
            return existing
        worker = cluster.worker(hostname)
        drain = Drain(
            hostname=hostname, queues=queues, managed=managed, policy=policy, started_at=now,
            pid=worker.pid if worker is not None else None, requested_by=requested_by, phase=Phase.WAITING,
            phase_since=now, held=held(worker) or (), estimated_end_at=self._estimate(worker, cluster, now),
        )
        self.active[hostname] = drain
        self.started_total += 1
        return drain

    def cancel_replied(self, hostname: str, replies: dict[str, bool | None], now: float) -> list[Command]:
        """`replies` per queue: True = the worker said ok, False = it said error, None = no reply (unknown)."""
        drain = self.active.get(hostname)
        if drain is None or drain.phase not in (Phase.CANCELLING, Phase.CONFIRMING_QUEUES):
            return []
        for queue, ok in replies.items():
            if ok:
                drain.unconfirmed.discard(queue)
        if not drain.unconfirmed:
            self._enter(drain, Phase.WAITING, now)
            return []
        # A missing reply is unknown, not failure: ask the worker what it consumes.
        self._enter(drain, Phase.CONFIRMING_QUEUES, now)
        drain.asked_at = now
        return [QueryQueues(hostname)]

    def queues_replied(
        self, cluster: Cluster, hostname: str, queues: tuple[str, ...] | None, now: float
    ) -> list[Command]:
        drain = self.active.get(hostname)
        if queues is not None:
            cluster.set_queues(hostname, queues)
        if drain is None or drain.phase is not Phase.CONFIRMING_QUEUES:
            return []
        if queues is None:
            return []  # no answer: asked again after retry_s
        still = tuple(q for q in drain.queues if q in queues)
        drain.unconfirmed = set(still)
        if not still:
            self._enter(drain, Phase.WAITING, now)
            return []
        self._enter(drain, Phase.CANCELLING, now)
        drain.asked_at = now
        return [CancelConsumers(hostname, still)]

    def confirm_done(self, cluster: Cluster, hostname: str, answered: bool, now: float) -> list[Command]:
        """The targeted inspect that confirms an idle worker came back (and was merged into the model)."""
        drain = self.active.get(hostname)
        if drain is None or drain.phase is not Phase.VERIFYING:
            return []
        if not answered:
            return []  # asked again after retry_s; never retire on an unanswered question
        worker = cluster.worker(hostname)
        drain.held = held(worker) or ()
        if drain.held:
            self._enter(drain, Phase.WAITING, now)
            return []
        self._enter(drain, Phase.RETIRING, now)
        drain.shutdown_at = now
        if worker is not None and worker.last_task_end is not None:
            # An idle worker's last task ended before the drain began: its reaction counts from the start.
            drain.reaction_s = max(0.0, now - max(worker.last_task_end, drain.started_at))
        return [ShutdownWorker(hostname)]

    def exited(self, cluster: Cluster, hostname: str, exit_code: int | None, forced: bool, now: float) -> list[Notice]:
        """The runtime saw the worker's process/container exit."""
        drain = self.active.get(hostname)
        if drain is None:
            return []
        known = held(cluster.worker(hostname))
        still_held = drain.held if known is None else known  # unknown to the model: what it held when last seen
        code = "unknown" if exit_code is None else str(exit_code)
        if drain.phase in (Phase.RETIRING, Phase.STOPPING) and not still_held:
            detail = f"exited with code {code}"
            if forced:
                detail += "; SIGTERM had no effect: the runtime killed it when the stop timeout expired"
            return self._finish(drain, Outcome.RETIRED, now, detail)
        return self._lose(drain, still_held, now, f"exited with code {code} while {drain.phase.value}")

    def evaluate(self, cluster: Cluster, now: float) -> tuple[list[Command], list[Notice]]:
        """Re-check every drain against the model and the clock. Called after every input."""
        commands: list[Command] = []
        notices: list[Notice] = []
        for drain in list(self.active.values()):
            c, n = self._evaluate(drain, cluster, now)
            commands.extend(c)
            notices.extend(n)
        for drain in self.finished:
            if (
                drain.outcome is Outcome.SHUTDOWN_REQUESTED
                and drain.finished_at is not None
                and now - drain.finished_at <= RESTART_WINDOW_S
            ):
                worker = cluster.worker(drain.hostname)
                if (worker is not None and worker.state is WorkerState.ONLINE and worker.pid is not None
                        and worker.pid != drain.pid):
                    self.outcomes[drain.outcome.value] -= 1
                    drain.outcome = Outcome.RESTARTED_BY_SUPERVISOR
                    self.outcomes[drain.outcome.value] += 1
                    drain.detail = f"came back under the same name with pid {worker.pid}"
                    notices.append(Notice("drain-restarted-by-supervisor", drain.hostname, drain.detail))
        return commands, notices

    def _evaluate(self, drain: Drain, cluster: Cluster, now: float) -> tuple[list[Command], list[Notice]]:
        worker = cluster.worker(drain.hostname)
        ended = self._ended(drain, worker, now)
        if ended is not None:
            return [], ended
        notices: list[Notice] = []
        if worker is not None:
            drain.held = held(worker) or ()
            notices.extend(self._consumer_timeout(drain, worker, cluster, now))
        commands = self._step(drain, worker, now, notices)
        commands.extend(self._past_deadline(drain, now, notices))
        return commands, notices

    def _ended(self, drain: Drain, worker: Worker | None, now: float) -> list[Notice] | None:
        """The drain's process was replaced, or a worker drainctl did not start left the model: how it ended."""
        if worker is not None and drain.pid is not None and worker.pid is not None and worker.pid != drain.pid:
            if drain.phase in (Phase.RETIRING, Phase.STOPPING) and not drain.managed:
                return self._finish(drain, Outcome.RESTARTED_BY_SUPERVISOR, now,
                                    f"came back under the same name with pid {worker.pid}")
            return self._lose(drain, drain.held, now, f"its process was replaced (pid {worker.pid})")
        if worker is None and not drain.managed:
            if drain.phase in (Phase.RETIRING, Phase.STOPPING):
                return self._finish(drain, Outcome.SHUTDOWN_REQUESTED, now, "worker left")
            return self._lose(drain, drain.held, now, "the worker went away before it was retired")
        return None

    def _step(self, drain: Drain, worker: Worker | None, now: float, notices: list[Notice]) -> list[Command]:
        """Move the drain on from its phase: ask again what went unanswered, verify, retire."""
        commands: list[Command] = []
        phase = drain.phase
        waited = now - (drain.asked_at if drain.asked_at is not None else drain.phase_since)
        if phase is Phase.CANCELLING and waited >= drain.policy.retry_s:
            drain.asked_at = now
            commands.append(CancelConsumers(drain.hostname, tuple(sorted(drain.unconfirmed))))
        elif phase is Phase.CONFIRMING_QUEUES and waited >= drain.policy.retry_s:
            drain.asked_at = now
            commands.append(QueryQueues(drain.hostname))
        elif phase is Phase.WAITING and worker is not None:
            # The heartbeat's `active` is a veto: if the worker said it runs something after the
            # last task we saw end, wait (the disagreement makes the model ask the worker).
            if not drain.held and not worker.heartbeat_says_busy():
                self._enter(drain, Phase.VERIFYING, now)
                drain.asked_at = now
                commands.append(Reconcile(drain.hostname, CONFIRM_REASON))
        elif phase is Phase.VERIFYING and waited >= drain.policy.retry_s:
            drain.asked_at = now
            commands.append(Reconcile(drain.hostname, CONFIRM_REASON))
        elif phase is Phase.RETIRING:
            if drain.managed:
                assert drain.shutdown_at is not None
                if now - drain.shutdown_at >= drain.policy.retire_grace_s:
                    self._enter(drain, Phase.STOPPING, now)
                    commands.append(StopWorker(drain.hostname, drain.policy.stop_timeout_s))
            elif worker is not None and worker.state is WorkerState.OFFLINE:
                notices.extend(self._finish(drain, Outcome.SHUTDOWN_REQUESTED, now,
                                            "remote shutdown sent; worker-offline seen"))
        return commands

    def _past_deadline(self, drain: Drain, now: float, notices: list[Notice]) -> list[Command]:
        """Said once, when a drain still waiting on the worker passes its deadline; escalated if the policy says so."""
        deadline = drain.policy.deadline_s
        if (deadline is None or not drain.active or drain.past_deadline
                or drain.phase not in (Phase.CANCELLING, Phase.CONFIRMING_QUEUES, Phase.WAITING, Phase.VERIFYING)
                or now - drain.started_at < deadline):
            return []
        drain.past_deadline = True
        commands: list[Command] = []
        detail = f"past its deadline of {deadline:g}s; still holds {len(drain.held)} tasks"
        if drain.policy.on_deadline == "escalate":
            if drain.managed:
                drain.escalated = True
                commands.append(EscalateWorker(drain.hostname))
                detail += "; escalating (SIGQUIT: soft shutdown where configured, else cold)"
            else:
                detail += "; cannot escalate a worker drainctl did not start: still waiting"
        else:
            detail += "; policy is to keep waiting (nothing is interrupted)"
        notices.append(Notice("drain-past-deadline", drain.hostname, detail))
        return commands

    def cancel(self, cluster: Cluster, hostname: str, now: float, reason: str) -> list[Command]:
        """Call a drain off: the worker consumes its queues again (unless it is already being retired)."""
        drain = self.active.get(hostname)
        if drain is None or drain.phase in (Phase.RETIRING, Phase.STOPPING):
            return []
        self._finish(drain, Outcome.CANCELLED, now, reason)
        worker = cluster.worker(hostname)
        if worker is not None:
            cluster.set_queues(hostname, tuple(set(worker.queues or ()) | set(drain.queues)))
        return [AddConsumers(hostname, drain.queues)]

    def abandon(self, hostname: str, now: float, reason: str) -> list[Notice]:
        """Give a drain up without touching the worker (another controller is acting on it)."""
        drain = self.active.get(hostname)
        if drain is None:
            return []
        return self._finish(drain, Outcome.CANCELLED, now, reason)

    # ------------------------------------------------------------------ consumer_timeout
    def _consumer_timeout(self, drain: Drain, worker: Worker, cluster: Cluster, now: float) -> list[Notice]:
        """The tasks the draining worker holds near RabbitMQ's consumer_timeout, and those delivered again."""
        near = near_timeout(worker, drain.timeout_warned, self.consumer_timeout, now)
        again = redelivered(worker, drain.timeout_warned, drain.redelivered, cluster)
        self.consumer_timeout_warnings += len(near)
        self.consumer_timeout_redeliveries += len(again)
        return near + again

    # ------------------------------------------------------------------ helpers
    def _enter(self, drain: Drain, phase: Phase, now: float) -> None:
        drain.phase = phase
        drain.phase_since = now

    def _lose(self, drain: Drain, tasks: Iterable[str], now: float, why: str) -> list[Notice]:
        drain.lost_tasks = tuple(sorted(tasks))
        detail = why
        if drain.lost_tasks:
            detail += (f"; it held {len(drain.lost_tasks)} tasks: {', '.join(drain.lost_tasks)} (with acks-early, "
                       "Celery's default, the running ones are lost; the others return to the queue)")
        if drain.timeout_warned:
            # A closed channel stops a Celery worker.
            detail += (f"; it held {', '.join(sorted(drain.timeout_warned))} past the consumer_timeout warning: "
                       "RabbitMQ may have closed its channel")
        return self._finish(drain, Outcome.LOST, now, detail)

    def _estimate(self, worker: Worker | None, cluster: Cluster, now: float) -> float | None:
        end = drain_estimate(worker, cluster.runtimes, now)
        if end is None or not self.retire_times:
            return end
        times = sorted(self.retire_times)
        return end + times[len(times) // 2]

    def _finish(self, drain: Drain, outcome: Outcome, now: float, detail: str) -> list[Notice]:
        if outcome is Outcome.RETIRED and drain.phase is Phase.RETIRING:
            self.retire_times.append(now - drain.phase_since)
        drain.outcome = outcome
        drain.detail = detail
        drain.finished_at = now
        self._enter(drain, Phase.DONE, now)
        self.active.pop(drain.hostname, None)
        self.finished.append(drain)
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        duration = drain.duration(now)
        self.duration_sum += duration
        self.duration_buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        if drain.estimated_end_at is not None:
            error = abs(now - drain.estimated_end_at)
            self.estimate_error_sum += error
            self.estimate_error_buckets[bisect_left(ESTIMATE_ERROR_BUCKETS, error)] += 1
        return [Notice(f"drain-{outcome.value}", drain.hostname, detail)]

