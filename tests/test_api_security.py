"""The HTTP API's guards, against a real controller whose broker is unreachable (no RabbitMQ needed)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from pathlib import Path

import aiohttp
import anyio
import pytest

from drainctl import config, logs
from tests.api_server import SECRET, TOKEN, api, closed_port

pytestmark = pytest.mark.anyio


async def post(url: str, body: bytes, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith("{") else {"raw": text}


@pytest.mark.parametrize("path", ["/drain", "/rollout", "/rollback", "/rollout/promote", "/rollout/abort"])
async def test_mutating_calls_need_the_right_bearer_token(tmp_path: Path, path: str) -> None:
    async with api(tmp_path, TOKEN) as base:
        assert (await post(base + path, b"{}", None))[0] == 401
        assert (await post(base + path, b"{}", "wrong"))[0] == 401
        assert (await post(base + path, b"{}", TOKEN[:-1]))[0] == 401
    async with api(tmp_path, None) as base:
        status, body = await post(base + path, b"{}", TOKEN)
        assert status == 403 and "DRAINCTL_API_TOKEN" in str(body["error"])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"not json", 400, "invalid request body"),
        (b'{"hostname": ""}', 400, "hostname"),
        (b'{"hostname": "a@b", "force": "yes please"}', 400, "force"),
        (b'{"hostname": "a@b", "shell": "rm -rf /"}', 400, "shell"),
        (b'{"hostname": "a@b", "deadline_s": -1}', 400, "deadline_s"),
        (b'{"hostname": "' + b"x" * 40_000 + b'"}', 413, ""),
        (b'{"hostname": "a@b", "on_deadline": "never"}', 400, "on_deadline"),
        (b'{"hostname": "nobody@nowhere"}', 409, "unknown worker"),
        # not seen yet: a refusal worth retrying, said so (still 409, as for older clients)
        (b'{"hostname": "nobody@nowhere", "on_deadline": null}', 409, '"temporary": true'),
    ],
)
async def test_drain_bodies_are_limited_and_validated(tmp_path: Path, body: bytes, status: int, fragment: str) -> None:
    async with api(tmp_path, TOKEN) as base:
        got, document = await post(base + "/drain", body, TOKEN)
        assert got == status, document
        assert fragment in json.dumps(document)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"pool": "p"}', 409, "pool 'p' has no canary rollout under way (to undo a rollout, `drainctl rollback"),
        (b'{"pool": ""}', 400, "pool"),
        (b'{"pool": "p", "version": "v1"}', 400, "version"),
    ],
)
async def test_canary_decisions_name_what_is_missing(tmp_path: Path, body: bytes, status: int, fragment: str) -> None:
    async with api(tmp_path, TOKEN) as base:
        for decision in ("promote", "abort"):
            got, document = await post(f"{base}/rollout/{decision}", body, TOKEN)
            assert got == status and fragment in json.dumps(document), document


async def test_secrets_appear_in_no_status_metric_log_or_error(tmp_path: Path) -> None:
    captured = io.StringIO()
    with redirect_stderr(captured):
        logs.configure("json", "debug")
        async with api(tmp_path, TOKEN) as base, aiohttp.ClientSession() as session:
            await anyio.sleep(1.5)  # a few failed connection attempts get logged
            texts = []
            for path in ("/status", "/metrics", "/healthz"):
                async with session.get(base + path) as response:
                    texts.append(await response.text())
            texts.append(json.dumps(await post(base + "/drain", b'{"hostname": "x@y"}', TOKEN)))
    output = captured.getvalue()
    assert "cannot connect to amqp://admin:***@127.0.0.1" in output
    for text in (*texts, output):
        assert SECRET not in text
        assert TOKEN not in text


def test_the_api_listens_on_loopback_unless_told_otherwise() -> None:
    assert config.load(None).http.listen.startswith("127.0.0.1:")


def test_a_password_given_in_argv_leaves_the_process_title(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time
    import urllib.request

    port = closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "drainctl", "run", "--broker", f"amqp://admin:{SECRET}@127.0.0.1:{closed_port()}//",
         "--http", f"127.0.0.1:{port}", "--controller-id", "argv"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # until the API answers (503: no broker), bounded
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "drainctl run did not come up"
                time.sleep(0.1)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert SECRET not in cmdline
        assert "amqp://admin:***@127.0.0.1" in cmdline
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert SECRET not in output
    assert "prefer DRAINCTL_BROKER_URL" in output
