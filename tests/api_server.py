"""A real controller serving its HTTP API, with a broker that cannot be reached (no RabbitMQ needed).

It knows no worker, so every drain is refused, temporarily ("not seen yet"). Its broker URL carries
`SECRET` as the password, which nothing it serves or logs may show.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from drainctl import config, http
from drainctl.app import Controller

SECRET = "s3cr3t-" + uuid.uuid4().hex
TOKEN = "token-" + uuid.uuid4().hex


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def api(tmp_path: Path, token: str | None) -> AsyncIterator[str]:
    """The API's base URL for the length of the block; `token`: its bearer token (None: POSTs disabled)."""
    settings = config.from_mapping({"controller": {"id": "sec", "state_dir": str(tmp_path)},
                                    "broker": {"reconnect_max_backoff_s": 0.5}})
    ctl = Controller(settings, f"amqp://admin:{SECRET}@127.0.0.1:{closed_port()}//")
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        runner = await http.start(ctl, "127.0.0.1", 0, token)
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()
            tg.cancel_scope.cancel()
