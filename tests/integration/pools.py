"""A pool "p" of real Celery workers (process runtime) that a real Controller keeps and rolls out.

`PoolHarness` writes the config file (one pool on a queue of its own, rewritten atomically per version),
`running` runs a controller on it for the length of a block and stops its workers after, `pool_at` says
whether the pool has settled at a version, and `ConsumerLog` records RabbitMQ's own consumer events of a
queue (the proof that it never went without a consumer).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import anyio.abc

from drainctl import config
from drainctl.app import Controller
from drainctl.runtime.process import ProcessRuntime
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import stop_workers, synced

CONFIG = """
[controller]
id = "{controller_id}"
state_dir = "{state_dir}"

[broker]
reply_timeout_s = 1.0

[[pool]]
name = "p"
queues = ["{queue}"]
replicas = 3
version = "{version}"
command = {command}
env = {{ DRAINCTL_TEST_BROKER_URL = "{broker_url}", TASKAPP_PREFETCH = "1", TASKAPP_RECORD_DIR = "{records}", PYTHONPATH = "{root}"{extra_env} }}
cwd = "{root}"
ready_timeout_s = {ready_timeout}
stop_timeout_s = 30
"""

WORKER = [sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "worker", "--without-mingle",
          "--without-gossip", "-E", "-l", "INFO"]


class PoolHarness:
    """A config file for one pool "p" on its own queue, rewritten atomically per version.

    Subclasses give their own `template` (the same placeholders; unused ones are ignored)."""

    template = CONFIG
    prefix = "roll"

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        self.controller_id = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.state_dir = tmp_path / "state"
        self.records = tmp_path / "records"
        self.records.mkdir()
        self.path = tmp_path / "drainctl.toml"
        self.broker_url = broker_url

    def write(self, version: str, *, command: list[str] | None = None, extra_env: str = "",
              ready_timeout: float = 60, extra_pool: str = "") -> None:
        """`extra_pool`: lines appended to the file (its last table is the pool's)."""
        text = self.template.format(
            controller_id=self.controller_id, state_dir=self.state_dir, queue=self.queue, version=version,
            command=toml_list(command or WORKER), broker_url=self.broker_url, records=self.records, root=REPO_ROOT,
            extra_env=extra_env, ready_timeout=ready_timeout) + extra_pool
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)  # atomic, as an operator's deploy tool would

    def settings(self) -> config.Settings:
        return config.load(self.path)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"  # a JSON string is a TOML basic string


@asynccontextmanager
async def running(harness: PoolHarness) -> AsyncIterator[Controller]:
    settings = harness.settings()
    ctl = Controller(settings, harness.broker_url, runtime=ProcessRuntime(harness.state_dir, harness.controller_id),
                     config_path=harness.path)
    try:
        async with synced(ctl):
            yield ctl
    finally:
        # Workers outlive the controller on purpose; the test stops them, whatever happened.
        await stop_workers(harness.state_dir, harness.controller_id)


def pool_at(ctl: Controller, version: str, replicas: int = 3) -> bool:
    """Pool "p" has settled at `version`: `replicas` ready members of it, no rollout and no drain under way."""
    members = ctl.fleet.of_pool("p")
    return (len(members) == replicas and all(m.version == version and m.ready_at is not None for m in members)
            and not ctl.fleet.rollouts and not ctl.drains.active)


class ConsumerLog:
    """RabbitMQ's own consumer.created / consumer.deleted events (rabbitmq_event_exchange) for one queue."""

    def __init__(self, vhost: str, queue: str) -> None:
        self.vhost = vhost
        self.queue = queue
        self.events: list[str] = []

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            exchange = await channel.get_exchange("amq.rabbitmq.event")
            for key in ("consumer.created", "consumer.deleted"):
                await queue.bind(exchange, routing_key=key)
            task_status.started()
            async with queue.iterator() as messages:
                async for message in messages:
                    headers = message.headers or {}
                    if _text(headers.get("vhost")) == self.vhost and _text(headers.get("queue")) == self.queue:
                        self.events.append(str(message.routing_key))
                    await message.ack()

    def minimum(self, initial: int) -> int:
        count = lowest = initial
        for event in self.events:
            count += 1 if event == "consumer.created" else -1
            lowest = min(lowest, count)
        return lowest


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
