"""`drainctl cordon | uncordon | evacuate ENGINE`: host maintenance on pools spread over Docker engines."""

from __future__ import annotations

import time
from typing import Any

import click

from drainctl.api_client import EXIT_GAVE_UP, die, fail, get_json, request_json, requested_by, token
from drainctl.errors import ApiError

DEFAULT_URL = "http://127.0.0.1:9540"
URL_OPTION = click.option("--url", default=DEFAULT_URL, show_default=True, help="The controller's API.")


def _engine(url: str, engine: str, action: str) -> dict[str, Any]:
    body = {"engine": engine, "action": action, "requested_by": requested_by()}
    try:
        result: dict[str, Any] = request_json(f"{url.rstrip('/')}/engine", body=body, token=token())
    except ApiError as exc:
        fail(exc)
    return result


@click.command()
@click.argument("engine")
@URL_OPTION
def cordon(engine: str, url: str) -> None:
    """No new worker goes to ENGINE; those there stay."""
    result = _engine(url, engine, "cordon")
    click.echo(f"engine {engine} cordoned ({len(result['workers'])} worker(s) stay there)")


@click.command()
@click.argument("engine")
@URL_OPTION
def uncordon(engine: str, url: str) -> None:
    """ENGINE takes new workers again."""
    _engine(url, engine, "uncordon")
    click.echo(f"engine {engine} uncordoned")


@click.command()
@click.argument("engine")
@click.option("--wait", is_flag=True, help="Show progress until no worker is left on ENGINE.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="With --wait: give up (exit 4) after.")
@URL_OPTION
def evacuate(engine: str, wait: bool, timeout: float, url: str) -> None:
    """Replace every worker on ENGINE on the other engines (surge-first, through the readiness gate), then
    drain it there: no task is interrupted. ENGINE stays cordoned."""
    result = _engine(url, engine, "evacuate")
    total = len(result["workers"])
    click.echo(f"engine {engine}: evacuating {total} worker(s)")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    left = result["workers"]
    while left:
        if time.monotonic() > deadline:
            die(f"engine {engine}: {len(left)} worker(s) still there after {timeout:g}s; the evacuation goes on",
                EXIT_GAVE_UP)
        time.sleep(1)
        try:
            document = get_json(url.rstrip("/") + "/status")
        except ApiError as exc:
            fail(exc)
        entry: dict[str, Any] = next((e for e in document.get("engines", []) if e["name"] == engine), {"workers": []})
        if entry["workers"] != left:
            left = entry["workers"]
            click.echo(f"engine {engine}: {total - len(left)}/{total} moved" + (
                f"; left: {', '.join(left)}" if left else ""))
    click.echo(f"engine {engine}: evacuated (still cordoned; `drainctl uncordon {engine}` to use it again)")
