"""The download audit trail: what is recorded, how it is written, how it is read back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from service.core.principal import Principal
from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.audit.trail import COLUMNS, AuditTrail, maintain_partitions
from service.data.migrations import apply_migrations
from service.devstack.ports import free_port
from service.web.app import create_app
from service.web.audit import AUDIT
from tests.support.environment import process_env
from tests.support.http import raw_request
from tests.support.proxy import postgres_proxy


def audit_record(at, workspace_id, **fields):
    """A row in COLUMNS order, with plain defaults for what a test does not care about."""
    values = {
        "at": at,
        "workspace_id": workspace_id,
        "key_id": uuid.uuid4(),
        "key_prefix": "ixk_test",
        "attachment_id": None,
        "method": "GET",
        "outcome": "issued",
        "status": 307,
        "client_address": None,
        "user_agent": None,
        "expires_at": None,
        **fields,
    }
    return tuple(values[column] for column in COLUMNS)


def record_downloads(trail, workspace_id, times, key_id=None, key_prefix="ixk_test"):
    """Downloads handed to the trail as the auth middleware hands them over."""
    attachment_id = str(uuid.uuid4())
    principal = Principal(key_id or uuid.uuid4(), workspace_id, "read", key_prefix, True, None)
    for _ in range(times):
        trail.record(principal, attachment_id, "GET", "issued", 307, None, "test", None)


async def recorded(conn, workspace_id):
    return await conn.fetch(
        "SELECT * FROM download_audit WHERE workspace_id = $1 ORDER BY at", workspace_id
    )


async def test_issued_urls_and_refusals_after_authentication_are_recorded(
    serve_app, settings, conn, make_tenant, make_attachment
):
    app = create_app(replace(settings, trusted_proxies="127.0.0.1/32"))
    client = await serve_app(app)
    tenant, other = await make_tenant(), await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    theirs = await make_attachment(other.workspace_id)
    path = "/api/v1/attachments/{}/download"
    # Sent raw (aiohttp's client refuses these): a tab and a right-to-left override are
    # what HTTP lets through of the characters that can mislead a terminal.
    agent = "curl/8\t\u202eevil ".encode() + b"x" * 400
    ok = await raw_request(
        client.host,
        client.port,
        b"GET " + path.format(attachment_id).encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + tenant.read_token.encode() + b"\r\n"
        b"X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nUser-Agent: " + agent + b"\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert ok.status == 307
    assert (await client.get(path.format(theirs), headers=tenant.auth())).status == 404
    assert (await client.get(path.format("nope"), headers=tenant.auth())).status == 404
    assert (await client.delete(path.format(attachment_id), headers=tenant.auth())).status == 403
    assert (await client.get(path.format(attachment_id))).status == 401  # before auth: not
    await app[AUDIT].flush()

    rows = await recorded(conn, tenant.workspace_id)
    assert [(r["outcome"], r["status"], r["method"]) for r in rows] == [
        ("issued", 307, "GET"),
        ("not_found", 404, "GET"),
        ("not_found", 404, "GET"),
        ("insufficient_scope", 403, "DELETE"),
    ]
    issued = rows[0]
    assert issued["attachment_id"] == attachment_id and issued["key_id"] == tenant.read_key_id
    assert issued["key_prefix"] == tenant.read_token[:12]
    assert str(issued["client_address"]) == "203.0.113.9"  # the proxy's client
    assert issued["user_agent"].startswith("curl/8??evil ")  # nothing unprintable
    assert len(issued["user_agent"]) == 256
    expires_at = json.loads(ok.body)["expires_at"]
    assert issued["expires_at"] == datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    assert rows[1]["attachment_id"] == theirs and rows[2]["attachment_id"] is None
    assert await recorded(conn, other.workspace_id) == []  # tried on it, not by it


async def test_a_head_is_recorded_only_when_its_answer_carries_the_url(
    serve_app, settings, conn, make_tenant, make_attachment
):
    app = create_app(replace(settings, audit_enabled=True))
    client = await serve_app(app)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    download = f"/api/v1/attachments/{attachment_id}/download"
    links = f"/api/v1/attachments/download-links?id={attachment_id}"
    head = await client.head(download, headers=tenant.auth(), allow_redirects=False)
    assert head.status == 307 and "X-Amz-Signature=" in head.headers["Location"]
    # The JSON link's URL is in the body, which a HEAD's answer leaves out.
    assert (await client.head(download + "?redirect=false", headers=tenant.auth())).status == 200
    assert (await client.head(links, headers=tenant.auth())).status == 200
    assert (await client.get(links, headers=tenant.auth())).status == 200
    await app[AUDIT].flush()
    rows = await recorded(conn, tenant.workspace_id)
    assert [(r["outcome"], r["status"], r["method"]) for r in rows] == [
        ("issued", 307, "HEAD"),
        ("issued", 200, "GET"),
    ]


async def test_x_forwarded_for_in_several_lines_is_one_list(
    serve_app, settings, conn, make_tenant, make_attachment
):
    """A proxy that adds its own line (HAProxy's `option forwardfor`) after one the client
    forged: the address it appended is the client's, not the forged one before it."""
    client = await serve_app(create_app(replace(settings, trusted_proxies="127.0.0.1/32")))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response = await raw_request(
        client.host,
        client.port,
        f"GET /api/v1/attachments/{attachment_id}/download HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {tenant.read_token}\r\n"
        "X-Forwarded-For: 198.51.100.66\r\nX-Forwarded-For: 203.0.113.7\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert response.status == 307
    await client.app[AUDIT].flush()
    (row,) = await recorded(conn, tenant.workspace_id)
    assert str(row["client_address"]) == "203.0.113.7"


async def test_an_address_with_a_scope_is_not_believed(
    serve_app, settings, conn, make_tenant, make_attachment
):
    """`fe80::1%<text>` parses as an address, its scope free text: a client's forgery
    passed on by a proxy that does not append its own line."""
    client = await serve_app(create_app(replace(settings, trusted_proxies="127.0.0.1/32")))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    headers = {**tenant.auth(), "X-Forwarded-For": "fe80::1%x|3:400:spend"}
    url = f"/api/v1/attachments/{attachment_id}/download"
    assert (await client.get(url, headers=headers, allow_redirects=False)).status == 307
    await client.app[AUDIT].flush()
    (row,) = await recorded(conn, tenant.workspace_id)
    assert str(row["client_address"]) == "127.0.0.1"  # the proxy's own: nothing believed


async def test_x_forwarded_for_counts_only_from_trusted_proxies(
    serve_app, settings, conn, make_tenant, make_attachment
):
    client = await serve_app(create_app(settings))  # no TRUSTED_PROXIES
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    headers = {**tenant.auth(), "X-Forwarded-For": "203.0.113.9"}
    url = f"/api/v1/attachments/{attachment_id}/download"
    await client.get(url, headers=headers, allow_redirects=False)
    await client.app[AUDIT].flush()
    (row,) = await recorded(conn, tenant.workspace_id)
    assert str(row["client_address"]) == "127.0.0.1"


@pytest.fixture
async def pool(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1)
    yield pool
    await pool.close()


async def rows_of(pool, workspace_id):
    return await pool.fetchval(
        "SELECT count(*) FROM download_audit WHERE workspace_id = $1", workspace_id
    )


async def test_a_full_queue_drops_and_counts_instead_of_waiting(pool):
    trail = AuditTrail(pool, queue_size=3, flush_seconds=1)
    workspace, key = uuid.uuid4(), uuid.uuid4()
    record_downloads(trail, workspace, 5, key_id=key)
    assert (len(trail), trail.dropped) == (3, 2)
    await trail.flush()
    assert (len(trail), trail.written) == (0, 3)
    assert await rows_of(pool, workspace) == 3


async def test_a_backlog_is_written_in_few_round_trips_on_a_busy_loop(pool):
    """With 1,024 busy connections every await on Postgres costs a whole loop iteration:
    the writer must drain a backlog in a handful of them, or it falls behind for good."""
    trail = AuditTrail(pool, queue_size=30_000, flush_seconds=1)
    workspace = uuid.uuid4()
    record_downloads(trail, workspace, 25_000)
    iterations = 0

    async def busy_requests():  # each iteration holds the loop as a full one would
        nonlocal iterations
        while True:
            iterations += 1
            time.sleep(0.02)
            await asyncio.sleep(0)

    busy = asyncio.create_task(busy_requests())
    await trail.flush()
    busy.cancel()
    assert (len(trail), trail.written) == (0, 25_000)
    # Measured: 43-50 iterations (one acquire, three COPYs encoded in turns of 1,000
    # rows, flow control, Postgres's own time); one acquire and COPY per 1,000 rows: 226.
    assert iterations <= 100, iterations
    assert await rows_of(pool, workspace) == 25_000


async def test_writing_a_large_batch_lets_requests_in_between(pool):
    """Encoding 10,000 rows in one pass held the loop ~30 ms; in turns of 1,000, ~3.5 ms."""
    holds = []
    for _ in range(3):  # the best of three: one preemption by the OS is not ours
        trail = AuditTrail(pool, queue_size=20_000, flush_seconds=1)
        record_downloads(trail, uuid.uuid4(), 10_000)
        gaps = []

        async def ticker(gaps=gaps):
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        await trail.flush()
        ticking.cancel()
        assert trail.written == 10_000
        holds.append(max(gaps))
    assert min(holds) < 0.015, holds


async def test_rows_queued_during_a_flush_wait_for_the_next_and_none_is_written_twice(pool):
    """A flush writes what was queued when it began (chasing rows that arrive meanwhile
    would run one small COPY after another under load); a second flush at the same time
    (shutdown's, beside the run loop's) waits for the first rather than COPY its rows."""
    # Room for every row that arrives meanwhile (10 a loop turn, however long Postgres
    # takes): a drop from a full queue is another test's subject.
    trail = AuditTrail(pool, queue_size=10_000_000, flush_seconds=1)
    workspace = uuid.uuid4()
    record_downloads(trail, workspace, 12_000)  # two COPYs, a turn of the loop between chunks
    recorded = 12_000

    async def requests_meanwhile():
        nonlocal recorded
        while True:
            record_downloads(trail, workspace, 10)
            recorded += 10
            await asyncio.sleep(0)

    arriving = asyncio.create_task(requests_meanwhile())
    await asyncio.sleep(0)
    await asyncio.gather(trail.flush(), trail.flush())
    arriving.cancel()
    assert len(trail) > 0  # arrived during the second flush, and not chased by it
    assert trail.written + len(trail) == recorded
    await trail.flush()
    assert (len(trail), trail.dropped) == (0, 0)
    assert await rows_of(pool, workspace) == trail.written == recorded


async def test_a_failed_write_is_kept_for_the_next_flush(database_url):
    dead = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", min_size=0, timeout=1
    )
    trail = AuditTrail(dead, queue_size=10, flush_seconds=1)
    record_downloads(trail, uuid.uuid4(), 1)
    await trail.flush()  # no exception
    assert (len(trail), trail.written, trail.dropped) == (1, 0, 0)
    await dead.close()


async def test_a_batch_postgres_refuses_is_dropped_not_retried_forever(pool):
    trail = AuditTrail(pool, queue_size=10, flush_seconds=1)
    workspace = uuid.uuid4()
    record_downloads(trail, workspace, 2, key_prefix="ixk_\x00")  # no Postgres text holds NUL
    await trail.flush()
    assert (len(trail), trail.written, trail.dropped) == (0, 0, 2)
    record_downloads(trail, workspace, 1)  # the rows behind it are not held up
    await trail.flush()
    assert (len(trail), trail.written, trail.dropped) == (0, 1, 2)
    assert await rows_of(pool, workspace) == 1


async def test_monthly_partitions_and_retention(pool):
    workspace = uuid.uuid4()
    old = datetime(2024, 1, 15, tzinfo=UTC)
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "download_audit", records=[audit_record(old, workspace)], columns=COLUMNS
        )
    # "Today" is 2024-01-20: January and February get partitions; January's row moves.
    await maintain_partitions(pool, retention_days=400, today=date(2024, 1, 20))
    where = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM download_audit WHERE workspace_id = $1",
        workspace,
    )
    assert where == "download_audit_202401"
    names = await pool.fetch("SELECT relname FROM pg_class WHERE relname ~ '^download_audit_2'")
    assert {"download_audit_202401", "download_audit_202402"} <= {r[0] for r in names}
    # Two years on, January 2024 is past a 400-day retention: its partition goes.
    await maintain_partitions(pool, retention_days=400, today=date(2026, 1, 20))
    assert await pool.fetchval("SELECT to_regclass('download_audit_202401')") is None
    assert await pool.fetchval("SELECT to_regclass('download_audit_202601')") is not None


