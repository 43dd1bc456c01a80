"""A load that records every answer, and the seeded workspace it runs on."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from service.data.admin import create_key, create_workspace, register_attachment


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
                    started,
                    time.monotonic(),
                    response.status,
                    code,
                    response.headers.get("Retry-After"),
                )
        except (aiohttp.ClientError, TimeoutError):
            return Answer(started, time.monotonic(), 0)

    def between(self, start: float, end: float) -> list[Answer]:
        """Answers to requests sent in [start, end)."""
        return [a for a in self.answers if start <= a.started < end]
