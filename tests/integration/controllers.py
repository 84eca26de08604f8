"""Running a real Controller inside a test (its own task group, torn down with the test), and looking at it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from drainctl import config
from drainctl.app import Controller
from drainctl.core.snapshot import TaskState
from drainctl.runtime.base import LABEL_CONTROLLER, WorkerRuntime
from drainctl.runtime.docker import DockerRuntime
from drainctl.runtime.process import ProcessRuntime
from tests.integration.conftest import rabbitmqctl
from tests.integration.docker_support import docker

#: The API token of the controllers whose HTTP API a test starts (`http.start(ctl, host, 0, TOKEN)`).
TOKEN = "test-token-" + uuid.uuid4().hex


@asynccontextmanager
async def synced(ctl: Controller, timeout_s: float = 20) -> AsyncIterator[Controller]:
    """Run `ctl` until the block ends; enter once its start-up reconcile has been merged."""
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        try:
            await ctl.wait_for(ctl.synced.is_set, timeout_s)
            yield ctl
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def controller_with_runtime(
    broker_url: str, state_dir: Path, runtime: str = "process", **controller: Any
) -> AsyncIterator[Controller]:
    """A synced controller of its own id on the `process` or `docker` runtime; `controller`: [controller] keys.

    When the block ends, its workers still running are stopped (on the process runtime, by PID; on the
    docker runtime, its containers are removed): a failed test leaves none behind."""
    controller_id = f"drain-{uuid.uuid4().hex[:8]}"
    settings = config.from_mapping({
        "controller": {"id": controller_id, "state_dir": str(state_dir), **controller},
        "broker": {"reply_timeout_s": 1.0, "reconnect_max_backoff_s": 1.0},
        "events": {"queue_expires_s": 120},
    })
    rt: WorkerRuntime = (
        DockerRuntime(controller_id) if runtime == "docker" else ProcessRuntime(state_dir, controller_id)
    )
    ctl = Controller(settings, broker_url, runtime=rt)
    try:
        async with synced(ctl):
            yield ctl
    finally:
        if isinstance(rt, ProcessRuntime):
            await stop_workers(state_dir, controller_id)
        if isinstance(rt, DockerRuntime):
            await rt.aclose()
            listed = docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={controller_id}")
            if listed.stdout.split():
                docker("rm", "-f", *listed.stdout.split())


async def stop_workers(state_dir: Path, controller_id: str, timeout_s: float = 20) -> None:
    """Stop every worker a controller started (they outlive it on purpose), all at once, by PID."""
    runtime = ProcessRuntime(state_dir, controller_id)
    with anyio.move_on_after(timeout_s + 40, shield=True):
        async with anyio.create_task_group() as tg:
            for handle in await runtime.adopt():
                tg.start_soon(runtime.stop, handle, timeout_s)


def held(ctl: Controller, host: str, state: TaskState) -> set[str]:
    """The ids of the tasks the controller's model has `host` hold in `state`."""
    worker = ctl.cluster.worker(host)
    return set(worker.task_ids(state)) if worker else set()


def connection_pids(name: str) -> list[str]:
    """RabbitMQ's pids of the connections whose client properties mention `name` (e.g. a connection name)."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
    return [line.split("\t", 1)[0] for line in out.splitlines() if name in line]
