"""Fault injection: a Postgres of our own to stop and start, gateways as real processes,
and a load that records every answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.admin import create_key, create_workspace, register_attachment
from service.data.migrations import apply_migrations
from tests.conftest import NO_ABUSE_LIMITS, SECRETS_IN_LOGS
from tests.processes import Gateway


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


@dataclass
class Seeded:
    token: str
    key_id: uuid.UUID
    workspace_id: uuid.UUID
    attachment_ids: list[uuid.UUID]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def paths(self) -> list[str]:
        return [f"/api/v1/attachments/{a}/download" for a in self.attachment_ids]


async def seed(dsn: str, attachments: int = 20) -> Seeded:
    """A workspace, a read key and attachments (presigning needs no object to exist)."""
    conn = await asyncpg.connect(dsn)
    try:
        workspace_id = await create_workspace(conn, "faults", api_access=True)
        key = await create_key(conn, workspace_id, scope="read")
        ids = [
            await register_attachment(
                conn,
                workspace_id,
                bucket="attachments",
                object_key=f"objects/{i}",
                filename=f"file {i}.txt",
                content_type="text/plain",
                size_bytes=1,
            )
            for i in range(attachments)
        ]
        return Seeded(key.token, key.id, workspace_id, ids)
    finally:
        await conn.close()


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


@dataclass
class Answer:
    started: float  # time.monotonic()
    finished: float
    status: int  # 0: no HTTP answer at all (connection refused, reset, timeout)
    code: str | None = None  # the problem of an error body ("service_unavailable"...)
    retry_after: str | None = None


@dataclass
class Load:
    """Requests in `concurrency` loops until stopped; every answer is kept."""

    url: str
    paths: list[str]
    headers: dict[str, str]
    concurrency: int = 8
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _loop(self, index: int) -> None:
        i = index
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += self.concurrency
            self.answers.append(await self.one(path))

    async def one(self, path: str) -> Answer:
        started = time.monotonic()
        try:
            async with self._session.get(
                self.url + path, headers=self.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                code = None
                if response.status >= 400:
                    code = json.loads(body)["problem"]
                return Answer(
                    started, time.monotonic(), response.status, code,
                    response.headers.get("Retry-After"),
                )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError):
            return Answer(started, time.monotonic(), 0)

    def between(self, start: float, end: float) -> list[Answer]:
        """Answers to requests sent in [start, end)."""
        return [a for a in self.answers if start <= a.started < end]


async def metric(gateway: Gateway, name: str) -> float:
    """One sample of the gateway's /metrics, by its full name with labels."""
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def eventually(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def error_lines(gateway: Gateway) -> list[dict[str, object]]:
    return [line for line in gateway.json_lines() if line["level"] in ("error", "critical")]
