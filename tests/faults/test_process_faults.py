"""Clients that vanish, a SIGTERM under load, and keys revoked while two instances
serve them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import asyncpg
import pytest

from service.data.admin import create_key, revoke_key
from service.data.invalidation import APPLICATION_NAME
from tests.support.environment import NO_CACHES
from tests.support.load import Load, seed
from tests.support.processes import error_lines, metric
from tests.support.proxy import postgres_proxy
from tests.support.waiting import eventually


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def request_and_vanish(port: int, path: str, token: str) -> None:
    """Send a whole request, then reset the connection before any answer can come."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )


async def test_a_thousand_clients_vanishing_mid_request_leak_nothing(database_url, start_gateway):
    seeded = await seed(database_url)
    proxy, dsn = postgres_proxy(database_url)
    async with proxy:
        gateway = await start_gateway(
            DATABASE_URL=dsn.format(port=proxy.port),
            DB_POOL_MAX_SIZE="16",
            DB_ACQUIRE_TIMEOUT="30",
            DB_STATEMENT_TIMEOUT="30",
            **NO_CACHES,
        )
        async with Load(gateway.url, seeded.paths(), seeded.auth, concurrency=0) as probe:
            assert (await probe.one(seeded.paths()[0])).status == 307
        pool = 'gateway_db_pool_connections{state="open"}'

        async def descriptors_besides_the_pool():
            return open_descriptors(gateway.process.pid) - await metric(gateway, pool)

        baseline = await descriptors_besides_the_pool()
        proxy.delay = 0.02  # every request is still deciding when its client goes

        paths = seeded.paths()
        for batch in range(10):
            await asyncio.gather(
                *(
                    asyncio.to_thread(
                        request_and_vanish, gateway.port, paths[i % len(paths)], seeded.token
                    )
                    for i in range(batch * 100, batch * 100 + 100)
                )
            )
        proxy.delay = 0

        async def settled():
            in_use = await metric(gateway, 'gateway_db_pool_connections{state="in_use"}')
            return in_use == 0 and await descriptors_besides_the_pool() <= baseline + 2

        await eventually(settled, timeout=30)
        handled = await metric(
            gateway,
            'gateway_requests_total{method="GET",route="/api/v1/attachments/{id}/download",'
            'status="307"}',
        )
        assert handled >= 1  # the handlers ran to the end for clients long gone
        async with Load(gateway.url, seeded.paths(), seeded.auth, concurrency=0) as probe:
            assert (await probe.one(seeded.paths()[1])).status == 307
        # Nothing above DEBUG but the access log's INFO lines (aiohttp notes each lost
        # client at DEBUG).
        assert [
            line for line in gateway.json_lines() if line["level"] not in ("debug", "info")
        ] == []


async def test_sigterm_under_load_finishes_every_request_in_flight(database_url, start_gateway):
    seeded = await seed(database_url, attachments=30)
    proxy, dsn = postgres_proxy(database_url)
    async with proxy:
        gateway = await start_gateway(
            DATABASE_URL=dsn.format(port=proxy.port),
            DB_POOL_MAX_SIZE="8",
            DB_ACQUIRE_TIMEOUT="10",
            DB_STATEMENT_TIMEOUT="10",
            SHUTDOWN_GRACE_SECONDS="8",
            **NO_CACHES,
        )
        async with Load(gateway.url, seeded.paths(), seeded.auth, concurrency=0) as load:
            assert (await load.one(seeded.paths()[0])).status == 307
            proxy.delay = 0.3  # each query now takes at least 0.6 s
            in_flight = [asyncio.create_task(load.one(path)) for path in seeded.paths()]
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            with pytest.raises(ConnectionRefusedError):  # no longer accepting
                socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            answers = await asyncio.gather(*in_flight)
            exit_code = await asyncio.to_thread(gateway.process.wait, 15)
            stopped = time.monotonic()
        assert [a.status for a in answers] == [307] * len(answers)
        assert exit_code == 0 and stopped - signalled < 8 + 1
        assert error_lines(gateway) == []


async def test_revoked_under_load_on_two_instances(database_url, start_gateway):
    seeded = await seed(database_url)
    gateways = [await start_gateway(CACHE_TTL_SECONDS="2") for _ in range(2)]
    for gateway in gateways:
        await eventually(lambda g=gateway: _live(g))

    async def revoke_under_load(kill_listeners_first: bool) -> tuple[float, list]:
        key = await _new_key(database_url, seeded)
        headers = {"Authorization": f"Bearer {key.token}"}
        loads = [Load(g.url, seeded.paths(), headers, concurrency=4) for g in gateways]
        for load in loads:
            await load.__aenter__()
        try:
            await asyncio.sleep(1.0)
            conn = await asyncpg.connect(database_url)
            try:
                if kill_listeners_first:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = $1 AND datname = current_database()",
                        APPLICATION_NAME,
                    )
                await revoke_key(conn, key.id)
                revoked_at = time.monotonic()  # just after the commit
            finally:
                await conn.close()
            await asyncio.sleep(3.0)
        finally:
            for load in loads:
                await load.__aexit__()
        return revoked_at, [a for load in loads for a in load.answers]

    # Listeners up: every instance stops within 1 s of the commit.
    revoked_at, answers = await revoke_under_load(kill_listeners_first=False)
    assert {a.status for a in answers} <= {307, 401}
    assert all(a.status == 307 for a in answers if a.finished < revoked_at - 0.05)
    late = [a for a in answers if a.started >= revoked_at + 1.0]
    assert late and all(a.status == 401 for a in late)

    # Listeners killed just before the revoke: no 307 after the cache TTL (2 s here).
    revoked_at, answers = await revoke_under_load(kill_listeners_first=True)
    assert {a.status for a in answers} <= {307, 401, 503}
    late = [a for a in answers if a.started >= revoked_at + 2.0]
    assert late and all(a.status == 401 for a in late)
    for gateway in gateways:
        await eventually(lambda g=gateway: _live(g))  # the listeners came back
        assert error_lines(gateway) == []


async def _new_key(dsn, seeded):
    conn = await asyncpg.connect(dsn)
    try:
        return await create_key(conn, seeded.workspace_id, scope="read")
    finally:
        await conn.close()


async def _live(gateway):
    return await metric(gateway, "gateway_cache_live") == 1.0
