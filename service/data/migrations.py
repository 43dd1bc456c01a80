"""Forward-only SQL migrations, each in its own transaction, under an advisory lock.

Files are `migrations/NNNN_name.sql`, applied in order and recorded with their
SHA-256 in `schema_migrations`. Replicas starting together serialise on the lock,
so each file runs once; a file changed after it was applied stops the runner.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .pool import Database

# An arbitrary constant: the advisory lock every migrating process takes.
MIGRATION_LOCK_ID = 0x1A77_AC4E

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
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            return await _apply_locked(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()


async def _apply_locked(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
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
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.name)
    return done
