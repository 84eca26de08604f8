"""How the docker runtime reaches its engine: a local socket, or a tcp:// engine over TLS with a client
certificate (dockerd --tlsverify), which is the only safe way to let a controller drive a remote engine."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiodocker

from drainctl.errors import RuntimeFailure


@dataclass(frozen=True, slots=True)
class EngineTls:
    """The CA that signed the engine's certificate (None: the system's), and the client's certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def engine_client(url: str | None, tls: EngineTls | None) -> aiodocker.Docker:
    """An aiodocker client for `url` (None: aiodocker's own lookup); over TLS when `tls` is given."""
    if tls is None or url is None:
        return aiodocker.Docker(url=url)
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise RuntimeFailure(
            f"Docker engine {url}: cannot load the TLS files ([docker] ca_file {tls.ca_file}, cert_file "
            f"{tls.cert_file}, key_file {tls.key_file}): {exc}") from exc
    # Docker's convention: tcp:// with TLS is https://. aiodocker leaves a URL it is given as it is.
    https = "https://" + url.removeprefix("tcp://").removeprefix("https://")
    return aiodocker.Docker(url=https, ssl_context=context)
