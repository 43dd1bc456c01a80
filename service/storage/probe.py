"""Is the S3 endpoint there at all?

Presigning needs no network, so without a check the gateway would go on handing out
URLs to an endpoint that is down, and every client would fail at S3 instead of hearing
503 with Retry-After from us. A TCP connect every S3_PROBE_INTERVAL_SECONDS: after two
failures in a row downloads answer 503 `service_unavailable`; one success ends it.
Only reachability is probed: what S3 then says (403, 404, 5xx) goes to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from ..core.settings import Settings
from .client import Storage

log = logging.getLogger(__name__)

FAILURES_BEFORE_DOWN = 2
CONNECT_TIMEOUT = 2.0
DEFAULT_PORTS = {"http": 80, "https": 443}


def probe_address(storage: Storage, settings: Settings) -> tuple[str, int] | None:
    """Host and port of the endpoint the gateway itself reaches (the internal one)."""
    endpoint = settings.s3_endpoint_url or (
        storage.client.meta.endpoint_url if storage.client else None
    )
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 443)


async def connects(host: str, port: int, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def probe_forever(storage: Storage, host: str, port: int, interval: float) -> None:
    failures = 0
    while True:
        if await connects(host, port, min(CONNECT_TIMEOUT, interval)):
            if not storage.reachable:
                log.info("object storage reachable again")
            failures = 0
            storage.reachable = True
        else:
            failures += 1
            if failures == FAILURES_BEFORE_DOWN:
                log.warning("object storage unreachable; downloads answer 503 until it is back")
                storage.reachable = False
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def probing(storage: Storage, settings: Settings) -> AsyncIterator[None]:
    address = probe_address(storage, settings)
    if address is None or not settings.s3_probe_interval_seconds or storage.client is None:
        yield
        return
    task = asyncio.create_task(probe_forever(storage, *address, settings.s3_probe_interval_seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
