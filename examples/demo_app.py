"""Example Celery application used by ``scripts/demo.sh``.

Run a worker with (from the repository root)::

    DEMO_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/drainctl-demo PYTHONPATH=examples \\
        python -m celery -A demo_app worker -n demo-a@%h -Q default -c 2 -E
"""

from __future__ import annotations

import os
import time

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


@app.task(name="demo.work")
def work(seconds: float) -> float:
    """Pretend to work for ``seconds``."""
    time.sleep(seconds)
    return seconds


@app.task(name="demo.add")
def add(x: float, y: float) -> float:
    return x + y
