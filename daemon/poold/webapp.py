"""HTTP endpoints (aiohttp, in the daemon's own event loop): health and metrics.

/health/live      200 while the event loop answers
/health/ready     200 when listening, not draining, and some pool can serve
/health           JSON: overall status, clients, every pool; 200, or 503 when down
/health/database  JSON: every pool's state; 200, or 503 when a pool is down
/metrics          Prometheus text format
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import metrics
from .config import HttpSettings
from .listener import ListenFailed, listening_as
from .reload import Reloader
from .runtime import Runtime

if TYPE_CHECKING:
    from .pools import Pool

RUNTIME = web.AppKey("runtime", Runtime)
RELOADER = web.AppKey("reloader", Reloader)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def pool_health(pool: Pool) -> dict[str, Any]:
    """A pool's snapshot and state: ``refused`` when the server refuses it for good
    (an unknown database or role: a client's or a configuration's mistake, not an
    outage, so it does not make the daemon down), ``down``, ``degraded`` or ``ok``."""
    snap = pool.snapshot()
    if snap["refused"] and snap["total"] == 0:
        state = "refused"
    elif snap["breaker"] != "closed" or (snap["last_error"] and snap["total"] == 0):
        state = "down"
    elif snap["waiting"] or snap["pressure"] >= pool.settings.pressure_threshold:
        state = "degraded"
    else:
        state = "ok"
    return snap | {"state": state}


def overall(pools: list[dict[str, Any]], rt: Runtime) -> str:
    if rt.draining:
        return "draining"
    if any(p["state"] == "down" for p in pools):
        return "down"
    if any(p["state"] == "degraded" for p in pools):
        return "degraded"
    return "ok"


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    pools = [pool_health(p) for p in rt.pools.pools.values()]
    reasons = []
    if not rt.listening:
        reasons.append("not listening")
    if rt.draining:
        reasons.append("draining")
    if pools and all(p["state"] == "down" for p in pools):
        reasons.append("every pool is down")
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})


async def health(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    pools = [pool_health(p) for p in rt.pools.pools.values()]
    status = overall(pools, rt)
    body = {
        "status": status,
        "generation": request.app[RELOADER].generation,
        "clients": len(rt.clients),
        "pools": pools,
    }
    return web.json_response(body, status=503 if status in ("down", "draining") else 200)


async def database(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    pools = [pool_health(p) for p in rt.pools.pools.values()]
    down = any(p["state"] == "down" for p in pools)
    return web.json_response({"status": "down" if down else "ok", "pools": pools}, status=503 if down else 200)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = metrics.render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def make_app(rt: Runtime, reloader: Reloader) -> web.Application:
    app = web.Application()
    app[RUNTIME] = rt
    app[RELOADER] = reloader
    app[REGISTRY] = metrics.make_registry(rt, reloader)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health", health)
    app.router.add_get("/health/database", database)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def start_http(settings: HttpSettings, rt: Runtime, reloader: Reloader) -> web.AppRunner | None:
    if not settings.host:
        return None
    runner = web.AppRunner(make_app(rt, reloader), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        with listening_as("http", f"{settings.host}:{settings.port}"):
            await web.TCPSite(runner, settings.host, settings.port).start()
    except ListenFailed:
        await runner.cleanup()
        raise
    return runner
