"""The per-worker series of /metrics, written straight to the exposition text.

At 1,000 workers they are 7,000 of the page's samples. prometheus_client builds a sample object for each
and formats every label of every sample in its general way: about 70 ms on the event loop per scrape,
which is event lag for the whole controller (bench/README.md, fleet). Here each hostname is escaped once
for its seven lines, and the text is the same that `generate_latest` writes for these families (labels in
sorted order, values as Go floats): `tests/test_metrics_workers.py` compares the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Final

from prometheus_client.utils import floatToGoString

from drainctl.core.model import Cluster
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import Worker

# (name, help) of each family
TASKS: Final = ("drainctl_worker_tasks",
                "Tasks a worker holds, by state: running, reserved (prefetched) or scheduled (ETA).")
HEARTBEAT_AGE: Final = ("drainctl_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.")
INFO: Final = ("drainctl_worker_info", "Facts about a worker in the model (value is always 1).")
COLLISION: Final = ("drainctl_worker_hostname_collision",
                    "1 while more than one live process speaks under this worker's hostname (drains refused).")
UNANSWERED: Final = ("drainctl_worker_remote_control_unanswered",
                     "1 while a worker heartbeats but does not answer remote control (worker_enable_remote_control "
                     "off?): drains refused, rollouts blocked.")

_TASK_STATES: Final = tuple(TaskState)


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(name: str, help_text: str) -> str:
    escaped = help_text.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {escaped}\n# TYPE {name} gauge\n"


def worker_series(cluster: Cluster, now: float) -> str:
    """The per-worker families as exposition text."""
    tasks: list[str] = [_header(*TASKS)]
    age: list[str] = [_header(*HEARTBEAT_AGE)]
    info: list[str] = [_header(*INFO)]
    collision: list[str] = [_header(*COLLISION)]
    unanswered: list[str] = [_header(*UNANSWERED)]
    for worker in cluster:
        host = f'hostname="{escape_label_value(worker.hostname)}"'
        for state, count in _task_counts(worker):
            tasks.append(f'{TASKS[0]}{{{host},state="{state}"}} {count}.0\n')
        if worker.last_heartbeat is not None:
            seconds = floatToGoString(max(0.0, now - worker.last_heartbeat))  # type: ignore[no-untyped-call]
            age.append(f"{HEARTBEAT_AGE[0]}{{{host}}} {seconds}\n")
        version = escape_label_value(worker.sw_ver or "")
        # StrEnums: a member formats as its value.
        info.append(f'{INFO[0]}{{celery_version="{version}",{host},state="{worker.state}",'
                    f'task_events="{worker.task_events}"}} 1.0\n')
        collision.append(f"{COLLISION[0]}{{{host}}} {int(worker.collision)}.0\n")
        unanswered.append(f"{UNANSWERED[0]}{{{host}}} {int(worker.not_answering)}.0\n")
    return "".join(chain(tasks, age, info, collision, unanswered))


def _task_counts(worker: Worker) -> Iterable[tuple[str, int]]:
    counts = dict.fromkeys(_TASK_STATES, 0)
    for task in worker.tasks.values():
        counts[task.state] += 1
    return counts.items()
