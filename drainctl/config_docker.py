"""The `[docker]` section: the engine the docker runtime talks to, or several (`[[docker.engine]]`), each
reached safely: a unix socket, loopback, or TLS with client certificates (docs/deployment.md)."""

from __future__ import annotations

import ipaddress
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DOCKER_HOST_SCHEMES = ("unix", "tcp", "http", "https")


def check_docker_host(value: str) -> None:
    """Raise ValueError unless `value` is an engine address drainctl can use: unix:///PATH or tcp://HOST:PORT."""
    expected = "must be unix:///absolute/path/docker.sock or tcp://HOST:PORT (http:// and https:// work too)"
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError:
        raise ValueError(f"{expected}; got {value!r}") from None
    if url.scheme not in DOCKER_HOST_SCHEMES:
        raise ValueError(f"{expected}; got {value!r}")
    if url.scheme == "unix":
        if url.netloc or not url.path.startswith("/"):
            raise ValueError(f"{expected}; a unix socket needs an absolute path after unix:// (three slashes)")
    elif not url.hostname or (url.scheme == "tcp" and port is None):
        raise ValueError(f"{expected}; give the host and the port the engine listens on")


def is_loopback(hostname: str) -> bool:
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return hostname == "localhost"


class EngineAddress(_Section):
    """An engine's address and, for tcp:// off loopback, the TLS files that make reaching it safe."""

    # Unset ([docker] only): DOCKER_HOST, else the docker CLI's current context, else /var/run/docker.sock.
    host: str | None = None
    # A tcp:// engine that requires client certificates (dockerd --tlsverify): the CA that signed the
    # engine's certificate, and this controller's certificate and key (docs/deployment.md).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str | None) -> str | None:
        if value is not None:
            check_docker_host(value)
        return value

    @model_validator(mode="after")
    def _tls_where_it_is_needed(self) -> EngineAddress:
        tls = (self.ca_file, self.cert_file, self.key_file)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both (the client certificate and its key) or neither")
        url = urllib.parse.urlsplit(self.host or "")
        if any(tls) and url.scheme not in ("tcp", "https"):
            raise ValueError("ca_file, cert_file, key_file: only for an engine at tcp://HOST:PORT; set host")
        if url.scheme in ("tcp", "http") and not any(tls) and not is_loopback(url.hostname or ""):
            raise ValueError(
                f"host: {self.host} is an engine's API on the network without TLS: anyone who reaches it is root "
                "on that machine. Start dockerd with --tlsverify and give ca_file, cert_file and key_file")
        return self


class EngineSettings(EngineAddress):
    """One of several engines (`[[docker.engine]]`): a pool spreads its workers over those it names."""

    # Part of every worker's Celery hostname there (`pool-version-id@NAME`).
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")]
    host: str  # required here


class DockerSettings(EngineAddress):
    engine: list[EngineSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_or_several(self) -> DockerSettings:
        if self.engine and (self.host or self.ca_file or self.cert_file or self.key_file):
            raise ValueError("give either host (and its TLS files) or [[docker.engine]] tables, not both")
        names = [e.name for e in self.engine]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"engine names must be unique; repeated: {', '.join(repeated)}")
        return self

    @property
    def engine_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.engine)
