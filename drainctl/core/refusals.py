"""When drainctl will not start a drain, and why: the refusal rules, checked before any command is sent.

Pure: they read the model (`Cluster`) and which workers are being drained already.

A refusal is *temporary* when it comes only from something the controller does not know yet: a worker
it has not seen (its first event has not arrived), or queues no active_queues reply told it yet (its
own, or those of the other workers that could keep a queue consumed). The same request a few seconds
later is then likely to be accepted, and `drainctl drain` retries it. Every other refusal is
permanent: it stays until someone changes something (a unique -n, remote control, another consumer).
"""

from __future__ import annotations

from collections.abc import Container

from drainctl.core.model import Cluster
from drainctl.core.quiet import is_standby
from drainctl.core.worker import Worker, WorkerState


class DrainRefused(Exception):
    """`overridable`: --force would start the drain; `temporary`: retrying in a few seconds may (see above)."""

    def __init__(self, hostname: str, reason: str, *, overridable: bool, temporary: bool) -> None:
        super().__init__(reason)
        self.hostname = hostname
        self.reason = reason
        self.overridable = overridable
        self.temporary = temporary


def not_answering_reason(worker: Worker) -> str:
    """Why drainctl will not drain a worker that does not answer remote control, and what to do instead."""
    # drainctl stops a worker consuming with cancel_consumer: without remote control only a warm shutdown
    # stops it safely (README.md, "Remote control off").
    return (f"{worker.hostname!r} does not answer remote control (worker_enable_remote_control off?): "
            "stop it with a warm shutdown (SIGTERM) instead")


def check(cluster: Cluster, hostname: str, draining: Container[str], *, force: bool) -> tuple[str, ...]:
    """The queues to drain, or DrainRefused saying why not (whether --force overrides it, whether it is temporary).

    `draining`: the workers being drained already (they do not count as a queue's other consumers).
    """
    worker = cluster.worker(hostname)
    if worker is None:
        raise DrainRefused(hostname, f"unknown worker {hostname!r}: drainctl has not seen it (yet); "
                           "`drainctl status` lists the workers it knows", overridable=False, temporary=True)
    if worker.collision:
        # A command sent to that name can land on either process.
        raise DrainRefused(hostname, f"{hostname!r} is used by two live processes ({worker.collision_reason}): "
                           "give every worker a unique -n", overridable=False, temporary=False)
    if worker.state is WorkerState.OFFLINE:
        raise DrainRefused(hostname, f"{hostname!r} is already shutting down (worker-offline seen)",
                           overridable=False, temporary=False)
    if worker.not_answering:
        raise DrainRefused(hostname, not_answering_reason(worker), overridable=False, temporary=False)
    if worker.queues is None:
        unanswered = len(worker.unanswered)
        # drainctl keeps asking, and says so if the worker never answers.
        so_far = f"; {unanswered} remote-control question(s) unanswered so far" if unanswered else ""
        raise DrainRefused(hostname, f"the queues of {hostname!r} are not known yet (no active_queues reply"
                           f"{so_far}); retry in a few seconds", overridable=False, temporary=True)
    if worker.state is WorkerState.SILENT and not force:
        raise DrainRefused(hostname, f"{hostname!r} is silent (no heartbeat); it may be dead or busy. "
                           "Use --force to drain it anyway", overridable=True, temporary=False)
    if not force:
        # A standby queue is never routed to: nobody waits on it.
        for queue in (q for q in worker.queues if not is_standby(q)):
            if not _other_consumers(cluster, hostname, queue, draining):
                raise _last_consumer(cluster, hostname, queue, draining)
    return worker.queues


def _other_consumers(cluster: Cluster, hostname: str, queue: str, draining: Container[str]) -> list[str]:
    return [
        w.hostname for w in cluster
        if w.hostname != hostname
        and w.state is WorkerState.ONLINE
        and not w.collision
        and w.queues is not None and queue in w.queues
        and w.hostname not in draining
    ]


def _last_consumer(cluster: Cluster, hostname: str, queue: str, draining: Container[str]) -> DrainRefused:
    """`hostname` is the last known consumer of `queue`: for now only, while another worker that could
    consume it has not said what it consumes (and will: it answers remote control, or will be found not to)."""
    unknown = sorted(
        w.hostname for w in cluster
        if w.hostname != hostname and w.state is WorkerState.ONLINE and not w.collision and not w.not_answering
        and w.queues is None and w.hostname not in draining
    )
    if unknown:
        return DrainRefused(hostname, f"queue {queue!r} would have no consumer, as far as drainctl knows yet: the "
                            f"queues of {', '.join(map(repr, unknown))} are not known yet; retry in a few seconds, "
                            "or use --force", overridable=True, temporary=True)
    return DrainRefused(hostname, f"queue {queue!r} would have no consumer: {hostname!r} is the only online worker "
                        "on it not being drained. Start another worker on it first, or use --force",
                        overridable=True, temporary=False)
