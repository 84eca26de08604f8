"""ProcessRuntime against real processes: python sleepers and a real Celery worker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from drainctl.runtime.base import Exited, WorkerSpec
from drainctl.runtime.process import ProcessRuntime, proc_start_time
from tests.integration.conftest import REPO_ROOT, TASKAPP_MODULE

pytestmark = pytest.mark.anyio

SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"
# Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
)


def _hostname(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


def _sleeper_spec(hostname: str, code: str = SLEEPER, env: dict[str, str] | None = None) -> WorkerSpec:
    return WorkerSpec(
        hostname=hostname,
        pool="p1",
        version="v1",
        queues=("default",),
        command=(sys.executable, "-c", code),
        env=env or {},
    )


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[..., ProcessRuntime]]:
    """ProcessRuntime factory sharing one state_dir; at teardown SIGKILLs every worker a runtime still knows."""
    runtimes: list[ProcessRuntime] = []

    def make(controller_id: str = "ctl-test") -> ProcessRuntime:
        rt = ProcessRuntime(tmp_path / "state", controller_id)
        runtimes.append(rt)
        return rt

    yield make
    for rt in runtimes:
        for pid, tracked in list(rt._tracked.items()):
            if proc_start_time(pid) == tracked.create_time:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            if tracked.popen is not None:
                tracked.popen.wait(timeout=10)


@contextlib.asynccontextmanager
async def watching(rt: ProcessRuntime) -> AsyncIterator[MemoryObjectReceiveStream[Exited]]:
    """Run `rt.watch` for the duration of the block; yields the stream of reported exits."""
    send, receive = anyio.create_memory_object_stream[Exited](100)
    async with anyio.create_task_group() as tg:
        await tg.start(rt.watch, send.send)
        try:
            yield receive
        finally:
            tg.cancel_scope.cancel()


async def next_exit(exits: MemoryObjectReceiveStream[Exited], within: float = 15) -> Exited:
    with anyio.fail_after(within):
        return await exits.receive()


async def wait_for_log(path: Path, pattern: str, within: float = 60) -> None:
    """Wait (bounded) until the worker log at `path` matches `pattern`."""
    rx = re.compile(pattern, re.MULTILINE)
    apath = anyio.Path(path)
    with anyio.fail_after(within):
        while True:
            if await apath.exists() and rx.search(await apath.read_text(errors="replace")):
                return
            await anyio.sleep(0.05)


def _log_path(rt: ProcessRuntime, hostname: str) -> Path:
    return rt.logs_dir / f"{hostname}.log"


async def test_sleeper_stop_reports_sigterm_exit(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    async with watching(rt) as exits:
        hostname = _hostname("sleeper")
        # Started after watch started: watch must pick it up.
        handle = await rt.start(_sleeper_spec(hostname))
        pid = int(handle.ref)
        assert handle.runtime == "process"
        assert handle.controller_id == "ctl-test"
        state_path = rt.workers_dir / f"{hostname}.json"
        state = json.loads(state_path.read_text())
        assert state["pid"] == pid
        assert state["controller_id"] == "ctl-test"
        assert state["create_time"] == proc_start_time(pid)
        assert state["command"] == [sys.executable, "-c", SLEEPER]
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session
        assert await rt.alive(handle)
        await wait_for_log(_log_path(rt, hostname), r"^ready$")

        forced = await rt.stop(handle, timeout_s=10)
        assert forced is False
        exited = await next_exit(exits)
        assert exited.handle == handle
        assert exited.exit_code == 128 + signal.SIGTERM
        assert exited.forced is False
        assert not state_path.exists()
        assert not await rt.alive(handle)
        # Stopping again is not an error.
        assert await rt.stop(handle, timeout_s=1) is False


async def test_worker_started_before_watch_is_watched(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    handle = await rt.start(_sleeper_spec(_hostname("early"), code="import sys; sys.exit(3)"))
    async with watching(rt) as exits:
        exited = await next_exit(exits)
    assert exited.handle == handle
    assert exited.exit_code == 3


async def test_celery_worker_warm_stop(make_runtime: Callable[..., ProcessRuntime], broker_url: str) -> None:
    rt = make_runtime()
    hostname = _hostname("celery-proc")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    spec = WorkerSpec(
        hostname=hostname,
        pool="p1",
        version="v1",
        queues=(queue,),
        command=(
            sys.executable, "-m", "celery", "-A", TASKAPP_MODULE, "worker",
            "-n", hostname, "-Q", queue, "-c", "1", "-P", "prefork",
            "--without-mingle", "--without-gossip", "-l", "INFO", "-E",
        ),
        env={"DRAINCTL_TEST_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"},
        cwd=str(REPO_ROOT),
    )
    async with watching(rt) as exits:
        handle = await rt.start(spec)
        await wait_for_log(_log_path(rt, hostname), r" ready\.\s*$")
        assert await rt.alive(handle)
        forced = await rt.stop(handle, timeout_s=30)
        assert forced is False
        exited = await next_exit(exits)
    assert exited.handle == handle
    assert exited.exit_code == 0, _log_path(rt, hostname).read_text()[-3000:]
    assert exited.forced is False


async def test_stop_kills_worker_ignoring_sigterm(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    hostname = _hostname("stubborn")
    async with watching(rt) as exits:
        handle = await rt.start(_sleeper_spec(hostname, code=STUBBORN))
        await wait_for_log(_log_path(rt, hostname), r"^ready$")
        started = anyio.current_time()
        forced = await rt.stop(handle, timeout_s=1)
        elapsed = anyio.current_time() - started
        assert forced is True
        assert 1.0 <= elapsed < 10
        exited = await next_exit(exits)
    assert exited.exit_code == 128 + signal.SIGKILL
    assert exited.forced is True


async def test_adopt_from_second_instance(make_runtime: Callable[..., ProcessRuntime]) -> None:
    first = make_runtime()
    hostname = _hostname("adoptee")
    handle = await first.start(_sleeper_spec(hostname))
    await wait_for_log(_log_path(first, hostname), r"^ready$")

    # A stale state file (dead pid) of ours and a live worker of another controller.
    stale = first.workers_dir / "stale@nowhere.json"
    stale.write_text(json.dumps({"hostname": "stale@nowhere", "pid": 2**22 - 1, "pool": "p1", "version": "v0",
                                 "controller_id": "ctl-test", "started_at": 0, "command": [], "create_time": 1}))
    other = make_runtime("ctl-other")
    other_handle = await other.start(_sleeper_spec(_hostname("others")))

    # "After a restart": a new instance over the same state_dir.
    second = make_runtime()
    async with watching(first) as first_exits, watching(second) as exits:
        adopted = await second.adopt()
        assert adopted == [handle]
        assert not stale.exists()
        assert await second.alive(handle)

        # Adopting again does not duplicate.
        assert await second.adopt() == [handle]

        forced = await second.stop(handle, timeout_s=10)
        assert forced is False
        exited = await next_exit(exits)
        assert exited.handle == handle
        assert exited.exit_code is None  # not our child: the code is unknown
        # The instance that started it (still alive, its parent) learns the code.
        first_exited = await next_exit(first_exits)
        assert first_exited.exit_code == 128 + signal.SIGTERM
        with anyio.move_on_after(0.3):
            extra = await exits.receive()
            pytest.fail(f"exit reported twice: {extra}")

    assert await other.alive(other_handle)
    assert await other.stop(other_handle, timeout_s=10) is False


# A controller that dies (SIGKILL) right before its worker's state file is in place: the state it was about to
# write goes to a side file instead, for the test to learn the pid.
DIES_WHILE_STARTING = """
import json, os, signal, sys
import anyio
from drainctl.runtime import process
from drainctl.runtime.base import WorkerSpec

