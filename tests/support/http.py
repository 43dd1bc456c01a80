"""Helpers that talk HTTP: to the test server, including bytes no client library would send,
and to storage, with a presigned URL exactly as it was handed out."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from yarl import URL

PROBLEM_KEYS = ["error", "message", "code", "problem", "request_id"]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(host: str, port: int, request: bytes) -> RawResponse:
    """Send `request` verbatim on a fresh connection and read the whole answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # interim answers (100 Continue): the final one follows
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


async def send_and_vanish(host: str, port: int, request: bytes) -> None:
    """Send `request` (its body shorter than its Content-Length) and close the connection
    once the server is reading the body, as a client does that gives up in its middle.
    (Gone sooner, before the server took the request up, it would never be handled.)"""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()
    await writer.wait_closed()


def raw_get(path: str, *header_lines: bytes) -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: test", b"Connection: close"]
    return b"\r\n".join([*lines, *header_lines, b"", b""])


def assert_problem(status: int, body: bytes, problem: str) -> dict[str, Any]:
    """The body is the contract's JSON problem, with `code` equal to the HTTP status."""
    payload = json.loads(body)
    assert list(payload) == PROBLEM_KEYS
    assert payload["code"] == status
    assert payload["problem"] == problem
    return payload  # type: ignore[no-any-return]


async def fetch(location: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    """Follow a presigned URL byte for byte (no re-quoting): status, body, headers."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, URL(location, encoded=True)) as response:
            return response.status, await response.read(), dict(response.headers)


def signed_response_headers(location: str) -> tuple[str, str]:
    """The Content-Disposition and Content-Type a presigned URL asks S3 to send."""
    query = parse_qs(urlsplit(location).query)
    return query["response-content-disposition"][0], query["response-content-type"][0]
