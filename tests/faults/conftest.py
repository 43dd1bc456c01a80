"""Fault injection: a Postgres of our own to stop and start, and gateways as real processes
(the load that records every answer is tests/support/load.py). Every test here is `faults`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.migrations import apply_migrations
from tests.support.environment import NO_ABUSE_LIMITS
from tests.support.processes import Gateway
from tests.support.secrets_in_logs import SECRETS_IN_LOGS

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this directory is a fault test (`-m "not faults"` leaves them out)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)


class RestartablePostgres:
    """An embedded server that only this test uses, so it may be stopped and started
    (the shared one, or TEST_DATABASE_URL's, must not be). Its DSN names a Unix socket
    that stays the same across restarts."""

    def __init__(self, workdir: Path) -> None:
        import pgserver

        self._server = pgserver.get_server(workdir, cleanup_mode="delete")
        self.dsn = self._server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        # -m fast: what a restart by an operator or an orchestrator does; sessions end.
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        self._server.cleanup()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    server = RestartablePostgres(tmp_path / "pg")
    asyncio.run(apply_migrations(server.dsn, DEFAULT_MIGRATIONS_DIR))
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def start_gateway(gateway_env, tmp_path) -> AsyncIterator[object]:
    started: list[Gateway] = []

    async def start(**overrides: str) -> Gateway:
        # The loads here are ours (a revoked key under load is a flood of 401s from one
        # address, which the failed-auth limit would answer).
        env = {
            **gateway_env,
            **NO_ABUSE_LIMITS,
            # Every level, so that the secrets check below sees everything they log.
            "LOG_LEVEL": "DEBUG",
        }
        gateway = Gateway({**env, **overrides}, log=tmp_path / f"gw{len(started)}.log")
        started.append(gateway)
        await gateway.wait_ready()
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
    for gateway in started:  # faults or not, no secret in any line at any level
        text = gateway.log.read_text()
        assert not SECRETS_IN_LOGS.search(text), SECRETS_IN_LOGS.search(text)
