"""Key rotation with overlap: a successor now, the old key until the overlap ends, on
every gateway's cache; run as operators run it (the CLI as a process, real Postgres)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.cli.commands import UsageError, parse_overlap
from service.core.tokens import digest
from service.data.admin import create_key, create_workspace, list_keys, revoke_key, rotate_key
from service.data.caches import MISSING
from service.data.invalidation import CHANNEL
from service.web.app import create_app
from service.web.caches import CACHES
from tests.support.waiting import eventually

CREATE_FIELDS = {"id", "token", "prefix", "scope", "expires_at"}


def as_json(result):
    return json.loads(result.stdout)


async def status(client, path, token):
    headers = {"Authorization": f"Bearer {token}"}
    return (await client.get(path, headers=headers, allow_redirects=False)).status


@pytest.mark.slow
async def test_the_old_key_works_until_the_overlap_ends_even_from_a_running_cache(
    cli, serve_app, settings, conn, make_attachment
):
    """No code announces the new expiry: migration 0003's trigger NOTIFYs every UPDATE of
    api_keys that changes more than last_used_at, and this test holds it to that."""
    workspace_id = await create_workspace(conn, "rotation")
    old = await create_key(conn, workspace_id, scope="write", name="deploy bot")
    attachment_id = await make_attachment(workspace_id)
    download, metadata = f"/api/v1/attachments/{attachment_id}/download", "/api/v1/attachments/"
    # A TTL far beyond the test: only a notification can make the cache drop the old key.
    client = await serve_app(create_app(replace(settings, cache_ttl_seconds=300)))
    caches = client.app[CACHES]
    await eventually(lambda: caches.live, timeout=5)

    async def old_key_served_and_cached(expires_at):
        # Polled: a notification that arrives during a lookup (the key's own INSERT's,
        # say) rightly keeps its answer out of the cache.
        assert await status(client, download, old.token) == 307
        cached = caches.keys.peek(digest(old.token))
        return cached is not MISSING and cached.expires_at == expires_at

    await eventually(lambda: old_key_served_and_cached(None), timeout=5)
    flushes = caches.flushes

    # In a thread, so that this process's gateway hears the notification as it comes.
    result = await asyncio.to_thread(cli, "key", "rotate", str(old.id), "--overlap", "6s", "--json")
    rotated = as_json(result)
    assert set(rotated) == CREATE_FIELDS | {"rotated_from", "overlap_ends_at"}
    assert rotated["rotated_from"] == str(old.id) and rotated["scope"] == "write"
    assert rotated["expires_at"] is None  # the old key had no expiry either
    assert result.stdout.count(rotated["token"]) == 1 and rotated["token"] not in result.stderr
    overlap_ends = datetime.fromisoformat(rotated["overlap_ends_at"])
    assert timedelta(0) < overlap_ends - datetime.now(UTC) <= timedelta(seconds=6)

    # The cached old key is forgotten at once, not at its TTL.
    await eventually(lambda: caches.keys.peek(digest(old.token)) is MISSING, timeout=1)
    assert await status(client, download, rotated["token"]) == 307
    assert await status(client, f"{metadata}{attachment_id}", rotated["token"]) == 200
    # During the overlap, served and cached with its new expiry.
    await eventually(lambda: old_key_served_and_cached(overlap_ends.timestamp()), timeout=2)

    await asyncio.sleep(max(0.0, overlap_ends.timestamp() - time.time()) + 0.1)
    assert await status(client, download, old.token) == 401
    assert await status(client, f"{metadata}{attachment_id}", old.token) == 401
    assert await status(client, download, rotated["token"]) == 307
    assert caches.live and caches.flushes == flushes  # the cache was on all along

    (successor,) = [k for k in await list_keys(conn, workspace_id) if k["id"] != old.id]
    assert successor["name"] == "deploy bot" and successor["scope"] == "write"


@pytest.mark.slow
def test_key_list_shows_the_link_and_a_zero_overlap_ends_the_old_key_at_once(cli):
    workspace = as_json(cli("workspace", "create", "Rotations", "--json"))["id"]
    first = as_json(cli("key", "create", "--workspace", workspace, "--name", "ci", "--json"))
    human = cli("key", "rotate", first["id"], "--overlap", "0").stdout
    second_id = human.split()[6]  # "rotated key A into read key B"
    assert human.startswith(f"rotated key {first['id']} into read key {second_id}\nixk_")
    assert "(shown once: store it now)" in human
    assert f"key {first['id']} stops working at " in human

    keys = {k["id"]: k for k in as_json(cli("key", "list", "--workspace", workspace, "--json"))}
    assert keys[first["id"]]["status"] == "expired"
    assert keys[first["id"]]["replaced_by"] == second_id
    assert keys[first["id"]]["rotated_from"] is None
    assert keys[second_id]["status"] == "active" and keys[second_id]["name"] == "ci"
    assert keys[second_id]["rotated_from"] == first["id"]
    assert keys[second_id]["replaced_by"] is None

    listing = cli("key", "list", "--workspace", workspace).stdout.splitlines()
    (old_line,) = [line for line in listing if line.startswith(first["id"])]
    (new_line,) = [line for line in listing if line.startswith(second_id)]
    assert f"replaced by {second_id} (overlap ends " in old_line and "expired" in old_line
    assert f"rotated from {first['id']}" in new_line and "active" in new_line
    second_token = human.splitlines()[1]
    assert first["token"] not in "\n".join(listing) and second_token not in "\n".join(listing)


def refused(cli, key_id, overlap="1h"):
    result = cli("key", "rotate", key_id, f"--overlap={overlap}", expect=2)
    return result.stderr.removeprefix("attachments-gateway: error: ").strip()


@pytest.mark.slow
async def test_expired_revoked_rotated_and_unknown_keys_are_refused_in_one_line(cli, conn):
    workspace_id = await create_workspace(conn, "refusals")
    expired = await create_key(
        conn, workspace_id, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    revoked = await create_key(conn, workspace_id)
    await revoke_key(conn, revoked.id)
    rotated = await create_key(conn, workspace_id)
    successor = (await rotate_key(conn, rotated.id, timedelta(hours=1))).successor
    unknown = uuid.uuid4()
    keys_before = len(await list_keys(conn, workspace_id))

    def run(*args):
        return asyncio.to_thread(refused, cli, *args)

    assert await run(str(expired.id)) == f"key {expired.id} has expired: create a new key instead"
    assert await run(str(revoked.id)) == f"key {revoked.id} is revoked: create a new key instead"
    assert (
        await run(str(rotated.id))
        == f"key {rotated.id} was already rotated: its successor is {successor.id}"
    )
    assert await run(str(unknown)) == f"no key {unknown}"
    assert await run("not-a-uuid") == "key 'not-a-uuid' is not a UUID"
    assert len(await list_keys(conn, workspace_id)) == keys_before  # no successor made


@pytest.mark.parametrize("overlap", ["-1h", "1x", "1.5h", "24", "366d", "", "²d"])
@pytest.mark.slow
def test_a_bad_overlap_is_one_line_and_exit_2(cli, overlap):
    message = refused(cli, str(uuid.uuid4()), overlap)
    assert message.startswith(f"--overlap {overlap!r}: use seconds, minutes, hours or days")


@pytest.mark.slow
def test_an_overlap_is_required_and_a_bare_negative_one_is_taken_for_an_option(cli):
    cli("key", "rotate", str(uuid.uuid4()), expect=2)
    result = cli("key", "rotate", str(uuid.uuid4()), "--overlap", "-1h", expect=2)
    assert "argument --overlap: expected one argument" in result.stderr


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("365d", 31536000), ("0", 0)],
)
def test_overlaps_are_seconds_minutes_hours_or_days(value, seconds):
    assert parse_overlap(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value", ["-1h", "-0", "1x", "1.5h", "24", "366d", "", "h", " 1h", "²d", "9" * 30 + "d"]
)
def test_anything_else_is_not_an_overlap(value):
    with pytest.raises(UsageError, match="--overlap"):
        parse_overlap(value)


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


@pytest.mark.slow
async def test_of_two_rotations_at_once_only_one_succeeds(cli, conn, database_url):
    """The old key's row is locked: a rotation that starts while another holds it waits
    for it, then finds the key rotated. Without the lock it would read the key as it was
    and make a second successor."""
    workspace_id = await create_workspace(conn, "race")
    old = await create_key(conn, workspace_id)
    watcher = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            first = await rotate_key(conn, old.id, timedelta(hours=1))
            second = asyncio.create_task(asyncio.to_thread(refused, cli, str(old.id)))
            # Commit only once the CLI waits on a lock in this database.
            await eventually(lambda: _waiting_on_a_lock(watcher), timeout=30)
        message = await second
    finally:
        await watcher.close()
    assert message == f"key {old.id} was already rotated: its successor is {first.successor.id}"
    assert len(await list_keys(conn, workspace_id)) == 2


async def _waiting_on_a_lock(watcher):
    return await watcher.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
