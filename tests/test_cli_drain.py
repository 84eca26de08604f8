"""`drainctl drain` against a real controller whose broker is unreachable: it knows no worker, so every drain
is refused, temporarily ("not seen yet"). No RabbitMQ needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.api_server import TOKEN, api

pytestmark = pytest.mark.anyio


def cli(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "DRAINCTL_API_TOKEN": TOKEN}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "drainctl", *args, "--url", url], capture_output=True, text=True,
                          timeout=60, env=env)
    return done, time.monotonic() - started


@pytest.mark.parametrize("wait", [[], ["--wait"]])
async def test_a_temporary_refusal_is_retried_until_the_timeout_then_exit_4(tmp_path: Path, wait: list[str]) -> None:
    async with api(tmp_path, TOKEN) as base:
        done, took = await anyio.to_thread.run_sync(partial(cli, base, "drain", "nobody@nowhere", *wait,
                                                            "--timeout", "2.5"))
    assert done.returncode == 4, done.stderr
    assert took >= 2.5
    lines = done.stderr.splitlines()
    # one line when the reason is first seen (and then every 5 s while it stays the same), one on giving up
    assert len(lines) == 2, lines
    assert lines[0].startswith("drainctl: refused for now: unknown worker 'nobody@nowhere'")
    assert re.search(r" — retrying for up to 2\.\ds$", lines[0]), lines[0]
    assert lines[1].startswith("drainctl: gave up after 2.") and "(--timeout): still refused: unknown worker" in lines[1]
    assert done.stdout == ""


async def test_a_temporary_refusal_says_when_to_ask_again(tmp_path: Path) -> None:
    async with api(tmp_path, TOKEN) as base, aiohttp.ClientSession() as session, session.post(
        base + "/drain", json={"hostname": "nobody@nowhere"}, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        body = await response.json()
        assert response.status == 409
        assert response.headers["Retry-After"] == "1"
    assert body["temporary"] is True and body["overridable"] is False
