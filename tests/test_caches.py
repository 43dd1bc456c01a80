"""Hot-path caches: they serve, and every instance forgets a change within a second."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

import service.data.caches
from service.core.attachment import AttachmentTarget
from service.core.disposition import content_disposition
from service.core.tokens import digest, display_prefix, generate_token
from service.data.admin import create_key, delete_attachment, revoke_key, set_api_access
from service.data.api_keys import find_keys
from service.data.caches import ASKERS_PER_ATTACHMENT, MISSING, HotPathCaches, TTLCache
from service.data.invalidation import APPLICATION_NAME
from service.data.pool import Database
from service.web.app import create_app
from service.web.caches import CACHES, renew_attachments
from service.web.database import ATTACHMENT_LOOKUPS, DATABASE
from tests.support.http import signed_response_headers
from tests.support.processes import Gateway
from tests.support.proxy import postgres_proxy
from tests.support.waiting import changes_heard, eventually


def test_ttl_cache_is_lru_and_expires(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    cache = TTLCache(size=2, ttl=10)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is MISSING and cache.get("a") == 1 and cache.get("c") == 3
    clock[0] += 10.5
    assert cache.get("a") is MISSING
    assert TTLCache(size=0, ttl=10).get("x") is MISSING


def test_an_entry_due_is_still_served_and_queued_once_for_the_refresher(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    cache = TTLCache(size=10, ttl=10, lease=2)
    cache.put("k", "old")
    assert cache.get("k") == "old" and cache.take_due() == []
    clock[0] += 8.5  # within the last 2 s of its TTL
    assert [cache.get("k") for _ in range(3)] == ["old"] * 3  # nobody waits for it
    assert cache.take_due() == ["k"] and cache.take_due() == []  # queued once
    assert cache.peek("k") == "old"
    cache.put("k", "new")  # the refresher's answer
    assert cache.get("k") == "new"
    # Never served past its TTL: not refreshed in time, the entry is gone for everyone.
    clock[0] += 8.5
    assert cache.get("k") == "new" and cache.take_due() == ["k"]
    clock[0] += 1.6  # 10.1 s after it was stored
    assert cache.get("k") is MISSING and cache.peek("k") is MISSING
    # An invalidation removes an entry that is due at once.
    cache.put("j", "value")
    clock[0] += 9
    assert cache.get("j") == "value"
    cache.pop("j")
    assert cache.get("j") is MISSING
    cache.clear()
    assert cache.take_due() == []


async def test_entries_are_renewed_in_the_background_before_they_expire(
    serve_app, settings, make_tenant, make_attachment
):
    client = await serve_app(create_app(replace(settings, cache_ttl_seconds=2.5)))
    caches = client.app[CACHES]
    await eventually(lambda: caches.live)

    async def download(tenant, attachment_id):
        url = f"/api/v1/attachments/{attachment_id}/download"
        response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
        assert response.status == 307

    # A renewal that an invalidation overtook is rightly not stored (the database notifies
    # every instance of every change, other tests' too): such a round does not count.
    for _ in range(3):
        tenant = await make_tenant()
        attachment_id = await make_attachment(tenant.workspace_id)
        await asyncio.sleep(0.2)  # their own notifications come first
        await download(tenant, attachment_id)  # looked up and cached
        misses = (caches.keys.misses, caches.attachments.misses)
        generation = caches.generation
        await asyncio.sleep(1.9)  # in the last third of its 2.5 s TTL
        await download(tenant, attachment_id)  # served from the caches, and due
        await asyncio.sleep(1.2)  # past the first TTL: only a renewed entry is still there
        await download(tenant, attachment_id)
        if caches.generation == generation:
            break
    else:
        pytest.fail("every round was overtaken by an invalidation")
    assert (caches.keys.misses, caches.attachments.misses) == misses


async def status_of(url, token, method="GET"):
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
        ) as response:
            return response.status, response.headers.get("Location")


@pytest.fixture
async def two_gateways(gateway_env, tmp_path):
    gateways = [Gateway(gateway_env, log=tmp_path / f"gateway{i}.log") for i in range(2)]
    try:
        await asyncio.gather(*(g.wait_ready() for g in gateways))
        for gateway in gateways:  # caches on: the invalidation listener is connected
            await eventually(lambda g=gateway: metric_is(g, "gateway_cache_live", 1.0), timeout=5)
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


async def metric_is(gateway, name, value):
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/metrics") as response:
            return f"{name} {value}" in await response.text()


async def time_to_stop(gateways, path, token, expected):
    """Seconds until every instance answers `expected` for `path`."""
    started = time.monotonic()
    for gateway in gateways:
        # Polled often: what is measured is how soon the answer changes.
        await eventually(
            lambda g=gateway: _answers(g.url + path, token, expected), timeout=5, interval=0.02
        )
    return time.monotonic() - started


async def _answers(url, token, expected):
    return (await status_of(url, token))[0] == expected


async def warm(gateways, path, token):
    for gateway in gateways:
        for _ in range(3):
            assert (await status_of(gateway.url + path, token))[0] == 307


@pytest.mark.slow
async def test_revocation_reaches_every_instance_within_a_second(
    two_gateways, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    await warm(two_gateways, path, tenant.read_token)
    assert await revoke_key(conn, tenant.read_key_id)
    assert await time_to_stop(two_gateways, path, tenant.read_token, 401) < 1.0


@pytest.mark.slow
async def test_removed_entitlement_reaches_every_instance_within_a_second(
    two_gateways, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    await warm(two_gateways, path, tenant.read_token)
    assert await set_api_access(conn, tenant.workspace_id, False)
    assert await time_to_stop(two_gateways, path, tenant.read_token, 403) < 1.0


async def test_a_new_or_renamed_workspace_leaves_the_key_caches_be(
    client, conn, make_tenant, make_attachment
):
    """Every change of a workspace made every gateway forget all its keys; only the API
    access entitlement is cached with them, and only its changes are announced now."""
    caches = client.app[CACHES]
    await eventually(lambda: caches.live, timeout=5)
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    response = await client.get(path, headers=tenant.auth(), allow_redirects=False)
    assert response.status == 307
    await changes_heard(conn, caches)
    cached = digest(tenant.read_token)
    assert caches.keys.peek(cached) is not MISSING
    other = await make_tenant()  # a new workspace
    await conn.execute("UPDATE workspaces SET name = 'renamed' WHERE id = $1", other.workspace_id)
    await changes_heard(conn, caches)
    assert caches.keys.peek(cached) is not MISSING
    assert await set_api_access(conn, other.workspace_id, False)  # still announced
    await changes_heard(conn, caches)
    assert caches.keys.peek(cached) is MISSING


@pytest.mark.slow
async def test_deleted_attachment_stops_on_every_instance_within_a_second(
    two_gateways, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"
    await warm(two_gateways, path, tenant.read_token)
    assert await delete_attachment(conn, attachment_id)
    assert await time_to_stop(two_gateways, path, tenant.read_token, 404) < 1.0


@pytest.mark.slow
async def test_a_key_created_after_being_refused_works_within_a_second(
    two_gateways, conn, make_tenant, make_attachment
):
    """Unknown tokens are cached as unknown; the INSERT's notification clears that."""
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    token = generate_token()
    for gateway in two_gateways:
        for _ in range(2):
            assert (await status_of(gateway.url + path, token))[0] == 401
    await conn.execute(
        "INSERT INTO api_keys (workspace_id, display_prefix, token_digest, scope)"
        " VALUES ($1, $2, $3, 'read')",
        tenant.workspace_id,
        display_prefix(token),
        digest(token),
    )
    assert await time_to_stop(two_gateways, path, token, 307) < 1.0


