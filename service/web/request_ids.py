"""Request ids: the client's own when it is plain, else one of ours; echoed and logged."""

from __future__ import annotations

import itertools
import re
import secrets

from aiohttp import web

from ..core.tokens import PREFIX

# An incoming X-Request-ID is kept only if it is short and plain; anything else
# could forge log lines or carry a secret, so it is replaced, never echoed.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Unique ids without a syscall per request: a random per-process prefix (as many
    bits as a UUID's randomness) and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(12)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"


REQUEST_IDS = web.AppKey("request_ids", RequestIds)
REQUEST_ID = web.RequestKey("request_id", str)
# When the request reached the middlewares (time.perf_counter()): the access log's
# duration. aiohttp's own is the event loop's clock, which uvloop keeps in whole
# milliseconds, and a download takes a fraction of one.
REQUEST_STARTED = web.RequestKey("request_started", float)


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-ID")
    # Never one that holds an API token: the id is echoed in bodies and every log line.
    if incoming is not None and SANE_REQUEST_ID.fullmatch(incoming) and PREFIX not in incoming:
        return incoming
    return request.app[REQUEST_IDS].next()
