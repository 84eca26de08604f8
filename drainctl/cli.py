"""Command line: `drainctl run | status | drain | rollout | rollout status | rollback | entrypoint | entrypoint-ready`.

`run` is the controller. `status`, `drain`, `rollout` (re-read the config file, as SIGHUP does),
`rollout status` and `rollback` are clients of its HTTP API (`--url`; the token of the POST endpoints comes
from DRAINCTL_API_TOKEN). `entrypoint` runs a worker command as a child and drains it on SIGTERM, without a
controller (docs/entrypoint.md); `entrypoint-ready` is its readiness probe (docs/kubernetes.md).

Exit codes (`entrypoint` exits with its worker's): 0 ok; 1 the operation failed (a drain ended `lost` or
`cancelled`, the API is unreachable); 2 bad input (options, config, token: the API answered the command's
request with 400, 401, 403 or 404); 3 refused (e.g. the drain would leave a queue without a consumer);
4 gave up: the time ran out (`drain --timeout`) while the drain was still under way (`--wait`) or still
refused temporarily.
`drainctl drain` retries a refusal the API calls temporary until `--timeout` (default 30 s), see `drain`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import click
import structlog

from drainctl import __version__, config, gc_tuning, logs
from drainctl.api_client import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_GAVE_UP,
    EXIT_OK,
    HttpError,
)
from drainctl.api_client import die as _die
from drainctl.api_client import fail as _fail
from drainctl.api_client import get_json as _get_json
from drainctl.api_client import request_json as _request
from drainctl.api_client import requested_by as _requested_by
from drainctl.api_client import token as _token
from drainctl.cli_engines import cordon, evacuate, uncordon
from drainctl.cli_entrypoint import entrypoint, entrypoint_ready
from drainctl.cli_status import status_lines
from drainctl.errors import ApiError, ConfigError, DrainctlError
from drainctl.redact import redact_text

DEFAULT_URL = "http://127.0.0.1:9540"

# Exit codes (EXIT_*, in api_client): the module docstring says when each is used.


@click.group()
@click.version_option(__version__, prog_name="drainctl")
def main() -> None:
    """Drain and roll out Celery workers without interrupting a task."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file.")
@click.option("--broker", "broker_url", metavar="URL",
              help="RabbitMQ URL. Prefer DRAINCTL_BROKER_URL or [broker] url_file: argv is visible to all users.")
@click.option("--http", "http_listen", metavar="HOST:PORT", help=f"API address (default {config.DEFAULT_HTTP}).")
@click.option("--controller-id", help="Names this controller's event queue and marks the workers it owns.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def run(config_path: Path | None, broker_url: str | None, http_listen: str | None, controller_id: str | None,
        log_format: str, log_level: str) -> None:
    """Run the controller: consume Celery events, keep the live model, serve the API."""
    logs.configure(log_format, log_level)
    if broker_url is not None and redact_text(broker_url) != broker_url:
        _hide_secrets_from_argv()
    try:
        settings = file_settings = config.load(config_path)
        overrides: dict[str, Any] = {}
        if http_listen is not None:
            config.parse_listen(http_listen)
            overrides["http"] = settings.http.model_copy(update={"listen": http_listen})
        if controller_id is not None:
            overrides["controller"] = config.ControllerSettings.model_validate(
                {**settings.controller.model_dump(), "id": controller_id})
        if overrides:
            settings = settings.model_copy(update=overrides)
        url = broker_url or settings.broker_url()
        if any(p.runtime == "docker" for p in settings.pool):
            settings.docker_host()  # a bad DOCKER_HOST is a configuration error, reported before anything starts
    except (ConfigError, ValueError) as exc:
        _die(exc, EXIT_BAD_INPUT)
    gc_tuning.for_a_long_lived_model()
    try:
        anyio.run(_serve, settings, file_settings, url, config_path)
    except KeyboardInterrupt:
        pass
    except DrainctlError as exc:
        _die(exc, EXIT_FAILED)


