"""Forward-only SQL migrations, each in its own transaction, under an advisory lock.

Files are `migrations/NNNN_name.sql`, applied in order and recorded with their
SHA-256 in `schema_migrations`. Runners started together serialise on the lock, so each
file runs once; a file changed after it was applied stops the runner.

The lock is taken per transaction (`pg_advisory_xact_lock`), and no statement is
prepared for reuse: through a transaction pooler, a session's lock would stay on
whichever server connection took it. A migration runs beside live traffic, so it waits
at most LOCK_TIMEOUT for a table's lock: queued behind its ALTER, every read of the
table would wait as long as the transaction it waits for. It is then tried again, a
while later, up to LOCK_ATTEMPTS times.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .pool import Database

# An arbitrary constant: the advisory lock every migrating process takes.
MIGRATION_LOCK_ID = 0x1A77_AC4E
# Below the requests' own query timeouts: what a read queued behind a migration waits.
LOCK_TIMEOUT = "1s"
LOCK_ATTEMPTS = 20
RETRY_SECONDS = (0.5, 5.0)  # the first wait between attempts, doubled up to the second
CONNECT_TIMEOUT_SECONDS = 10.0

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class MigrationError(RuntimeError):
    """The migrations on disk and the ones applied to the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"unexpected migration file name: {path.name}")
        data = path.read_bytes()
        migrations.append(
            Migration(match.group(1), path.name, data.decode(), hashlib.sha256(data).hexdigest())
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def shipped_migrations(directory: Path) -> dict[str, str]:
    """The migrations a build ships, by version (none when it ships no directory)."""
    if not directory.is_dir():
        return {}
    return {
        match.group(1): path.name
        for path in sorted(directory.glob("*.sql"))
        if (match := _FILE_NAME.fullmatch(path.name))
    }


async def applied_versions(database: Database) -> set[str]:
    """The versions the database records as applied (none before the first migration)."""
    row = await database.fetchrow("SELECT to_regclass('schema_migrations') IS NOT NULL AS found")
    if row is None or not row["found"]:
        return set()
    return {row["version"] for row in await database.fetch("SELECT version FROM schema_migrations")}


async def apply_migrations(dsn: str, directory: Path) -> list[str]:
    """Apply what is pending; returns the names of the files applied (empty: nothing to do)."""
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn, statement_cache_size=0, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        async with conn.transaction():
            await _lock(conn)
            applied = await _check_applied(conn, migrations)
        done = []
        for migration in migrations:
            if migration.version not in applied and await _apply(conn, migration):
                done.append(migration.name)
        return done
    finally:
        await conn.close()


async def _lock(conn: asyncpg.Connection) -> None:
    """This transaction's turn: runners started together wait for each other here."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)


async def _check_applied(conn: asyncpg.Connection, migrations: list[Migration]) -> set[str]:
    """The versions already applied, once the files on disk are known to agree with them."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version     text PRIMARY KEY,
            name        text NOT NULL,
            checksum    text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    applied = {
        row["version"]: row
        for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    }
    on_disk = {m.version for m in migrations}
    missing = sorted(set(applied) - on_disk)
    if missing:
        raise MigrationError(f"applied migrations missing on disk: {', '.join(missing)}")
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"{migration.name} changed after it was applied; add a new migration instead"
            )
    return set(applied)


async def _apply(conn: asyncpg.Connection, migration: Migration) -> bool:
    """Apply one file in its own transaction; False if another runner applied it first."""
    wait = RETRY_SECONDS[0]
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await _lock(conn)
                found = "SELECT checksum FROM schema_migrations WHERE version = $1"
                checksum = await conn.fetchval(found, migration.version)
                if checksum == migration.checksum:
                    return False  # applied by another runner meanwhile
                if checksum is not None:
                    raise MigrationError(
                        f"{migration.name} was applied meanwhile with other contents"
                    )
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            return True
        except asyncpg.LockNotAvailableError:
            if attempt == LOCK_ATTEMPTS:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_SECONDS[1])
    raise MigrationError(
        f"{migration.name}: a table it changes stayed locked by other transactions "
        f"({LOCK_ATTEMPTS} attempts, each waiting {LOCK_TIMEOUT}); try again later"
    )
