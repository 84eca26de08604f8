"""DockerRuntime against a real Docker engine and real containers (a Celery worker among them).

The engine and the image ``drainctl-test:base`` come from ``scripts/dockerd.sh`` (run by ``setup.sh``).
The image is an empty root filesystem: containers get the host's /usr, /etc, the Python installation and
this repository bind-mounted read-only at the same paths, and share the host's network (NetworkMode host),
so the worker reaches RabbitMQ on 127.0.0.1 like any local worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import anyio
import anyio.abc
import pytest
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream
from celery import Celery

from drainctl.errors import RuntimeFailure
from drainctl.runtime.base import LABEL_CONTROLLER, LABEL_HOSTNAME, LABEL_POOL, LABEL_VERSION, Exited, WorkerSpec
from drainctl.runtime.docker import DockerRuntime
from tests.integration.conftest import REPO_ROOT, TASKAPP_MODULE
from tests.integration.docker_support import IMAGE, docker, host_binds

pytestmark = pytest.mark.anyio

DOCKER_SOCK = "/var/run/docker.sock"

# Exits 0 on SIGTERM. (PID 1 of a container ignores signals it has no handler for.)
POLITE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)
# Has no SIGTERM handler: as PID 1 it ignores SIGTERM, so only the engine's SIGKILL ends it.
DEAF = "import time; print('ready', flush=True); time.sleep(120)"


@pytest.fixture
def controller_id(docker_available: None) -> Iterator[str]:
    """A controller id unique to the test; every container labelled with it is removed at teardown."""
    cid = f"test-{uuid.uuid4().hex[:10]}"
    yield cid
    listed = docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={cid}")
    ids = listed.stdout.split()
    if ids:
        docker("rm", "-f", *ids)


@contextlib.asynccontextmanager
async def runtime(controller_id: str, docker_url: str | None = None) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(controller_id, docker_url)
    try:
        yield rt
    finally:
        await rt.aclose()


@contextlib.asynccontextmanager
async def watching(rt: DockerRuntime) -> AsyncIterator[MemoryObjectReceiveStream[Exited]]:
    send, receive = anyio.create_memory_object_stream[Exited](100)
    async with anyio.create_task_group() as tg:
        await tg.start(rt.watch, send.send)
        try:
            yield receive
        finally:
            tg.cancel_scope.cancel()


async def next_exit(exits: MemoryObjectReceiveStream[Exited], within: float = 30) -> Exited:
    with anyio.fail_after(within):
        return await exits.receive()


def _hostname(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def _python_spec(hostname: str, code: str, stop_timeout_s: float = 10) -> WorkerSpec:
    return WorkerSpec(
        hostname=hostname,
        pool="p1",
        version="v1",
        queues=("default",),
        command=(sys.executable, "-c", code),
        env={"PYTHONUNBUFFERED": "1"},
        image=IMAGE,
        stop_timeout_s=stop_timeout_s,
        binds=host_binds(),
        cwd=str(REPO_ROOT),
    )


async def wait_for_log(container_id: str, pattern: str, within: float = 60) -> str:
    """Follow the container's log until it matches `pattern` (bounded); the log so far."""
    rx = re.compile(pattern, re.MULTILINE)
    seen = ""
    async with aiodocker.Docker() as docker:
        container = docker.containers.container(container_id)
        with anyio.fail_after(within):
            async for chunk in container.log(stdout=True, stderr=True, follow=True):
                seen += chunk
                if rx.search(seen):
                    return seen
    raise AssertionError(f"container ended before its log matched {pattern!r}; log:\n{seen[-3000:]}")


async def container_gone(container_id: str, within: float = 10) -> bool:
    """Wait (bounded) until the container no longer exists."""
    async with aiodocker.Docker() as docker:
        with anyio.move_on_after(within):
            while True:
                try:
                    await docker.containers.get(container_id)
                except aiodocker.DockerError as exc:
                    if exc.status == 404:
                        return True
                    raise
                await anyio.sleep(0.1)
    return False


async def test_celery_worker_in_container(controller_id: str, broker_url: str, celery_app: Celery) -> None:
    hostname = _hostname("dock-celery")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    spec = WorkerSpec(
        hostname=hostname,
        pool="p1",
        version="v7",
        queues=(queue,),
        command=(
            sys.executable, "-m", "celery", "-A", TASKAPP_MODULE, "worker",
            "-n", hostname, "-Q", queue, "-c", "1", "-P", "prefork",
            "--without-mingle", "--without-gossip", "-l", "INFO", "-E",
        ),
        env={"DRAINCTL_TEST_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"},
        image=IMAGE,
        stop_timeout_s=30,
        binds=host_binds(),
        cwd=str(REPO_ROOT),
    )
    async with runtime(controller_id) as rt, watching(rt) as exits:
        handle = await rt.start(spec)
        assert handle.runtime == "docker"
        assert handle.controller_id == controller_id
        await wait_for_log(handle.ref, r" ready\.\s*$")

        async with aiodocker.Docker() as docker:
            info = await docker.containers.get(handle.ref)
        labels = info["Config"]["Labels"]
        assert labels[LABEL_CONTROLLER] == controller_id
        assert labels[LABEL_HOSTNAME] == hostname
        assert labels[LABEL_POOL] == "p1"
        assert labels[LABEL_VERSION] == "v7"
        assert info["HostConfig"]["NetworkMode"] == "host"
        assert info["Config"]["StopTimeout"] == 30
        assert broker_url not in " ".join(info["Config"]["Cmd"])  # secrets only in Env
        assert await rt.alive(handle)

        # A real worker, reachable through the broker.
        replies = await anyio.to_thread.run_sync(
            lambda: celery_app.control.ping(destination=[hostname], timeout=5.0)
        )
        assert replies == [{hostname: {"ok": "pong"}}]

        forced = await rt.stop(handle, timeout_s=30)
        assert forced is False
        exited = await next_exit(exits)
        assert exited.handle == handle
        assert exited.exit_code == 0
        assert exited.forced is False
        assert await container_gone(handle.ref)
        assert not await rt.alive(handle)
        # Stopping it again is not an error.
        assert await rt.stop(handle, timeout_s=1) is False


