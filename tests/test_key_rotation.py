"""Key rotation with overlap: a successor now, the old key until the overlap ends, on
every gateway's cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from service.core.tokens import digest
from service.data.admin import create_key, create_workspace, rotate_key
from service.data.invalidation import CHANNEL
from tests.support.waiting import eventually


async def test_the_old_key_keeps_an_earlier_expiry_and_the_successor_its_lifetime(conn):
    workspace_id = await create_workspace(conn, "short-lived")
    ends = datetime.now(UTC) + timedelta(hours=1)
    old = await create_key(conn, workspace_id, scope="write", name="cron", expires_at=ends)
    rotation = await rotate_key(conn, old.id, timedelta(days=7))
    assert rotation.overlap_ends_at == ends  # never extended by a rotation
    # The successor lives as long as the old key was given to, from the rotation on.
    (row,) = await conn.fetch("SELECT created_at, expires_at FROM api_keys WHERE id = $1", old.id)
    lifetime = row["expires_at"] - row["created_at"]
    successor = rotation.successor
    assert successor.expires_at is not None
    assert abs(successor.expires_at - (datetime.now(UTC) + lifetime)) < timedelta(seconds=5)
    assert (successor.scope, successor.token.startswith(successor.prefix)) == ("write", True)


async def test_a_key_without_expiry_gets_the_overlap_end_and_a_successor_without_one(conn):
    workspace_id = await create_workspace(conn, "long-lived")
    old = await create_key(conn, workspace_id)
    before = datetime.now(UTC)
    rotation = await rotate_key(conn, old.id, timedelta(hours=24))
    after = datetime.now(UTC)
    ends = rotation.overlap_ends_at
    assert before + timedelta(hours=24) - timedelta(seconds=1) <= ends
    assert ends <= after + timedelta(hours=24)
    assert rotation.successor.expires_at is None


async def test_the_new_expiry_is_announced_to_every_gateway(conn, database_url):
    """What the caches hear: migration 0003's trigger already NOTIFYs the old key's
    change (its expiry and successor), so rotation adds no NOTIFY of its own."""
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.append(args[3]))
        workspace_id = await create_workspace(conn, "announced")
        old = await create_key(conn, workspace_id)
        await eventually(lambda: f"key:{digest(old.token).hex()}" in heard, timeout=2)
        heard.clear()
        rotation = await rotate_key(conn, old.id, timedelta(hours=1))
        await eventually(lambda: f"key:{digest(old.token).hex()}" in heard, timeout=2)
        assert f"key:{digest(rotation.successor.token).hex()}" in heard
    finally:
        await listener.close()
