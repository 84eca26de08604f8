"""Work for the tests' real Celery workers: sending `taskapp.sleep`, and the worker that runs it.

`send` publishes from an async test (in a thread: Celery's publish blocks), `sender_app` is a publishing
app of its own for a private RabbitMQ node, and `worker_spec` describes a `celery worker` of
`tests.integration.taskapp` for a runtime to start.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from celery import Celery

from drainctl.runtime.base import WorkerSpec
from tests.helpers import read_records, wait_until
from tests.integration.conftest import REPO_ROOT
from tests.integration.docker_support import IMAGE, host_binds


async def send(app: Celery, queue: str, seconds: float, *, countdown: float | None = None) -> str:
    """Publish `taskapp.sleep(seconds)` to `queue` (an ETA `countdown` seconds away if given); its task id."""
    from tests.integration.taskapp import sleep

    result = await anyio.to_thread.run_sync(partial(sleep.apply_async, (seconds,), queue=queue, countdown=countdown))
    return str(result.id)


def sender_app(broker_url: str) -> Celery:
    """A Celery app of its own for publishing to the private node (the ``celery_app`` fixture is
    bound to the shared broker and is left alone). Publisher confirms; retries bounded."""
    app = Celery("chaos-sender", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options={"confirm_publish": True},
        broker_connection_timeout=2,
        broker_connection_retry=False,
        task_serializer="json",
        accept_content=["json"],
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0},
    )
    return app


def worker_spec(name: str, queue: str, broker_url: str, record_dir: Path, *, python: str = sys.executable,
                prefetch: int = 2, runtime: str = "process") -> WorkerSpec:
    hostname = f"{name}@{socket.gethostname()}"
    docker_only: dict[str, Any] = {}
    if runtime == "docker":
        docker_only = {"image": IMAGE, "binds": (*host_binds(), f"{record_dir}:{record_dir}:rw")}
    return WorkerSpec(
        hostname=hostname, pool="test", version="v1", queues=(queue,),
        command=(python, "-m", "celery", "-A", "tests.integration.taskapp", "worker", "-n", hostname, "-Q", queue,
                 "-c", "1", "-E", "--without-mingle", "--without-gossip", "-l", "INFO"),
        env={"DRAINCTL_TEST_BROKER_URL": broker_url, "TASKAPP_PREFETCH": str(prefetch),
             "TASKAPP_RECORD_DIR": str(record_dir), "PYTHONUNBUFFERED": "1",
             "PYTHONPATH": str(REPO_ROOT)},
        cwd=str(REPO_ROOT), stop_timeout_s=30, **docker_only,
    )


async def all_ended(records_dir: Path, sent: list[str]) -> None:
    """Wait (up to 120 s) until every task sent has ended by its own record: the last ones sent may still be
    queued when the load stops, and the workers must not be stopped before they ran."""
    wanted = set(sent)

    def ended() -> bool:
        return wanted <= {r["uuid"] for r in read_records(records_dir) if r["event"] == "end"}

    with contextlib.suppress(AssertionError):  # the check that follows says which task, and how
        await anyio.to_thread.run_sync(lambda: wait_until(ended, 120, "every task sent to end", interval=0.2))
