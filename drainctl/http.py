"""The controller's HTTP API, served with aiohttp (already required by aiodocker).

Read-only: GET /metrics, /healthz, /status, /drains/{hostname}[?wait=S] (S at most 60: the drain's
state once it ended, or after S seconds).
Mutating (bearer token required, compared in constant time; 403 while no token is set, 401 for a wrong
one): POST /drain, /rollout (reload the config file and roll out), /rollback (pin a pool to an earlier
version). A body that does not validate gets 400 with one problem per field.

POST /drain answers 202 with the drain, or 409 when refused: `{"error": reason, "overridable": bool,
"temporary": bool}`. A temporary refusal (something the controller does not know yet) also carries
`Retry-After`: the same request a little later is likely to be accepted. POST /rollout and /rollback
answer 202 with what changed, or 409 with the reason nothing did.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drainctl.core.drain import DrainRefused
from drainctl.core.policy import PolicyOverrides
from drainctl.errors import DrainctlError
from drainctl.metrics import exposition, registry_for
from drainctl.readmodel import ControllerApi
from drainctl.status import build_status, drain_document

MAX_BODY_BYTES = 16 * 1024
MAX_WAIT_S = 60.0
# Retry-After of a temporary refusal: the controller's first questions to a new worker take under a second.
RETRY_AFTER_S = 1

Handler = Callable[[web.Request], Awaitable[web.Response]]
B = TypeVar("B", bound=BaseModel)


class DrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: Annotated[str, Field(min_length=1, max_length=255)]
    force: bool = False
    # Unset (None): the drain policy of the worker's pool applies (or the defaults, for a worker of no pool).
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    on_deadline: Literal["wait", "escalate"] | None = None
    requested_by: Annotated[str, Field(max_length=100)] = "api"


class PoolBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: Annotated[str, Field(min_length=1, max_length=64)]
    requested_by: Annotated[str, Field(max_length=100)] = "api"


class EngineBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Annotated[str, Field(min_length=1, max_length=64)]
    action: Literal["cordon", "uncordon", "evacuate"]
    requested_by: Annotated[str, Field(max_length=100)] = "api"


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    requested_by: Annotated[str, Field(max_length=100)] = "api"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status,
                        content_type="application/json")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


def _refused(refused: DrainRefused) -> web.Response:
    """409 for every refusal, as before `temporary` existed (older clients read 409 as "refused")."""
    response = _error(409, refused.reason, overridable=refused.overridable, temporary=refused.temporary)
    if refused.temporary:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class _Handlers:
    """The endpoints. Mutating ones check the bearer token first, then validate the body."""

    def __init__(self, controller: ControllerApi, token: str | None) -> None:
        self.controller = controller
        self.token = token
        self.registry = registry_for(controller)

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.token is None:
            return _error(403, "mutating calls are disabled: set DRAINCTL_API_TOKEN (or [http] token / token_file) "
                               "on the controller")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <DRAINCTL_API_TOKEN>)")
        return None

    async def metrics(self, _: web.Request) -> web.Response:
        body = exposition(self.registry, self.controller)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        ok = self.controller.stats.connected
        return _json({"ok": ok, "broker_connected": ok, "synced": self.controller.is_synced()}, 200 if ok else 503)

    async def status(self, _: web.Request) -> web.Response:
        return _json(build_status(self.controller))

    async def post_drain(self, request: web.Request) -> web.Response:
        body = await _body(request, DrainBody)
        if not isinstance(body, DrainBody):
            return body
        policy = PolicyOverrides(deadline_s=body.deadline_s, on_deadline=body.on_deadline)
        try:
            drain = await self.controller.request_drain(
                body.hostname, force=body.force, policy=policy, requested_by=body.requested_by
            )
        except DrainRefused as refused:
            return _refused(refused)
        return _json({"drain": drain_document(self.controller, drain)}, 202)

    async def post_rollout(self, _: web.Request) -> web.Response:
        try:
            detail = await self.controller.reload("api")
        except DrainctlError as exc:
            return _error(409, str(exc))
        return _json(detail, 202)

    async def post_rollback(self, request: web.Request) -> web.Response:
        body = await _body(request, RollbackBody)
        if not isinstance(body, RollbackBody):
            return body
        try:
            detail = await self.controller.rollback(body.pool, body.version, body.requested_by)
        except DrainctlError as exc:
            return _error(409, str(exc))
        return _json(detail, 202)

    async def post_canary(self, request: web.Request) -> web.Response:
        body = await _body(request, PoolBody)
        if not isinstance(body, PoolBody):
            return body
        decision: Literal["promote", "abort"] = "promote" if request.path.endswith("promote") else "abort"
        try:
            detail = await self.controller.canary_decision(body.pool, decision, body.requested_by)
        except DrainctlError as exc:
            return _error(409, str(exc))
        return _json(detail, 202)

    async def post_engine(self, request: web.Request) -> web.Response:
        body = await _body(request, EngineBody)
        if not isinstance(body, EngineBody):
            return body
        try:
            detail = await self.controller.engine_request(body.engine, body.action, body.requested_by)
        except DrainctlError as exc:
            return _error(409, str(exc))
        return _json(detail, 202)

    async def get_drain(self, request: web.Request) -> web.Response:
        hostname = request.match_info["hostname"]
        try:
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT_S)
        except ValueError:
            return _error(400, "wait must be a number of seconds")
        drain = self.controller.drains.get(hostname)
        if drain is None:
            return _error(404, f"no drain of {hostname!r} is known")
        if wait > 0 and drain.active:
            with contextlib.suppress(TimeoutError):
                await self.controller.wait_for(lambda: not drain.active, wait)
        return _json({"drain": drain_document(self.controller, drain)})

    def guarded(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.Response:
            denied = self._denied(request)
            return denied if denied is not None else await handler(request)
        return checked


async def _body(request: web.Request, model: type[B]) -> B | web.Response:
    """The request body as `model`, or a 400 that lists each problem with its field."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
        return _error(400, "invalid request body", problems=problems)


def build_app(controller: ControllerApi, token: str | None) -> web.Application:
    h = _Handlers(controller, token)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/status", h.status)
    app.router.add_get("/drains/{hostname}", h.get_drain)
    app.router.add_post("/drain", h.guarded(h.post_drain))
    app.router.add_post("/rollout", h.guarded(h.post_rollout))
    app.router.add_post("/rollback", h.guarded(h.post_rollback))
    app.router.add_post("/rollout/promote", h.guarded(h.post_canary))
    app.router.add_post("/rollout/abort", h.guarded(h.post_canary))
    app.router.add_post("/engine", h.guarded(h.post_engine))
    return app


async def start(controller: ControllerApi, host: str, port: int, token: str | None = None) -> web.AppRunner:
    runner = web.AppRunner(build_app(controller, token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
