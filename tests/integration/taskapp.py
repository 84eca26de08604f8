"""Celery application run by the real workers of the integration tests.

Workers start it with ``python -m celery -A tests.integration.taskapp worker ...`` (see the
``celery_worker`` fixture in ``conftest.py``); tests send its tasks through the ``celery_app``
fixture. It is configured from the environment so each worker can be started differently:

``DRAINCTL_TEST_BROKER_URL``
    Broker URL (default ``amqp://guest:guest@127.0.0.1:5672//``).
``TASKAPP_PREFETCH``
    ``worker_prefetch_multiplier`` (default 1).
``TASKAPP_ACKS_LATE``
    ``"1"`` for ``task_acks_late`` (default ``"0"``).
``TASKAPP_SHUTDOWN_DELAY``
    Seconds the worker's main process waits in ``worker_shutdown`` before it exits (default 0):
    a slow warm shutdown, to widen the window in which a controller sees it retiring.
``TASKAPP_REMOTE_CONTROL``
    ``"0"`` sets ``worker_enable_remote_control = False``: the worker sends events and heartbeats
    but has no pidbox, so it answers no remote-control command (default ``"1"``).
``TASKAPP_OMIT``
    Comma-separated task names left unregistered: a "new version" that lacks them.
``TASKAPP_EXIT_WHEN_READY``
    ``"1"``: the worker exits (code 3) as soon as it is ready, after its worker-online.
``TASKAPP_CONSUME_GATE``
    If set, a path: the worker, once it has sent its worker-online and set up its consumers but before
    its event loop starts (the loop starts consuming, then reads remote control), writes
    ``<path>.reached`` and waits until ``<path>`` exists. Until then it consumes nothing, answers no
    remote control and sends no heartbeat.
``TASKAPP_DEFAULT_QUEUE``
    ``task_default_queue`` (default ``"default"``).
``TASKAPP_MAX_PRIORITY``
    If set, ``task_queue_max_priority`` (an int).
``TASKAPP_MISSING_QUEUE_TYPE`` / ``TASKAPP_MISSING_EXCHANGE_TYPE``
    If set, ``task_create_missing_queue_type`` (``classic``/``quorum``) and
    ``task_create_missing_queue_exchange_type`` (Celery >= 5.5; older versions ignore them).
``TASKAPP_TASK_QUEUES``
    If set, ``task_queues`` from a JSON list of
    ``{"name", "exchange", "exchange_type", "routing_key", "queue_arguments"}`` (all but ``name``
    optional: exchange named after the queue, ``direct``, routing key the queue's name, no arguments).
    These knobs are read by :func:`queue_settings`, which a test can call with the same
    environment to route its own messages as the workers do.
``TASKAPP_WORK_SLOWDOWN`` / ``TASKAPP_WORK_FAIL_EVERY``
    How :func:`work` behaves in this "version": its sleep multiplied by the first, and every n-th call
    of a pool process failing (0, the default: none).
``TASKAPP_RECORD_DIR``
    If set, :func:`sleep`, :func:`broken`, :func:`flaky` and :func:`work` append JSON lines describing their
    executions to ``<dir>/<worker pid>.jsonl`` (one file per pool process); read them with
    :func:`tests.helpers.read_records`. Each execution is identified by ``(uuid, retries)``;
    ``redelivered`` says whether the broker had delivered its message before.

Tasks are sent to the queue ``default`` (``TASKAPP_DEFAULT_QUEUE``) unless a queue is given explicitly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, bootsteps, signals
from kombu import Exchange, Queue

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def queue_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The queue settings the ``TASKAPP_*`` queue knobs of ``environ`` ask for (see the module doc)."""
    settings: dict[str, Any] = {"task_default_queue": environ.get("TASKAPP_DEFAULT_QUEUE", "default")}
    if environ.get("TASKAPP_MAX_PRIORITY"):
        settings["task_queue_max_priority"] = int(environ["TASKAPP_MAX_PRIORITY"])
    if environ.get("TASKAPP_MISSING_QUEUE_TYPE"):
        settings["task_create_missing_queue_type"] = environ["TASKAPP_MISSING_QUEUE_TYPE"]
    if environ.get("TASKAPP_MISSING_EXCHANGE_TYPE"):
        settings["task_create_missing_queue_exchange_type"] = environ["TASKAPP_MISSING_EXCHANGE_TYPE"]
    if environ.get("TASKAPP_TASK_QUEUES"):
        settings["task_queues"] = [
            Queue(
                spec["name"],
                Exchange(spec.get("exchange", spec["name"]), spec.get("exchange_type", "direct")),
                routing_key=spec.get("routing_key", spec["name"]),
                queue_arguments=spec.get("queue_arguments"),
            )
            for spec in json.loads(environ["TASKAPP_TASK_QUEUES"])
        ]
    return settings


