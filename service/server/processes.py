"""Running the HTTP server: one process, or N workers sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any

from aiohttp import web

from ..core.settings import Settings
from ..data.pool import UNAVAILABLE_ERRORS
from ..web.access_log import AccessLogger
from ..web.app import create_app
from ..web.logs import configure_logging
from .listener import BatchAcceptSite

log = logging.getLogger(__name__)

# aiohttp defaults to 128: a burst of new connections would wait for SYN retries.
LISTEN_BACKLOG = 4096

# Net allocations of tracked objects between two collections of the youngest generation
# (CPython's default is 700). Under many connections one turn of the loop parses more
# requests than that, so nearly every turn ran a collection whose survivors, the requests
# still in flight, were promoted and walked again by the older generations' collections,
# the full ones over every open connection's objects (docs/performance.md, "A collector
# for thousands of connections"). Requests leave no cyclic garbage (tests/test_heap.py),
# so the higher bound only lets the rare cycle live a little longer.
YOUNG_GENERATION_THRESHOLD = 100_000


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (it is a dependency on Linux), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish
    (up to SHUTDOWN_GRACE_SECONDS) and close the pool and the S3 client.

    `on_listening` runs once the socket accepts connections."""
    configure_logging(settings.log_level)
    log.info("serving on http://%s:%d", host, port)
    try:
        run_app(
            create_app(settings),
            host,
            port,
            shutdown_timeout=settings.shutdown_grace_seconds,
            reuse_port=reuse_port,
            on_listening=on_listening,
        )
    except CannotListen as exc:
        log.critical("cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass  # Ctrl-C before the server's own handlers were in place: nothing in flight
    log.info("stopped")


class CannotListen(OSError):
    """The server's socket could not be bound (the port taken, the address not ours)."""


def run_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
    access_log: bool = True,
) -> None:
    """aiohttp's `web.run_app`, on uvloop, with a BatchAcceptSite (see listener.py) and a
    frozen heap. The benchmark's ceiling and naive servers run on it too."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(quiet_abandoned_database_tasks)
    runner = web.AppRunner(
        app,
        handle_signals=True,
        shutdown_timeout=shutdown_timeout,
        **({"access_log_class": AccessLogger} if access_log else {"access_log": None}),
    )
    main = loop.create_task(_serve_until_signal(runner, host, port, reuse_port, on_listening))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass  # the runner's signal handlers raise GracefulExit out of the loop
    finally:
        if not main.done():
            _ignore_further_signals(loop)
            main.cancel()  # its `finally` drains: runner.cleanup()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        _cancel_leftover_tasks(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve_until_signal(
    runner: web.AppRunner,
    host: str,
    port: int,
    reuse_port: bool,
    on_listening: Callable[[], None] | None,
) -> None:
    await runner.setup()
    settle_heap()
    try:
        site = BatchAcceptSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(exc.errno, exc.strerror) from None
        if on_listening is not None:
            on_listening()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _ignore_further_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Shutting down already: another SIGINT or SIGTERM would raise GracefulExit again,
    inside the drain, and the audit trail's last rows would be lost uncounted. One often
    comes: Ctrl-C on `--workers N` reaches each worker from the terminal and from the
    parent, as systemd's default KillMode signals the whole group. SIGKILL still ends it;
    `runner.cleanup()` restores the default handlers when it is done."""

    def already_stopping() -> None:
        log.info("shutting down already: the drain goes on (SIGKILL ends it at once)")

    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):  # (no signals off the main thread)
            loop.add_signal_handler(signum, already_stopping)


def settle_heap() -> None:
    """Tune the garbage collector for serving, once the app is built."""
    # Everything built so far (botocore's service models, the app, its empty caches)
    # lives as long as the process: moved out of the collector's view, a full
    # collection no longer walks ~100,000 objects and the caches' tables each time.
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *older)


def quiet_abandoned_database_tasks(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any]
) -> None:
    """asyncpg returns a connection to its pool in a shielded task; when the request that
    waited for it is cancelled (at shutdown, with the database silent), that task's
    timeout is "never retrieved" and asyncio would log it at ERROR. It is the database's
    outage, already reported as such: a warning, not an error of ours."""
    exc = context.get("exception")
    if str(context.get("message", "")).startswith("Task exception was never retrieved") and (
        isinstance(exc, UNAVAILABLE_ERRORS)
    ):
        log.warning("a database task nobody waited for ended: %s", type(exc).__name__)
        return
    loop.default_exception_handler(context)


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """N worker processes bound to one port; the kernel spreads connections among them.

    The parent only supervises: SIGTERM/SIGINT are passed on to every worker, and it
    exits once they all have, with the worst of their exit statuses (128 + N for a signal
    N). A worker that ends on its own (an OOM kill, a crash) is logged and replaced,
    unless workers keep ending: more than RESTARTS_ALLOWED within RESTART_WINDOW_SECONDS
    stop them all, and the parent exits non-zero.
    """
    configure_logging(settings.log_level)
    context = multiprocessing.get_context("spawn")
    running: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in running:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    def start_worker() -> None:
        if stopping:
            return
        process = context.Process(
            target=serve, args=(settings, host, port), kwargs={"reuse_port": True}
        )
        running.append(process)
        process.start()
        if stopping and process.pid:  # the signal came while it started: it missed it
            os.kill(process.pid, signal.SIGTERM)

    # Before any worker starts: a signal meanwhile would end the parent alone.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        start_worker()
    recent_exits: deque[float] = deque()
    worst = 0
    while running:
        multiprocessing.connection.wait([process.sentinel for process in running])
        for process in [p for p in running if p.exitcode is not None]:
            running.remove(process)
            status = exit_status(process.exitcode)
            if stopping:
                # Ended by the signal itself: a worker still starting, which had installed no
                # handler yet, and so had nothing in flight either.
                if process.exitcode not in (-signal.SIGTERM, -signal.SIGINT):
                    worst = max(worst, status)
                continue
            log.error("worker %d ended with exit status %d", process.pid, status)
            now = time.monotonic()
            recent_exits.append(now)
            while recent_exits[0] < now - RESTART_WINDOW_SECONDS:
                recent_exits.popleft()
            if len(recent_exits) > RESTARTS_ALLOWED:
                log.critical("workers keep ending: stopping the others")
                worst = max(worst, status, 1)
                forward(signal.SIGTERM, None)
                continue
            start_worker()
    return worst


# Workers replaced within the window before the parent gives up (a port taken, a setting
# every worker trips on: replacing them would only spin).
RESTARTS_ALLOWED = 5
RESTART_WINDOW_SECONDS = 60.0


def exit_status(exitcode: int | None) -> int:
    """A process's exit status as a shell reports it: 128 + N when signal N ended it."""
    if exitcode is None:
        return 0
    return 128 - exitcode if exitcode < 0 else exitcode
