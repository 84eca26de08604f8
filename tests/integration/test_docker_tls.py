"""A remote Docker engine over TLS: drainctl's docker runtime reaches a real dockerd that listens on a
loopback address with --tlsverify, with a client certificate; without one, or with the wrong CA, the engine
or drainctl refuses, and the error names the engine."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from drainctl.errors import RuntimeFailure
from drainctl.runtime.docker import DockerRuntime
from drainctl.runtime.docker_engine import EngineTls
from tests.integration.private_dockerd import PrivateDockerd, PrivateDockerdError
from tests.integration.tls_certs import TlsMaterial, make_tls_material

ADDRESS = "127.0.0.2"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TlsMaterial]]:
    def unavailable(reason: str) -> None:
        message = f"no Docker engine can be started: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    if shutil.which("dockerd") is None or shutil.which("openssl") is None:
        unavailable("`dockerd` and `openssl` are needed; run `bash scripts/dockerd.sh` as root")
    if os.geteuid() != 0:
        unavailable("dockerd needs root")
    tls = make_tls_material(tmp_path_factory.mktemp("tls"), ADDRESS)
    port = free_port(ADDRESS)
    engine = PrivateDockerd(tmp_path_factory.mktemp("tls-dockerd"), extra_args=(
        f"--host=tcp://{ADDRESS}:{port}", "--tlsverify", f"--tlscacert={tls.ca}", f"--tlscert={tls.server_cert}",
        f"--tlskey={tls.server_key}"))
    try:
        engine.__enter__()
    except PrivateDockerdError as exc:
        unavailable(f"a private dockerd did not start: {exc}")
        raise
    try:
        yield f"tcp://{ADDRESS}:{port}", tls
    finally:
        engine.close()


async def adopted(url: str, tls: EngineTls) -> int:
    runtime = DockerRuntime("tls-test", url, tls)
    try:
        return len(await runtime.adopt())
    finally:
        await runtime.aclose()


def test_the_runtime_reaches_a_tls_engine_with_its_client_certificate(tls_engine: tuple[str, TlsMaterial]) -> None:
    url, tls = tls_engine
    client = EngineTls(str(tls.ca), str(tls.client_cert), str(tls.client_key))
    assert anyio.run(adopted, url, client) == 0  # the engine answered: nothing of this controller runs there

    failed, what_to_do = "TLS with the Docker engine failed", r"check \[docker\] ca_file, cert_file and key_file"
    with pytest.raises(RuntimeFailure, match=f"{failed} .*{ADDRESS}.*BAD_CERTIFICATE.*{what_to_do}"):
        anyio.run(adopted, url, EngineTls(str(tls.ca)))  # no client certificate: the engine refuses
    with pytest.raises(RuntimeFailure, match=f"{failed} .*{ADDRESS}.*CERTIFICATE_VERIFY_FAILED.*{what_to_do}"):
        anyio.run(adopted, url, EngineTls(None, str(tls.client_cert), str(tls.client_key)))  # not our CA


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(RuntimeFailure, match=r"cannot load the TLS files.*nowhere\.pem"):
        anyio.run(adopted, "tcp://127.0.0.2:2376", EngineTls(missing))

