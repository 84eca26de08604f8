"""One name, several processes: which process speaks for a worker's name, and when two share it.

A worker-online from a new pid while the current process is alive makes that pid a *contender*, not
the new incarnation. Celery >= 5.7 (kombu's exclusive pidbox queue) makes a second worker with a taken
name announce itself and crash within a second: its worker-offline then ends the matter, and the first
process keeps the name. If the contender heartbeats instead, the current process decides: it spoke
meanwhile -> two live processes share the name (a collision; older Celery lets them); it fell silent
-> it was replaced (a restart).

A collision clears once no second live process has been heard under the name for twice the silent
window: every heartbeat (or task event) of a second process that has not announced its shutdown
renews it. A process that sent worker-offline no longer counts: Celery closes its remote-control
(pidbox) consumer before it sends worker-offline, so commands to the name reach the other one only.
(README.md, "Two processes under one name", says what the operator sees.)
"""

from __future__ import annotations

from drainctl.core.notices import Notice
from drainctl.core.worker import Worker


def note_pid(worker: Worker, pid: int | None, now: float, kind: str, window: float) -> Notice | None:
    """Track which process speaks for a hostname; flag two live ones as a collision.

    `kind` is the event type (`task` for any task event); `window` is the worker's silent window.
    """
    if pid is None:
        return None
    current = worker.pid
    if current is None or pid == current:
        worker.pid = pid
        worker.pids[pid] = now
        if worker.contender is not None:
            worker.current_spoke = True
        return None
    known = pid in worker.pids
    worker.pids[pid] = now
    if pid in worker.offline_pids:
        # A process that announced its shutdown, finishing its tasks: its events are expected.
        return None
    current_gone = current in worker.offline_pids or now - worker.pids.get(current, -1e18) > window
    if current_gone:
        return _replace(worker, pid)
    if kind == "worker-offline":
        return _contender_left(worker, pid, now, known)
    if kind == "worker-online" and not known:
        worker.contender = pid
        worker.contender_at = now
        worker.current_spoke = False
        return None
    if pid == worker.contender and kind == "worker-online":
        return None  # said again: still undecided
    if pid == worker.contender and not worker.current_spoke:
        # The current process has said nothing since the contender appeared: it was replaced.
        return _replace(worker, pid)
    if pid == worker.contender:
        worker.contender = None
    return collide(worker, now, f"two processes (pids {current} and {pid}) use this name")


def _contender_left(worker: Worker, pid: int, now: float, known: bool) -> Notice | None:
    """Another process under this name shuts down: a twin stopping, or a duplicate that could not start."""
    worker.offline_pids.add(pid)
    if pid != worker.contender and known:
        return None  # a process already flagged as a collision: the collision clears in time
    since = "" if worker.contender_at is None or pid != worker.contender else (
        f" {now - worker.contender_at:.1f}s after it announced itself")
    worker.contender = None
    return Notice("hostname-contender-left", worker.hostname,
                  f"pid {pid} shut down under this name{since} while pid {worker.pid} keeps it "
                  "(a second worker started with the same -n?)")


def _replace(worker: Worker, pid: int) -> Notice:
    """A new incarnation (a restart after an exit or SIGKILL) takes the name."""
    previous = worker.pid
    worker.pid = pid
    worker.worker_clock = -1
    worker.contender = None
    # A new process: what the old one answered (or did not) says nothing about it.
    worker.unanswered.clear()
    worker.answered_at = None
    worker.not_answering_since = None
    return Notice("worker-restarted", worker.hostname, f"pid {previous} -> {pid}")


def collide(worker: Worker, now: float, reason: str) -> Notice | None:
    """Two live processes use the name: said once, renewed by every further sign of the second one."""
    first = worker.collision_at is None
    worker.collision_at = now
    worker.collision_reason = reason
    return Notice("hostname-collision", worker.hostname, reason) if first else None


def drop_tasks_of_dead_incarnation(worker: Worker) -> list[Notice]:
    """After a restart: the tasks of a previous process that never announced its shutdown are gone."""
    gone = [t for t in worker.tasks.values() if t.pid is not None and t.pid != worker.pid]
    gone = [t for t in gone if t.pid not in worker.offline_pids]
    for task in gone:
        del worker.tasks[task.uuid]
    if not gone:
        return []
    ids = ", ".join(sorted(t.uuid for t in gone))
    return [Notice("tasks-lost", worker.hostname, f"previous process held {ids}")]


def forget_stale(worker: Worker, now: float, window: float) -> Notice | None:
    """Time passes: a collision clears, and other pids are forgotten, once unheard for twice `window`."""
    notice = None
    if worker.collision_at is not None and now - worker.collision_at > 2 * window:
        worker.collision_at = None
        worker.collision_reason = None
        notice = Notice("hostname-collision-cleared", worker.hostname, "")
    if len(worker.pids) > 1:
        for pid, seen in list(worker.pids.items()):
            if pid != worker.pid and now - seen > 2 * window:
                del worker.pids[pid]
                worker.offline_pids.discard(pid)
                if pid == worker.contender:
                    worker.contender = None  # announced itself, then never heard of again
    return notice
