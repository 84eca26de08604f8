"""A private, throwaway RabbitMQ node for tests that must stop or restart their broker.

The shared RabbitMQ on 127.0.0.1:5672 (``rabbit@localhost``) is never touched: a
:class:`PrivateRabbit` is a second node on the same host with

- its own node name ``drainctl-chaos-<8 hex>@localhost``;
- its own AMQP listener on a free loopback port (``RABBITMQ_CONFIG_FILE`` points to a
  ``rabbitmq.conf`` in its directory, so ``/etc/rabbitmq/rabbitmq.conf`` — and its 5672
  listener — is never read) and its own distribution port (``RABBITMQ_DIST_PORT``);
- its own ``rabbitmq-env.conf`` (``RABBITMQ_CONF_ENV_FILE``: epmd and distribution on
  127.0.0.1 only), mnesia, log and plugin files, all under one directory;
- optional further ``rabbitmq.conf`` lines and an ``advanced.config`` (``extra_conf``,
  ``advanced_config``), e.g. a short ``consumer_timeout`` checked every second;
- no management listener (only the plugins in its own ``enabled_plugins``: none by default,
  or ``rabbitmq_event_exchange``);
- its own Erlang cookie: the node and every ``rabbitmqctl`` call run with ``HOME`` set to
  that directory, which holds a random ``.erlang.cookie`` (mode 0400).

It runs as the calling user (root in CI) through ``/usr/lib/rabbitmq/bin`` directly (the
``/usr/sbin`` wrappers ``su`` to the ``rabbitmq`` user, which could not read a pytest tmp dir).
``guest``/``guest`` works, on loopback only (RabbitMQ's default), on vhost ``/``.

Usage::

    with PrivateRabbit(tmp_path / "rabbit") as rabbit:
        rabbit.url            # amqp://guest:guest@127.0.0.1:<port>/
        rabbit.restart()      # rabbitmqctl stop, then start again with the same env; waits
    # the node is stopped (rabbitmqctl stop; SIGKILL of its pid as a last resort)

Every wait is bounded; every process is ended by its own pid or by ``rabbitmqctl -n NODE``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
#: Seconds ``rabbitmqctl await_startup`` may take (a cold node boots in ~5-10 s).
STARTUP_TIMEOUT_S = 60.0
#: Seconds ``rabbitmqctl stop`` may take.
STOP_TIMEOUT_S = 30.0


class PrivateRabbitError(RuntimeError):
    pass


#: Ports a private node must not take: epmd, the shared node's AMQP and distribution ports, and the
#: range ``rabbitmqctl`` (any node's) listens on for its own distribution (35672-35682).
RESERVED_PORTS = frozenset({4369, 5672, 15672, 25672, *range(35672, 35683)})


def free_loopback_port(exclude: frozenset[int] = frozenset()) -> int:
    """A TCP port nobody listens on at 127.0.0.1 (the OS picks it; a small race remains), outside
    :data:`RESERVED_PORTS` and ``exclude``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in RESERVED_PORTS and port not in exclude:
            return port
    raise PrivateRabbitError("no free loopback port found in 50 tries")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateRabbit:
    """A private RabbitMQ node (see the module docstring); a context manager."""

    def __init__(
        self, base_dir: Path, *, event_exchange: bool = False, name: str | None = None,
        extra_conf: Sequence[str] = (), advanced_config: str | None = None,
    ) -> None:
        """``extra_conf``: further ``rabbitmq.conf`` lines (e.g. ``"consumer_timeout = 8000"``);
        ``advanced_config``: the Erlang terms of an ``advanced.config`` for settings ``rabbitmq.conf``
        cannot express (e.g. ``"[{rabbit, [{channel_tick_interval, 1000}]}]."``)."""
        self.base_dir = Path(base_dir)
        self.nodename = f"{name or 'drainctl-chaos-' + secrets.token_hex(4)}@localhost"
        self.event_exchange = event_exchange
        self.extra_conf = tuple(extra_conf)
        self.advanced_config = advanced_config
        self.port = free_loopback_port()
        self.dist_port = free_loopback_port(exclude=frozenset({self.port}))
        self.pid: int | None = None
        self.restarts = 0
        self._env = self._prepare()

    # ------------------------------------------------------------------ files and environment
    def _prepare(self) -> dict[str, str]:
        d = self.base_dir
        for sub in ("mnesia", "log", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        home = d / "home"
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        plugins = d / "enabled_plugins"
        plugins.write_text("[rabbitmq_event_exchange].\n" if self.event_exchange else "[].\n")
        conf = d / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + "".join(f"{line}\n" for line in self.extra_conf)
        )
        if self.advanced_config is not None:
            (d / "advanced.config").write_text(self.advanced_config.rstrip() + "\n")
        env_conf = d / "rabbitmq-env.conf"
        env_conf.write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        env = dict(os.environ)
        # Nothing of a caller's RABBITMQ_* / Erlang settings leaks in (they could name the shared node).
        for key in list(env):
            if key.startswith(("RABBITMQ_", "ERL_")):
                del env[key]
        env.update(
            HOME=str(home),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(env_conf),
            RABBITMQ_CONFIG_FILE=str(conf),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/`` (vhost ``/``)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def url_for(self, vhost: str) -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    # ------------------------------------------------------------------ commands
    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS`` with this node's environment (cookie included)."""
        proc = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise PrivateRabbitError(
                f"rabbitmqctl -n {self.nodename} {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def start(self) -> None:
        """``rabbitmq-server -detached``, then ``rabbitmqctl await_startup`` (bounded) and a check
        that the AMQP port answers."""
        if _port_open(self.port):
            raise PrivateRabbitError(f"port {self.port} is already taken; not starting {self.nodename}")
        pid_file = Path(self._env["RABBITMQ_PID_FILE"])
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        with (self.base_dir / "startup.log").open("ab") as out:
            subprocess.run(
                [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
                env=self._env,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        # The pid file appears once the VM runs (needed for a last-resort kill by pid).
        while time.monotonic() < deadline and self.pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.pid = int(pid_file.read_text().strip())
            if self.pid is None:
                time.sleep(0.1)
        remaining = max(5.0, deadline - time.monotonic())
        self.ctl("await_startup", "--timeout", str(int(remaining)), timeout=remaining + 15)
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise PrivateRabbitError(
                    f"{self.nodename} started but port {self.port} does not answer\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """``rabbitmqctl -n NODE stop`` (waits for the VM to exit); SIGKILL of the node's own pid if
        that fails or the pid is still alive afterwards."""
        with contextlib.suppress(PrivateRabbitError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=STOP_TIMEOUT_S)
        pid, self.pid = self.pid, None
        if pid is not None:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, down_s: float = 0.0) -> float:
        """A real restart: stop the node (every connection drops), stay down ``down_s`` seconds,
        start it again with the same environment (same name, ports, mnesia). Returns the outage
        in seconds."""
        began = time.monotonic()
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()
        self.restarts += 1
        return time.monotonic() - began

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted((self.base_dir / "log").glob("*.log"))
        out = []
        for path in logs[-2:]:
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def __enter__(self) -> PrivateRabbit:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours would still "exist"; the node is detached (not our child), so it is reaped by init.
    return True
