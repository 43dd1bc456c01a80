"""api_keys.last_used_at: current to the minute, batched, never a cause of failure, and
never a reason for gateways to forget a cached key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

import service.data.usage
from service.core.secret_scanning import ReportedToken
from service.core.tokens import digest
from service.data.admin import create_key
from service.data.caches import MISSING
from service.data.leaked_keys import revoke_reported_keys
from service.data.pool import Database
from service.data.usage import KeyUsage
from service.devstack.ports import free_port
from service.web.app import create_app
from service.web.audit import AUDIT
from service.web.caches import CACHES
from service.web.usage import KEY_USAGE
from tests.support.environment import process_env
from tests.support.proxy import postgres_proxy
from tests.support.waiting import eventually


async def last_used(conn, key_id):
    return await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)


async def test_a_used_key_shows_when_to_the_minute(
    serve_app, settings, conn, make_tenant, make_attachment, monkeypatch
):
    # The usage clock stands still, so the whole test is within one minute (a real
    # minute boundary between two requests would rightly note a new minute).
    frozen = time.time()
    monkeypatch.setattr(service.data.usage.time, "time", lambda: frozen)
    app = create_app(settings)
    client = await serve_app(app)
    await eventually(lambda: app[CACHES].live, timeout=5)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"
    assert await last_used(conn, tenant.read_key_id) is None
    for _ in range(3):
        response = await client.get(path, headers=tenant.auth(), allow_redirects=False)
        assert response.status == 307
    assert await app[KEY_USAGE].flush()
    used = await last_used(conn, tenant.read_key_id)
    now = datetime.now(UTC)
    assert used is not None and used <= now and (now - used).total_seconds() < 120
    assert used.second == 0 and used.microsecond == 0  # to the minute
    # The write is not a change of the key: every gateway keeps it cached.
    await asyncio.sleep(0.5)
    assert app[CACHES].keys.get(digest(tenant.read_token)) is not MISSING
    # Nothing more to write within the same minute.
    await client.get(path, headers=tenant.auth(), allow_redirects=False)
    assert app[KEY_USAGE]._pending == {}


async def test_a_failed_write_loses_nothing(database_url, conn, make_tenant):
    tenant = await make_tenant()
    dead = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", min_size=0, timeout=1
    )
    usage = KeyUsage(Database(dead, acquire_timeout=1))
    usage.touch(tenant.read_key_id)
    assert await usage.flush() is False  # and no exception: requests never see it
    alive = await asyncpg.create_pool(database_url, min_size=0)
    try:
        usage._db = Database(alive, acquire_timeout=2)
        assert await usage.flush() is True
        assert await last_used(conn, tenant.read_key_id) is not None
    finally:
        await alive.close()
        await dead.close()


async def test_a_flush_cancelled_by_the_shutdown_leaves_its_batch_to_the_last_one(
    database_url, conn, make_tenant
):
    """The shutdown cancels the timed flush, then flushes once more: a batch the cancelled
    flush had taken out was in neither, with a slow database more often than not."""
    tenant = await make_tenant()
    proxy, dsn = postgres_proxy(database_url)
    async with proxy:
        pool = await asyncpg.create_pool(dsn.format(port=proxy.port), min_size=1)
        try:
            usage = KeyUsage(Database(pool, acquire_timeout=5))
            usage.touch(tenant.read_key_id)
            proxy.delay = 0.5
            flushing = asyncio.create_task(usage.flush())
            await asyncio.sleep(0.2)  # its UPDATE on the way
            flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flushing
            proxy.delay = 0
            pool.terminate()  # the cancelled query's connection: gone with it
            usage._db = Database(await asyncpg.create_pool(database_url, min_size=0), 2)
            assert await usage.flush() is True
            await usage._db.pool.close()
        finally:
            pool.terminate()
    assert await last_used(conn, tenant.read_key_id) is not None


async def test_two_replicas_flushing_the_same_keys_at_once_both_write(
    database_url, conn, make_tenant
):
    """Each process's batch locked its keys in the order they were first used: two flushes
    of the same keys in opposite orders deadlocked, and Postgres failed one. A flush now
    skips a key another transaction holds, and writes it the next time."""
    keys = sorted([(await make_tenant()).read_key_id for _ in range(3)])
    # The plan of a table of many keys: through the batch's array, a key at a time by its
    # index (on a few rows, Postgres would scan them all in their stored order instead).
    plan = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off"}
    pool = await asyncpg.create_pool(database_url, min_size=0, server_settings=plan)
    try:
        replicas = [KeyUsage(Database(pool, acquire_timeout=5)) for _ in range(2)]
        for key_id in keys:
            replicas[0].touch(key_id)
        for key_id in reversed(keys):
            replicas[1].touch(key_id)
        async with conn.transaction():
            # A row both need, held, so that each flush has locked some of its keys before
            # it waits: the order of the rest decides.
            await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", keys[1])
            flushes = [asyncio.create_task(usage.flush()) for usage in replicas]
            await asyncio.sleep(0.5)
        assert await asyncio.gather(*flushes) == [True, True]
        # The key held meanwhile was left for the next flush, not lost.
        assert await last_used(conn, keys[1]) is None
        assert await replicas[0].flush() is True
    finally:
        await pool.close()
    for key_id in keys:
        assert await last_used(conn, key_id) is not None


async def test_the_last_use_is_written_at_shutdown_even_when_the_audit_trail_cannot_be(
    serve_app, settings, conn, make_tenant, make_attachment
):
    """At shutdown the audit trail's last write, given up on a database that did not take
    it, terminated the background pool, and key usage's last write, which came after it,
    failed at once: the last minute of `last_used_at` was lost. The trail still writes
    first (its rows are the record); key usage then gets a pool of its own."""
    # The trail keeps its rows for the shutdown's write.
    app = create_app(replace(settings, audit_flush_seconds=3600))
    client = await serve_app(app)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"
    response = await client.get(path, headers=tenant.auth(), allow_redirects=False)
    assert response.status == 307
    assert len(app[AUDIT]) == 1
    async with conn.transaction():
        # The audit rows cannot go in (their COPY waits for this lock); api_keys is free.
        await conn.execute("LOCK TABLE download_audit IN SHARE MODE")
        await client.close()
    assert app[AUDIT].dropped == 1
    assert await last_used(conn, tenant.read_key_id) is not None


async def test_a_leak_report_and_a_usage_flush_on_the_same_keys_both_write(
    database_url, conn, make_tenant
):
    """A report's revoke locked its keys in the order of their tokens' digests, a usage
    flush in the order of their ids: on two keys whose orders differ, the two deadlocked
    and Postgres failed one (a leak report answered 503). A flush now waits for no lock,
    and a revoke locks by id."""
    workspace_id = (await make_tenant()).workspace_id
    keys = [await create_key(conn, workspace_id) for _ in range(2)]
    while (keys[0].id < keys[1].id) == (digest(keys[0].token) < digest(keys[1].token)):
        keys[1] = await create_key(conn, workspace_id)  # till the two orders differ
    keys.sort(key=lambda key: key.id)
    # The plan of a table of many keys: each by its index, in the index's order.
    plan = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off"}
    pool = await asyncpg.create_pool(database_url, min_size=0, server_settings=plan)
    try:
        db = Database(pool, acquire_timeout=5)
        usage = KeyUsage(db)
        for key in keys:
            usage.touch(key.id)
        report = [ReportedToken(key.token, "gateway_api_key", None, None) for key in keys]
        async with conn.transaction():
            # The first key by id held, so that the usage flush waits for it first.
            await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", keys[0].id)
            flushing = asyncio.create_task(usage.flush())
            await asyncio.sleep(0.3)
            revoking = asyncio.create_task(revoke_reported_keys(db, report, "127.0.0.1"))
            await asyncio.sleep(0.5)
        assert await flushing is True
        assert await revoking == {digest(key.token) for key in keys}
        assert await usage.flush() is True  # the key held meanwhile, left for this one
    finally:
        await pool.close()
    for key in keys:
        assert await last_used(conn, key.id) is not None


async def test_the_last_flush_tries_a_held_key_again(database_url, conn, make_tenant, caplog):
    """A flush skips a key another transaction holds and leaves it to the next flush; at
    exit there is none, so the last one tries it again for a while."""
    held, busy = (await make_tenant()).read_key_id, (await make_tenant()).read_key_id
    pool = await asyncpg.create_pool(database_url, min_size=0)
    try:
        usage = KeyUsage(Database(pool, acquire_timeout=5))
        usage.touch(held)
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", held)
            flushing = asyncio.create_task(usage.flush_at_exit())
            await asyncio.sleep(0.15)  # its first try skipped the key
        assert await flushing is True
        assert await last_used(conn, held) is not None
        usage.touch(busy)
        async with conn.transaction():  # held for longer than it tries
            await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", busy)
            assert await usage.flush_at_exit() is False
        assert "1 keys held by other transactions, not written" in caplog.text
    finally:
        await pool.close()


def test_key_list_shows_last_use(database_url, make_tenant, conn):
    tenant = asyncio.run(_tenant_used(database_url))
    env = process_env(DATABASE_URL=database_url)
    run = [sys.executable, "-m", "service", "key", "list", "--workspace", str(tenant[0])]
    listed = json.loads(
        subprocess.run([*run, "--json"], capture_output=True, text=True, env=env).stdout
    )
    assert {k["id"]: k["last_used_at"] is not None for k in listed}[str(tenant[1])] is True
    text = subprocess.run(run, capture_output=True, text=True, env=env).stdout
    assert "last used 20" in text and "last used never" in text


async def _tenant_used(database_url):
    from service.data.admin import create_key, create_workspace

    connection = await asyncpg.connect(database_url)
    try:
        workspace_id = await create_workspace(connection, "usage", api_access=True)
        used = await create_key(connection, workspace_id, scope="read")
        await create_key(connection, workspace_id, scope="read")  # never used
        await connection.execute(
            "UPDATE api_keys SET last_used_at = date_trunc('minute', now()) WHERE id = $1",
            used.id,
        )
        return workspace_id, used.id
    finally:
        await connection.close()