async def test_without_the_listener_caches_are_bypassed_then_come_back(
    client, conn, make_tenant, make_attachment
):
    app = client.app
    caches = app[CACHES]
    await eventually(lambda: caches.live, timeout=5)
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    # The key's own INSERT notification may arrive after the first request cached it
    # (and drop it): by the second request, nothing about it is in flight any more.
    await eventually(lambda: _cached_after_a_request(client, caches, path, tenant), timeout=5)
    flushes = caches.flushes
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    # The loss is noticed and the caches flushed (then flushed again on reconnecting,
    # since notifications sent meanwhile are lost).
    await eventually(lambda: caches.flushes > flushes, timeout=5)
    assert await revoke_key(conn, tenant.read_key_id)
    assert (await client.get(path, headers=tenant.auth(), allow_redirects=False)).status == 401
    await eventually(lambda: caches.live, timeout=5)  # reconnected by itself
    assert caches.flushes >= flushes + 2


def dsn_as(dsn: str, role: str) -> str:
    """The same server and database, logged in as `role`."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


async def test_a_listener_refused_for_other_reasons_than_an_outage_keeps_trying(
    serve_app, settings, conn
):
    """A login refused (a role or password being rotated; here, a role not yet created)
    ended the listener for good: the caches stayed off until a restart."""
    role = f"gw_listener_{uuid.uuid4().hex[:8]}"
    as_role = dsn_as(settings.database_url, role)
    client = await serve_app(create_app(replace(settings, database_direct_url=as_role)))
    caches = client.app[CACHES]
    try:
        await asyncio.sleep(0.5)  # a few refused logins
        assert not caches.live
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')
        await eventually(lambda: caches.live, timeout=10)  # within its longest backoff
    finally:
        await client.close()
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')


async def test_a_listener_session_that_ends_at_once_backs_off(serve_app, settings, conn, caplog):
    """A session that ends right after the login (a standby refusing LISTEN in recovery;
    here, a role whose idle sessions the server ends after 50 ms): the listener
    reconnected at once every time, tens of times a second."""
    role = f"gw_short_lived_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    await conn.execute(f"ALTER ROLE \"{role}\" SET idle_session_timeout = '50ms'")
    as_role = dsn_as(settings.database_url, role)
    try:
        with caplog.at_level(logging.INFO, logger="service.data.invalidation"):
            client = await serve_app(create_app(replace(settings, database_direct_url=as_role)))
            await asyncio.sleep(2.0)
            await client.close()
        ended = [
            r
            for r in caplog.records
            if r.getMessage() == "caches off until the invalidation listener reconnects"
        ]
        # Backing off from 0.1 s, doubling: at most 5 sessions in 2 s.
        assert 1 <= len(ended) <= 6, len(ended)
        assert not client.app[CACHES].live
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')


async def _cached_after_a_request(client, caches, path, tenant):
    assert (await client.get(path, headers=tenant.auth(), allow_redirects=False)).status == 307
    return len(caches.keys) >= 1


async def test_urls_are_reused_within_the_window_and_not_beyond(
    serve_app, settings, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"

    async def two_locations(client):
        await eventually(lambda: client.app[CACHES].live, timeout=5)
        first = await client.get(path, headers=tenant.auth(), allow_redirects=False)
        await asyncio.sleep(1.1)  # a new X-Amz-Date second
        second = await client.get(path, headers=tenant.auth(), allow_redirects=False)
        return (first.headers["Location"], await first.json()), (
            second.headers["Location"],
            await second.json(),
        )

    reusing = await serve_app(create_app(settings))
    (first, first_body), (second, second_body) = await two_locations(reusing)
    assert first == second and first_body == second_body  # the true expiry, unchanged

    fresh = await serve_app(create_app(replace(settings, url_reuse_seconds=0)))
    (first, first_body), (second, second_body) = await two_locations(fresh)
    assert first != second and first_body != second_body


async def test_the_refresher_reads_many_keys_in_one_query_and_only_live_ones(
    conn, database_url, make_tenant
):
    from datetime import UTC, datetime, timedelta

    tenant, other = await make_tenant(), await make_tenant(api_access=False)
    live = await create_key(conn, tenant.workspace_id, scope="write")
    revoked = await create_key(conn, tenant.workspace_id)
    await revoke_key(conn, revoked.id)
    expired = await create_key(
        conn, tenant.workspace_id, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    never_seen = digest(generate_token())
    wanted = [digest(live.token), digest(revoked.token), digest(expired.token), never_seen]
    wanted.append(digest(other.read_token))
    pool = await asyncpg.create_pool(database_url, min_size=0)
    try:
        found = await find_keys(Database(pool, acquire_timeout=5), wanted)
    finally:
        await pool.close()

    assert set(found) == {digest(live.token), digest(other.read_token)}
    row = found[digest(live.token)]
    assert (row["id"], row["workspace_id"], row["scope"], row["api_access"]) == (
        live.id,
        tenant.workspace_id,
        "write",
        True,
    )
    assert found[digest(other.read_token)]["api_access"] is False  # refused later, by entitle


async def test_a_cached_key_still_expires_on_time(client, conn, make_tenant, make_attachment):
    from datetime import UTC, datetime, timedelta

    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    caches = client.app[CACHES]
    await eventually(lambda: caches.live, timeout=5)
    expires_at = datetime.now(UTC) + timedelta(seconds=3)
    key = await create_key(conn, tenant.workspace_id, expires_at=expires_at)
    await changes_heard(conn, caches)  # the key's own NOTIFY would keep it out of the cache
    headers = {"Authorization": f"Bearer {key.token}"}
    assert (await client.get(path, headers=headers, allow_redirects=False)).status == 307
    assert getattr(caches.keys.peek(digest(key.token)), "key_id", None) == key.id
    await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.1)
    assert (await client.get(path, headers=headers, allow_redirects=False)).status == 401


async def test_one_query_on_a_cold_download(serve_app, settings, make_tenant, make_attachment):
    """Key, entitlement and attachment come back in one round trip when nothing is cached."""
    # Rows first: the app starts listening after their NOTIFYs, which cannot evict what it caches.
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    app = create_app(replace(settings, db_pool_max_size=1))
    client = await serve_app(app)
    await eventually(lambda: app[CACHES].live, timeout=5)
    path = f"/api/v1/attachments/{attachment_id}/download"
    await client.get("/api/v1/anything", headers={"Authorization": "Bearer " + generate_token()})
    logged = []
    async with app[DATABASE].pool.acquire() as connection:  # the pool's only connection
        connection.add_query_logger(lambda record: logged.append(record.query))
    assert (await client.get(path, headers=tenant.auth(), allow_redirects=False)).status == 307
    lookups = [q for q in logged if "api_keys" in q or "attachments" in q]
    assert len(lookups) == 1 and "LEFT JOIN attachments" in lookups[0]
    logged.clear()
    for _ in range(3):  # warm: nothing at all
        assert (await client.get(path, headers=tenant.auth(), allow_redirects=False)).status == 307
    assert [q for q in logged if "api_keys" in q or "attachments" in q] == []


async def test_concurrent_cold_lookups_share_a_query_and_never_cross_tenants(
    serve_app, settings, make_tenant, make_attachment
):
    """Attachment lookups of one loop iteration go out as one query; each (id, workspace)
    pair still matches only its own workspace's attachment."""
    # Rows first: a late NOTIFY of their creation would evict a warmed key (seen once in CI).
    tenants = [await make_tenant(), await make_tenant()]
    owned = [[await make_attachment(t.workspace_id) for _ in range(8)] for t in tenants]
    app = create_app(replace(settings, db_pool_max_size=1))
    client = await serve_app(app)
    await eventually(lambda: app[CACHES].live, timeout=5)
    for tenant in tenants:  # keys cached: what follows needs attachments only
        await client.get("/api/v1/anything", headers=tenant.auth())
    logged = []
    async with app[DATABASE].pool.acquire() as connection:  # the pool's only connection
        connection.add_query_logger(lambda record: logged.append(record.query))

    async def status(tenant, attachment_id):
        path = f"/api/v1/attachments/{attachment_id}/download"
        response = await client.get(path, headers=tenant.auth(), allow_redirects=False)
        return response.status

    asked = [
        (tenant, attachment_id) for tenant in tenants for ids in owned for attachment_id in ids
    ]
    statuses = await asyncio.gather(*(status(t, a) for t, a in asked))
    for (tenant, attachment_id), got in zip(asked, statuses, strict=True):
        mine = attachment_id in owned[tenants.index(tenant)]
        assert got == (307 if mine else 404), (mine, got)
    lookups = [q for q in logged if "attachments" in q]
    assert 1 <= len(lookups) <= len(asked) // 4, len(lookups)


