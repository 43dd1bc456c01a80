"""Every typed key the app and its requests carry, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .audit import AuditTrail
    from .auth import Principal
    from .caches import HotPathCaches
    from .db import Database
    from .lookups import AttachmentLookups
    from .metrics import Metrics
    from .middlewares import RequestIds
    from .ratelimit import RateLimits
    from .settings import Settings
    from .shutdown import ShutdownClock
    from .storage import AttachmentTarget, Storage
    from .usage import KeyUsage

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DATABASE: web.AppKey[Database] = web.AppKey("database")
BACKGROUND_DATABASE: web.AppKey[Database] = web.AppKey("background_database")
SHUTDOWN_CLOCK: web.AppKey[ShutdownClock] = web.AppKey("shutdown_clock")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
CACHES: web.AppKey[HotPathCaches] = web.AppKey("caches")
ATTACHMENT_LOOKUPS: web.AppKey[AttachmentLookups] = web.AppKey("attachment_lookups")
RATE_LIMITS: web.AppKey[RateLimits] = web.AppKey("rate_limits")
KEY_USAGE: web.AppKey[KeyUsage] = web.AppKey("key_usage")
AUDIT: web.AppKey[AuditTrail] = web.AppKey("audit")
# Paths answered without an API key; every other path needs one (deny by default).
PUBLIC_PATHS = web.AppKey[frozenset[str]]("public_paths")
REQUEST_IDS: web.AppKey[RequestIds] = web.AppKey("request_ids")

REQUEST_ID = web.RequestKey[str]("request_id")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
# The download's attachment, when authentication already fetched it in the same query.
PREFETCHED: web.RequestKey[AttachmentTarget | None] = web.RequestKey("prefetched")
# When the URL a download handed out expires (microseconds since 1970): for the audit trail.
ISSUED_UNTIL: web.RequestKey[int] = web.RequestKey("issued_until")
