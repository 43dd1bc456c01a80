"""The listening site accepts a whole burst of connections at once, on uvloop too
(whose own servers accept one connection per loop iteration: libuv/libuv#3696)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from aiohttp import web

from service.server.listener import BatchAcceptSite


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop])
def test_every_waiting_connection_is_accepted_in_one_pass(loop_factory):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(accept_a_burst())


async def accept_a_burst():
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = BatchAcceptSite(runner, "127.0.0.1", 0, backlog=512)
    await site.start()
    port = int(site.name.rsplit(":", 1)[1])
    # The kernel completes these handshakes while the loop is not running; they wait in
    # the accept queue, as a reconnecting client pool's would behind a busy loop.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        for _ in range(5):  # the accept pass, then the transports' set-up tasks
            await asyncio.sleep(0)
        assert len(runner.server.connections) == 300
        await site.stop()
        with socket.socket() as late:
            assert late.connect_ex(("127.0.0.1", port)) != 0  # no longer listening
    finally:
        for client in clients:
            client.close()
        await runner.cleanup()