# What each first request reads the attachment with, and what it asks for.
def queries_through(settings, slow_dsn):
    """Settings whose queries go through a (slow) proxy, with waits long enough for it;
    the listener does not, so that a change is heard at once."""
    return replace(
        settings,
        database_url=slow_dsn,
        database_direct_url=settings.database_url,
        db_connect_timeout=10,
        db_acquire_timeout=10,
        db_statement_timeout=10,
    )


RACES = {
    "download, key cached": ("download", True),
    "download, key read with the attachment": ("download", False),
    "batch of links": ("download-links", True),
}


@pytest.mark.parametrize("race", RACES)
async def test_a_url_signed_from_a_row_changed_meanwhile_is_not_handed_out_again(
    serve_app, settings, database_url, conn, make_tenant, make_attachment, race
):
    """A rename commits while a request's read of the attachment is on its way back: that
    request may answer with what it read, but the URL it signed is never reused for the
    next request, which names the new file."""
    route, warm_key = RACES[race]
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="old.txt")
    other_id = await make_attachment(tenant.workspace_id)
    download = f"/api/v1/attachments/{attachment_id}/download"
    first_path = download if route == "download" else f"/api/v1/attachments/{route}"
    proxy, slow_dsn = postgres_proxy(database_url)
    async with proxy:
        app = create_app(queries_through(settings, slow_dsn.format(port=proxy.port)))
        client = await serve_app(app)
        await eventually(lambda: app[CACHES].live, timeout=5)
        if warm_key:  # then the first request's one query is the attachment's
            other = f"/api/v1/attachments/{other_id}/download"
            assert (
                await client.get(other, headers=tenant.auth(), allow_redirects=False)
            ).status == 307

        row_read = asyncio.Event()
        proxy.watch = lambda chunk: b"old.txt" in chunk and row_read.set()  # its row
        proxy.delay = 0.5  # every packet reaches the other side half a second late
        first = asyncio.create_task(
            client.get(
                first_path,
                params={"id": str(attachment_id)} if route != "download" else None,
                headers=tenant.auth(),
                allow_redirects=False,
            )
        )
        await asyncio.wait_for(row_read.wait(), 10)
        generation = app[CACHES].generation
        await conn.execute(
            "UPDATE attachments SET filename = 'new.txt' WHERE id = $1", attachment_id
        )
        await eventually(lambda: app[CACHES].generation > generation, timeout=0.4)
        assert not first.done()  # the change was heard before the old row arrived
        proxy.delay = 0
        response = await first
        if route == "download":
            location = response.headers["Location"]
        else:
            location = (await response.json())["items"][0]["url"]
        assert "old.txt" in signed_response_headers(location)[0]  # what it read

        response = await client.get(download, headers=tenant.auth(), allow_redirects=False)
        assert response.status == 307
        assert signed_response_headers(response.headers["Location"])[0] == content_disposition(
            "new.txt"
        )


