"""Fixtures for the integration tests: a real RabbitMQ and real Celery worker processes.

Everything here talks to the RabbitMQ on 127.0.0.1:5672 (guest/guest) that ``scripts/setup.sh``
makes sure is running, and uses ``rabbitmqctl`` (run as root) to manage it.

Fixtures
--------
``rabbit_vhost`` (session)
    Name of a fresh vhost ``drainctl-test-<8 hex>`` that guest may use; deleted at session end.
``broker_url`` (session)
    ``amqp://guest:guest@127.0.0.1:5672/<vhost>`` for that vhost.
``celery_app``
    :data:`tests.integration.taskapp.app`, pointed at ``broker_url`` (with publisher confirms),
    for sending tasks (``sleep.apply_async(..., queue="default")``) and for
    ``celery_app.control.inspect(...)`` / ``celery_app.control.broadcast(...)``.
``celery_worker``
    A :class:`WorkerFactory`: ``celery_worker("w1", queues=["default"], concurrency=2)`` starts a
    real ``celery worker`` process of ``tests.integration.taskapp`` and returns a
    :class:`WorkerProc` once the worker logged ``ready.``. Every worker still running at the end
    of the test gets SIGTERM, then SIGKILL (whole process group) 10 s later.

Every test under ``tests/integration`` is marked ``integration``, so
``pytest -m 'not integration'`` skips them all.

Helpers
-------
:func:`rabbitmqctl` runs ``rabbitmqctl`` and returns its output; ``tests.helpers`` has
``wait_until`` (poll a predicate with a deadline) and ``read_records`` (read what ``taskapp.sleep``
recorded into a worker's ``record_dir``). What several test modules share lives in helper modules,
never in a test module (``tests/test_suite_layout.py`` checks): ``controllers`` (a real Controller in
a test: ``synced``, ``controller_with_runtime``, ``stop_workers``, ``held``, ``connection_pids``),
``pools`` (a pool "p" and its config file: ``PoolHarness``, ``running``, ``pool_at``, ``ConsumerLog``),
``tasks`` (``send``, ``sender_app``, ``worker_spec``), ``entrypoints`` (``drainctl entrypoint`` as a
subprocess: ``Entrypoint``, ``worker_argv``, ``entrypoint_env``), ``docker_support``, ``private_rabbit`` and
``private_dockerd``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

if TYPE_CHECKING:  # entrypoints.py imports this module
    from tests.integration.entrypoints import Entrypoint

REPO_ROOT = Path(__file__).resolve().parents[2]
INTEGRATION_DIR = Path(__file__).resolve().parent
TASKAPP_MODULE = "tests.integration.taskapp"

#: Seconds a worker gets to log "ready." after it was started.
WORKER_READY_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when a test's workers are torn down.
WORKER_STOP_GRACE = 10.0


# --------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected under ``tests/integration`` as ``integration``."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


# --------------------------------------------------------------------------- RabbitMQ


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl ARGS...`` (check=True, 60 s timeout) and return its stdout."""
    proc = subprocess.run(
        ["rabbitmqctl", *args],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return proc.stdout


@contextlib.contextmanager
def fresh_vhost(prefix: str = "drainctl-test") -> Iterator[str]:
    """A new vhost ``<prefix>-<8 hex>`` with full permissions for ``guest``; deleted, with all its queues
    and exchanges, on exit."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def vhost_url(vhost: str) -> str:
    """AMQP URL of ``vhost`` on 127.0.0.1:5672 as guest."""
    return f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost ``drainctl-test-<8 hex>`` with full permissions for ``guest``.

    Shared by the whole session (tests that need isolation should use their own queue
    names, and a test that closes connections its own vhost: see ``fresh_vhost``); deleted,
    with all its queues and exchanges, at session end.
    """
    with fresh_vhost() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def broker_url(rabbit_vhost: str) -> str:
    """AMQP URL of ``rabbit_vhost`` on 127.0.0.1:5672 as guest."""
    return vhost_url(rabbit_vhost)


# --------------------------------------------------------------------------- Celery app


@pytest.fixture
def celery_app(broker_url: str) -> Celery:
    """The ``tests.integration.taskapp`` app, connected to ``broker_url``.

    Publishes with publisher confirms, so a task sent with ``apply_async`` is in its queue
    when the call returns. There is no result backend: ``AsyncResult.get()`` does not work;
    observe tasks through worker records, events or ``inspect()`` instead.
    """
    from tests.integration.taskapp import app

    transport_options = {"confirm_publish": True}
    if app.conf.broker_url != broker_url or app.conf.broker_transport_options != transport_options:
        app.conf.broker_url = broker_url
        app.conf.broker_transport_options = transport_options
        # Drop connections/producers made for a previous configuration.
        app._pool = None
        amqp = app.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None
    return app


# --------------------------------------------------------------------------- workers


class WorkerProc:
    """A ``celery worker`` process started by the ``celery_worker`` fixture.

    Attributes:
        name: the ``-n`` argument as given (may contain ``%h``).
        hostname: the expanded node name, e.g. ``w1@myhost`` (what events and ``inspect`` use).
        pid: pid of the worker's main process; also its process group id.
        popen: the :class:`subprocess.Popen`.
        log_path: file receiving the worker's stdout and stderr.
        record_dir: the ``TASKAPP_RECORD_DIR`` of the worker (see ``tests.helpers.read_records``).
        queues: the queues it consumes from.
        env: the environment it was started with.
    """

    def __init__(
        self,
        *,
        name: str,
        hostname: str,
        popen: subprocess.Popen[bytes],
        log_path: Path,
        record_dir: Path,
        queues: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        self.name = name
        self.hostname = hostname
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.record_dir = record_dir
        self.queues = list(queues)
        self.env = dict(env)

    def __repr__(self) -> str:
        return f"<WorkerProc {self.hostname} pid={self.pid} returncode={self.popen.returncode}>"

    @property
    def running(self) -> bool:
        """True while the main process has not exited."""
        return self.popen.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the main process: Celery's warm shutdown (finish running tasks, then exit)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the main process (e.g. SIGQUIT for a cold shutdown)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL to the whole process group (main process and pool children): a crash."""
        if self.popen.poll() is None:
            self._killpg(signal.SIGKILL)

    def _killpg(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the main process to exit; its return code (raises ``TimeoutExpired``)."""
        return self.popen.wait(timeout=timeout)

    def log(self) -> str:
        """Everything the worker wrote to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> None:
        """Block until the log shows ``ready.``; raise with the log tail if the worker exits first
        or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        seen = ""
        with self.log_path.open("r", encoding="utf-8", errors="replace") as f:
            while True:
                seen += f.read()
                if re.search(r" ready\.\s*$", seen, re.MULTILINE):
                    return
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.hostname} exited with {self.popen.returncode} before it was "
                        f"ready; log tail:\n{self.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"worker {self.hostname} not ready after {timeout}s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)


class WorkerFactory:
    """Starts Celery workers for one test; returned by the ``celery_worker`` fixture.

    Call it to start a worker (see :meth:`__call__`). ``workers`` lists every worker started,
    ``record_dir`` is the ``TASKAPP_RECORD_DIR`` they share by default, ``log_dir`` holds
    their logs.
    """

    def __init__(self, broker_url: str, base_dir: Path) -> None:
        self.broker_url = broker_url
        self.log_dir = base_dir / "worker-logs"
        self.record_dir = base_dir / "records"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[WorkerProc] = []

    def __call__(
        self,
        name: str,
        queues: Sequence[str] = ("default",),
        concurrency: int = 1,
        events: bool = True,
        prefetch: int = 1,
        pool: str = "prefork",
        extra_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        *,
        extra_args: Sequence[str] = (),
        broker_url: str | None = None,
        record_dir: Path | None = None,
        loglevel: str = "INFO",
        wait_ready: bool = True,
        ready_timeout: float = WORKER_READY_TIMEOUT,
    ) -> WorkerProc:
        """Start ``python -m celery -A tests.integration.taskapp worker`` and wait until it is ready.

        Args:
            name: node name for ``-n`` (``"w1"`` becomes ``celery@<host>``; ``"w1@%h"`` works).
            queues: queues to consume from (``-Q``).
            concurrency: pool size (``-c``).
            events: pass ``-E`` (send task events from the start).
            prefetch: ``worker_prefetch_multiplier`` (env ``TASKAPP_PREFETCH``).
            pool: ``-P`` (prefork, threads, solo, ...).
            extra_env: more environment variables (e.g. ``{"TASKAPP_ACKS_LATE": "1"}``); they
                override the ones set here.
            python: interpreter to run Celery with.
            extra_args: more ``celery worker`` arguments.
            broker_url: another broker URL than the fixture's (e.g. another vhost).
            record_dir: another ``TASKAPP_RECORD_DIR`` than the factory's shared one.
            loglevel: ``-l``.
            wait_ready: if False, return at once (call ``WorkerProc.wait_ready`` yourself).
            ready_timeout: seconds to wait for ``ready.``.
        """
        if isinstance(queues, str):
            queues = [queues]
        hostname = host_format(default_nodename(name))
        record_dir = record_dir if record_dir is not None else self.record_dir
        record_dir.mkdir(parents=True, exist_ok=True)
        env = self._environment(broker_url or self.broker_url, prefetch, record_dir, extra_env)
        cmd = _worker_command(python, name, queues, concurrency, pool, loglevel, events, extra_args)
        log_path = self._log_path(hostname)
        worker = WorkerProc(
            name=name,
            hostname=hostname,
            popen=_spawn(cmd, env, log_path),
            log_path=log_path,
            record_dir=record_dir,
            queues=queues,
            env=env,
        )
        self.workers.append(worker)
        if wait_ready:
            worker.wait_ready(ready_timeout)
        return worker

    def _log_path(self, hostname: str) -> Path:
        """A log file of its own for the next worker, numbered in start order."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", hostname)
        return self.log_dir / f"{len(self.workers):02d}-{safe}.log"

    @staticmethod
    def _environment(broker_url: str, prefetch: int, record_dir: Path,
                     extra_env: Mapping[str, str] | None) -> dict[str, str]:
        """This process's environment plus what ``tests.integration.taskapp`` reads; ``extra_env`` wins."""
        env = dict(os.environ)
        env.update(
            DRAINCTL_TEST_BROKER_URL=broker_url,
            TASKAPP_PREFETCH=str(prefetch),
            TASKAPP_RECORD_DIR=str(record_dir),
            PYTHONUNBUFFERED="1",
        )
        if extra_env:
            env.update(extra_env)
        return env

    def stop_all(self, grace: float = WORKER_STOP_GRACE) -> None:
        """SIGTERM every running worker; SIGKILL the process group of those still up after
        ``grace`` seconds; finally SIGKILL any pool process a dead main process left behind."""
        for w in self.workers:
            w.terminate()
        deadline = time.monotonic() + grace
        for w in self.workers:
            try:
                w.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w._killpg(signal.SIGKILL)
                w.popen.wait(timeout=30)
        for w in self.workers:
            # The group id stays taken while any member lives, so this only reaches
            # leftovers of our own worker (if any).
            w._killpg(signal.SIGKILL)


def _worker_command(python: str, name: str, queues: Sequence[str], concurrency: int, pool: str, loglevel: str,
                    events: bool, extra_args: Sequence[str]) -> list[str]:
    """``python -m celery -A tests.integration.taskapp worker`` with the factory's options."""
    cmd = [
        python, "-m", "celery", "-A", TASKAPP_MODULE, "worker",
        "-n", name,
        "-Q", ",".join(queues),
        "-c", str(concurrency),
        "-P", pool,
        "--without-mingle", "--without-gossip",
        "-l", loglevel,
    ]  # fmt: skip
    if events:
        cmd.append("-E")
    cmd.extend(extra_args)
    return cmd


def _spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a worker in a session of its own (its group takes the teardown's SIGKILL), output to ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


_WORKERS_KEY = pytest.StashKey[WorkerFactory]()


@pytest.fixture
def celery_worker(
    request: pytest.FixtureRequest, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    """Factory starting real Celery workers of ``tests.integration.taskapp`` for this test.

    ``celery_worker(name, queues=["default"], concurrency=1, events=True, prefetch=1,
    pool="prefork", extra_env=None, python=sys.executable)`` -> :class:`WorkerProc`, returned once
    the worker is ready. Workers get ``DRAINCTL_TEST_BROKER_URL=broker_url``, ``TASKAPP_PREFETCH``
    and ``TASKAPP_RECORD_DIR`` (``factory.record_dir`` unless given). At teardown every worker still
    running gets SIGTERM, then SIGKILL of its process group 10 s later. When the test fails, the
    tail of each worker's log is added to the failure report.
    """
    factory = WorkerFactory(broker_url, tmp_path_factory.mktemp("celery-workers"))
    request.node.stash[_WORKERS_KEY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """On a failed test, append the tail of each of its workers' logs to the report."""
    report = yield
    factory = item.stash.get(_WORKERS_KEY, None)
    if factory is not None and report.failed:
        for w in factory.workers:
            try:
                tail = w.log_tail()
            except OSError as exc:
                tail = f"<cannot read {w.log_path}: {exc}>"
            report.sections.append((f"worker {w.hostname} (pid {w.pid}) log tail", tail))
    return report


@pytest.fixture
def entrypoints() -> Iterator[list[Entrypoint]]:
    """`drainctl entrypoint` processes a test started: each one stopped when the test ends."""
    running: list[Entrypoint] = []
    yield running
    for ep in running:
        ep.stop()


@pytest.fixture(scope="session")
def docker_available() -> None:
    """A Docker engine answers and the test image exists (skips outside CI when there is none)."""
    from tests.integration.docker_support import require_docker

    require_docker()
