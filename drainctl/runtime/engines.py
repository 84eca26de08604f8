"""The docker runtimes a config asks for: one per `[[docker.engine]]` (named `docker:NAME`), or the one
engine of `[docker]` (named `docker`) when a pool runs on Docker."""

from __future__ import annotations

from drainctl.config import Settings
from drainctl.config_docker import EngineAddress
from drainctl.runtime.docker import DockerRuntime
from drainctl.runtime.docker_engine import EngineTls


def tls_of(engine: EngineAddress) -> EngineTls | None:
    files = (engine.ca_file, engine.cert_file, engine.key_file)
    return None if not any(files) else EngineTls(*(str(p) if p is not None else None for p in files))


def docker_runtimes(settings: Settings) -> dict[str, DockerRuntime]:
    controller_id = settings.controller.id
    if settings.docker.engine:
        return {f"docker:{e.name}": DockerRuntime(controller_id, e.host, tls_of(e), name=f"docker:{e.name}")
                for e in settings.docker.engine}
    if any(p.runtime == "docker" for p in settings.pool):
        return {"docker": DockerRuntime(controller_id, settings.docker_host(), tls_of(settings.docker))}
    return {}