async def test_a_change_of_another_row_while_a_lookup_is_under_way_lets_it_store(
    serve_app, settings, database_url, conn, make_tenant, make_attachment
):
    """Any invalidation kept every lookup under way from storing what it read: with
    uploads and edits going on elsewhere (each notifies), a busy gateway's caches stopped
    filling. Only a change of what the lookup read keeps it from being stored now."""
    tenant, elsewhere = await make_tenant(), await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="mine.txt")
    unrelated_id = await make_attachment(elsewhere.workspace_id)
    download = f"/api/v1/attachments/{attachment_id}/download"
    proxy, slow_dsn = postgres_proxy(database_url)
    async with proxy:
        app = create_app(queries_through(settings, slow_dsn.format(port=proxy.port)))
        client = await serve_app(app)
        caches = app[CACHES]
        await eventually(lambda: caches.live, timeout=5)
        row_read = asyncio.Event()
        proxy.watch = lambda chunk: b"mine.txt" in chunk and row_read.set()
        proxy.delay = 0.5
        first = asyncio.create_task(
            client.get(download, headers=tenant.auth(), allow_redirects=False)
        )
        await asyncio.wait_for(row_read.wait(), 10)
        generation = caches.generation
        await conn.execute(
            "UPDATE attachments SET filename = 'other.txt' WHERE id = $1", unrelated_id
        )
        await eventually(lambda: caches.generation > generation, timeout=0.4)
        assert not first.done()  # the change was heard before the row arrived
        proxy.delay = 0
        response = await first
        assert response.status == 307
    # The key, the attachment and the URL were all kept: the next download is answered
    # from memory (the proxy is gone: a query would fail), with the same URL.
    assert caches.keys.peek(digest(tenant.read_token)) is not MISSING
    assert caches.attachments.peek(str(attachment_id)) is not MISSING
    again = await client.get(download, headers=tenant.auth(), allow_redirects=False)
    assert again.status == 307
    assert again.headers["Location"] == response.headers["Location"]


