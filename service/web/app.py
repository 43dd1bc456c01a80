"""The application factory: middlewares, resources and routes in one place."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..core.settings import Settings
from . import attachments
from .api_docs import OPENAPI_PATH, docs_handlers
from .audit import audit_context
from .auth import DOWNLOAD_LINKS_ROUTE, DOWNLOAD_ROUTE, PUBLIC_PATHS, auth_middleware
from .caches import CACHES, create_caches, invalidation_context, refresh_context
from .config import SETTINGS, Handler
from .cors import CorsPolicy, cors_middleware
from .database import attachment_lookups_context, database_context
from .downloads import download
from .errors import error_middleware
from .health import DATABASE_CHECK, DatabaseCheck, healthz, openapi_handler, readyz
from .limits import RATE_LIMITS, RateLimits, shared_limits_context
from .links import download_links
from .logs import flush_logs_context, install_log_safety
from .metrics import (
    METRICS,
    collector_pauses_context,
    create_metrics,
    metrics_handler,
    metrics_site_context,
)
from .request_ids import REQUEST_IDS, RequestIds
from .secret_scanning import REPORTS_PATH, receive_report
from .shutdown import SHUTDOWN_CLOCK, ShutdownClock, start_shutdown_clock
from .storage import storage_context
from .usage import key_usage_context


def create_app(settings: Settings) -> web.Application:
    install_log_safety()
    # Order matters: the error middleware is outside authentication so that every
    # failure, authentication's included, is rendered as a problem with the same headers;
    # CORS is outside both, so a preflight never meets them and errors carry its headers.
    middlewares: list[Middleware] = [error_middleware, auth_middleware]
    if settings.cors_origins:
        middlewares.insert(0, cors_middleware(CorsPolicy(settings)))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS] = settings
    app[CACHES] = create_caches(settings)
    app[METRICS] = create_metrics(app)
    app[REQUEST_IDS] = RequestIds()
    app[DATABASE_CHECK] = DatabaseCheck(settings.migrations_dir)
    app[RATE_LIMITS] = RateLimits(
        (settings.rate_limit_per_key, settings.rate_limit_burst_per_key),
        (settings.rate_limit_per_workspace, settings.rate_limit_burst_per_workspace),
        (settings.failed_auth_per_address, settings.failed_auth_burst_per_address),
        (settings.secret_scanning_per_address, settings.secret_scanning_burst_per_address),
    )
    # One context per resource; each is closed only if it finished starting.
    app[SHUTDOWN_CLOCK] = ShutdownClock()
    app.on_shutdown.append(start_shutdown_clock)
    app.cleanup_ctx.append(database_context)
    app.cleanup_ctx.append(attachment_lookups_context)
    app.cleanup_ctx.append(key_usage_context)
    app.cleanup_ctx.append(audit_context)  # closed first: its rows are the record
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(shared_limits_context)
    app.cleanup_ctx.append(invalidation_context)  # turns the caches on once it listens
    app.cleanup_ctx.append(refresh_context)
    app.cleanup_ctx.append(flush_logs_context)
    app.cleanup_ctx.append(collector_pauses_context)

    # add_get also answers HEAD, presigned separately for head_object.
    app.router.add_get("/api/v1/attachments/{id}/download", download, name=DOWNLOAD_ROUTE)
    app.router.add_get("/api/v1/attachments", attachments.list_attachments)
    app.router.add_post("/api/v1/attachments", attachments.create)
    app.router.add_get(
        "/api/v1/attachments/download-links", download_links, name=DOWNLOAD_LINKS_ROUTE
    )
    # Any id but the path above, so that its other methods answer 405 with its own Allow.
    attachment = "/api/v1/attachments/{id:(?!download-links$)[^/]+}"
    app.router.add_get(attachment, attachments.show, name="attachment")
    app.router.add_patch(attachment, attachments.update)
    app.router.add_delete(attachment, attachments.delete)
    app.router.add_post("/api/v1/attachments/{id}/complete", attachments.complete)
    app.router.add_post("/api/v1/attachments/{id}/upload", attachments.renew_upload)
    # Everything else needs an API key; these, and only these, are public.
    public: dict[str, Handler] = {
        "/healthz": healthz,
        "/readyz": readyz,
        OPENAPI_PATH: openapi_handler(),
        **docs_handlers(),
    }
    if settings.metrics_port is None:
        public["/metrics"] = metrics_handler
    else:
        app.cleanup_ctx.append(metrics_site_context)
    for path, handler in public.items():
        app.router.add_get(path, handler)
    public_paths = set(public)
    # GitHub's reports of leaked keys: signed by GitHub instead, and only when its keys are
    # configured; otherwise the path is as unknown as any other.
    if settings.secret_scanning_keys:
        app.router.add_post(REPORTS_PATH, receive_report)
        public_paths.add(REPORTS_PATH)
    app[PUBLIC_PATHS] = frozenset(public_paths)
    return app
