"""The app's download audit trail: the writer's life, and what a request hands it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..core.principal import Principal
from ..data.audit.trail import FINAL_FLUSH_SECONDS, AuditTrail, maintain_forever
from .config import SETTINGS
from .database import BACKGROUND_DATABASE
from .forwarded import CLIENT_ADDRESS
from .shutdown import finish_or_abort, stop_tasks

log = logging.getLogger(__name__)

AUDIT = web.AppKey("audit", AuditTrail)
# When the URL a download handed out expires (microseconds since 1970).
ISSUED_UNTIL = web.RequestKey("issued_until", int)


def record_download(
    request: web.Request,
    principal: Principal,
    outcome: str,
    status: int,
    issued_until: int | None = None,
    *,
    attachment_id: str | None = None,
    method: str | None = None,
) -> None:
    """Queue the download (or its refusal) for the audit trail, if it is on;
    `issued_until` is the expiry of the URL it handed out (ISSUED_UNTIL). The attachment
    and method are the request's unless given (one of a batch of links)."""
    trail = request.app.get(AUDIT)
    if trail is None:
        return
    trail.record(
        principal,
        # The path's id, also when the method is not the route's (no match_info then).
        attachment_id or request.match_info.get("id") or request.path.rsplit("/", 2)[-2],
        method or request.method,
        outcome,
        status,
        request.get(CLIENT_ADDRESS),
        request.headers.get("User-Agent"),
        issued_until,
    )


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.audit_enabled:
        yield
        return
    pool = app[BACKGROUND_DATABASE].pool
    trail = app[AUDIT] = AuditTrail(pool, settings.audit_queue_size, settings.audit_flush_seconds)
    tasks = [
        asyncio.create_task(trail.run()),
        asyncio.create_task(maintain_forever(pool, settings.audit_retention_days)),
    ]
    yield
    await stop_tasks(app, tasks, pool.terminate)
    # Bounded, like every step of shutdown (half of what is left: the key usage and the
    # pools come after); what is not written in time is counted as dropped.
    await finish_or_abort(app, trail.flush(), pool.terminate, FINAL_FLUSH_SECONDS, 0.5)
    if len(trail):
        trail.dropped += len(trail)
        log.warning("audit trail: %d rows not written at shutdown", len(trail))
