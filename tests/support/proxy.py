"""A small TCP proxy for fault tests: forwards bytes, optionally late, or not at all."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import yarl


class LatencyProxy:
    """Forwards 127.0.0.1:<port> to a TCP or Unix-socket target, holding each chunk
    `delay` seconds. `blackholed` (settable at any time) swallows every byte in both
    directions and leaves new connections unanswered: a peer that is there but silent,
    as behind a dead route or a frozen server. `watch`, when set, sees each chunk the
    target sends as it arrives, before it is held."""

    def __init__(self, host_or_socket: str, port: int, delay: float = 0.0) -> None:
        self.host_or_socket = host_or_socket
        self.target_port = port
        self.delay = delay
        self.blackholed = False
        self.watch: Callable[[bytes], None] | None = None
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
        for source, sink, from_target in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pump(source, sink, from_target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_target: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while chunk := await source.read(65536):
                if from_target and self.watch is not None:
                    self.watch(chunk)
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


class RecordingHttpProxy:
    """An HTTP reverse proxy in front of an S3 endpoint that remembers each request's
    headers: what a client sent on after the redirect. The Host header and the raw
    path and query are passed on unchanged, so presigned signatures still verify.

    With `damaged_part` set it flips the first byte of every upload of that part number,
    as a faulty network would: the signature still verifies (S3 does not check the signed
    payload hash of a plain PUT), only the part's checksum can tell. With
    `head_without_length` it answers HEAD without Content-Length, as some stores do. With
    `cut_bodies` it closes the connection halfway through the body of every GET that has
    one, after a Content-Length of the whole: a store or network that dies mid-answer."""

    def __init__(
        self,
        target: str,
        damaged_part: int | None = None,
        head_without_length: bool = False,
        cut_bodies: bool = False,
    ) -> None:
        self.target = target.rstrip("/")
        self.damaged_part = damaged_part
        self.head_without_length = head_without_length
        self.cut_bodies = cut_bodies
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""
        self._runner: object = None

    async def __aenter__(self) -> RecordingHttpProxy:
        import aiohttp
        from aiohttp import web

        session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path_qs, dict(request.headers)))
            # The server already answered Expect: 100-continue; the body is here.
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("connection", "expect")
            }
            body = await request.read()
            if body and request.query.get("partNumber") == str(self.damaged_part):
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            async with session.request(
                request.method,
                yarl.URL(self.target + request.raw_path, encoded=True),
                headers=headers,
                # A file-like body: aiohttp warns (an error here) about large raw bytes.
                data=io.BytesIO(body) if body else None,
                allow_redirects=False,
            ) as upstream:
                body = await upstream.read()
                # A HEAD's Content-Length is the object's size, kept; otherwise aiohttp
                # counts the body again.
                dropped = ("transfer-encoding", "connection")
                if request.method != "HEAD" or self.head_without_length:
                    dropped += ("content-length",)
                passed = {k: v for k, v in upstream.headers.items() if k.lower() not in dropped}
                if self.cut_bodies and request.method == "GET" and len(body) > 1:
                    response = web.StreamResponse(status=upstream.status, headers=passed)
                    response.content_length = len(body)
                    await response.prepare(request)
                    await response.write(body[: len(body) // 2])
                    assert request.transport is not None
                    request.transport.close()
                    return response
                return web.Response(status=upstream.status, headers=passed, body=body)

        app = web.Application(client_max_size=64 * 1024 * 1024)  # multipart parts too
        app.router.add_route("*", "/{tail:.*}", forward)
        app.on_cleanup.append(lambda _: session.close())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._runner = runner
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()  # type: ignore[attr-defined]