async def test_asking_for_another_tenants_id_never_displaces_the_owners_answer(
    client, conn, make_tenant, make_attachment
):
    """Another tenant's id is that tenant's 404, cached as a missing id's is: beside the
    owner's answer, never in its place. Displaced, the asker would find its own answer
    gone after each of the owner's downloads, and learn from its slower next request that
    the id exists and is in use."""
    owner = await make_tenant()
    askers = [await make_tenant() for _ in range(ASKERS_PER_ATTACHMENT + 1)]
    attachment_id = str(await make_attachment(owner.workspace_id))
    url = f"/api/v1/attachments/{attachment_id}/download"
    caches = client.app[CACHES]
    await eventually(lambda: caches.live)
    await changes_heard(conn, caches)  # no notification of these rows still to come

    def answers() -> list[object]:
        return [caches.attachment(attachment_id, t.workspace_id) for t in (owner, *askers)]

    for tenant, status in [(owner, 307), (askers[0], 404), (owner, 307), (askers[0], 404)]:
        response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
        assert response.status == status
    cached = answers()
    assert cached[0] not in (MISSING, None) and cached[0].filename  # the owner's target
    assert cached[1] is None  # known: not this workspace's
    # More askers than an entry holds: the oldest refusal goes, the owner's answer stays.
    for tenant in askers[1:]:
        response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
        assert response.status == 404
    owners, *refusals = answers()
    assert owners == cached[0]
    kept = ASKERS_PER_ATTACHMENT - 1  # beside the owner's
    assert refusals == [MISSING] * (len(askers) - kept) + [None] * kept

    # The refresher renews the owner's answer and leaves the others' as they were.
    before = answers()
    await renew_attachments(caches, client.app[ATTACHMENT_LOOKUPS], [attachment_id])
    assert answers() == before


