"""The audit trail's hand-written binary COPY against asyncpg's: the same facts must give
the same rows (audit_copy.py), whatever a client puts in its request."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.ids import CANONICAL_UUID
from service.core.principal import Principal
from service.core.times import epoch_us
from service.data.audit.copy_format import ROWS_PER_TURN, copy_data, printable
from service.data.audit.queue import AuditQueue
from service.data.audit.trail import COLUMNS, AuditTrail

EDGE_ADDRESSES = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "10.1.2.3",
    "::",
    "::1",
    "2001:db8::1",
    "::ffff:192.0.2.1",
    "fe80::1%eth0",
    "2001:db8:85a3::8a2e:370:7334",
    "1:2:3:4:5:6:7:8",
]
# What a peer address should never be, but must not stop a batch if it is.
NOT_ADDRESSES = ["/run/gateway.sock", "999.1.1.1", "::g", "fe80::1%", "1.2.3.4\x00"]
# What the header parser lets through (aiohttp decodes with surrogateescape) and worse.
EDGE_AGENTS = [
    "",
    "curl/8.5",
    "a\tb",
    "a\\nb\\\\",
    "\x00",
    "\x7f\x1b[31m",
    "\u202eevil",
    "\udcff\udcfe",
    "é" * 300,
    "x" * 256,
    "x" * 257,
    "\\N",
    "日本語 ブラウザ",
]


def principals() -> st.SearchStrategy[Principal]:
    prefixes = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
    return st.builds(
        Principal, st.uuids(), st.uuids(), st.just("read"), prefixes, st.just(True), st.none()
    )


def raw_ids() -> st.SearchStrategy[str]:
    canonical = st.uuids().map(str)
    return st.one_of(
        canonical,
        canonical.map(str.upper),
        canonical.map(lambda u: u + "\n"),  # passed a "$"-anchored check once
        canonical.map(lambda u: u.replace("-", "")),
        st.text(max_size=40),
    )


def expiries() -> st.SearchStrategy[datetime | None]:
    zones = st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    )
    return st.one_of(
        st.none(),
        st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=zones),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[tuple]:
    """Queued downloads as AuditTrail.record queues them, with repeats (the encoder caches
    what repeats within a batch)."""
    keys = draw(st.lists(principals(), min_size=1, max_size=3))
    agents = st.one_of(st.none(), st.sampled_from(EDGE_AGENTS), st.text(max_size=300))
    addresses = st.one_of(
        st.none(),
        st.just(""),
        st.sampled_from(EDGE_ADDRESSES),
        st.ip_addresses().map(str),
        st.sampled_from(NOT_ADDRESSES),
    )
    seen = st.tuples(
        st.integers(0, 4_102_444_800 * 10**9),  # 1970 to 2100, in nanoseconds
        st.sampled_from(keys),
        raw_ids(),
        st.sampled_from(["GET", "HEAD", "DELETE", "PROPFIND", "M-SEARCH"]),
        st.sampled_from(["issued", "not_found", "upload_pending", "insufficient_scope"]),
        st.integers(100, 599),
        addresses,
        agents,
        expiries(),
    )
    return draw(st.lists(seen, min_size=1, max_size=25))


def ip_address_or_none(address: str | None):
    try:
        return ipaddress.ip_address(address.partition("%")[0]) if address else None
    except ValueError:
        return None


def reference_row(seen: tuple) -> tuple:
    """The row asyncpg is given for the same facts: the reference the encoder must match."""
    seen_ns, principal, raw_id, method, outcome, status, address, agent, expires_at = seen
    seconds, nanoseconds = divmod(seen_ns, 10**9)
    return (
        datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanoseconds // 1000),
        principal.workspace_id,
        principal.key_id,
        principal.key_prefix,
        raw_id if CANONICAL_UUID.fullmatch(raw_id) else None,  # asyncpg parses the text
        method,
        outcome,
        status,
        ip_address_or_none(address),
        printable(agent),
        expires_at,
    )


def queued(batch: list[tuple]) -> AuditQueue:
    """The queue as AuditTrail.record fills it: the expiry as PresignedUrl carries it."""
    queue = AuditQueue()
    for *seen, expires_at in batch:
        queue.append(*seen, None if expires_at is None else epoch_us(expires_at))
    return queue


async def written_both_ways(database_url: str, batch: list[tuple]) -> tuple[list, list]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE ours (LIKE download_audit)")
        await conn.execute("CREATE TEMP TABLE reference (LIKE download_audit)")
        source = copy_data(queued(batch), len(batch))
        await conn.copy_to_table("ours", source=source, columns=COLUMNS, format="binary")
        await conn.copy_records_to_table(
            "reference", records=[reference_row(seen) for seen in batch], columns=COLUMNS
        )
        ours = [tuple(row) for row in await conn.fetch("SELECT * FROM ours")]
        reference = [tuple(row) for row in await conn.fetch("SELECT * FROM reference")]
        return ours, reference
    finally:
        await conn.close()


@pytest.mark.slow  # hundreds of generated cases
@settings(max_examples=150, deadline=None)
@given(batches())
def test_the_encoder_writes_what_asyncpg_writes(database_url, batch):
    ours, reference = asyncio.run(written_both_ways(database_url, batch))
    assert sorted(ours, key=repr) == sorted(reference, key=repr)
    assert len(ours) == len(batch)


async def test_every_edge_address_and_user_agent_across_chunk_boundaries(database_url):
    """More rows than one chunk, so rows meet chunk boundaries; every edge value in turn."""
    keys = [
        Principal(uuid.uuid4(), uuid.uuid4(), "write", f"ixk_{i:08d}", True, None) for i in range(7)
    ]
    now = epoch_us(datetime.now(UTC))
    batch = [
        (
            now * 1000 + index * 1_234_567,
            keys[index % len(keys)],
            str(uuid.uuid4()) if index % 5 else "not-an-id",
            ("GET", "HEAD")[index % 2],
            "issued",
            307,
            EDGE_ADDRESSES[index % len(EDGE_ADDRESSES)],
            EDGE_AGENTS[index % len(EDGE_AGENTS)],
            datetime.now(UTC) + timedelta(seconds=index % 900),
        )
        for index in range(2 * ROWS_PER_TURN + 17)
    ]
    ours, reference = await written_both_ways(database_url, batch)
    assert ours == reference  # COPY keeps the order of a fresh table's rows
    assert len(ours) == len(batch)
    assert {row[0] for row in ours} == {reference_row(seen)[0] for seen in batch}


async def test_a_hostile_id_does_not_cost_the_batch_its_rows(database_url):
    """An id with a final newline matched the old "$"-anchored check; Postgres would have
    refused it, and with it every row of its batch."""
    pool = await asyncpg.create_pool(database_url, min_size=1)
    try:
        trail = AuditTrail(pool, queue_size=10, flush_seconds=1)
        workspace = uuid.uuid4()
        principal = Principal(uuid.uuid4(), workspace, "read", "ixk_test0000", True, None)
        good = str(uuid.uuid4())
        for raw_id in (good, good + "\n", good + "%0A"):
            trail.record(principal, raw_id, "GET", "not_found", 404, None, None, None)
        await trail.flush()
        assert (trail.written, trail.dropped) == (3, 0)
        ids = await pool.fetch(
            "SELECT attachment_id FROM download_audit WHERE workspace_id = $1", workspace
        )
        assert sorted(row[0] is None for row in ids) == [False, True, True]
        assert uuid.UUID(good) in {row[0] for row in ids}
    finally:
        await pool.close()


async def test_text_that_is_not_utf_8_is_written_with_a_replacement(database_url):
    """A lone surrogate (what surrogateescape makes of a stray byte) cannot be encoded:
    the writer writes "?" for it rather than stopping on an exception."""
    principal = Principal(uuid.uuid4(), uuid.uuid4(), "read", "ixk_\udcff", True, None)
    seen = (0, principal, "x", "GET", "issued", 307, None, None, None)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE ours (LIKE download_audit)")
        source = copy_data(queued([seen]), 1)
        await conn.copy_to_table("ours", source=source, columns=COLUMNS, format="binary")
        assert await conn.fetchval("SELECT key_prefix FROM ours") == "ixk_?"
    finally:
        await conn.close()