@pytest.mark.slow
def test_the_audit_command_reads_it_back(database_url):
    workspace_id, attachment_id = uuid.uuid4(), uuid.uuid4()

    async def insert():
        conn = await asyncpg.connect(database_url)
        try:
            now = datetime.now(UTC)
            records = [
                audit_record(
                    now - timedelta(hours=2),
                    workspace_id,
                    key_prefix="ixk_AAAAAAAA",
                    attachment_id=attachment_id,
                    client_address="203.0.113.9",
                    user_agent="curl/8",
                    expires_at=now,
                ),
                audit_record(
                    now - timedelta(days=3),
                    workspace_id,
                    key_prefix="ixk_BBBBBBBB",
                    outcome="not_found",
                    status=404,
                    client_address="203.0.113.9",
                ),
            ]
            await conn.copy_records_to_table("download_audit", records=records, columns=COLUMNS)
        finally:
            await conn.close()

    asyncio.run(insert())
    env = process_env(DATABASE_URL=database_url)
    base = [sys.executable, "-m", "service", "audit", "--workspace", str(workspace_id)]

    def run(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env, check=True)

    recent = json.loads(run("--json").stdout)  # default: the last day
    assert [r["outcome"] for r in recent] == ["issued"]
    assert recent[0]["client_address"] == "203.0.113.9"
    assert len(json.loads(run("--since", "7d", "--json").stdout)) == 2
    only = json.loads(run("--since", "7d", "--attachment", str(attachment_id), "--json").stdout)
    assert [r["attachment_id"] for r in only] == [str(attachment_id)]
    assert "ixk_AAAAAAAA" in run().stdout
    bad = subprocess.run([*base, "--since", "yesterday"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--since" in bad.stderr


async def test_rows_written_while_their_month_s_partition_is_made_are_kept(fresh_database):
    """A fresh database (or one whose month has no partition yet): the gateways make it at
    start while requests are already being audited. A COPY that routed its rows to the
    default partition as the new one was attached meanwhile is refused (23514); the rows
    were not bad, and must be written, not dropped."""
    dsn = await asyncio.to_thread(fresh_database)  # (it runs its own event loop)
    await apply_migrations(dsn, DEFAULT_MIGRATIONS_DIR)
    proxy, slow_dsn = postgres_proxy(dsn, delay=0.05)
    async with proxy:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        slow_pool = await asyncpg.create_pool(slow_dsn.format(port=proxy.port), min_size=1)
        try:
            trail = AuditTrail(pool, queue_size=100_000, flush_seconds=1)
            workspace = uuid.uuid4()
            maintenance = asyncio.create_task(
                maintain_partitions(slow_pool, 400, datetime.now(UTC).date())
            )
            recorded_count = 0
            while not maintenance.done():
                record_downloads(trail, workspace, 20)
                recorded_count += 20
                await trail.flush()
            await maintenance
            await trail.flush()
        finally:
            await slow_pool.close()
            await pool.close()
    assert recorded_count >= 200  # many flushes raced the maintenance
    assert trail.dropped == 0
    conn = await asyncpg.connect(dsn)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM download_audit WHERE workspace_id = $1", workspace
            )
            == recorded_count
        )
        assert await conn.fetchval("SELECT count(*) FROM download_audit_default") == 0
    finally:
        await conn.close()
