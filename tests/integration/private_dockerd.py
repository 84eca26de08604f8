"""A private, throwaway Docker engine for tests that must stop or restart their engine.

The shared engine on ``unix:///var/run/docker.sock`` (``scripts/dockerd.sh``) is never touched: a
:class:`PrivateDockerd` is a second ``dockerd``, a child of the test process, with

- its own API socket and ``--exec-root`` in a short directory ``/tmp/drainctl-dd-XXXXXXXX``: dockerd puts
  containerd's sockets under its exec root (``containerd/containerd.sock.ttrpc``, ...) and a unix socket
  path is limited to 107 bytes, which a pytest tmp dir is too deep for;
- its own ``--data-root`` (images, containers, containerd's content), ``--pidfile`` and log file
  (``dockerd.log``) in the given directory, and an empty ``--config-file`` (``/etc/docker/daemon.json`` is
  never read);
- its own containerd: without ``--containerd``, dockerd starts one whose config, gRPC, ttrpc and debug
  sockets and state are under the exec root and whose root is under the data root; runc's state is in
  ``<exec-root>/runtime-runc``. The shims' sockets live in the host-wide ``/run/containerd/s/`` but are
  named by a hash of containerd's address, namespace and container id, so they differ from the shared
  engine's;
- the shared engine's flags: ``--bridge=none --iptables=false --ip-forward=false --live-restore`` (no bridge
  network, no iptables, no sysctls; containers use ``NetworkMode: host``; they keep running while dockerd
  restarts).

The test image ``drainctl-test:base`` is imported into it by ``scripts/test-image.sh``, the script that
makes the shared engine's. It runs as the calling user, which must be root (dockerd needs it).

Usage::

    with PrivateDockerd(tmp_path / "dockerd") as engine:
        engine.host          # unix:///tmp/drainctl-dd-XXXXXXXX/docker.sock ([docker] host, DockerRuntime)
        engine.docker("ps")  # the docker CLI against this engine
        engine.restart()     # SIGTERM, wait for the exit, start again with the same flags; waits until it answers
    # every container it ran is removed; dockerd is stopped (SIGTERM, SIGKILL of its pid as a last resort);
    # the mounts it left under its directories are unmounted and its data and exec roots deleted (the log stays)

Every wait is bounded; every process is ended by its own pid, after checking the pid is still ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.integration.conftest import REPO_ROOT

#: Seconds dockerd may take to answer /_ping after it was started (it takes 1-3 s here).
START_TIMEOUT_S = 60.0
#: Seconds dockerd may take to exit after SIGTERM (3-6 s here with live-restore).
STOP_TIMEOUT_S = 30.0
#: Bound of one docker CLI call.
CLI_TIMEOUT_S = 60.0


class PrivateDockerdError(RuntimeError):
    pass


class PrivateDockerd:
    """A private Docker engine (see the module docstring); a context manager."""

    def __init__(self, directory: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        # More flags, e.g. a TLS listener: ("--host=tcp://127.0.0.2:PORT", "--tlsverify", ...).
        self.extra_args = extra_args
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_root = self.directory / "data"
        self.pidfile = self.directory / "dockerd.pid"
        self.log_path = self.directory / "dockerd.log"
        self.config_file = self.directory / "daemon.json"
        self.run_dir = Path(tempfile.mkdtemp(prefix="drainctl-dd-", dir="/tmp"))
        self.exec_root = self.run_dir / "exec"
        self.socket_path = self.run_dir / "docker.sock"
        self.popen: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def host(self) -> str:
        """``unix:///tmp/drainctl-dd-XXXXXXXX/docker.sock``: what ``DOCKER_HOST`` / ``[docker] host`` take."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def argv(self) -> list[str]:
        return [
            "dockerd",
            f"--config-file={self.config_file}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host={self.host}",
            "--bridge=none", "--iptables=false", "--ip-forward=false",
            "--live-restore",
            *self.extra_args,
        ]

    # ------------------------------------------------------------------ commands
    def docker(self, *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine (``DOCKER_HOST`` set, no context, no TLS variables)."""
        proc = subprocess.run(["docker", *args], env=self._env(DOCKER_HOST=self.host), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise PrivateDockerdError(f"docker {' '.join(args)} ({self.host}) exited {proc.returncode}: "
                                      f"{proc.stderr.strip()[-500:]}")
        return proc

    def answers(self) -> bool:
        """``GET /_ping`` on the socket answers 200 (dockerd serves its API once it has initialised)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(self.socket_path))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status_line = s.recv(256).split(b"\r\n", 1)[0]
        except OSError:
            return False
        return status_line.startswith(b"HTTP/1.") and status_line.split(b" ")[1:2] == [b"200"]

    def start(self) -> None:
        """Start dockerd with :meth:`argv` and wait until it answers (bounded)."""
        if self.pid is not None:
            raise PrivateDockerdError(f"dockerd {self.host} is already running (pid {self.pid})")
        if not self.config_file.exists():
            self.config_file.write_text("{}\n")
        for d in (self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv())}\n".encode())
            log.flush()
            # Its own session: a ^C to pytest must not kill the engine before its containers are removed.
            self.popen = subprocess.Popen(self.argv(), env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            code = self.popen.poll()
            if code is not None:
                raise PrivateDockerdError(f"dockerd {self.host} exited {code} while starting\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PrivateDockerdError(
                    f"dockerd {self.host} did not answer within {START_TIMEOUT_S:g}s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, *, kill_after_s: float | None = STOP_TIMEOUT_S) -> None:
        """SIGTERM to dockerd's pid and wait for its exit. With ``kill_after_s``, SIGKILL (of dockerd and
        of its containerd) if it is still alive then; without, raise instead."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=kill_after_s if kill_after_s is not None else STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            if kill_after_s is None:
                self.popen = popen
                raise PrivateDockerdError(
                    f"dockerd {self.host} (pid {popen.pid}) still runs {STOP_TIMEOUT_S:g}s after SIGTERM\n"
                    f"{self.log_tail()}") from None
        popen.kill()
        popen.wait(timeout=10)
        self._kill_own_containerd()

    def restart(self) -> float:
        """A real engine restart: SIGTERM, wait for dockerd to exit (its containerd with it; the containers
        keep running: live-restore), start it again with the same flags, wait until it answers.
        Returns how long the engine did not answer, in seconds."""
        began = time.monotonic()
        self.stop(kill_after_s=None)
        self.start()
        self.restarts += 1
        return time.monotonic() - began

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return f"--- last lines of {self.log_path}:\n" + "\n".join(text[-lines:])
        return f"--- {self.log_path}: unreadable"

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> PrivateDockerd:
        try:
            self.start()
            subprocess.run(["bash", str(REPO_ROOT / "scripts" / "test-image.sh")], env=self._env(DOCKER_HOST=self.host),
                           capture_output=True, timeout=120, check=True, stdin=subprocess.DEVNULL)
        except BaseException as exc:
            detail = exc.stderr.decode(errors="replace") if isinstance(exc, subprocess.CalledProcessError) else ""
            self.close()
            if detail:
                raise PrivateDockerdError(f"importing the test image into {self.host} failed: {detail}") from exc
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove every container, stop the engine, unmount what it left mounted, delete its roots."""
        if self.pid is not None and self.answers():
            with contextlib.suppress(PrivateDockerdError, subprocess.TimeoutExpired):
                ids = self.docker("ps", "-aq").stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids)
        self.stop()
        self._kill_leftover_containers()
        self._unmount_all()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _env(**extra: str) -> dict[str, str]:
        # Nothing of a caller's DOCKER_* settings (host, context, TLS) may point the engine or the CLI elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"
        env.update(extra)
        return env

    def _kill_own_containerd(self) -> None:
        """After a SIGKILL of dockerd its containerd lives on: end it, by the pid it wrote, if it is ours."""
        pid_file = self.exec_root / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if str(self.exec_root).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)

    def _kill_leftover_containers(self) -> None:
        """Containers that survived (the engine could not remove them): SIGKILL their init process, by the pid
        runc recorded, if that process still has the start time runc recorded (no pid reuse)."""
        for state_file in self.exec_root.glob("runtime-runc/*/*/state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads(state_file.read_text())
                pid, started = int(state["init_process_pid"]), int(state["init_process_start"])
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[19]) == started:
                    os.kill(pid, signal.SIGKILL)
        # Their shims (children of init by now) name our containerd's socket, under our exec root.
        address = str(self.exec_root / "containerd" / "containerd.sock").encode()
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address in argv:
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        """dockerd leaves its data root bind-mounted on itself and ``<exec-root>/netns/default`` mounted when
        it stops with live-restore: unmount whatever is mounted under our two roots, deepest first."""
        roots = (str(self.data_root), str(self.run_dir))
        for _ in range(10):  # mounts can be stacked on one path; bounded
            mounted = [m for m in _mount_points() if any(m == r or m.startswith(r + "/") for r in roots)]
            if not mounted:
                return
            for point in sorted(mounted, key=lambda p: p.count("/"), reverse=True):
                if subprocess.run(["umount", point], capture_output=True, timeout=30, check=False).returncode:
                    subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def _mount_points() -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            field = line.split(" ")[4]
            # mountinfo escapes space, tab, newline and backslash as octal.
            points.append(field.encode().decode("unicode_escape"))
    return points
