"""A TCP site that accepts every waiting connection at once.

uvloop's servers accept through libuv, which since libuv 1.45 accepts **one** connection
per event-loop iteration (libuv/libuv#3696). When the loop is busy, an iteration lasts
tens of milliseconds, so a burst of new connections (a client pool reconnecting, a load
balancer failing over) would drain at a few dozen per second and their first requests
time out in the accept queue (docs/performance.md has the measurement). asyncio's own
loop accepts up to `backlog` at a time; this site does the same on any loop, with a
non-blocking listening socket watched by `add_reader`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from aiohttp import web

log = logging.getLogger(__name__)

# Out of file descriptors or buffers: accepting again at once would spin the loop.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_DELAY = 1.0  # seconds, as asyncio's own loop waits


class BatchAcceptSite(web.BaseSite):
    __slots__ = ("_host", "_pending", "_port", "_reuse_port", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        backlog: int,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._sock: socket.socket | None = None
        # connect_accepted_socket is a coroutine: its tasks are kept until done.
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        sock = socket.create_server(
            (self._host, self._port),
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )
        sock.setblocking(False)
        self._port = sock.getsockname()[1]  # the real one when asked for port 0
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_waiting)

    def _accept_waiting(self) -> None:
        sock = self._sock
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(self._backlog):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRORS:
                    raise
                log.warning("cannot accept connections: %s; retrying", exc.strerror)
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                return
            conn.setblocking(False)
            task = loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None  # set by runner.setup(), before any site starts
        try:
            await asyncio.get_running_loop().connect_accepted_socket(server, conn)
        except OSError as exc:
            # The peer went away between accept() and the transport's set-up.
            log.debug("accepted connection lost: %s", type(exc).__name__)
            conn.close()

    def _resume_accepting(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept_waiting)

    async def stop(self) -> None:
        """Stop listening; connections already accepted are the runner's to drain."""
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        await super().stop()
