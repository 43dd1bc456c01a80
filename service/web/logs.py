"""JSON log lines on stdout, written in batches, with secrets kept out of every logger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_CONTEXT_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "workspace_id",
    "key_prefix",
)


class _SecondClock:
    """ISO 8601 UTC with milliseconds; the part up to the second is made once a second,
    the whole text once a millisecond (a busy second logs thousands of lines). Each memo
    is one tuple, replaced whole: a thread that logs meanwhile reads an old one or a new
    one, never half of each."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")
        self._text: tuple[int, int, str] = (-1, -1, "")

    def text(self, created: float) -> str:
        second = int(created)
        millis = int((created - second) * 1000)
        memo = self._text
        if memo[1] == millis and memo[0] == second:
            return memo[2]
        whole = self._second
        if whole[0] != second:
            whole = self._second = (
                second,
                datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            )
        text = f"{whole[1]}.{millis:03d}+00:00"
        self._text = (second, millis, text)
        return text


_CLOCK = _SecondClock()


def log_time(created: float | None = None) -> str:
    """A log line's time: `created` (a LogRecord's), or now."""
    return _CLOCK.text(time.time() if created is None else created)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": log_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One line per record on stdout, flushed in batches rather than one write(2) each.

    A flush per line costs a system call per request; lines of WARNING and above are
    flushed at once, the rest by `flush_logs_context` a few times a second and at exit.
    Lines made elsewhere can wait in `DeferredLines` (`deferred`) until this handler
    writes anything, flushes, or DeferredLines.LIMIT of them wait: whatever it writes,
    the lines deferred before come first.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._deferred: list[DeferredLines] = []

    def deferred(self, render: Render) -> DeferredLines:
        """The lines `render` makes, kept here until written (one per `render`)."""
        with self.lock:  # type: ignore[union-attr]
            for lines in self._deferred:
                if lines.render is render:
                    return lines
            lines = DeferredLines(self, render)
            self._deferred.append(lines)
            return lines

    def write_deferred(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # other threads log too
            for lines in self._deferred:
                text = lines.take()
                if text:
                    try:
                        self.stream.write(text)
                    except (OSError, ValueError):
                        pass  # a closed or broken stdout: logging would drop them as well

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._deferred:
                self.write_deferred()
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.write_deferred()
        super().flush()


Render = Callable[[list[Any]], str]


class DeferredLines:
    """INFO lines kept as their fields when they happen and made into text many at a
    time, when their handler writes them.

    Made one at a time in the middle of each request, the access line cost the gateway
    under load several times what the same code costs in a loop: between two requests its
    code and data leave the CPU's caches. Made together, they stay there. Nothing is
    dropped: LIMIT bounds what waits by writing it.
    """

    LIMIT = 256

    def __init__(self, handler: LineHandler, render: Render) -> None:
        self.handler = handler
        self.render = render  # the waiting fields -> their lines, each ending in "\n"
        self._waiting: list[Any] = []

    def add(self, fields: Any) -> None:
        waiting = self._waiting
        waiting.append(fields)
        if len(waiting) >= self.LIMIT:
            self.handler.write_deferred()

    def take(self) -> str:
        """The waiting lines' text, and they wait no more (called under the handler's
        lock). Another thread may `add` meanwhile: only what waited when this began is
        taken, by a copy and a delete of that slice, each atomic under the GIL, so what
        is added meanwhile waits for the next take."""
        waiting = self._waiting
        count = len(waiting)
        if not count:
            return ""
        taken = waiting[:count]
        del waiting[:count]
        return self.render(taken)


FLUSH_INTERVAL = 0.25


async def flush_logs_context(app: web.Application) -> AsyncIterator[None]:
    """Flush buffered log lines periodically while the app runs, and when it stops."""

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            for handler in logging.getLogger().handlers:
                handler.flush()

    task = asyncio.create_task(flush_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str = "INFO") -> None:
    # What a LogRecord would otherwise gather on every call and our lines never show:
    # the caller's file and line (a stack walk), thread and process (the logging HOWTO's
    # "Optimization" section lists these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    install_log_safety()


class ParserErrorRedaction(logging.Filter):
    """Strip the request bytes from aiohttp's parser errors before they are logged.

    When llhttp refuses a request (a NUL in a header, say) aiohttp logs the offending
    line at ERROR with a traceback: that line may be an Authorization header. A body
    that does not decompress is the client's error too: answered 400 by the handler,
    aiohttp still logs it while draining the rest.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
            record.msg = "refused an unparseable HTTP request (%s)"
            record.args = (type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_PARSER_ERROR_REDACTION = ParserErrorRedaction()


def install_log_safety() -> None:
    """Keep secrets out of every log, whatever LOG_LEVEL says (idempotent).

    botocore logs canonical requests, Authorization headers and signatures at DEBUG,
    so its loggers never go below INFO; aiohttp's parser errors lose their bytes.
    """
    for name in ("botocore", "aiobotocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
    logging.getLogger("aiohttp.server").addFilter(_PARSER_ERROR_REDACTION)
