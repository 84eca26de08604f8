"""The controller's HTTP API: /metrics, /healthz, /status. Served with aiohttp (already required by aiodocker)."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from drainctl.app import Controller, build_status
from drainctl.metrics import registry_for


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status,
                        content_type="application/json")


def build_app(controller: Controller) -> web.Application:
    registry = registry_for(controller)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = controller.stats.connected
        return _json({"ok": ok, "broker_connected": controller.stats.connected,
                      "synced": controller.synced.is_set()}, 200 if ok else 503)

    async def status(_: web.Request) -> web.Response:
        return _json(build_status(controller))

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    return app


async def start(controller: Controller, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(controller), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
