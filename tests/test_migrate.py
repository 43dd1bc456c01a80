"""The migration runner: ordered, recorded, idempotent, tamper-evident, replica-safe."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from dataclasses import replace

import asyncpg
import pytest

from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.migrations import (
    MigrationError,
    _apply,
    apply_migrations,
    load_migrations,
)
from tests.support.environment import process_env


@pytest.fixture
def empty_database(fresh_database) -> str:
    return fresh_database()


@pytest.fixture
def own_migrations(tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, directory)
    return directory


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


async def test_applies_everything_once_then_nothing(empty_database):
    names = [m.name for m in load_migrations(DEFAULT_MIGRATIONS_DIR)]
    assert await apply_migrations(empty_database, DEFAULT_MIGRATIONS_DIR) == names
    assert await apply_migrations(empty_database, DEFAULT_MIGRATIONS_DIR) == []
    assert {"workspaces", "api_keys", "attachments", "schema_migrations"} <= await tables(
        empty_database
    )


async def test_concurrent_runners_apply_each_file_once(empty_database):
    results = await asyncio.gather(
        *(apply_migrations(empty_database, DEFAULT_MIGRATIONS_DIR) for _ in range(4))
    )
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations(DEFAULT_MIGRATIONS_DIR))


async def test_a_changed_applied_file_stops_the_runner(empty_database, own_migrations):
    await apply_migrations(empty_database, own_migrations)
    first = sorted(own_migrations.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(empty_database, own_migrations)


async def test_a_new_file_is_applied_in_its_own_transaction(empty_database, own_migrations):
    await apply_migrations(empty_database, own_migrations)
    (own_migrations / "9998_good.sql").write_text("CREATE TABLE good_one (id int);")
    (own_migrations / "9999_bad.sql").write_text("CREATE TABLE bad_one (id int); SELECT 1/0;")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await apply_migrations(empty_database, own_migrations)
    present = await tables(empty_database)
    assert "good_one" in present and "bad_one" not in present
    (own_migrations / "9999_bad.sql").write_text("CREATE TABLE bad_one (id int);")
    assert await apply_migrations(empty_database, own_migrations) == ["9999_bad.sql"]


async def test_a_migration_waiting_for_a_busy_table_holds_its_readers_up_for_a_second_at_most(
    empty_database, own_migrations
):
    """An ALTER waiting for a long transaction's lock makes every later read of the table
    queue behind it, for as long as that transaction lasts: cold downloads' queries timed
    out while a migration ran beside them. It now waits LOCK_TIMEOUT at a time, and tries
    again until it gets its turn."""
    await apply_migrations(empty_database, own_migrations)
    (own_migrations / "9999_alter.sql").write_text("ALTER TABLE attachments ADD note text;")
    holder, reader = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
    try:
        busy = holder.transaction()
        await busy.start()
        await holder.execute("SELECT count(*) FROM attachments")  # its lock, held
        migrating = asyncio.create_task(apply_migrations(empty_database, own_migrations))
        for _ in range(4):
            await asyncio.sleep(0.5)
            async with asyncio.timeout(2.0):  # DB_STATEMENT_TIMEOUT's default
                assert await reader.fetchval("SELECT count(*) FROM attachments") == 0
        assert not migrating.done()  # still trying
        await busy.commit()
        assert await migrating == ["9999_alter.sql"]
    finally:
        await holder.close()
        await reader.close()


async def test_a_file_another_runner_applied_with_other_contents_stops_this_one(
    empty_database,
):
    """Each file is looked up again under the lock before it is applied: one that another
    runner applied meanwhile is skipped only if it is the same file."""
    await apply_migrations(empty_database, DEFAULT_MIGRATIONS_DIR)
    first = load_migrations(DEFAULT_MIGRATIONS_DIR)[0]
    conn = await asyncpg.connect(empty_database, statement_cache_size=0)
    try:
        assert await _apply(conn, first) is False  # the same file: nothing to do
        edited = replace(first, sql=first.sql + "\n-- edited\n", checksum="0" * 64)
        with pytest.raises(MigrationError, match="applied meanwhile with other contents"):
            await _apply(conn, edited)
    finally:
        await conn.close()


def test_badly_named_files_are_refused(own_migrations):
    (own_migrations / "notes.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="unexpected migration file name"):
        load_migrations(own_migrations)


def test_the_cli_migrates_and_reports(empty_database):
    env = process_env(DATABASE_URL=empty_database, PATH="/usr/bin:/bin")
    command = [sys.executable, "-m", "service", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    names = [m.name for m in load_migrations(DEFAULT_MIGRATIONS_DIR)]
    assert f"applied {len(names)} migration(s): {', '.join(names)}" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "applied 0 migration(s)" in again.stdout


def test_the_cli_reports_bad_settings_in_one_line():
    env = process_env(PRESIGN_EXPIRES_SECONDS="0", PATH="/usr/bin:/bin")
    result = subprocess.run(
        [sys.executable, "-m", "service", "migrate"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "PRESIGN_EXPIRES_SECONDS" in result.stderr
    assert "Traceback" not in result.stderr
