"""TOML -> validated, frozen settings. Errors name the file, the key and the line, and say what is expected.

Precedence for the broker URL (so that no password needs to sit in argv or in the file):
``--broker`` flag > ``DRAINCTL_BROKER_URL`` > ``[broker] url_file`` > ``[broker] url`` > the default.

The Docker engine of the docker runtime: ``[docker] host`` > ``DOCKER_HOST`` > the docker CLI's current
context > ``/var/run/docker.sock`` (the last two are aiodocker's own lookup).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drainctl.config_canary import CanarySettings
from drainctl.config_docker import DockerSettings, check_docker_host
from drainctl.core.drain import DEFAULT_CONSUMER_TIMEOUT_S
from drainctl.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_HTTP = "127.0.0.1:9540"
# The secrets' environment variables: each one wins over its file ([broker] url_file, [http] token_file).
BROKER_URL_ENV = "DRAINCTL_BROKER_URL"
API_TOKEN_ENV = "DRAINCTL_API_TOKEN"  # noqa: S105 - the name of a variable, not a token
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _default_controller_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "drainctl"
    return name[:63]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControllerSettings(_Section):
    id: str = Field(default_factory=_default_controller_id)
    state_dir: Path = Path("state")
    silent_after_s: PositiveFloat = 10.0
    offline_retention_s: Annotated[float, Field(ge=0)] = 60.0
    reconcile_min_interval_s: Annotated[float, Field(ge=0)] = 30.0
    # A worker that heartbeats while 3+ remote-control questions in a row go unanswered over at least
    # this long is marked as not answering remote control (drains refused, rollouts blocked).
    no_remote_control_after_s: PositiveFloat = 20.0
    # How often the depth of every elastic pool's queues is asked of RabbitMQ (a passive queue.declare).
    queue_depth_interval_s: PositiveFloat = 5.0

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value


class BrokerSettings(_Section):
    url: str | None = None
    url_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    reply_timeout_s: PositiveFloat = 1.0
    reconnect_max_backoff_s: PositiveFloat = 30.0
    # RabbitMQ's consumer_timeout in seconds (rabbitmq.conf has it in ms): drainctl cannot read it from
    # the broker. A draining worker's task held unacknowledged for warn_at of it is reported.
    consumer_timeout_s: PositiveFloat = DEFAULT_CONSUMER_TIMEOUT_S
    consumer_timeout_warn_at: Annotated[float, Field(gt=0, le=1)] = 0.8


class EventSettings(_Section):
    # How long the durable event queue outlives a stopped controller (a restart within it loses nothing).
    queue_expires_s: PositiveInt = 3600
    max_length: PositiveInt = 200_000
    # Messages the broker hands over unacknowledged, and the most drainctl holds decoded and not yet applied
    # to its model: memory is bounded by it, not by the backlog, which stays in RabbitMQ (max_length).
    prefetch: Annotated[int, Field(gt=0, le=65535)] = 2000


class HttpSettings(_Section):
    listen: str = DEFAULT_HTTP
    token: str | None = None
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class BlamedKey(ValueError):
    """A check across keys that blames one of them: the error names that key (and its line)."""

    def __init__(self, key: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = (key,) if isinstance(key, str) else key


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
PLACEHOLDERS = ("hostname", "queues", "concurrency", "pool", "version")


class PoolSettings(_Section):
    """A pool of identical workers the controller keeps at `replicas`, rolled out surge-first."""

    name: str
    queues: Annotated[list[str], Field(min_length=1)]
    # A fixed pool's size; an elastic pool's (min_replicas and max_replicas set) size at start.
    replicas: Annotated[int, Field(ge=1, le=1000)]
    min_replicas: Annotated[int, Field(ge=1, le=1000)] | None = None
    max_replicas: Annotated[int, Field(ge=1, le=1000)] | None = None
    # Elastic pools: waiting messages (ready in the queues or prefetched) accepted per worker slot.
    target_backlog_per_slot: PositiveFloat = 1.0
    scale_out_cooldown_s: Annotated[float, Field(ge=0)] = 30.0
    scale_in_cooldown_s: Annotated[float, Field(ge=0)] = 300.0
    scale_in_hysteresis: Annotated[float, Field(ge=0, lt=1)] = 0.2
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 1
    runtime: Literal["process", "docker"] = "process"
    # argv; {hostname} {queues} {concurrency} {pool} {version} are filled in. Without {hostname},
    # drainctl appends `-n {hostname} -Q {queues} -c {concurrency}`.
    command: Annotated[list[str], Field(min_length=1)]
    image: str | None = None
    version: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    surge: Annotated[int, Field(ge=1, le=100)] = 1
    # With [[docker.engine]] tables: the engines the pool spreads over (default: all); max_per_host then
    # applies to each engine.
    engines: Annotated[list[str], Field(min_length=1)] | None = None
    max_per_host: Annotated[int, Field(ge=1)] | None = None
    ready_timeout_s: PositiveFloat = 120.0
    drain_deadline_s: PositiveFloat | None = None
    on_drain_deadline: Literal["wait", "escalate"] = "wait"
    stop_timeout_s: PositiveFloat = 600.0
    # After the remote `shutdown` of an idle worker, how long it may take to exit before the runtime stops it.
    retire_grace_s: PositiveFloat = 15.0
    network_mode: str = "host"
    binds: list[str] = Field(default_factory=list)
    cwd: str | None = None
    # A new worker first consumes only a standby queue of its own (through {queues} / -Q) and is given
    # the pool's queues once the readiness gate has judged it. false: it consumes them from the start
    # (a worker that fails the gate may then have taken and lost messages; docs/deployment.md).
    quiet_start: bool = True
    # Rollouts in steps with an analysis after each (drainctl/config_canary.py, docs/canary.md).
    canary: CanarySettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _elastic_start(cls, data: Any) -> Any:
        """An elastic pool without `replicas` starts at `min_replicas`."""
        if isinstance(data, dict) and "replicas" not in data and "min_replicas" in data:
            return {**data, "replicas": data["min_replicas"]}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1-31 letters, digits, '.', '_' or '-' (it becomes part of worker names)")
        return value

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError("must be 1-31 letters, digits, '.', '_' or '-' (it becomes part of worker names)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PoolSettings:
        if self.runtime == "docker" and not self.image:
            raise ValueError("runtime 'docker' needs an image")
        self._check_elastic()
        if self.engines is not None and self.runtime != "docker":
            raise BlamedKey("engines", "engines: only for a pool with runtime = \"docker\"")
        for arg in self.command:
            for name in re.findall(r"{(\w*)}", arg):
                if name not in PLACEHOLDERS:
                    raise ValueError(f"command: unknown placeholder {{{name}}} (known: {', '.join(PLACEHOLDERS)})")
        placed = "".join(self.command)
        if self.quiet_start and "{hostname}" in placed and "{queues}" not in placed:
            raise ValueError(
                "command: has {hostname} but no {queues}: drainctl cannot start a worker quiet (on its standby "
                "queue) when the command names its queues itself. Pass the queues as {queues} (e.g. "
                "-Q {queues}, or --queues {queues} for airflow celery worker), or set quiet_start = false "
                "to accept that a new worker consumes before it is judged"
            )
        return self

    def _check_elastic(self) -> None:
        lo, hi = self.min_replicas, self.max_replicas
        if (lo is None) != (hi is None):
            missing = "max_replicas" if hi is None else "min_replicas"
            raise BlamedKey(missing, "missing: an elastic pool sets both min_replicas and max_replicas "
                                     "(or neither, for a fixed size of `replicas`)")
        if lo is None or hi is None:
            return
        if lo > hi:
            raise BlamedKey("min_replicas", f"min_replicas ({lo}) is above max_replicas ({hi})")
        if not lo <= self.replicas <= hi:
            raise BlamedKey("replicas", f"replicas ({self.replicas}), the size at start, must lie within "
                                        f"min_replicas..max_replicas ({lo}..{hi}); or leave it out")

    @property
    def elastic(self) -> bool:
        return self.max_replicas is not None

    @property
    def largest(self) -> int:
        """The most workers the pool serves with: max_replicas when elastic, else replicas."""
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @property
    def cap(self) -> int:
        """Workers of this pool alive at once on this host, draining ones included."""
        return min(self.largest + self.surge, self.max_per_host or self.largest + self.surge)

    @property
    def fingerprint(self) -> str:
        """What defines a worker of this pool: a change of any of it is a new version."""
        data = {
            "command": self.command, "image": self.image, "env": self.env, "concurrency": self.concurrency,
            "queues": sorted(self.queues), "runtime": self.runtime, "network_mode": self.network_mode,
            "binds": self.binds, "cwd": self.cwd,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def target_version(self) -> str:
        return self.version or self.fingerprint


class Settings(_Section):
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    pool: list[PoolSettings] = Field(default_factory=list)
    source: str = "<defaults>"

    @model_validator(mode="after")
    def _unique_pools(self) -> Settings:
        names = [p.name for p in self.pool]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        for index, pool in enumerate(self.pool):
            self._check_engines(index, pool)
        return self

    def _check_engines(self, index: int, pool: PoolSettings) -> None:
        known = self.docker.engine_names
        if pool.engines is not None and not known:
            raise BlamedKey(("pool", index, "engines"), "engines: no [[docker.engine]] table defines an engine")
        unknown = sorted(set(pool.engines or ()) - set(known))
        if unknown:
            raise BlamedKey(("pool", index, "engines"), f"engines: {', '.join(unknown)} not among the "
                                                        f"[[docker.engine]] names ({', '.join(known)})")
        spans = len(self.engines_of(pool))
        if pool.max_per_host is not None and pool.max_per_host * max(1, spans) < pool.largest + 1:
            key = "max_replicas" if pool.elastic else "replicas"
            times, more = (f" x {spans} engines", ", raise max_per_host or add engines") if spans else (
                "", " or raise max_per_host")
            raise BlamedKey(("pool", index, key), f"{key} ({pool.largest}) + 1 is above max_per_host "
                            f"({pool.max_per_host}){times}: a surge-first rollout starts a new worker before it "
                            f"retires an old one; lower {key}{more}")

    def engines_of(self, pool: PoolSettings) -> tuple[str, ...]:
        """The engines a docker pool spreads over when [[docker.engine]] tables exist; () otherwise."""
        if pool.runtime != "docker" or not self.docker.engine:
            return ()
        return tuple(pool.engines) if pool.engines is not None else self.docker.engine_names

    def pools(self) -> dict[str, PoolSettings]:
        return {p.name: p for p in self.pool}

    def _secret(self, environ: Mapping[str, str] | None, variable: str, file: Path | None, key: str) -> str | None:
        """`variable` if set and not empty, else the stripped text of `file` (`key` names it in errors), else None."""
        env = os.environ if environ is None else environ
        if env.get(variable):
            return env[variable]
        if file is None:
            return None
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{self.source}: {key}: cannot read {file}: {exc.strerror}") from exc

    def broker_url(self, environ: Mapping[str, str] | None = None) -> str:
        url = self._secret(environ, BROKER_URL_ENV, self.broker.url_file, "[broker] url_file")
        return url if url is not None else self.broker.url or DEFAULT_BROKER_URL

    def docker_host(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The engine the docker runtime talks to; None leaves the lookup to aiodocker (see the module docstring).

        DOCKER_HOST is resolved here rather than by aiodocker, which would let a docker CLI context win over it:
        the docker CLI itself puts DOCKER_HOST first.
        """
        if self.docker.host is not None:
            return self.docker.host
        env = os.environ if environ is None else environ
        value = env.get("DOCKER_HOST")
        if not value:
            return None
        try:
            check_docker_host(value)
        except ValueError as exc:
            raise ConfigError(f"DOCKER_HOST: {exc}; fix it or set [docker] host in the config file") from None
        return value

    def api_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        token = self._secret(environ, API_TOKEN_ENV, self.http.token_file, "[http] token_file")
        if token is None:
            return self.http.token
        return token or None  # an empty token_file: no token (not [http] token)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT, e.g. {DEFAULT_HTTP}")
    return host.strip("[]") or "127.0.0.1", int(port)


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """Best-effort line number of a key path in TOML text (tomllib keeps no positions).

    Understands `[section]` tables and `[[pool]]` arrays of tables (`("pool", 2, "replicas")`).
    """
    lines = text.splitlines()
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]")
    sections = []
    for number, line in enumerate(lines, start=1):
        match = header.match(line)
        if match:
            sections.append((number, match.group(2).replace('"', ""), match.group(1) == "[["))
    parts = list(loc)
    if not parts:
        return None
    start = 0  # top level: before the first header
    key_parts: list[str | int] = parts
    # `[[docker.engine]]`: ("docker", "engine", 1, "host") names the array "docker.engine".
    if len(parts) > 2 and isinstance(parts[0], str) and isinstance(parts[1], str) and isinstance(parts[2], int):
        parts = [f"{parts[0]}.{parts[1]}", *parts[2:]]
    if isinstance(parts[0], str):
        name = parts[0]
        if len(parts) > 1 and isinstance(parts[1], int):
            tables = [n for n, s, is_array in sections if s == name and is_array]
            if parts[1] < len(tables):
                start, key_parts = tables[parts[1]], parts[2:]
        else:
            tables = [n for n, s, is_array in sections if s == name and not is_array]
            if tables:
                start, key_parts = tables[0], parts[1:]
    following = [n for n, _, _ in sections if n > start]
    end = following[0] if following else len(lines) + 1
    key = next((p for p in key_parts if isinstance(p, str)), None)
    if key is None:
        return start or None
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for number in range(start + 1, end):
        if pattern.match(lines[number - 1]):
            return number
    return start or None


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        return "unknown key (check the spelling; see the README for the keys each section takes)"
    return message.removeprefix("Value error, ")


