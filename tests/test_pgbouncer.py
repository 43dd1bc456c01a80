"""Behind a real PgBouncer in transaction mode: no 500s, revocation still within 1 s, and a
LISTEN misrouted through the pooler detected and reported instead of silently stale caches."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace

import pytest

from service.data.admin import revoke_key
from service.devstack.pgbouncer import pgbouncer_available, run_pgbouncer
from service.devstack.ports import free_port
from service.web.app import create_app
from service.web.caches import CACHES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pgbouncer_available(), reason="Debian's pgbouncer is not installed"),
]

COLD_DOWNLOADS = 300


@pytest.fixture(scope="module")
def bouncer_url(database_url, tmp_path_factory):
    with run_pgbouncer(database_url, tmp_path_factory.mktemp("pgbouncer")) as url:
        yield url


@pytest.fixture
def behind_pgbouncer(settings, bouncer_url, database_url):
    """The shipped advice for transaction pooling: no prepared-statement cache, and the
    sessions that need one (LISTEN, migrations) straight to Postgres."""
    return replace(
        settings,
        database_url=bouncer_url,
        database_direct_url=database_url,
        db_statement_cache_size=0,
        # One tenant's burst of cold downloads is the load here, not abuse.
        rate_limit_per_key=0,
        rate_limit_per_workspace=0,
    )


async def listener_delivering(app, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not app[CACHES].live:
        assert time.monotonic() < deadline, "the invalidation listener never came up"
        await asyncio.sleep(0.02)


async def cold_downloads(client, tenant, ids):
    """Every id downloaded once, all at the same time; the statuses, counted."""

    async def one(attachment_id):
        response = await client.get(
            f"/api/v1/attachments/{attachment_id}/download",
            headers=tenant.auth(),
            allow_redirects=False,
        )
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(one(attachment_id) for attachment_id in ids))
    counted: dict[int, int] = {}
    for status in statuses:
        counted[status] = counted.get(status, 0) + 1
    return counted


async def test_cold_downloads_under_concurrency_through_pgbouncer_are_all_redirects(
    serve_app, behind_pgbouncer, make_tenant, make_attachment
):
    tenant = await make_tenant()
    ids = [await make_attachment(tenant.workspace_id) for _ in range(20)]
    # Cold: each id once, plus ids of nothing (the same query path, a 404 each).
    wanted = ids + [uuid.uuid4() for _ in range(COLD_DOWNLOADS - len(ids))]
    client = await serve_app(create_app(behind_pgbouncer))
    counted = await cold_downloads(client, tenant, wanted)
    assert counted == {307: len(ids), 404: COLD_DOWNLOADS - len(ids)}, counted


async def test_a_statement_cache_behind_pgbouncer_is_503_never_500(
    serve_app, behind_pgbouncer, make_tenant, make_attachment, caplog
):
    """Misconfigured (asyncpg's prepared statements through transaction pooling), the
    gateway still never answers 500: the database is unusable to those requests, a 503,
    and the log names the error class."""
    misconfigured = replace(behind_pgbouncer, db_statement_cache_size=100)
    tenant = await make_tenant()
    ids = [await make_attachment(tenant.workspace_id) for _ in range(5)]
    wanted = ids + [uuid.uuid4() for _ in range(COLD_DOWNLOADS - len(ids))]
    client = await serve_app(create_app(misconfigured))
    with caplog.at_level(logging.WARNING, logger="service.data.pool"):
        counted = await cold_downloads(client, tenant, wanted)
    assert 500 not in counted, counted
    assert set(counted) <= {307, 404, 503}, counted
    assert 503 in counted, counted  # the misconfiguration bites: most requests collide
    # The class says which statement-cache trouble it was (a name already there, or gone).
    causes = {
        m.removeprefix("database error: ")
        for m in (r.getMessage() for r in caplog.records)
        if m.startswith("database error: ")
    }
    assert causes and causes <= {
        "DuplicatePreparedStatementError",
        "InvalidSQLStatementNameError",
    }, causes


async def test_a_key_revoked_directly_is_refused_behind_pgbouncer_within_a_second(
    serve_app, behind_pgbouncer, make_tenant, make_attachment, conn
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    app = create_app(behind_pgbouncer)
    client = await serve_app(app)
    await listener_delivering(app)
    url = f"/api/v1/attachments/{attachment_id}/download"
    response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
    assert response.status == 307  # the key is cached now
    await revoke_key(conn, tenant.read_key_id)
    revoked_at = time.monotonic()
    while True:
        response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
        if response.status == 401:
            break
        assert response.status == 307
        assert time.monotonic() - revoked_at < 1.0, "still served a second after revocation"
        await asyncio.sleep(0.01)


async def test_a_listen_through_pgbouncer_is_detected_and_reported(
    serve_app, behind_pgbouncer, bouncer_url, make_tenant, make_attachment, caplog
):
    misrouted = replace(behind_pgbouncer, database_direct_url=bouncer_url)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    app = create_app(misrouted)
    with caplog.at_level(logging.INFO, logger="service.data.invalidation"):
        client = await serve_app(app)
        deadline = time.monotonic() + 10
        while True:
            ready = await (await client.get("/readyz")).json()
            if "invalidation" in ready["checks"]:
                break
            assert time.monotonic() < deadline, ready
            await asyncio.sleep(0.1)
    # Still ready (every answer stays right, only uncached), and it says why.
    assert ready["status"] == "ready"
    assert ready["checks"]["invalidation"] == "notifications not delivered: caches off"
    assert app[CACHES].live is False
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_invalidation_delivering 0.0" in metrics
    assert "gateway_cache_live 0.0" in metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "PgBouncer" in w]) == 1, warnings
    # Downloads are still answered correctly, every time from the database.
    url = f"/api/v1/attachments/{attachment_id}/download"
    for _ in range(3):
        response = await client.get(url, headers=tenant.auth(), allow_redirects=False)
        assert response.status == 307
    assert app[CACHES].keys.hits == 0


async def test_the_cli_migrates_over_the_direct_url(cli, database_url):
    """Migrations take a session-level advisory lock, which transaction pooling breaks: they
    run on DATABASE_DIRECT_URL (here DATABASE_URL leads nowhere at all)."""
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = cli("migrate", env={"DATABASE_URL": nowhere, "DATABASE_DIRECT_URL": database_url})
    assert result.stdout.startswith("applied 0 migration(s)")


async def test_migrations_run_through_pgbouncer_too(cli, bouncer_url):
    """Without DATABASE_DIRECT_URL, `migrate` goes through the pooler: a session's advisory
    lock stayed on the server connection that took it, its unlock went to another, and
    the next run waited for it. The lock is now taken per transaction."""
    for _ in range(3):
        result = cli("migrate", env={"DATABASE_URL": bouncer_url})
        assert result.stdout.startswith("applied 0 migration(s)")


async def test_the_cli_works_through_pgbouncer_without_a_statement_cache(cli, bouncer_url):
    env = {"DATABASE_URL": bouncer_url, "DB_STATEMENT_CACHE_SIZE": "0"}
    for _ in range(3):  # more statements than one server connection's lifetime
        result = cli("workspace", "create", "through pgbouncer", "--json", env=env)
        assert '"api_access": true' in result.stdout
