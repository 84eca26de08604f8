"""What a worker runtime does for drainctl: start a worker, stop it, signal it, and report when it exits.

Two implementations: `process` (local child processes in their own session, the embedded default)
and `docker` (containers through aiodocker). Exits are observed, never polled for: the process
runtime waits on a pidfd, the docker runtime reads the engine's event stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import anyio.abc

# Labels (docker) / state-file keys (process) that mark a worker as drainctl's.
LABEL_CONTROLLER = "io.drainctl.controller"
LABEL_POOL = "io.drainctl.pool"
LABEL_VERSION = "io.drainctl.version"
LABEL_HOSTNAME = "io.drainctl.hostname"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker to start. `hostname` is the Celery node name (`-n`), unique per worker."""

    hostname: str
    pool: str
    version: str
    queues: tuple[str, ...]
    # argv of the worker: for `process` the command run on the host; for `docker` the container command.
    command: tuple[str, ...]
    # Secrets go here, never into argv.
    env: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    # How long a warm shutdown may take before the runtime kills the worker.
    stop_timeout_s: float = 600.0
    network_mode: str = "host"
    binds: tuple[str, ...] = ()
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerHandle:
    hostname: str
    runtime: str
    # pid (process runtime) or container id (docker runtime)
    ref: str
    pool: str
    version: str
    controller_id: str


@dataclass(frozen=True, slots=True)
class Exited:
    handle: WorkerHandle
    # None when the runtime cannot know (a process adopted after a restart is not our child).
    exit_code: int | None
    # True when a stop timeout expired and the runtime had to kill: SIGTERM had no effect.
    forced: bool = False


ExitHandler = Callable[[Exited], Awaitable[None]]


class WorkerRuntime(Protocol):
    name: str

    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Start the worker; returns once the process/container runs (not once Celery is ready)."""
        ...

    async def stop(self, handle: WorkerHandle, timeout_s: float) -> bool:
        """Warm stop (SIGTERM / `docker stop`), kill after `timeout_s`. Returns True if it had to kill.

        Returns when the worker has exited. Stopping a worker that already exited is not an error.
        """
        ...

    async def signal(self, handle: WorkerHandle, signum: int) -> None:
        """Send a signal to the worker's main process (e.g. SIGQUIT for a cold/soft shutdown)."""
        ...

    async def adopt(self) -> list[WorkerHandle]:
        """The workers this controller started that are still alive (after a controller restart)."""
        ...

    async def watch(
        self, on_exit: ExitHandler, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run forever, calling `on_exit` once for every worker of this runtime that exits."""
        ...

    async def alive(self, handle: WorkerHandle) -> bool:
        """Whether the worker's process/container still exists (confirms a `silent` suspicion)."""
        ...