async def test_a_refusal_ends_on_time_whatever_the_owner_does(
    serve_app, settings, conn, make_tenant, make_attachment
):
    """Another tenant's id is cached as "no such attachment" for exactly as long as a
    missing id is: renewed with the entry while the owner downloads, or dropped with it
    when the owner changes the attachment, it would let the asker time the owner."""
    client = await serve_app(create_app(replace(settings, cache_ttl_seconds=1.5)))
    caches = client.app[CACHES]
    owner, asker = await make_tenant(), await make_tenant()
    attachment_id = str(await make_attachment(owner.workspace_id))
    url = f"/api/v1/attachments/{attachment_id}/download"
    await eventually(lambda: caches.live)
    await changes_heard(conn, caches)
    assert (await client.get(url, headers=asker.auth(), allow_redirects=False)).status == 404
    assert caches.attachment(attachment_id, asker.workspace_id) is None
    (refused_until,) = [
        until
        for workspace, _, until in caches.attachments.peek(attachment_id)
        if workspace == asker.workspace_id.int
    ]

    # The owner's change drops the owner's answer, on this instance and by NOTIFY.
    response = await client.patch(
        f"/api/v1/attachments/{attachment_id}",
        json={"filename": "b.txt"},
        headers=owner.auth("write"),
    )
    assert response.status == 200
    await changes_heard(conn, caches)
    assert caches.attachment(attachment_id, asker.workspace_id) is None

    # The owner's downloads keep the entry renewed past the refusal's end.
    while time.monotonic() < refused_until + 0.2:
        response = await client.get(url, headers=owner.auth(), allow_redirects=False)
        assert response.status == 307
        await asyncio.sleep(0.05)
    assert caches.attachment(attachment_id, owner.workspace_id).filename == "b.txt"
    assert caches.attachment(attachment_id, asker.workspace_id) is MISSING