state_dir, side_file, marker = sys.argv[1:4]

def die(path, data):
    with open(side_file, "wb") as f:
        f.write(data)
    os.kill(os.getpid(), signal.SIGKILL)

process._write_atomically = die
spec = WorkerSpec(hostname="gated@host", pool="p1", version="v1", queues=("q",),
                  command=(sys.executable, "-c", f"open({marker!r}, 'w').close(); import time; time.sleep(60)"))
anyio.run(process.ProcessRuntime(state_dir, "ctl-test").start, spec)
"""


async def test_a_worker_never_runs_unless_its_state_file_exists(
    make_runtime: Callable[..., ProcessRuntime], tmp_path: Path
) -> None:
    """The controller killed between starting a worker and recording it: the worker never runs, so a restarted
    controller has nothing of its own it cannot adopt."""
    side_file, marker = tmp_path / "state-not-written.json", tmp_path / "worker-ran"
    controller = await anyio.run_process(
        [sys.executable, "-c", DIES_WHILE_STARTING, str(tmp_path / "state"), str(side_file), str(marker)],
        cwd=REPO_ROOT, check=False)
    assert controller.returncode == -signal.SIGKILL, controller.stderr
    pid = json.loads(side_file.read_bytes())["pid"]
    # The gate's shell sees EOF on its stdin as the controller dies, and exits (init reaps it).
    with contextlib.suppress(ProcessLookupError):
        fd = os.pidfd_open(pid)
        try:
            with anyio.fail_after(10):
                await anyio.wait_readable(fd)
        finally:
            os.close(fd)
    assert not marker.exists(), "the worker ran although drainctl never recorded it"
    assert await make_runtime().adopt() == []


async def test_a_worker_runs_in_the_process_drainctl_recorded(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    hostname = _hostname("gated")
    handle = await rt.start(_sleeper_spec(hostname, "import os, time; print(os.getpid(), flush=True); time.sleep(60)"))
    await wait_for_log(_log_path(rt, hostname), r"^\d+$")
    assert _log_path(rt, hostname).read_text().split() == [handle.ref]
    assert await rt.stop(handle, timeout_s=10) is False


async def test_secrets_only_in_environment(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    secret = f"s3cret-{uuid.uuid4().hex}"
    hostname = _hostname("secretive")
    handle = await rt.start(_sleeper_spec(hostname, env={"DRAINCTL_TEST_SECRET": secret}))
    pid = int(handle.ref)
    await wait_for_log(_log_path(rt, hostname), r"^ready$")
    cmdline = await anyio.Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = await anyio.Path(f"/proc/{pid}/environ").read_bytes()
    assert secret.encode() not in cmdline
    assert f"DRAINCTL_TEST_SECRET={secret}".encode() in environ.split(b"\0")
    assert secret not in (rt.workers_dir / f"{hostname}.json").read_text()
    async with watching(rt) as exits:
        await rt.stop(handle, timeout_s=10)
        await next_exit(exits)


async def test_signal_reaches_main_process(make_runtime: Callable[..., ProcessRuntime]) -> None:
    rt = make_runtime()
    hostname = _hostname("signalled")
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    async with watching(rt) as exits:
        handle = await rt.start(_sleeper_spec(hostname, code=code))
        await wait_for_log(_log_path(rt, hostname), r"^ready$")
        await rt.signal(handle, signal.SIGUSR1)
        exited = await next_exit(exits)
    assert exited.exit_code == 7
    # Signalling a worker that is gone is a no-op.
    await rt.signal(handle, signal.SIGUSR1)
