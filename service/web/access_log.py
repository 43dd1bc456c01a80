"""The access log: one JSON line per request that never carries a secret.

aiohttp's default access log format (`%r`) includes the query string; ours logs
the path only (a token pasted into it redacted), and never a header, so tokens and
presigned URLs stay out.

A line goes through `logging` like any other, except where the service's own handler is
the only one that would see it (`configure_logging`, as `serve` sets it up): then its
fields wait in that handler's DeferredLines and become, a few hundred at a time, the same
bytes JsonFormatter would make (tests/test_access_log.py compares them), without a
LogRecord, the handler chain and a json.dumps for each request, which cost more than the
gateway's own work on a download.
"""

from __future__ import annotations

import logging
import re
from json.encoder import encode_basestring_ascii as json_string
from time import perf_counter
from time import time as wall_clock  # (log's `time` is aiohttp's argument)
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..core.tokens import PREFIX
from .auth import PRINCIPAL
from .logs import DeferredLines, LineHandler, log_time
from .request_ids import REQUEST_ID, REQUEST_STARTED

# A token pasted into the path (`/attachments/ixk_.../download`, a client's mistake), up
# to the next slash: whole or cut short, it stays out of the log.
TOKEN_IN_PATH = re.compile(re.escape(PREFIX) + "[^/]*")
REDACTED_TOKEN = PREFIX + "[redacted]"


def loggable_path(path: str) -> str:
    return TOKEN_IN_PATH.sub(REDACTED_TOKEN, path) if PREFIX in path else path


class AccessLogger(AbstractAccessLogger):
    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # aiohttp makes one per connection; the check is a few attribute reads.
        handler = sole_line_handler(logger)
        self._deferred: DeferredLines | None = handler.deferred(access_lines) if handler else None

    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection: below INFO, no line is even built.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL)
        started = request.get(REQUEST_STARTED)
        # (aiohttp's `time`, in whole milliseconds, only for what never reached the
        # middlewares: a request the parser refused.)
        duration = perf_counter() - started if started is not None else time
        deferred = self._deferred
        if deferred is not None:
            deferred.add(
                (
                    self.logger.name,
                    wall_clock(),
                    request.get(REQUEST_ID),
                    request.method,
                    request.path,
                    response.status,
                    duration,
                    principal,
                )
            )
            return
        self.logger.info(
            "request",
            extra={
                "request_id": request.get(REQUEST_ID),
                "method": request.method,
                "path": loggable_path(request.path),
                "status": response.status,
                "duration_ms": round(duration * 1000, 3),
                "workspace_id": principal.workspace_text if principal else None,
                "key_prefix": principal.key_prefix if principal else None,
            },
        )


def access_lines(waiting: list[tuple[Any, ...]]) -> str:
    """The lines of AccessLogger.log's deferred fields, each ending in a newline."""
    lines = []
    for name, created, request_id, method, path, status, duration, principal in waiting:
        lines.append(
            access_line(
                name,
                log_time(created),
                request_id,
                method,
                loggable_path(path),
                status,
                round(duration * 1000, 3),
                principal.workspace_text if principal else None,
                principal.key_prefix if principal else None,
            )
        )
    lines.append("")
    return "\n".join(lines)


def sole_line_handler(logger: logging.Logger) -> LineHandler | None:
    """The service's LineHandler when it alone would handle `logger`'s INFO records, with
    no filter that could change them; else None (tests, or logging set up otherwise)."""
    if logger.handlers or logger.filters or not logger.propagate:
        return None
    root = logging.getLogger()
    if logger.parent is not root or root.filters or len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    if type(handler) is not LineHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler


def access_line(
    logger_name: str,
    time_text: str,
    request_id: str | None,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    workspace_id: str | None,
    key_prefix: str | None,
) -> str:
    """What JsonFormatter makes of the same access record: the same members, order,
    separators and escaping (json.dumps's, ASCII only).

    Only the path is escaped here, the one member a client chooses freely. The others
    hold nothing JSON would escape, by where they come from: the method is an HTTP token
    (aiohttp's parser takes nothing else), the request id ours or a client's that matched
    SANE_REQUEST_ID, the workspace id a UUID, the key prefix the base62 start of one of
    our tokens; the logger's name is escaped once. (tests/test_access_log.py holds the
    equality over those domains.)"""
    line = (
        f'{{"time": "{time_text}", "level": "info", "logger": {_json_name(logger_name)}, '
        '"message": "request"'
    )
    if request_id is not None:
        line += f', "request_id": "{request_id}"'
    line += (
        f', "method": "{method}", "path": {json_string(path)}, '
        f'"status": {status:d}, "duration_ms": {duration_ms!r}'
    )
    if workspace_id is not None:
        line += f', "workspace_id": "{workspace_id}"'
    if key_prefix is not None:
        line += f', "key_prefix": "{key_prefix}"'
    return line + "}"


_JSON_NAMES: dict[str, str] = {}


def _json_name(name: str) -> str:
    json_name = _JSON_NAMES.get(name)
    if json_name is None:
        json_name = _JSON_NAMES[name] = json_string(name)
    return json_name
