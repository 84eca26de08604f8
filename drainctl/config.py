"""TOML -> validated, frozen settings. Errors name the file, the key and the line, and say what is expected.

Precedence for the broker URL (so that no password needs to sit in argv or in the file):
``--broker`` flag > ``DRAINCTL_BROKER_URL`` > ``[broker] url_file`` > ``[broker] url`` > the default.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drainctl.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_HTTP = "127.0.0.1:9540"
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


class EventSettings(_Section):
    # How long the durable event queue outlives a stopped controller (a restart within it loses nothing).
    queue_expires_s: PositiveInt = 3600
    max_length: PositiveInt = 200_000
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


class Settings(_Section):
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    source: str = "<defaults>"

    def broker_url(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        if env.get("DRAINCTL_BROKER_URL"):
            return env["DRAINCTL_BROKER_URL"]
        if self.broker.url_file is not None:
            try:
                return self.broker.url_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{self.source}: [broker] url_file: cannot read {self.broker.url_file}: {exc.strerror}"
                ) from exc
        return self.broker.url or DEFAULT_BROKER_URL

    def api_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        if env.get("DRAINCTL_API_TOKEN"):
            return env["DRAINCTL_API_TOKEN"]
        if self.http.token_file is not None:
            try:
                return self.http.token_file.read_text().strip() or None
            except OSError as exc:
                raise ConfigError(
                    f"{self.source}: [http] token_file: cannot read {self.http.token_file}: {exc.strerror}"
                ) from exc
        return self.http.token


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT, e.g. {DEFAULT_HTTP}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib keeps no positions)."""
    section = None
    lines = text.splitlines()
    keys = [str(part) for part in loc if isinstance(part, str)]
    if not keys:
        return None
    wanted_section = ".".join(keys[:-1])
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for number, line in enumerate(lines, start=1):
        match = header.match(line)
        if match:
            section = match.group(1).replace('"', "")
            if len(keys) == 1 and section == keys[0]:
                return number
            continue
        if (section or "") == wanted_section and re.match(rf"^\s*\"?{re.escape(keys[-1])}\"?\s*=", line):
            return number
    for number, line in enumerate(lines, start=1):
        match = header.match(line)
        if match and match.group(1).replace('"', "") == wanted_section:
            return number
    return None


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        return "unknown key (check the spelling; see the README for the keys each section takes)"
    return message.removeprefix("Value error, ")


def from_mapping(data: Mapping[str, Any], *, source: str = "<defaults>", text: str = "") -> Settings:
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, str | int)]
            key = ".".join(str(part) for part in loc) or "(top level)"
            line = _line_of(text, loc) if text else None
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {key}: {_describe(error)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def load(path: Path | None) -> Settings:
    """Read and validate a config file; `None` gives the defaults."""
    if path is None:
        return from_mapping({})
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if "source" in data:
        raise ConfigError(f"{path}:{_line_of(text, ['source']) or '?'}: source: unknown key")
    return from_mapping(data, source=str(path), text=text)
