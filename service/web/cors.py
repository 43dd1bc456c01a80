"""Cross-origin requests from browsers (the Fetch standard's CORS protocol).

Hand-written rather than aiohttp-cors: that library answers preflights from a route of
its own, which a deny-by-default auth middleware reaches first and refuses with a 401
(aio-libs/aiohttp-cors#193, #481). Here the middleware is the outermost one, so a
preflight is answered before authentication, rate limits or the audit trail see it, and
every other answer (errors included) gets its headers on the way out.

Off unless CORS_ALLOWED_ORIGINS is set: the middleware is then not installed at all.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..core.settings import ANY_ORIGIN, Settings
from .config import Handler
from .errors import CACHING, SECURITY_HEADERS
from .metrics import METRICS, route_label
from .request_ids import REQUEST_ID, request_id_of

# Only /api/v1 is offered cross-origin (the API, its document and its page); health,
# readiness and metrics are for operators, not pages.
CROSS_ORIGIN_PREFIX = "/api/v1/"

# What a page may send: `*` never covers Authorization (Fetch standard, "CORS-unsafe
# request-header names"), so it is named; Content-Type for the JSON bodies of POST.
ALLOWED_HEADERS = "Authorization, Content-Type, Accept, X-Request-ID"

# What a page may read besides the safelisted response headers.
EXPOSED_HEADERS = ", ".join(
    (
        "X-Request-ID",
        "X-Expires-At",
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "Link",
        "Location",
        # RFC 6750's reason for a 401 (`error="invalid_token"`, ...). Not `Allow`: only a
        # 405 carries it, and a page never gets one, its preflight already refused.
        "WWW-Authenticate",
    )
)


class CorsPolicy:
    """Which origins may call, and how long a browser may remember a preflight."""

    def __init__(self, settings: Settings) -> None:
        self.origins = settings.cors_origins
        self.max_age = str(settings.cors_max_age)

    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None if refused.
        Never with Allow-Credentials: a bearer key is not a cookie, so `*` is safe."""
        if origin is None:
            return None
        if ANY_ORIGIN in self.origins:
            return "*"
        return origin if origin.lower() in self.origins else None


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def route_methods(request: web.Request) -> str | None:
    """The methods the path's routes take, or None when no route matches the path."""
    matched = request.match_info
    failure = matched.http_exception
    if isinstance(failure, web.HTTPMethodNotAllowed):
        return ", ".join(sorted(failure.allowed_methods))
    if failure is not None:
        return None
    # An OPTIONS route of its own; none exists today.
    return request.method


def cors_middleware(policy: CorsPolicy) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(CROSS_ORIGIN_PREFIX):
            return await handler(request)
        if is_preflight(request):
            methods = route_methods(request)
            if methods is not None:
                return preflight(request, policy, methods)
        response = await handler(request)
        response.headers.add("Vary", "Origin")
        allowed = policy.allowed_origin(request.headers.get("Origin"))
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response

    return cors


def preflight(request: web.Request, policy: CorsPolicy, methods: str) -> web.Response:
    """204 for any origin, with the permissions only for an allowed one: a refused origin
    learns nothing and spends nothing, and its browser blocks the real request."""
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request)
    response = web.Response(status=204, headers={**SECURITY_HEADERS, "Cache-Control": CACHING})
    response.headers["X-Request-ID"] = request_id
    response.headers.add("Vary", "Origin")
    allowed = policy.allowed_origin(request.headers.get("Origin"))
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Allow-Methods"] = methods
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = policy.max_age
    request.app[METRICS].counts.count_request(
        route_label(request), "OPTIONS", 204, time.perf_counter() - started
    )
    return response
