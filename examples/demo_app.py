"""Example Celery application used by ``scripts/demo.sh``.

In the demo, drainctl starts its workers (pool ``demo`` in ``.demo/drainctl.toml``, made from
``examples/demo.toml.in``). To run a worker by hand instead (from the repository root)::

    DEMO_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/drainctl-demo PYTHONPATH=. \\
        python -m celery -A examples.demo_app worker -n demo-a@%h -Q default -c 2 -E

Configured from the environment:

``DEMO_BROKER_URL``
    Broker URL (default ``amqp://guest:guest@127.0.0.1:5672//``).
``DEMO_RECORD_DIR``
    If set, ``demo.work`` appends a JSON line when it starts and when it ends to
    ``<dir>/<pid>.jsonl`` (one file per pool process): ``event`` (``start``/``end``), ``task``,
    ``uuid``, ``retries``, ``hostname``, ``pid``, ``time``. ``examples/demo_report.py`` reads them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

app = Celery("demo")
app.conf.update(
    broker_url=os.environ.get("DEMO_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="default",
    # Reserve one task per pool process at a time: a draining worker then holds little.
    worker_prefetch_multiplier=1,
)


def _record(task: Any, event: str) -> None:
    """Append one execution record for ``task`` if ``DEMO_RECORD_DIR`` is set."""
    record_dir = os.environ.get("DEMO_RECORD_DIR")
    if not record_dir:
        return
    record = {
        "event": event,
        "task": task.name,
        "uuid": task.request.id,
        "retries": task.request.retries,
        "hostname": task.request.hostname,
        "pid": os.getpid(),
        "time": time.time(),
    }
    # One file per process: appends from different processes never interleave within a file.
    path = os.path.join(record_dir, f"{os.getpid()}.jsonl")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


@app.task(bind=True, name="demo.work")
def work(self: Any, seconds: float) -> float:
    """Pretend to work for ``seconds``; records ``start`` before and ``end`` after."""
    _record(self, "start")
    time.sleep(seconds)
    _record(self, "end")
    return seconds


@app.task(name="demo.add")
def add(x: float, y: float) -> float:
    return x + y
