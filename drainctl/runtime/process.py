"""The `process` runtime: workers are local processes in sessions of their own (the embedded default).

A worker is started with `subprocess.Popen(..., start_new_session=True)`: it leads its own session and
process group, so it outlives the controller (a controller restart adopts it again) and `stop` reaches its
pool children through the group. Secrets travel in the environment only, never in argv.

Every worker gets a state file `state_dir/workers/<hostname>.json` (written atomically) recording its pid and
the pid's start time (`/proc/<pid>/stat` field 22, clock ticks since boot). The start time guards against pid
reuse: a pid is only signalled, adopted or reported alive while its start time still matches the recorded one.
The worker's command runs only once that file is in place (`_GATE_SCRIPT`): a controller killed in between
leaves no worker behind that its successor could not adopt.

Exits are observed without polling: each watched worker has a pidfd (`os.pidfd_open`), which becomes readable
when the process exits. A worker this runtime instance started is its child, so it is reaped here and its
exit code is known; a worker adopted after a restart is not our child (init reaps it), so its exit code is None.

Exit codes follow the shell (and Docker) convention: a normal exit gives its status, death by signal N gives
128 + N (SIGTERM → 143, SIGKILL → 137).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal as signal_mod
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from drainctl.errors import RuntimeFailure
from drainctl.runtime.base import Exited, ExitHandler, WorkerHandle, WorkerSpec

log = structlog.get_logger("drainctl.runtime.process")

#: How long `stop` waits for the kernel to end a process group after SIGKILL before giving up.
KILL_WAIT_S = 10.0

# A worker runs only once its state file exists. A small shell holds the exec until the controller writes a
# line on its stdin; if the controller dies first, the shell reads EOF and exits without running the worker.
# So a restarted controller never meets a worker of its own that it cannot adopt. The shell execs the
# worker in place: same pid, same start time. Exit code 70: the controller died before recording the
# worker, which never ran.
_GATE_SCRIPT = 'read -r _ || exit 70; exec "$@" </dev/null'

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@-]+")


def state_file_name(hostname: str) -> str:
    """File name (without directory) of a worker's state file / log file stem."""
    name = _SAFE_NAME.sub("_", hostname).lstrip(".")
    return name or "_"


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22); None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])  # field 22; fields[0] is field 3 (state)


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def _exit_code(returncode: int) -> int:
    """Popen's returncode (-N for death by signal N) in the shell convention (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(eq=False, slots=True)
class _Tracked:
    """A worker this runtime instance watches: started here (popen set) or adopted (popen None)."""

    handle: WorkerHandle
    pid: int
    create_time: int
    popen: subprocess.Popen[bytes] | None
    state_path: Path
    # Set by `stop` before it kills: the exit is then reported as forced.
    forced: bool = False
    reported: bool = False


class ProcessRuntime:
    """Workers as local processes in their own sessions. See the module docstring."""

    name = "process"

    def __init__(self, state_dir: Path, controller_id: str) -> None:
        self.state_dir = Path(state_dir)
        self.controller_id = controller_id
        self.workers_dir = self.state_dir / "workers"
        self.logs_dir = self.state_dir / "logs"
        self._tracked: dict[int, _Tracked] = {}
        # Wake-ups for `watch`: a pid was added to `_tracked`. Unbounded, so `start`/`adopt` never block,
        # and wake-ups sent before `watch` runs wait in the buffer.
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=math.inf)
        self._wake_send: MemoryObjectSendStream[int] = send
        self._wake_receive: MemoryObjectReceiveStream[int] = receive

    # ------------------------------------------------------------------ start
    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        if not spec.command:
            raise RuntimeFailure(f"worker {spec.hostname}: empty command; give the worker's argv")
        tracked = await anyio.to_thread.run_sync(self._start_sync, spec)
        self._track(tracked)
        log.info("worker process started", hostname=spec.hostname, pid=tracked.pid, pool=spec.pool,
                 version=spec.version)
        return tracked.handle

    def _start_sync(self, spec: WorkerSpec) -> _Tracked:
        self.workers_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        stem = state_file_name(spec.hostname)
        log_path = self.logs_dir / f"{stem}.log"
        env = dict(os.environ)
        env.update(spec.env)
        argv = list(spec.command)
        if _find_program(argv[0], env, spec.cwd) is None:
            raise RuntimeFailure(
                f"worker {spec.hostname}: cannot run {argv[0]!r} (cwd {spec.cwd or os.getcwd()!r}): no such "
                "executable; check the worker command and that the program is installed"
            )
        gate_read, gate_write = os.pipe()
        try:
            with log_path.open("ab") as log_file:
                popen = subprocess.Popen(
                    ["/bin/sh", "-c", _GATE_SCRIPT, "drainctl-worker", *argv],
                    env=env,
                    cwd=spec.cwd,
                    stdin=gate_read,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            os.close(gate_write)
            raise RuntimeFailure(
                f"worker {spec.hostname}: starting {argv[0]!r} failed: {exc}; check the command, its cwd, its "
                f"permissions and that {self.state_dir} is writable"
            ) from exc
        finally:
            os.close(gate_read)
        try:
            tracked = self._record(spec, popen, argv)
        except BaseException:
            os.close(gate_write)
            popen.wait()  # the shell reads EOF and exits without running the worker
            raise
        try:
            # A shell killed meanwhile leaves a broken pipe; `watch` reports its exit.
            with contextlib.suppress(BrokenPipeError):
                os.write(gate_write, b"go\n")
        finally:
            os.close(gate_write)
        return tracked

    def _record(self, spec: WorkerSpec, popen: subprocess.Popen[bytes], argv: list[str]) -> _Tracked:
        """Write the worker's state file; the worker does not run before it exists."""
        stem = state_file_name(spec.hostname)
        # The child is not reaped before `watch` reaps it, so its /proc entry exists even if it already died.
        create_time = proc_start_time(popen.pid)
        if create_time is None:  # pragma: no cover - our unreaped child always has a /proc entry
            raise RuntimeFailure(f"worker {spec.hostname}: pid {popen.pid} vanished right after start")
        handle = WorkerHandle(
            hostname=spec.hostname,
            runtime=self.name,
            ref=str(popen.pid),
            pool=spec.pool,
            version=spec.version,
            controller_id=self.controller_id,
        )
        state_path = self.workers_dir / f"{stem}.json"
        state = {
            "hostname": spec.hostname,
            "pid": popen.pid,
            "pool": spec.pool,
            "version": spec.version,
            "controller_id": self.controller_id,
            "started_at": time.time(),
            "command": argv,
            "create_time": create_time,
        }
        _write_atomically(state_path, json.dumps(state, indent=1).encode())
        return _Tracked(handle=handle, pid=popen.pid, create_time=create_time, popen=popen, state_path=state_path)

    def _track(self, tracked: _Tracked) -> None:
        self._tracked[tracked.pid] = tracked
        self._wake_send.send_nowait(tracked.pid)

    # ------------------------------------------------------------------ watch
    async def watch(
        self, on_exit: ExitHandler, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report every exit of a worker started or adopted by this instance, once, until cancelled."""
        watching: set[int] = set()
        async with anyio.create_task_group() as tg:

            def spawn_new() -> None:
                for pid, tracked in list(self._tracked.items()):
                    if pid not in watching and not tracked.reported:
                        watching.add(pid)
                        tg.start_soon(self._watch_one, tracked, on_exit, watching)

            spawn_new()
            task_status.started()
            # Every `_track` sends a wake-up; the set of tracked workers is the source of truth, so a
            # wake-up for a worker that is already watched (or reported) is harmless.
            async for _pid in self._wake_receive:
                spawn_new()

    async def _watch_one(self, tracked: _Tracked, on_exit: ExitHandler, watching: set[int]) -> None:
        try:
            exited = await self._wait_exit(tracked)
        finally:
            watching.discard(tracked.pid)
        if exited is not None:
            await on_exit(exited)

    async def _wait_exit(self, tracked: _Tracked) -> Exited | None:
        """Wait until the worker exits; its `Exited`, or None if it was already reported."""
        fd = _pidfd_open(tracked.pid)
        if fd is not None:
            try:
                # Our own child cannot be reused before we reap it, so its pidfd is its. An adopted pid was
                # checked by `adopt`; if its start time changed since, it is gone and the pid reused already.
                if tracked.popen is not None or proc_start_time(tracked.pid) == tracked.create_time:
                    # A pidfd becomes readable once the process has exited (a zombie counts as exited).
                    await anyio.wait_readable(fd)
            finally:
                os.close(fd)
        exit_code: int | None = None
        if tracked.popen is not None:
            # Reaps the zombie (waitpid WNOHANG); returns at once since the pidfd said it exited.
            returncode = tracked.popen.poll()
            if returncode is None:  # pragma: no cover - defensive: a readable pidfd means exited
                returncode = await anyio.to_thread.run_sync(tracked.popen.wait)
            exit_code = _exit_code(returncode)
        if tracked.reported:
            return None
        tracked.reported = True
        if self._tracked.get(tracked.pid) is tracked:
            del self._tracked[tracked.pid]
        await anyio.to_thread.run_sync(_remove_state_if_same, tracked.state_path, tracked.pid, tracked.create_time)
        log.info("worker process exited", hostname=tracked.handle.hostname, pid=tracked.pid,
                 exit_code=exit_code, forced=tracked.forced)
        return Exited(handle=tracked.handle, exit_code=exit_code, forced=tracked.forced)

    # ------------------------------------------------------------------ stop / signal
    async def stop(self, handle: WorkerHandle, timeout_s: float) -> bool:
        """SIGTERM the worker's main process, SIGKILL its process group after `timeout_s`. True if it had to kill.

        SIGTERM goes to the main process only: that is Celery's warm shutdown, which lets the pool's
        children finish their tasks. Signalling the whole group would hit those children directly and
        interrupt the very tasks the warm shutdown protects.
        """
        tracked = self._lookup(handle)
        if tracked is None:
            return False
        fd = _verified_pidfd(tracked)
        if fd is None:
            return False
        try:
            if _is_zombie(tracked.pid):
                return False
            with contextlib.suppress(ProcessLookupError):
                signal_mod.pidfd_send_signal(fd, signal_mod.SIGTERM)
            with anyio.move_on_after(max(0.0, timeout_s)):
                await anyio.wait_readable(fd)
                return False
            log.warning("worker did not exit after SIGTERM; killing its process group",
                        hostname=handle.hostname, pid=tracked.pid, timeout_s=timeout_s)
            tracked.forced = True
            _killpg(tracked.pid, signal_mod.SIGKILL)
            with anyio.move_on_after(KILL_WAIT_S):
                await anyio.wait_readable(fd)
                return True
            raise RuntimeFailure(
                f"worker {handle.hostname} (pid {tracked.pid}) is still there {KILL_WAIT_S:.0f}s after SIGKILL; "
                f"it is probably stuck in the kernel (D state): check `cat /proc/{tracked.pid}/stack`"
            )
        finally:
            os.close(fd)

    async def signal(self, handle: WorkerHandle, signum: int) -> None:
        """Send `signum` to the worker's main process; a worker that is already gone is left alone."""
        tracked = self._lookup(handle)
        if tracked is None:
            return
        fd = _verified_pidfd(tracked)
        if fd is None:
            return
        try:
            with contextlib.suppress(ProcessLookupError):
                signal_mod.pidfd_send_signal(fd, signum)
        except PermissionError as exc:
            raise RuntimeFailure(
                f"cannot signal worker {handle.hostname} (pid {tracked.pid}): {exc.strerror}; "
                "run drainctl as the user that started the workers"
            ) from exc
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ adopt / alive
    async def adopt(self) -> list[WorkerHandle]:
        """Workers of this controller (by state file) that still run; `watch` observes them from now on."""
        found = await anyio.to_thread.run_sync(self._scan_state_files)
        handles: list[WorkerHandle] = []
        for tracked in found:
            existing = self._tracked.get(tracked.pid)
            if existing is not None and existing.create_time == tracked.create_time:
                handles.append(existing.handle)
                continue
            self._track(tracked)
            handles.append(tracked.handle)
            log.info("adopted worker process", hostname=tracked.handle.hostname, pid=tracked.pid)
        return handles

    def _scan_state_files(self) -> list[_Tracked]:
        found: list[_Tracked] = []
        if not self.workers_dir.is_dir():
            return found
        for path in sorted(self.workers_dir.glob("*.json")):
            state = _read_state(path)
            if state is None or state.get("controller_id") != self.controller_id:
                continue
            pid, create_time = state["pid"], state["create_time"]
            if proc_start_time(pid) != create_time or _is_zombie(pid):
                log.info("removing stale worker state file", path=str(path), pid=pid)
                _remove_state_if_same(path, pid, create_time)
                continue
            handle = WorkerHandle(
                hostname=str(state["hostname"]),
                runtime=self.name,
                ref=str(pid),
                pool=str(state.get("pool", "")),
                version=str(state.get("version", "")),
                controller_id=self.controller_id,
            )
            found.append(_Tracked(handle=handle, pid=pid, create_time=create_time, popen=None, state_path=path))
        return found

    async def alive(self, handle: WorkerHandle) -> bool:
        tracked = self._lookup(handle)
        if tracked is None:
            return False
        return proc_start_time(tracked.pid) == tracked.create_time and not _is_zombie(tracked.pid)

    def _lookup(self, handle: WorkerHandle) -> _Tracked | None:
        """The worker behind `handle`: tracked here, or known from its state file; None if neither."""
        try:
            pid = int(handle.ref)
        except ValueError:
            return None
        tracked = self._tracked.get(pid)
        if tracked is not None:
            return tracked
        path = self.workers_dir / f"{state_file_name(handle.hostname)}.json"
        state = _read_state(path)
        if state is None or state.get("pid") != pid:
            return None
        return _Tracked(handle=handle, pid=pid, create_time=state["create_time"], popen=None, state_path=path)


# ---------------------------------------------------------------------- helpers


def _find_program(program: str, env: dict[str, str], cwd: str | None) -> str | None:
    """The executable `program` names, as the shell will find it (PATH from the worker's environment)."""
    if "/" in program:
        path = Path(cwd or os.getcwd()) / program
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _verified_pidfd(tracked: _Tracked) -> int | None:
    """A pidfd for the worker if the pid still is the worker (same start time), else None.

    The pidfd is opened first and the start time checked after: the pidfd then refers to the process whose
    start time was checked, and signals sent through it cannot reach a later process reusing the pid.
    """
    fd = _pidfd_open(tracked.pid)
    if fd is None:
        return None
    if proc_start_time(tracked.pid) != tracked.create_time:
        os.close(fd)
        return None
    return fd


def _is_zombie(pid: int) -> bool:
    return _proc_state(pid) in ("Z", "X", None)


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise RuntimeFailure(
            f"cannot signal process group {pgid}: {exc.strerror}; run drainctl as the user that started the workers"
        ) from exc


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RuntimeFailure(f"cannot write worker state file {path}: {exc}; check that the state_dir is writable") \
            from exc


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable worker state file", path=str(path), error=str(exc))
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int) \
            or not isinstance(state.get("create_time"), int):
        log.warning("ignoring malformed worker state file", path=str(path))
        return None
    return state


def _remove_state_if_same(path: Path, pid: int, create_time: int) -> None:
    """Remove the state file unless it now describes another worker (the hostname was started again)."""
    state = _read_state(path)
    if state is None:
        return
    if state.get("pid") == pid and state.get("create_time") == create_time:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
