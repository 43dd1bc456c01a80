"""Health routes for orchestrators: liveness, readiness, and the API document."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from ..core.errors import DatabaseUnavailable
from .caches import LISTENER_STATUS
from .config import Handler
from .database import DATABASE
from .problems import retry_after
from .storage import STORAGE

OPENAPI_DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.json"


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop turns."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and storage is configured (reachable or not); else
    503 with the reasons."""
    checks = {"database": "ok", "storage": "ok"}
    try:
        await request.app[DATABASE].fetchrow("SELECT 1")
    except DatabaseUnavailable:
        checks["database"] = "unreachable"
    listener = request.app.get(LISTENER_STATUS)
    if listener is not None and listener.undelivered:
        # The caches are off, so answers stay right, only slower: still ready.
        checks["invalidation"] = "notifications not delivered: caches off"
    storage = request.app[STORAGE]
    if storage.unavailable_reason:
        checks["storage"] = storage.unavailable_reason
    elif not storage.reachable:
        checks["storage"] = "unreachable"
    # Unreachable storage alone is still ready: every instance shares that outage and
    # answers downloads 503 itself, and taking them all out of the load balancer would
    # only swap that answer for a connection error. Without its database it is not.
    if checks["database"] == "ok" and checks["storage"] in ("ok", "unreachable"):
        return web.json_response({"status": "ready", "checks": checks})
    return web.json_response(
        {"status": "not_ready", "checks": checks},
        status=503,
        headers={"Retry-After": str(retry_after())},
    )


def openapi_handler() -> Handler:
    """Serve the document read once at start-up."""
    body = json.dumps(json.loads(OPENAPI_DOCUMENT.read_text())).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi
