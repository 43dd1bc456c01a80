"""What a warm download costs the gateway itself, timed in-process: `python -m bench.warm_path`.

The gateway as shipped (`bench.run`'s `shipped` settings: access log, audit trail and
abuse limits on) is started by aiohttp's own runner against an embedded Postgres, its
caches filled, and then handed real `web.Request`s for downloads it has seen before:
routing, both middlewares, the handler, and the access log's line, as the server runs
them for each request, but no socket, no HTTP parsing and no writing. What is left is
the gateway's own work and aiohttp's middleware chain, without the kernel's noise that
keeps a run under wrk from resolving a few microseconds. `--server gateway` times the
stripped build instead.

Prints the request path's time a download (best of several runs), and the process's CPU
a download spent meanwhile besides it (the audit trail's writer, the caches' refresher).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from types import SimpleNamespace
from typing import Any, TextIO

from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from service.core.settings import DEFAULT_MIGRATIONS_DIR, Settings
from service.data.migrations import apply_migrations
from service.server.processes import new_event_loop
from service.web.access_log import AccessLogger
from service.web.app import create_app
from service.web.caches import CACHES
from service.web.logs import configure_logging

from .run import HERE, ID_FORMAT, Workload, build_env, database, load_data

WORKLOAD = Workload("warm path", 1_000, 10)
ROUNDS = 20_000
BATCH = 64  # requests handled between two turns of the loop, as at 64 connections


class Peer:
    """The connection as a request sees it: an address, no TLS."""

    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8080)
    ssl_context = None
    transport = None


def download_message(attachment: int, token: str) -> RawRequestMessage:
    path = f"/api/v1/attachments/{ID_FORMAT.format(attachment)}/download"
    headers = CIMultiDict(
        {"Host": "127.0.0.1:8080", "Authorization": f"Bearer {token}", "User-Agent": "bench"}
    )
    raw = tuple((k.encode(), v.encode()) for k, v in headers.items())
    return RawRequestMessage(
        "GET",
        path,
        HttpVersion11,
        CIMultiDictProxy(headers),
        raw,
        False,
        None,
        False,
        False,
        URL(path),
    )


async def time_downloads(
    app: web.Application, messages: list[RawRequestMessage]
) -> tuple[float, float]:
    """Seconds on the request path and of the process's CPU, for ROUNDS downloads."""
    access_logger = AccessLogger(logging.getLogger("aiohttp.access"), "")
    peer: Any = Peer()
    task: Any = asyncio.current_task()
    writer: Any = SimpleNamespace()
    handling = 0.0
    cpu_started = time.process_time()
    for start in range(0, ROUNDS, BATCH):
        requests = [
            app._make_request(
                messages[(start + i) % len(messages)], EMPTY_PAYLOAD, peer, writer, task
            )
            for i in range(BATCH)
        ]
        began = time.perf_counter()
        for request in requests:
            response = await app._handle(request)
            if response.status != 307:
                raise RuntimeError(f"a warm download answered {response.status}")
            access_logger.log(request, response, 0.001)
        handling += time.perf_counter() - began
        await asyncio.sleep(0)  # the loop's other tasks: the audit writer, the refresher
    return handling, time.process_time() - cpu_started


async def measure(server: str, database_url: str, repeat: int, log_stream: TextIO) -> None:
    tokens = await load_data(database_url, WORKLOAD)
    env = build_env(server, database_url)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    settings = Settings.from_env(env)
    with contextlib.redirect_stdout(log_stream):  # the lines are made, not kept
        configure_logging(settings.log_level)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        for _ in range(100):  # until the invalidation listener switches the caches on
            if app[CACHES].live:
                break
            await asyncio.sleep(0.05)
        messages = [
            download_message(n, tokens[n // WORKLOAD.per_workspace])
            for n in range(WORKLOAD.attachments)
        ]
        await time_downloads(app, messages)  # fills the caches
        runs = [await time_downloads(app, messages) for _ in range(repeat)]
    finally:
        await runner.cleanup()
    best = min(handling for handling, _ in runs)
    besides = sorted(cpu - handling for handling, cpu in runs)[len(runs) // 2]
    print(
        f"{server}, warm download: request path {best / ROUNDS * 1e6:.2f} µs "
        f"(best of {repeat} runs of {ROUNDS:,}); the process's other CPU meanwhile "
        f"{besides / ROUNDS * 1e6:.2f} µs a download (median; request objects included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["shipped", "gateway"], default="shipped")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", help="a Postgres to use instead of an embedded one")
    args = parser.parse_args()
    workdir = HERE / ".work"
    workdir.mkdir(exist_ok=True)

    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})  # as bench.run pins servers; Postgres goes to CPU 1

    async def run() -> None:
        database_url, stop = await database(args, workdir)
        try:
            await apply_migrations(database_url, DEFAULT_MIGRATIONS_DIR)
            await measure(args.server, database_url, args.repeat, log_stream)
        finally:
            stop()

    with (
        open(os.devnull, "w") as log_stream,
        asyncio.Runner(loop_factory=new_event_loop) as runner,
    ):
        runner.run(run())


if __name__ == "__main__":
    main()