def _hide_secrets_from_argv() -> None:
    """A password in --broker would be readable by every user in `ps`: rewrite the process title."""
    import setproctitle

    setproctitle.setproctitle(" ".join(redact_text(arg) for arg in sys.argv))
    structlog.get_logger("drainctl").warning(
        "a broker URL with a password was given in argv: prefer DRAINCTL_BROKER_URL or [broker] url_file")


async def _reload(controller: Any, log: Any) -> None:
    with contextlib.suppress(DrainctlError):  # the reducer logged and counted the rejection
        detail = await controller.reload("sighup")
        log.info("SIGHUP applied", **detail)


async def _serve(settings: config.Settings, file_settings: config.Settings, url: str, config_path: Path | None) -> None:
    from drainctl import http
    from drainctl.app import Controller
    from drainctl.runtime.process import ProcessRuntime

    log = structlog.get_logger("drainctl")
    runtime = ProcessRuntime(settings.controller.state_dir, settings.controller.id)
    runtimes: dict[str, Any] = {}
    if settings.docker.engine or any(p.runtime == "docker" for p in settings.pool):
        from drainctl.runtime.engines import docker_runtimes  # aiodocker only where Docker is used

        runtimes.update(docker_runtimes(settings))
    controller = Controller(settings, url, runtime=runtime, runtimes=runtimes, config_path=config_path,
                            file_settings=file_settings)
    host, port = config.parse_listen(settings.http.listen)
    token = settings.api_token()
    if token is None:
        log.warning("no API token set: POST endpoints are disabled (set DRAINCTL_API_TOKEN)")
    try:
        runner = await http.start(controller, host, port, token)
    except OSError as exc:
        raise DrainctlError(f"cannot listen on {settings.http.listen}: {exc.strerror}; pick another --http") from exc
    log.info("http api listening", address=settings.http.listen)
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(controller.run)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        # An input like any other: the reducer reloads; an invalid file changes nothing.
                        tg.start_soon(_reload, controller, log)
                        continue
                    # Workers keep running: the controller is not in their data path.
                    log.info("stopping controller", signal=signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(5, shield=True):
            await runner.cleanup()




@main.command()
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The controller's API.")
@click.option("--json", "as_json", is_flag=True, help="Print the /status document.")
def status(url: str, as_json: bool) -> None:
    """Show each elastic pool's size and why, and every worker with the tasks it runs, holds prefetched, or
    holds for an ETA."""
    try:
        document = _get_json(url.rstrip("/") + "/status")
    except ApiError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    for line in status_lines(document):
        click.echo(line)


SUCCESS_OUTCOMES = {"retired", "shutdown-requested", "restarted-by-supervisor"}


def _estimate(drain: dict[str, Any]) -> str:
    """`, about 12s left` from the drain's estimate, or nothing when there is none."""
    remaining = drain.get("estimated_remaining_s")
    return "" if remaining is None else f", about {remaining:.0f}s left"


def _progress(drain: dict[str, Any]) -> str:
    waiting = drain.get("waiting_for") or []
    line = f"{drain['hostname']}: {drain['phase']} ({drain['duration_s']:.1f}s{_estimate(drain)})"
    if waiting:
        oldest = max(t["age_s"] for t in waiting)
        line += f", waiting for {len(waiting)} task(s), oldest {oldest:.1f}s: " + ", ".join(
            t["id"] for t in waiting[:5]) + (" ..." if len(waiting) > 5 else "")
    if drain.get("past_deadline"):
        line += "  [PAST DEADLINE]"
    return line


# Without --timeout, how long `drainctl drain` retries a temporary refusal: far longer than a new worker
# takes to be seen and to answer (about a second), and longer than no_remote_control_after_s (20 s by
# default), after which a worker that never answers is refused for good (not retried).
TEMPORARY_RETRY_S = 30.0
RETRY_PAUSE_S = 1.0
RETRY_REPORT_EVERY_S = 5.0  # while the reason stays the same, one line on stderr this often


@main.command()
@click.argument("hostname")
@click.option("--wait", is_flag=True,
              help="Wait until the drain ends (worker retired, or the drain lost / cancelled); see --timeout.")
@click.option("--timeout", "deadline_s", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="The drain's deadline, counted from now: past it the drain is flagged (and escalated with "
                   "--on-deadline escalate); with --wait, give up waiting then (exit 4; the drain goes on). "
                   f"Temporary refusals are retried until then (default {TEMPORARY_RETRY_S:g}s).")
@click.option("--on-deadline", type=click.Choice(["wait", "escalate"]), default=None,
              help="Past the deadline [default: the pool's on_drain_deadline, else wait].")
@click.option("--force", is_flag=True, help="Drain even if a queue is left without a consumer.")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The controller's API.")
@click.option("--json", "as_json", is_flag=True, help="Print the final drain document as JSON.")
def drain(hostname: str, wait: bool, deadline_s: float | None, on_deadline: str | None, force: bool, url: str,
          as_json: bool) -> None:
    """Stop HOSTNAME taking work, wait for its tasks to finish, retire it.

    A refusal that is only temporary (the controller does not know the worker, its queues, or another
    worker's queues yet) is retried once a second until --timeout, by default 30 s. Any other refusal
    (e.g. the last consumer of a queue, a hostname collision, no remote control) exits 3 at once.
    Without --timeout, --wait waits as long as the drain takes; a worker drained as a pool member gets
    its pool's stop_timeout_s, retire_grace_s and drain deadline unless given here.

    The API token comes from DRAINCTL_API_TOKEN.
    """
    base = url.rstrip("/")
    started = time.monotonic()
    body: dict[str, Any] = {"hostname": hostname, "force": force, "requested_by": _requested_by()}
    if on_deadline is not None:  # unset: the pool's (the controller knows it)
        body["on_deadline"] = on_deadline
    limit = deadline_s if deadline_s is not None else TEMPORARY_RETRY_S
    document = _start_drain(base, body, deadline_s, started, started + limit)
    if not as_json:
        click.echo(f"drain of {hostname} started: queues {', '.join(document['queues']) or '(none)'}")
    if wait:
        document = _wait_for_end(base, document, as_json, None if deadline_s is None else started + deadline_s)
    if as_json:
        click.echo(json.dumps(document, indent=2))
    elif document["phase"] == "done":
        click.echo(f"{hostname}: {document['outcome']} after {document['duration_s']:.1f}s — {document['detail']}")
    if document["phase"] != "done":
        if wait:
            _die(f"gave up waiting after {time.monotonic() - started:.1f}s (--timeout {deadline_s:g}): the drain "
                 f"of {hostname} goes on ({document['phase']}); follow it with `drainctl status` or "
                 "GET /drains/HOSTNAME", EXIT_GAVE_UP)
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK if document["outcome"] in SUCCESS_OUTCOMES else EXIT_FAILED)


