"""Running the HTTP server: one process, or N workers sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from types import FrameType

from aiohttp import web

from .app import create_app
from .logs import AccessLogger, configure_logging
from .settings import Settings

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096


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
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        access_log_class=AccessLogger,
        shutdown_timeout=settings.shutdown_grace_seconds,
        # aiohttp defaults to 128: a burst of new connections would wait for SYN retries.
        backlog=LISTEN_BACKLOG,
        # run_app calls `print` once its sites listen: the moment to announce readiness.
        print=(lambda _message: on_listening()) if on_listening else None,
        loop=new_event_loop(),
    )
    log.info("stopped")


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """N worker processes bound to one port; the kernel spreads connections among them.

    The parent only supervises: SIGTERM/SIGINT are passed on to every worker, and it
    exits once they all have, with the worst exit code.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=serve, args=(settings, host, port), kwargs={"reuse_port": True})
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    return max((process.exitcode or 0) for process in processes)
