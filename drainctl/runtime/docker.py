"""The `docker` runtime: workers are containers, driven through the Docker Engine API (aiodocker).

Every container drainctl starts carries the labels of `drainctl.runtime.base` (controller id, pool, version,
Celery hostname); they are how `adopt` finds a controller's containers again and how exits are matched.

Exits are observed from the engine's event stream (`die` events of containers with our controller label),
never polled for. `watch` subscribes with `since` = the engine's clock at subscription time, so an exit that
happens while the HTTP stream is still being set up is replayed to us: `watch` signals `started` once the
subscription is placed and nothing after that point can be missed. If the stream breaks (dockerd restarted),
`watch` resubscribes with backoff, asking for the events since the last one it saw, and then inspects the
managed containers once, so an exit during the gap (which a restarted engine no longer has in its event log)
is still reported. A container is removed after its exit was reported. drainctl never pulls images.

Exit codes are the engine's: the worker's status, or 128 + N for death by signal N (137 = SIGKILL).

Whether a stop was *forced* (the stop timeout expired and the engine killed the worker) is not something the
engine reports. drainctl judges it: the container exited with 137 (SIGKILL), was not OOM-killed, and it ended at
least the stop timeout after drainctl asked the engine to stop it (the engine only sends SIGKILL once the
timeout expired). A worker that is SIGKILLed for another reason after the timeout would be counted as forced too.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import signal as signal_mod
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
import anyio
import anyio.abc
import structlog
from aiodocker.docker import DockerEvents

from drainctl.errors import RuntimeFailure
from drainctl.runtime.base import (
    LABEL_CONTROLLER,
    LABEL_HOSTNAME,
    LABEL_POOL,
    LABEL_VERSION,
    Exited,
    ExitHandler,
    WorkerHandle,
    WorkerSpec,
)
from drainctl.runtime.docker_engine import EngineTls, engine_client
from drainctl.runtime.docker_times import event_since, judge_forced, unix_since

log = structlog.get_logger("drainctl.runtime.docker")

#: Bounds of the delay between two attempts to resubscribe to the event stream.
RESUBSCRIBE_MIN_S = 0.5
RESUBSCRIBE_MAX_S = 30.0
#: Bound of one engine request made while (re)subscribing or sweeping.
REQUEST_TIMEOUT_S = 10.0
#: How many reported container ids are remembered to report each exit once.
_REPORTED_MEMORY = 4096

#: What talking to the engine can raise (aiodocker wraps connection failures as DockerError with status 900).
#: Where an answer is also read, `except (*_ENGINE_ERRORS, KeyError)` adds a missing field, ValueError a
#: malformed stream or timestamp.
_ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError)

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def container_name(hostname: str) -> str:
    """A unique, valid container name derived from the Celery hostname (`w1@host` -> `drainctl-w1_host-1a2b3c4d`)."""
    safe = _NAME_UNSAFE.sub("_", hostname).strip("_.-")[:100] or "worker"
    return f"drainctl-{safe}-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class _WatchSession:
    """What `watch` carries from one subscription to the next."""

    # `since` of the next subscription: the engine's time at the first one, then the last event's time.
    since: str | None = None
    started: bool = False
    # The last resubscription got as far as the sweep: the engine answers again.
    resubscribed: bool = False
    # The engine did not answer at start: its containers are adopted once it does.
    adopt_later: bool = False


def _handle_from_labels(runtime: str, container_id: str, labels: dict[str, Any], controller_id: str) -> WorkerHandle:
    return WorkerHandle(
        hostname=str(labels.get(LABEL_HOSTNAME, "")),
        runtime=runtime,
        ref=container_id,
        pool=str(labels.get(LABEL_POOL, "")),
        version=str(labels.get(LABEL_VERSION, "")),
        controller_id=controller_id,
    )


class DockerRuntime:
    """Workers as Docker containers. See the module docstring. Call `aclose()` when done."""

    def __init__(self, controller_id: str, docker_url: str | None = None, tls: EngineTls | None = None, *,
                 name: str = "docker") -> None:
        # "docker", or "docker:ENGINE" for one of several engines: the runtime its handles name.
        self.name = name
        self.controller_id = controller_id
        self.docker_url = docker_url
        self.tls = tls
        self._docker: aiodocker.Docker | None = None
        # Containers started or adopted by this instance (id -> handle), until their exit is reported.
        self._managed: dict[str, WorkerHandle] = {}
        self._reported: OrderedDict[str, None] = OrderedDict()
        # id -> (wall-clock time the stop was asked, its timeout in s): for judging `forced`.
        self._stopping: dict[str, tuple[float, int]] = {}
        # Final container state inspected by `watch` before it removes a container (for a concurrent `stop`).
        self._final: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Times `watch` got the event stream back after a break (and swept the exits of the gap).
        self.resubscriptions = 0
        #: Told (False, why) when the event stream breaks, (True, "") once the engine answers again.
        self.on_reachability: Callable[[bool, str], Awaitable[None]] | None = None
        #: Set for one of several engines: containers adopted once an engine unreachable at start answers.
        self.on_adopted: Callable[[WorkerHandle], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ client
    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                self._docker = engine_client(self.docker_url, self.tls)
            except (AssertionError, ValueError) as exc:
                raise RuntimeFailure(
                    f"no Docker engine found ({exc or 'no socket and no DOCKER_HOST'}): start dockerd "
                    "(for development: `bash scripts/dockerd.sh`) or give its address: [docker] host or DOCKER_HOST"
                ) from exc
        return self._docker

    async def aclose(self) -> None:
        """Close the connection to the engine (the containers are not touched)."""
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    async def __aenter__(self) -> DockerRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def _label_filter(self) -> str:
        return f"{LABEL_CONTROLLER}={self.controller_id}"

    @staticmethod
    def _failure(what: str, exc: BaseException) -> RuntimeFailure:
        """A RuntimeFailure for an aiodocker/aiohttp failure, with a message that says what to do."""
        if isinstance(exc, aiodocker.DockerError):
            if exc.status == 900 and "SSL" in str(exc.message):
                return RuntimeFailure(
                    f"{what}: TLS with the Docker engine failed ({exc.message}); check [docker] ca_file, "
                    "cert_file and key_file against the engine's --tlscacert, --tlscert and --tlskey")
            if exc.status == 900:
                return RuntimeFailure(
                    f"{what}: cannot reach the Docker engine ({exc.message}); is dockerd running? "
                    "(for development: `bash scripts/dockerd.sh`)"
                )
            return RuntimeFailure(f"{what}: the Docker engine answered {exc.status}: {exc.message}")
        return RuntimeFailure(
            f"{what}: talking to the Docker engine failed ({type(exc).__name__}: {exc}); is dockerd running?"
        )

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn aiodocker/aiohttp failures inside the block into RuntimeFailure."""
        try:
            yield
        except _ENGINE_ERRORS as exc:
            raise self._failure(what, exc) from exc

    # ------------------------------------------------------------------ start
    async def start(self, spec: WorkerSpec) -> WorkerHandle:
        if not spec.image:
            raise RuntimeFailure(f"worker {spec.hostname}: no image given; the docker runtime needs one")
        if not spec.command:
            raise RuntimeFailure(f"worker {spec.hostname}: empty command; give the container's argv")
        docker = self._client()
        name = container_name(spec.hostname)
        config: dict[str, Any] = {
            "Image": spec.image,
            "Cmd": list(spec.command),
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {
                LABEL_CONTROLLER: self.controller_id,
                LABEL_POOL: spec.pool,
                LABEL_VERSION: spec.version,
                LABEL_HOSTNAME: spec.hostname,
            },
            "StopTimeout": math.ceil(spec.stop_timeout_s),
            "HostConfig": {
                "NetworkMode": spec.network_mode,
                "Binds": list(spec.binds),
                "AutoRemove": False,
            },
        }
        if spec.cwd:
            config["WorkingDir"] = spec.cwd
        what = f"starting worker {spec.hostname} (image {spec.image})"
        try:
            container = await docker.containers.create(config, name=name)
        except _ENGINE_ERRORS as exc:
            if isinstance(exc, aiodocker.DockerError) and exc.status == 404 and "image" in exc.message.lower():
                raise RuntimeFailure(
                    f"image {spec.image} not found locally: build or load it first; drainctl never pulls images"
                ) from exc
            if isinstance(exc, aiodocker.DockerError) and exc.status == 409:
                raise RuntimeFailure(f"{what}: container name {name} is taken ({exc.message}); retry") from exc
            raise self._failure(what, exc) from exc
        try:
            await container.start()
        except _ENGINE_ERRORS as exc:
            with contextlib.suppress(*_ENGINE_ERRORS):
                await container.delete(force=True)
            detail = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc)
            raise RuntimeFailure(
                f"{what}: the container was created but did not start: {detail}; check the command, the binds "
                f"{list(spec.binds)} (their sources must exist) and the network mode {spec.network_mode!r}"
            ) from exc
        handle = WorkerHandle(
            hostname=spec.hostname,
            runtime=self.name,
            ref=container.id,
            pool=spec.pool,
            version=spec.version,
            controller_id=self.controller_id,
        )
        self._managed[container.id] = handle
        log.info("worker container started", hostname=spec.hostname, container=container.id[:12], name=name,
                 image=spec.image)
        return handle

    # ------------------------------------------------------------------ watch
    async def watch(
        self, on_exit: ExitHandler, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report every `die` of one of our containers, once, then remove the container; runs until cancelled.

        The first subscription failing raises RuntimeFailure (no engine to talk to at start-up), unless
        `on_adopted` is set (one of several engines: the others go on): then this engine counts as unreachable,
        and once it answers its containers are adopted and handed to `on_adopted`. Later breaks of the stream
        are retried forever, with backoff between attempts and each attempt's requests bounded.
        """
        session = _WatchSession()
        backoff = RESUBSCRIBE_MIN_S
        while True:
            try:
                reason = await self._subscription(on_exit, session, task_status)
            except (*_ENGINE_ERRORS, ValueError, KeyError) as exc:
                if not session.started and self.on_adopted is None:
                    raise self._failure("subscribing to the Docker engine's events", exc) from exc
                if not session.started:
                    session.started, session.adopt_later = True, True
                    task_status.started()
                reason = f"{type(exc).__name__}: {exc}"
            if session.resubscribed:
                backoff = RESUBSCRIBE_MIN_S
                session.resubscribed = False
            if self.on_reachability is not None:
                await self.on_reachability(False, reason)
            delay = backoff * random.uniform(0.8, 1.2)
            log.warning("docker event stream broken; resubscribing", reason=reason, retry_in_s=round(delay, 2))
            await anyio.sleep(delay)
            backoff = min(backoff * 2, RESUBSCRIBE_MAX_S)

    async def _subscription(
        self, on_exit: ExitHandler, session: _WatchSession, task_status: anyio.abc.TaskStatus[None]
    ) -> str:
        """One subscription to the event stream, handling its events until it ends; returns why it ended."""
        docker = self._client()
        if session.since is None:
            # The engine's clock, so that `since` means the same instant to the engine.
            with anyio.fail_after(REQUEST_TIMEOUT_S):
                info = await docker.system.info()
            session.since = unix_since(str(info["SystemTime"]))
        filters = json.dumps({"type": ["container"], "event": ["die"], "label": [self._label_filter]})
        # A fresh DockerEvents per subscription: its `run` streams once and then ends.
        events = DockerEvents(docker)  # type: ignore[no-untyped-call]
        subscriber = events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        stream_failure: list[BaseException] = []
        problem: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run_events, events, filters, session.since, stream_failure)
            try:
                if not session.started:
                    # Placed with `since`: an exit from now on reaches us even if the stream is not up yet.
                    session.started = True
                    task_status.started()
                else:
                    managed, containers = await self._snapshot()
                    # Counted once the engine answered, before any exit found is reported.
                    session.resubscribed = True
                    self.resubscriptions += 1
                    log.info("docker event stream reopened; checking the managed containers")
                    if self.on_reachability is not None:
                        await self.on_reachability(True, "")
                    if session.adopt_later and self.on_adopted is not None:
                        session.adopt_later = False
                        for handle in await self.adopt():
                            await self.on_adopted(handle)
                    await self._sweep(managed, containers, on_exit)
                while (event := await subscriber.get()) is not None:
                    session.since = event_since(event) or session.since
                    await self._on_die(event, on_exit)
            except (*_ENGINE_ERRORS, KeyError) as exc:
                problem = exc
            tg.cancel_scope.cancel()
        if problem is None and stream_failure:
            problem = stream_failure[0]
        return f"{type(problem).__name__}: {problem}" if problem is not None else "event stream ended"

    @staticmethod
    async def _run_events(events: DockerEvents, filters: str, since: str, failure: list[BaseException]) -> None:
        """Pump the engine's event stream into `events`' channel; the channel gets None when it ends."""
        try:
            await events.run(filters=filters, since=since)
        except (*_ENGINE_ERRORS, ValueError) as exc:
            failure.append(exc)

    async def _on_die(self, event: dict[str, Any], on_exit: ExitHandler) -> None:
        actor = event.get("Actor") or {}
        attributes: dict[str, Any] = actor.get("Attributes") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        if not cid or attributes.get(LABEL_CONTROLLER) != self.controller_id:
            return
        raw_code = attributes.get("exitCode")
        exit_code = int(raw_code) if isinstance(raw_code, str) and raw_code.lstrip("-").isdigit() else None
        state: dict[str, Any] | None = None
        try:
            with anyio.fail_after(REQUEST_TIMEOUT_S):
                state = (await self._client().containers.get(cid))["State"]
        except (*_ENGINE_ERRORS, KeyError):
            pass
        handle = self._managed.get(cid) or _handle_from_labels(self.name, cid, attributes, self.controller_id)
        await self._report(cid, handle, exit_code, state, on_exit)

    async def _snapshot(self) -> tuple[dict[str, WorkerHandle], list[Any]]:
        """The containers we manage, as we know them and as the engine lists them."""
        # Ours first: a container started while the list is being fetched is not "vanished".
        managed = dict(self._managed)
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            containers = await self._client().containers.list(
                all=True, filters=json.dumps({"label": [self._label_filter]})
            )
        return managed, containers

    async def _sweep(self, managed: dict[str, WorkerHandle], containers: list[Any], on_exit: ExitHandler) -> None:
        """After a resubscription: report the exits of our containers that happened while we were not listening."""
        docker = self._client()
        present: set[str] = set()
        for container in containers:
            cid = container.id
            present.add(cid)
            # Only ended ones: "created" may be a container `start` is about to start.
            if cid in self._reported or container["State"] not in ("exited", "dead"):
                continue
            with anyio.fail_after(REQUEST_TIMEOUT_S):
                info = await docker.containers.get(cid)
            state = info["State"]
            if state.get("Running"):
                continue
            handle = self._managed.get(cid) or _handle_from_labels(
                self.name, cid, info["Config"].get("Labels") or {}, self.controller_id
            )
            await self._report(cid, handle, state.get("ExitCode"), state, on_exit)
        for cid, handle in managed.items():
            if cid not in present and cid not in self._reported:
                # Removed by someone else while we were not listening: the exit code is gone with it.
                await self._report(cid, handle, None, None, on_exit)

    async def _report(
        self, cid: str, handle: WorkerHandle, exit_code: int | None, state: dict[str, Any] | None, on_exit: ExitHandler
    ) -> None:
        if cid in self._reported:
            return
        self._reported[cid] = None
        while len(self._reported) > _REPORTED_MEMORY:
            self._reported.popitem(last=False)
        self._managed.pop(cid, None)
        stopping = self._stopping.pop(cid, None)
        if state is not None:
            self._final[cid] = state
            while len(self._final) > 256:
                self._final.popitem(last=False)
        forced = judge_forced(exit_code, state, stopping, time.time())
        log.info("worker container exited", hostname=handle.hostname, container=cid[:12], exit_code=exit_code,
                 forced=forced)
        try:
            await on_exit(Exited(handle=handle, exit_code=exit_code, forced=forced))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(REQUEST_TIMEOUT_S):
                await self._remove(cid)

    async def _remove(self, cid: str) -> None:
        try:
            await self._client().containers.container(cid).delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone already / removal already in progress
                log.warning("could not remove exited worker container", container=cid[:12], error=exc.message)
        except _ENGINE_ERRORS as exc:  # a DockerError is handled above
            log.warning("could not remove exited worker container", container=cid[:12], error=str(exc))

    # ------------------------------------------------------------------ stop / signal
    async def stop(self, handle: WorkerHandle, timeout_s: float) -> bool:
        """`docker stop -t timeout_s`; True if the engine had to kill (see the module docstring)."""
        docker = self._client()
        cid = handle.ref
        t = max(0, math.ceil(timeout_s))
        container = docker.containers.container(cid)
        with self._translate(f"stopping worker {handle.hostname}"):
            try:
                state = (await docker.containers.get(cid))["State"]
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return False
                raise
            if not state.get("Running"):
                return False
            asked = time.time()
            self._stopping[cid] = (asked, t)
            try:
                await container.stop(t=t)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return False
                raise
            try:
                final: dict[str, Any] | None = (await docker.containers.get(cid))["State"]
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                final = self._final.get(cid)  # removed by `watch` already; it kept the state
        code = final.get("ExitCode") if final is not None else None
        return judge_forced(code if isinstance(code, int) else None, final, (asked, t), time.time())

    async def signal(self, handle: WorkerHandle, signum: int) -> None:
        """Send `signum` to the container's main process; a container that is gone or stopped is left alone."""
        try:
            name = signal_mod.Signals(signum).name
        except ValueError:
            name = str(signum)
        with self._translate(f"signalling worker {handle.hostname}"):
            try:
                await self._client().containers.container(handle.ref).kill(signal=name)
            except aiodocker.DockerError as exc:
                if exc.status in (404, 409):  # no such container / not running
                    return
                raise

    # ------------------------------------------------------------------ adopt / alive
    async def adopt(self) -> list[WorkerHandle]:
        """Our running containers (by controller label); `watch` reports their exits from now on."""
        docker = self._client()
        filters = json.dumps({"label": [self._label_filter], "status": ["running"]})
        with self._translate("listing this controller's worker containers"):
            containers = await docker.containers.list(filters=filters)
        handles = []
        for container in containers:
            handle = _handle_from_labels(self.name, container.id, container["Labels"] or {}, self.controller_id)
            self._managed.setdefault(container.id, handle)
            handles.append(self._managed[container.id])
        return handles

    async def alive(self, handle: WorkerHandle) -> bool:
        with self._translate(f"inspecting worker {handle.hostname}"):
            try:
                info = await self._client().containers.get(handle.ref)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return False
                raise
        return bool(info["State"].get("Running"))