def _start_drain(base: str, body: dict[str, Any], deadline_s: float | None, started: float,
                 give_up_at: float) -> dict[str, Any]:
    """POST /drain, asking again after a temporary refusal until `give_up_at` (then exit 4).

    Any other refusal or error ends the command (`_fail`). A deadline counts from the command's start:
    each attempt asks for what is left of it.
    """
    said, said_at = "", -RETRY_REPORT_EVERY_S
    while True:
        if deadline_s is not None:
            body["deadline_s"] = round(max(deadline_s - (time.monotonic() - started), 0.001), 3)
        try:
            document: dict[str, Any] = _request(f"{base}/drain", body=body, token=_token())["drain"]
            return document
        except ApiError as exc:
            if not (isinstance(exc, HttpError) and exc.status == 409 and exc.body.get("temporary") is True):
                _fail(exc)
            reason = str(exc.body.get("error"))
        now = time.monotonic()
        left = give_up_at - now
        if left <= 0:
            why = "--timeout" if deadline_s is not None else f"without --timeout, {TEMPORARY_RETRY_S:g}s"
            _die(f"gave up after {now - started:.1f}s ({why}): still refused: {reason}", EXIT_GAVE_UP)
        if reason != said or now - said_at >= RETRY_REPORT_EVERY_S:
            click.echo(f"drainctl: refused for now: {reason} — retrying for up to {left:.1f}s", err=True)
            said, said_at = reason, now
        time.sleep(min(RETRY_PAUSE_S, left))  # the last attempt at the limit itself


