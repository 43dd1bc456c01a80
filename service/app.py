"""The application factory: keys, middlewares, resources and routes in one place."""

from __future__ import annotations

from aiohttp import web

from .auth import auth_middleware
from .db import database_context
from .handlers import download
from .keys import PUBLIC_PATHS, SETTINGS
from .logs import redact_parser_errors
from .middlewares import error_middleware
from .settings import Settings
from .storage import storage_context


def create_app(settings: Settings) -> web.Application:
    # Order matters: the error middleware is outermost so that every failure,
    # authentication's included, is rendered as a problem with the same headers.
    redact_parser_errors()
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[PUBLIC_PATHS] = frozenset()
    # One context per resource; each is closed only if it finished starting.
    app.cleanup_ctx.append(database_context)
    app.cleanup_ctx.append(storage_context)
    # add_get also answers HEAD, presigned separately for head_object.
    app.router.add_get("/api/v1/attachments/{id}/download", download, name="download")
    return app
