"""The benchmark's own safeguards (bench/run.py): what it writes as the shipped
configuration's results, where its servers run, and which database it may empty."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import pytest

from bench import run
from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.migrations import apply_migrations


@pytest.mark.parametrize(
    ("arguments", "full"),
    [
        ([], True),
        (["--verify", "0"], False),  # every Location would read "0 bad" unchecked
        (["--seconds", "3"], False),
        (["--launches", "0"], False),
        (["--idle", "0"], False),
        (["--overload", "0"], False),
        (["--servers", "ceiling,shipped"], False),
        (["--set", "CACHE_TTL_SECONDS=3600"], False),
        (["--database-url", "postgresql://127.0.0.1:1/bench"], False),
    ],
)
def test_only_a_run_with_every_default_writes_the_results(arguments, full):
    parser = run.build_parser()
    assert run.is_full_run(parser, parser.parse_args(arguments)) is full


def test_servers_start_in_the_bench_directory_on_loopback(tmp_path, monkeypatch):
    """A `.env` where the bench is started (the README's setup leaves one in the checkout)
    is never read by the servers it measures."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HOST=0.0.0.0\nWORKERS=2\n")
    env = run.server_env("postgresql://127.0.0.1:1/bench", "INFO", audit=True)
    assert env["HOST"] == "127.0.0.1"
    where = tmp_path / "cwd.txt"
    code = f"import os, pathlib; pathlib.Path({str(where)!r}).write_text(os.getcwd())"
    process = run.start_process([sys.executable, "-c", code], env)
    assert process.wait(30) == 0
    assert where.read_text() == str(run.WORKDIR)
    assert not (run.WORKDIR / ".env").exists()


def test_a_database_holding_other_rows_is_never_emptied(fresh_database):
    dsn = fresh_database()
    small = run.Workload("tiny", 20, 2)

    async def scenario() -> None:
        await apply_migrations(dsn, DEFAULT_MIGRATIONS_DIR)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO workspaces (name) VALUES ('acme')")
            with pytest.raises(SystemExit, match="holds 1 workspaces the bench did not make"):
                await run.load_data(dsn, small)
            # Refused before anything is migrated, too.
            args = run.build_parser().parse_args(["--database-url", dsn])
            with pytest.raises(SystemExit, match="holds 1 workspaces the bench did not make"):
                await run.database(args, run.WORKDIR)
            assert await conn.fetchval("SELECT count(*) FROM workspaces") == 1
            # A database of the bench's own rows is loaded again and again.
            await conn.execute("DELETE FROM workspaces")
            for _ in range(2):
                assert len(await run.load_data(dsn, small)) == 2
                assert await conn.fetchval("SELECT count(*) FROM attachments") == 20
        finally:
            await conn.close()

    asyncio.run(scenario())