def _wait_for_end(base: str, document: dict[str, Any], as_json: bool, give_up_at: float | None) -> dict[str, Any]:
    """Follow the drain (a progress line on stdout when it changes) until it is done or `give_up_at` passes."""
    path = f"{base}/drains/{urllib.parse.quote(document['hostname'], safe='')}"
    last = ""
    while document["phase"] != "done":
        line = _progress(document)
        if line != last and not as_json:
            click.echo(line)
            last = line
        wait_s = 5.0
        if give_up_at is not None:
            wait_s = min(wait_s, give_up_at - time.monotonic())
            if wait_s <= 0:
                break
        try:
            document = _request(f"{path}?wait={wait_s:.3f}", timeout=30)["drain"]
        except ApiError as exc:
            # The drain was accepted: whatever goes wrong now (even a 404, a restarted controller that
            # no longer knows it) is a failure of the operation, not bad input.
            _die(exc, EXIT_FAILED)
    return document


@main.group(invoke_without_command=True)
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The controller's API.")
@click.pass_context
def rollout(ctx: click.Context, url: str) -> None:
    """Re-read the controller's config file and roll out every pool whose version changed.

    The same as `kill -HUP` on the controller. `drainctl rollout status` shows progress.
    """
    ctx.obj = url
    if ctx.invoked_subcommand is not None:
        return
    try:
        result = _request(f"{url.rstrip('/')}/rollout", body={}, token=_token())
    except ApiError as exc:
        _fail(exc)
    changed = result.get("changed") or []
    click.echo("config reloaded; " + (f"rolling out: {', '.join(changed)}" if changed else "no pool changed"))
    restart_needed = result.get("restart_needed") or []
    if restart_needed:
        click.echo(f"changes to [{'], ['.join(restart_needed)}] take effect when drainctl restarts", err=True)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _render_pools(document: dict[str, Any]) -> list[str]:
    lines = []
    for pool in document.get("pools", []):
        rollout_doc = pool.get("rollout")
        head = f"pool {pool['name']}: {pool['version_target']}"
        if pool.get("pinned"):
            head += f" (pinned: {pool['pinned']})"
        head += f"  workers {pool['ready']}/{pool['replicas']} ready, {pool['alive']} alive (cap {pool['cap']})"
        lines.append(head)
        if rollout_doc:
            lines.append(f"  rollout {rollout_doc['id']} {rollout_doc['from_version']} -> {rollout_doc['to_version']} "
                         f"{_bar(rollout_doc['replaced'], rollout_doc['total'])} "
                         f"{rollout_doc['replaced']}/{rollout_doc['total']} replaced")
        if pool.get("canary"):
            lines.extend(_render_canary(pool["canary"]))
        for member in pool.get("workers", []):
            drain_doc = member.get("drain")
            line = f"    {member['hostname']}  {member['version']}  {member['status']}"
            if drain_doc:
                waiting = drain_doc.get("waiting_for") or []
                line += f"  draining ({drain_doc['phase']}{_estimate(drain_doc)})"
                if waiting:
                    line += f", waiting for {len(waiting)} task(s): " + ", ".join(
                        f"{t['id']} ({t['age_s']:.0f}s)" for t in waiting[:3])
            if member.get("blocked"):
                line += f"  BLOCKED: {member['blocked']}"
            lines.append(line)
        for past in pool.get("history", [])[:3]:
            lines.append(f"  {past['id']}: {past['from_version']} -> {past['to_version']} {past['outcome']} "
                         f"({past['requested_by']}) {past['detail']}")
    return lines or ["(no pools configured)"]