app = Celery("taskapp")
app.conf.update(
    broker_url=os.environ.get("DRAINCTL_TEST_BROKER_URL", DEFAULT_BROKER_URL),
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=int(os.environ.get("TASKAPP_PREFETCH", "1")),
    task_acks_late=os.environ.get("TASKAPP_ACKS_LATE", "0") == "1",
    worker_hijack_root_logger=False,
    worker_enable_remote_control=os.environ.get("TASKAPP_REMOTE_CONTROL", "1") != "0",
    **queue_settings(os.environ),
)


@signals.worker_shutdown.connect
def _slow_shutdown(**_: Any) -> None:
    time.sleep(float(os.environ.get("TASKAPP_SHUTDOWN_DELAY", "0")))


def _record(task: Any, event: str, **extra: Any) -> None:
    """Append one execution record for ``task`` if ``TASKAPP_RECORD_DIR`` is set."""
    record_dir = os.environ.get("TASKAPP_RECORD_DIR")
    if not record_dir:
        return
    record = {
        "event": event,
        "task": task.name,
        "uuid": task.request.id,
        "retries": task.request.retries,
        "hostname": task.request.hostname,
        "pid": os.getpid(),
        # CLOCK_MONOTONIC is system-wide on Linux: comparable across processes.
        "monotonic": time.monotonic(),
        "time": time.time(),
        "redelivered": bool((task.request.delivery_info or {}).get("redelivered")),
        **extra,
    }
    path = os.path.join(record_dir, f"{os.getpid()}.jsonl")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


@app.task(bind=True, name="taskapp.sleep")
def sleep(self: Any, seconds: float, tag: str = "") -> float:
    """Sleep ``seconds``; records ``start`` before and ``end`` after (with ``tag``)."""
    _record(self, "start", tag=tag, seconds=seconds)
    time.sleep(seconds)
    _record(self, "end", tag=tag, seconds=seconds)
    return seconds


@app.task(bind=True, name="taskapp.broken")
def broken(self: Any, seconds: float) -> None:
    """Sleep ``seconds``, then fail (a task whose failure is its normal end: recorded as ``end``)."""
    _record(self, "start", seconds=seconds)
    time.sleep(seconds)
    _record(self, "end", seconds=seconds, outcome="error")
    raise ValueError("taskapp.broken fails by design")


@app.task(bind=True, name="taskapp.flaky", max_retries=None)
def flaky(self: Any, seconds: float, failures: int) -> float:
    """Sleep ``seconds``; the first ``failures`` executions end by retrying in 1 s (``self.retry``)."""
    _record(self, "start", seconds=seconds)
    time.sleep(seconds)
    if self.request.retries < failures:
        _record(self, "end", seconds=seconds, outcome="retry")
        raise self.retry(countdown=1)
    _record(self, "end", seconds=seconds, outcome="ok")
    return seconds


_work_calls = 0


@app.task(bind=True, name="taskapp.work")
def work(self: Any, seconds: float) -> float:
    """Sleep ``seconds`` x ``TASKAPP_WORK_SLOWDOWN``; every ``TASKAPP_WORK_FAIL_EVERY``-th call in a pool
    process fails (recorded as ``end`` with ``outcome`` "error"). A version's behaviour, set by its env."""
    global _work_calls
    _work_calls += 1
    scaled = seconds * float(os.environ.get("TASKAPP_WORK_SLOWDOWN", "1"))
    _record(self, "start", seconds=scaled)
    time.sleep(scaled)
    every = int(os.environ.get("TASKAPP_WORK_FAIL_EVERY", "0"))
    if every and _work_calls % every == 0:
        _record(self, "end", seconds=scaled, outcome="error")
        raise ValueError("taskapp.work fails by design")
    _record(self, "end", seconds=scaled, outcome="ok")
    return scaled


@app.task(name="taskapp.add")
def add(x: float, y: float) -> float:
    return x + y


def fail() -> None:
    raise ValueError("taskapp.fail always fails")


# A "new version" that lacks a task: TASKAPP_OMIT_FAIL=1 leaves taskapp.fail unregistered.
if os.environ.get("TASKAPP_OMIT_FAIL") != "1":
    fail = app.task(name="taskapp.fail")(fail)

for _name in filter(None, os.environ.get("TASKAPP_OMIT", "").split(",")):
    app.tasks.unregister(_name)


@signals.worker_ready.connect
def _exit_when_ready(**_: Any) -> None:
    if os.environ.get("TASKAPP_EXIT_WHEN_READY") == "1":
        os._exit(3)


class _ConsumeGate(bootsteps.StartStopStep):
    """``TASKAPP_CONSUME_GATE``: after worker-online (Heart), the consumers' set-up (Tasks) and the pidbox
    (Control); the event loop (Evloop) is always started last, after this step."""

    requires = (
        "celery.worker.consumer.heart:Heart",
        "celery.worker.consumer.tasks:Tasks",
        "celery.worker.consumer.control:Control",
    )

    def start(self, c: Any) -> None:
        gate = os.environ["TASKAPP_CONSUME_GATE"]
        with open(f"{gate}.reached", "w", encoding="utf-8"):
            pass
        while not os.path.exists(gate):
            time.sleep(0.05)


if os.environ.get("TASKAPP_CONSUME_GATE"):
    app.steps["consumer"].add(_ConsumeGate)
