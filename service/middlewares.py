"""The outermost middleware: request ids, problem rendering, headers on every answer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time

from aiohttp import web

from .auth import Handler
from .keys import METRICS, REQUEST_ID, REQUEST_IDS
from .metrics import route_label
from .problems import Problem, problem_for_http_exception, render, wants_problem_details
from .tokens import PREFIX

log = logging.getLogger(__name__)

# An incoming X-Request-ID is kept only if it is short and plain; anything else
# could forge log lines or carry a secret, so it is replaced, never echoed.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Sent on every response: nothing here may be cached (404s are heuristically
# cacheable, and a redirect holds a credential), leak the URL through Referer,
# or be content-sniffed.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class RequestIds:
    """Unique ids without a syscall per request: a random per-process prefix (as many
    bits as a UUID's randomness) and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(12)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-ID")
    # Never one that holds an API token: the id is echoed in bodies and every log line.
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming) and PREFIX not in incoming:
        return incoming
    return request.app[REQUEST_IDS].next()


AUTH_PROBLEMS = frozenset({"unauthorized", "forbidden", "insufficient_scope"})


def render_for(request: web.Request, problem: Problem) -> web.Response:
    details = wants_problem_details(request.headers.get("Accept"))
    return render(problem, request[REQUEST_ID], details)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request)
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except Problem as problem:
        if problem.code in AUTH_PROBLEMS:
            metrics.auth_failures.labels(problem.reason).inc()
        response = render_for(request, problem)
    except web.HTTPException as exc:
        response = exc if exc.status < 400 else render_for(request, problem_for_http_exception(exc))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = render_for(request, Problem("internal_error"))
    response.headers.update(SECURITY_HEADERS)
    response.headers["X-Request-ID"] = request_id
    metrics.counts.count_request(
        route_label(request), request.method, response.status, time.perf_counter() - started
    )
    return response