def _key_text(part: str | int) -> str:
    """A key as TOML writes it: bare when it can be, quoted otherwise (an odd key must not garble the message)."""
    if isinstance(part, int) or BARE_KEY.fullmatch(part):
        return str(part)
    return json.dumps(part)


def from_mapping(data: Mapping[str, Any], *, source: str = "<defaults>", text: str = "") -> Settings:
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, str | int)]
            blamed = error.get("ctx", {}).get("error")
            if isinstance(blamed, BlamedKey):
                loc.extend(blamed.path)
            key = ".".join(_key_text(part) for part in loc) or "(top level)"
            line = _line_of(text, loc) if text else None
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {key}: {_describe(error)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


# A config file is a few KiB; refusing a huge one keeps a wrong path from eating the controller's memory.
MAX_CONFIG_BYTES = 1024 * 1024


def load(path: Path | None) -> Settings:
    """Read and validate a config file; `None` gives the defaults."""
    if path is None:
        return from_mapping({})
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{path}: not valid TOML: arrays or inline tables nested too deeply") from None
    if "source" in data:
        raise ConfigError(f"{path}:{_line_of(text, ['source']) or '?'}: source: unknown key")
    return from_mapping(data, source=str(path), text=text)


def uncovered_queues(old: Settings, new: Settings) -> list[str]:
    """Queues some pool consumes under `old` that no pool would consume under `new`."""
    before = {q for p in old.pool for q in p.queues}
    after = {q for p in new.pool for q in p.queues}
    return sorted(before - after)
