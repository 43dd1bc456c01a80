"""A small TCP proxy for fault tests: forwards bytes, optionally late, or not at all."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit


class LatencyProxy:
    """Forwards 127.0.0.1:<port> to a TCP or Unix-socket target, holding each chunk
    `delay` seconds. `blackholed` (settable at any time) swallows every byte in both
    directions and leaves new connections unanswered: a peer that is there but silent,
    as behind a dead route or a frozen server."""

    def __init__(self, host_or_socket: str, port: int, delay: float = 0.0) -> None:
        self.host_or_socket = host_or_socket
        self.target_port = port
        self.delay = delay
        self.blackholed = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.blackholed:
            return  # accepted by the kernel, never answered
        if self.host_or_socket.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(self.host_or_socket)
        else:
            up_reader, up_writer = await asyncio.open_connection(
                self.host_or_socket, self.target_port
            )
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while chunk := await source.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.blackholed:
                    continue
                sink.write(chunk)
                await sink.drain()
        sink.close()


def postgres_proxy(dsn: str, delay: float = 0.0) -> tuple[LatencyProxy, str]:
    """A proxy in front of the server `dsn` names, and a DSN that goes through it."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    port = parts.port or 5432
    if socket_dir:
        proxy = LatencyProxy(f"{socket_dir}/.s.PGSQL.{port}", 0, delay)
    else:
        proxy = LatencyProxy(parts.hostname or "127.0.0.1", port, delay)
    user = parts.username or "postgres"
    return proxy, f"postgresql://{user}@127.0.0.1:{{port}}{parts.path}"