def test_whether_the_owner_s_answer_is_cached_evicts_no_refusal():
    """Askers' answers are evicted by other askers' alone: had the owner's cached answer
    counted too, a caller with keys in a few workspaces could tell from its own requests
    whether the owner had downloaded the id lately."""
    owner, *askers = [uuid.uuid4() for _ in range(ASKERS_PER_ATTACHMENT + 1)]
    target = AttachmentTarget("b", "k", "attachment", "text/plain", "f.txt", 1)

    def first_asker_after(owner_active: bool) -> object:
        caches = HotPathCaches(TTLCache(10, 30), TTLCache(10, 30), TTLCache(10, 30))
        caches.live = True
        for asker in askers[:-1]:
            caches.remember_attachment("x", asker, None)
        if owner_active:
            caches.remember_attachment("x", owner, target)
        caches.remember_attachment("x", askers[-1], None)
        return caches.attachment("x", askers[0])

    assert first_asker_after(owner_active=True) == first_asker_after(owner_active=False)


def test_a_lookup_may_store_unless_what_it_read_changed_meanwhile(monkeypatch):
    """Changes are remembered by what changed; a workspace's, a flush, or more changes
    than are remembered count as a change of everything."""
    monkeypatch.setattr(service.data.caches, "CHANGES_REMEMBERED", 3)
    caches = HotPathCaches(TTLCache(10, 30), TTLCache(10, 30), TTLCache(10, 30))
    caches.live = True
    read_at = caches.generation
    caches.forget_key(b"other key")
    caches.forget_attachment("other attachment")
    assert caches.may_store_key(read_at, b"key") and caches.may_store_attachment(read_at, "a")
    caches.forget_key(b"key")
    caches.forget_attachment("a")
    assert not caches.may_store_key(read_at, b"key")
    assert not caches.may_store_attachment(read_at, "a")
    assert caches.may_store_key(caches.generation, b"key")  # read after the change
    # A workspace's change: every key, no attachment.
    read_at = caches.generation
    caches.forget_keys()
    assert not caches.may_store_key(read_at, b"another key")
    assert caches.may_store_attachment(read_at, "another attachment")
    # More changes than are remembered: every attachment.
    read_at = caches.generation
    for n in range(4):
        caches.forget_attachment(f"changed {n}")
    assert not caches.may_store_attachment(read_at, "unchanged")
    assert caches.may_store_key(read_at, b"another key")
    # And nothing at all while the caches are off.
    caches.live = False
    assert not caches.may_store_key(caches.generation, b"key")
