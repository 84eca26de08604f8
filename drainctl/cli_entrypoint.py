"""Command line: `drainctl entrypoint` (docs/entrypoint.md) and its readiness probe `drainctl entrypoint-ready`
(docs/kubernetes.md). `drainctl.cli` adds both to the `drainctl` group."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from drainctl import config, logs, ready_file

EXIT_BAD_INPUT = 2  # as every drainctl command (drainctl.cli)

READY_FILE_HELP = ("A file that exists while the worker consumes its queues and no drain has started, for a "
                   "readiness probe (drainctl entrypoint-ready). Connects to the broker at start to see it consume.")


def _bad_input(message: object) -> NoReturn:
    click.echo(f"drainctl: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--broker", "broker_url", metavar="URL",
              help="RabbitMQ URL (default: DRAINCTL_BROKER_URL). Prefer the variable: argv is visible to all users.")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Longest wait for the drain; past it the worker gets SIGTERM with what it still holds.")
@click.option("--reply-timeout", "reply_timeout_s", type=click.FloatRange(min=0, min_open=True), default=2.0,
              show_default=True, metavar="S", help="Deadline for the worker's remote-control replies.")
@click.option("--ready-file", "ready_path", metavar="PATH", help=READY_FILE_HELP)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def entrypoint(broker_url: str | None, grace_s: float | None, reply_timeout_s: float, ready_path: str | None,
               log_format: str, log_level: str, command: tuple[str, ...]) -> None:
    """Run a Celery worker command as a child (e.g. as a container's PID 1) and drain it on SIGTERM.

    drainctl entrypoint -- celery -A proj worker -n w1@%h -Q default

    Other signals pass through; the exit code is the worker's. See docs/entrypoint.md.
    """
    from drainctl import entrypoint as entry

    logs.configure(log_format, log_level)
    url = broker_url or os.environ.get(config.BROKER_URL_ENV)
    if not url:
        _bad_input(f"no broker URL: set {config.BROKER_URL_ENV} (or --broker)")
    try:
        code = entry.main(command, url, grace_s=grace_s, reply_timeout_s=reply_timeout_s, ready_path=ready_path)
    except ValueError as exc:
        _bad_input(exc)
    sys.exit(code)


@click.command("entrypoint-ready")
@click.option("--ready-file", "ready_path", metavar="PATH", required=True,
              help="The --ready-file of the `drainctl entrypoint` to ask.")
def entrypoint_ready(ready_path: str) -> None:
    """Readiness probe: exit 0 while the worker of `drainctl entrypoint --ready-file PATH` consumes, 1 before
    that and from the moment its drain starts. See docs/kubernetes.md."""
    sys.exit(ready_file.probe(ready_path))