async def test_stop_kills_container_ignoring_sigterm(controller_id: str) -> None:
    async with runtime(controller_id) as rt, watching(rt) as exits:
        handle = await rt.start(_python_spec(_hostname("dock-deaf"), DEAF))
        await wait_for_log(handle.ref, r"^ready$")
        forced = await rt.stop(handle, timeout_s=1)
        assert forced is True
        exited = await next_exit(exits)
        assert exited.exit_code == 128 + signal.SIGKILL
        assert exited.forced is True
        assert await container_gone(handle.ref)


async def test_signal_and_exit_code(controller_id: str) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    async with runtime(controller_id) as rt, watching(rt) as exits:
        handle = await rt.start(_python_spec(_hostname("dock-sig"), code))
        await wait_for_log(handle.ref, r"^ready$")
        await rt.signal(handle, signal.SIGUSR1)
        exited = await next_exit(exits)
        assert exited.exit_code == 7
        assert exited.forced is False
        assert await container_gone(handle.ref)
        await rt.signal(handle, signal.SIGUSR1)  # gone: a no-op


async def test_adopt_from_new_instance(controller_id: str) -> None:
    hostname = _hostname("dock-adoptee")
    async with runtime(controller_id) as first:
        handle = await first.start(_python_spec(hostname, POLITE))
    await wait_for_log(handle.ref, r"^ready$")

    async with runtime(f"{controller_id}-other") as other:
        assert await other.adopt() == []

    async with runtime(controller_id) as second, watching(second) as exits:
        adopted = await second.adopt()
        assert adopted == [handle]
        assert await second.alive(handle)
        assert await second.stop(handle, timeout_s=10) is False
        exited = await next_exit(exits)
        assert exited.handle == handle
        assert exited.exit_code == 0
        assert await container_gone(handle.ref)


async def test_missing_image_is_explained(controller_id: str) -> None:
    spec = dataclasses.replace(_python_spec(_hostname("dock-noimage"), POLITE), image="drainctl-test:no-such-image")
    async with runtime(controller_id) as rt:
        with pytest.raises(RuntimeFailure, match=r"not found locally.*never pulls"):
            await rt.start(spec)


async def test_unreachable_engine_is_explained(tmp_path: Path, controller_id: str) -> None:
    async with runtime(controller_id, f"unix://{tmp_path}/no-docker.sock") as rt:
        with pytest.raises(RuntimeFailure, match="cannot reach the Docker engine"):
            await rt.adopt()
        with pytest.raises(RuntimeFailure, match="cannot reach the Docker engine"):
            await rt.watch(_ignore_exit)


async def _ignore_exit(exited: Exited) -> None:
    return None


class SocketProxy:
    """A unix-socket proxy in front of the engine's socket, whose connections the test can cut."""

    def __init__(self, path: Path, upstream: str = DOCKER_SOCK) -> None:
        self.path = path
        self.upstream = upstream
        self.refusing = False
        self._scopes: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_unix_listener(self.path)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            while True:
                client = await listener.accept()
                if self.refusing:
                    await client.aclose()
                    continue
                tg.start_soon(self._pipe, client)

    def cut(self) -> None:
        """Close every proxied connection (the event stream included) and refuse new ones."""
        self.refusing = True
        for scope in self._scopes:
            scope.cancel()

    async def _pipe(self, client: SocketStream) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client, await anyio.connect_unix(self.upstream) as upstream, \
                        anyio.create_task_group() as tg:
                    tg.start_soon(self._copy, client, upstream, tg.cancel_scope)
                    tg.start_soon(self._copy, upstream, client, tg.cancel_scope)
            finally:
                self._scopes.discard(scope)

    @staticmethod
    async def _copy(src: SocketStream, dst: SocketStream, scope: anyio.CancelScope) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in src:
                await dst.send(chunk)
        scope.cancel()


async def test_exit_while_event_stream_is_broken_is_reported_once(tmp_path: Path, controller_id: str) -> None:
    proxy = SocketProxy(tmp_path / "docker.sock")
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        async with runtime(controller_id, f"unix://{proxy.path}") as rt, watching(rt) as exits:
            handle = await rt.start(_python_spec(_hostname("dock-gap"), POLITE))
            await wait_for_log(handle.ref, r"^ready$")

            proxy.cut()  # the stream breaks; resubscribing fails until the proxy accepts again
            async with aiodocker.Docker() as docker:  # straight to the engine, not through the proxy
                await docker.containers.container(handle.ref).stop(t=10)
            with anyio.move_on_after(0.5):
                early = await exits.receive()
                pytest.fail(f"reported while the stream was cut: {early}")
            proxy.refusing = False

            exited = await next_exit(exits, within=20)
            assert exited.handle == handle
            assert exited.exit_code == 0
            assert await container_gone(handle.ref)
            assert rt.resubscriptions == 1
            # The sweep after resubscribing and the replayed `die` event both see it: reported once only.
            with anyio.move_on_after(1.0):
                extra = await exits.receive()
                pytest.fail(f"exit reported twice: {extra}")
        tg.cancel_scope.cancel()
