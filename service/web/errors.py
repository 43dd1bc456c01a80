"""The error middleware: request ids, problems rendered, headers on every answer.

The one place where failures become HTTP: a `Problem` is rendered as it is, a domain
error (core/errors.py) as the problem it stands for, aiohttp's own HTTP errors as theirs,
and anything else as a logged 500 with no detail.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..core.errors import GatewayError
from .config import Handler
from .metrics import METRICS, Metrics, route_label
from .problems import (
    Problem,
    problem_for_error,
    problem_for_http_exception,
    render,
    wants_problem_details,
)
from .request_ids import REQUEST_ID, REQUEST_STARTED, request_id_of

log = logging.getLogger(__name__)

# Sent on every response: nothing here may leak the URL through Referer or be
# content-sniffed, or be cached (404s are heuristically cacheable, and a redirect holds
# a credential) unless its handler says otherwise, as the API page's assets do.
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
CACHING = "no-store"


AUTH_PROBLEMS = frozenset({"unauthorized", "forbidden", "insufficient_scope"})


def render_for(request: web.Request, problem: Problem) -> web.Response:
    details = wants_problem_details(request.headers.get("Accept"))
    return render(problem, request[REQUEST_ID], details)


def render_failure(
    request: web.Request, failure: Problem | GatewayError, metrics: Metrics
) -> web.Response:
    problem = failure if isinstance(failure, Problem) else problem_for_error(failure)
    if problem.code in AUTH_PROBLEMS:
        metrics.auth_failures.labels(problem.reason).inc()
    return render_for(request, problem)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = request[REQUEST_STARTED] = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request)
    metrics = request.app[METRICS]
    # No local here may hold a caught exception past its `except`: its traceback holds
    # this frame, and the cycle would keep the request alive until the collector ran.
    try:
        response = await handler(request)
    except (Problem, GatewayError) as failure:
        response = render_failure(request, failure, metrics)
    except web.HTTPException as exc:
        # aiohttp keeps a routing error on the request's match info: with its traceback,
        # which holds this frame and so the request, it would be such a cycle.
        exc.__traceback__ = None
        response = exc if exc.status < 400 else render_for(request, problem_for_http_exception(exc))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = render_for(request, Problem("internal_error"))
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    headers.setdefault("Cache-Control", CACHING)
    headers["X-Request-ID"] = request_id
    metrics.counts.count_request(
        route_label(request), request.method, response.status, time.perf_counter() - started
    )
    return response
