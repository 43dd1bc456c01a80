"""One deadline for the whole of shutdown.

SIGTERM gives the process SHUTDOWN_GRACE_SECONDS: in-flight requests finish within it
(aiohttp's drain), and so must everything after them — the last key-usage and audit
writes, closing the pools. Each of those steps gets what is left of the one budget
(capped by its own limit), not a fresh grace period of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from .config import SETTINGS

MINIMUM_STEP_SECONDS = 0.2


class ShutdownClock:
    """Set in on_shutdown; a holder made with the app, which is frozen by then."""

    deadline: float | None = None


SHUTDOWN_CLOCK = web.AppKey("shutdown_clock", ShutdownClock)


async def start_shutdown_clock(app: web.Application) -> None:
    """on_shutdown: aiohttp calls it before draining in-flight requests."""
    app[SHUTDOWN_CLOCK].deadline = time.monotonic() + app[SETTINGS].shutdown_grace_seconds


def seconds_left(app: web.Application, cap: float, share: float = 1.0) -> float:
    """What a step may take: `share` of what is left of the budget, at most `cap`."""
    deadline = app[SHUTDOWN_CLOCK].deadline
    if deadline is None:  # cleanup without a shutdown (start-up failed): just the cap
        return cap
    return max(MINIMUM_STEP_SECONDS, min(cap, (deadline - time.monotonic()) * share))


async def finish_or_abort(
    app: web.Application,
    work: Coroutine[Any, Any, Any],
    abort: Callable[[], None],
    cap: float,
    share: float = 1.0,
) -> bool:
    """Let `work` finish within its part of the budget; else `abort()` (e.g. terminate
    the pool it waits on, so that it fails at once) and wait only for that. Cancelling
    instead could wait on a slow database again, for the polite end of a connection."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds_left(app, cap, share))
    if task in done:
        return True
    abort()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(task, MINIMUM_STEP_SECONDS * 5)
    return False


async def stop_tasks(
    app: web.Application, tasks: list[asyncio.Task[None]], abort: Callable[[], None]
) -> None:
    """Cancel background tasks; one stuck in a query on a silent database (a ROLLBACK
    that never comes back) is freed by `abort()` rather than waited for."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=seconds_left(app, 1.0, 0.25))
    if pending:
        abort()
        await asyncio.wait(pending, timeout=MINIMUM_STEP_SECONDS * 5)
