"""The CLI's client of the controller's HTTP API: JSON in and out, errors that say what to check."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, NoReturn

import click

from drainctl import config
from drainctl.errors import ApiError


class HttpError(ApiError):
    def __init__(self, url: str, status: int, body: dict[str, Any]) -> None:
        message = body.get("error") if isinstance(body.get("error"), str) else str(body)[:200]
        super().__init__(f"{url}: HTTP {status}: {message}")
        self.status = status
        self.body = body


def request_json(url: str, *, body: dict[str, Any] | None = None, token: str | None = None,
             timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the URL is the user's
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"error": raw[:200].decode(errors="replace")}
        raise HttpError(url, exc.code, parsed if isinstance(parsed, dict) else {"error": str(parsed)}) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"cannot reach the controller at {url}: {reason}; is `drainctl run` up? (--url)") from exc


def get_json(url: str, timeout: float = 10.0) -> Any:
    return request_json(url, timeout=timeout)


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_GAVE_UP = 4
# HTTP statuses of the API that mean the request itself was wrong (body, token, path).
BAD_INPUT_STATUSES = frozenset({400, 401, 403, 404})


def die(message: object, code: int) -> NoReturn:
    click.echo(f"drainctl: {message}", err=True)
    sys.exit(code)


def token() -> str | None:
    """The bearer token of the API's POST endpoints (the controller reads the same variable first)."""
    return os.environ.get(config.API_TOKEN_ENV) or None


def requested_by() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"[:100]


def fail(exc: ApiError) -> NoReturn:
    """End the command on an API error: 3 refused (409), 2 bad input (`BAD_INPUT_STATUSES`), 1 otherwise."""
    status = exc.status if isinstance(exc, HttpError) else None
    die(exc, EXIT_REFUSED if status == 409 else EXIT_BAD_INPUT if status in BAD_INPUT_STATUSES else EXIT_FAILED)