def _render_canary(canary: dict[str, Any]) -> list[str]:
    head = f"  canary step {canary['step']}/{canary['steps']} ({canary['new_workers']} new)"
    if canary["holding"]:
        head += (f": holding {canary['held_s']:.0f}s, {canary['tasks_seen']}/{canary['tasks_needed']} tasks, "
                 f"bake {canary['bake_left_s']:.0f}s and at most {canary['time_left_s']:.0f}s left "
                 f"(then {canary['on_timeout']}); verdict {canary['verdict']}")
    else:
        head += f": {canary['detail']}"
    lines = [head, *(f"    {reason}" for reason in canary["reasons"])]
    for row in canary["comparison"]:
        new, old = row["new"], row["old"]
        lines.append(f"    {row['task']}: new {new['succeeded']} ok {new['failed']} failed p50 {_secs(new)} | "
                     f"old {old['succeeded']} ok {old['failed']} failed p50 {_secs(old)}")
    return lines


def _secs(side: dict[str, Any]) -> str:
    return "-" if side["runtime_p50_s"] is None else f"{side['runtime_p50_s']:.2f}s"


@rollout.command("status")
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="Print the pools part of /status as JSON.")
@click.pass_obj
def rollout_status(url: str, watch: bool, as_json: bool) -> None:
    """Per pool: workers replaced / to go, and what each draining worker still waits for."""
    while True:
        try:
            document = _get_json(url.rstrip("/") + "/status")
        except ApiError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps({"pools": document.get("pools", [])}, indent=2))
        else:
            if watch:
                click.clear()
            click.echo("\n".join(_render_pools(document)))
        if not watch:
            return
        time.sleep(2)


@rollout.command("promote")
@click.option("--pool", required=True, help="The pool whose canary rollout to promote.")
@click.pass_obj
def rollout_promote(url: str, pool: str) -> None:
    """Promote POOL's canary rollout: every remaining step at once, no more holds."""
    _canary_decision(url, pool, "promote")


@rollout.command("abort")
@click.option("--pool", required=True, help="The pool whose canary rollout to abort.")
@click.pass_obj
def rollout_abort(url: str, pool: str) -> None:
    """Abort POOL's canary rollout: back to the old version, the new workers drained."""
    _canary_decision(url, pool, "abort")


def _canary_decision(url: str, pool: str, decision: str) -> None:
    try:
        _request(f"{url.rstrip('/')}/rollout/{decision}", body={"pool": pool, "requested_by": _requested_by()},
                 token=_token())
    except ApiError as exc:
        _fail(exc)
    click.echo(f"pool {pool}: canary rollout {'promoted' if decision == 'promote' else 'aborted'}")


@main.command()
@click.option("--pool", required=True, help="The pool to roll back.")
@click.option("--version", "version", default=None, help="Version to return to (default: the previous one).")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The controller's API.")
def rollback(pool: str, version: str | None, url: str) -> None:
    """Roll POOL back to its previous version and pin it there until the config changes."""
    body = {"pool": pool, "version": version, "requested_by": _requested_by()}
    try:
        result = _request(f"{url.rstrip('/')}/rollback", body=body, token=_token())
    except ApiError as exc:
        _fail(exc)
    click.echo(f"pool {result['pool']} rolling back to {result['version']} (pinned until the config changes)")


# `entrypoint` and its readiness probe `entrypoint-ready` (the probe is usually answered before this
# module is even imported: drainctl.launcher).
main.add_command(entrypoint)
main.add_command(cordon)
main.add_command(uncordon)
main.add_command(evacuate)
main.add_command(entrypoint_ready)
