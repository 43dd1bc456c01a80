"""Fixtures on real parts: Postgres (embedded, or TEST_DATABASE_URL) and SeaweedFS."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Before anything below imports botocore: credentials from the environment only, never the
# cloud metadata address nor a developer's AWS files (what every child inherits too).
from tests.support.environment import isolate_this_process

isolate_this_process()

import aiohttp.web_app  # noqa: E402
import asyncpg  # noqa: E402
import botocore.loaders  # noqa: E402
import botocore.session  # noqa: E402
import pytest  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from service.core.settings import DEFAULT_MIGRATIONS_DIR, Settings  # noqa: E402
from service.data.admin import create_key, create_workspace, register_attachment  # noqa: E402
from service.data.migrations import apply_migrations  # noqa: E402
from service.devstack.seaweed import S3Server, run_seaweedfs  # noqa: E402
from service.web.access_log import AccessLogger  # noqa: E402
from service.web.app import create_app  # noqa: E402
from service.web.logs import install_log_safety  # noqa: E402
from tests.support import environment  # noqa: E402
from tests.support.storage import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY  # noqa: E402

# Every log line of the suite, at every level, checked for secrets as it is logged.
pytest_plugins = ["tests.support.secrets_in_logs"]


def pytest_configure(config: pytest.Config) -> None:
    install_log_safety()  # what create_app and configure_logging do in the service
    # Every botocore session reads the AWS models through one loader, as the clients of
    # one session always do, rather than parsing the S3 models again for each app a test
    # builds (a quarter of a second each; production builds one app per process).
    botocore.session.create_loader = functools.cache(botocore.loaders.create_loader)


@pytest.fixture(autouse=True)
def release_apps() -> Iterator[None]:
    """aiohttp memoises each app's middleware chain in a module-level cache of 1024
    entries that holds the app itself: every app a test built would stay alive, with its
    botocore session (a full copy of the S3 models), pools and loop (about 4 GB by the end
    of the suite). One app per process, as in production, never notices."""
    yield
    aiohttp.web_app._cached_build_middleware.cache_clear()


class ServedAsInProduction(TestServer):
    """aiohttp's test server cancels a handler whose client went away; `serve` (aiohttp's
    default) lets it run on, and its next read of the body fails instead. The tests see
    what production does."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False})


@pytest.fixture
def serve_app(aiohttp_client: object) -> object:
    """Serve an app over real HTTP with the service's own access logger."""

    async def serve(app: web.Application) -> TestClient:
        server = ServedAsInProduction(app)
        await server.start_server(access_log_class=AccessLogger)
        return await aiohttp_client(server)  # type: ignore[operator, no-any-return]

    return serve


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN for a server we may create databases on."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def _create_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def fresh_database(postgres_server: str) -> Iterator[object]:
    """A factory of empty databases on the test server, all dropped at the end."""
    created: list[str] = []

    def make() -> str:
        name = "gw_test_" + secrets.token_hex(4)
        asyncio.run(_create_database(postgres_server, name))
        created.append(name)
        return _with_database(postgres_server, name)

    yield make
    for name in created:
        asyncio.run(_drop_database(postgres_server, name))


@pytest.fixture(scope="session")
def database_url(fresh_database: object) -> str:
    """The migrated database the suite shares; each test makes its own tenants."""
    dsn = fresh_database()  # type: ignore[operator]
    asyncio.run(apply_migrations(dsn, DEFAULT_MIGRATIONS_DIR))
    return dsn


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    workdir = tmp_path_factory.mktemp("seaweed")
    with run_seaweedfs(workdir, S3_ACCESS_KEY, S3_SECRET_KEY, buckets=(BUCKET,)) as s3:
        yield s3


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch, seaweed: S3Server) -> S3Server:
    """The standard AWS chain (environment variables) holds SeaweedFS's identity."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return seaweed


@pytest.fixture
def settings(database_url: str, s3_credentials: S3Server) -> Settings:
    return Settings(
        database_url=database_url,
        s3_endpoint_url=s3_credentials.endpoint_url,
        s3_region=s3_credentials.region,
    )


@pytest.fixture
async def client(serve_app: object, settings: Settings) -> TestClient:
    return await serve_app(create_app(settings))  # type: ignore[operator, no-any-return]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@dataclass
class Tenant:
    workspace_id: uuid.UUID
    read_token: str
    write_token: str
    read_key_id: uuid.UUID

    def auth(self, scope: str = "read") -> dict[str, str]:
        token = self.read_token if scope == "read" else self.write_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_tenant(conn: asyncpg.Connection) -> object:
    async def make(api_access: bool = True) -> Tenant:
        workspace_id = await create_workspace(conn, "tenant", api_access=api_access)
        read = await create_key(conn, workspace_id, scope="read")
        write = await create_key(conn, workspace_id, scope="write")
        return Tenant(workspace_id, read.token, write.token, read.id)

    return make


@pytest.fixture(scope="session")
def seaweed_client(seaweed: S3Server) -> object:
    """One blocking client for the suite's own set-up and checks: each new one parses the
    S3 models again (a quarter of a second). Clients are thread-safe."""
    return seaweed.client()


@pytest.fixture
def make_attachment(conn: asyncpg.Connection, seaweed_client: object) -> object:
    """Upload bytes to SeaweedFS and register them as an attachment of a workspace."""
    s3 = seaweed_client

    async def make(
        workspace_id: uuid.UUID,
        body: bytes = b"hello attachment\n",
        filename: str = "report.txt",
        content_type: str = "text/plain",
        key: str | None = None,
    ) -> uuid.UUID:
        object_key = key or f"objects/{uuid.uuid4()}"
        await asyncio.to_thread(s3.put_object, Bucket=BUCKET, Key=object_key, Body=body)  # type: ignore[attr-defined]
        return await register_attachment(
            conn,
            workspace_id,
            bucket=BUCKET,
            object_key=object_key,
            filename=filename,
            content_type=content_type,
            size_bytes=len(body),
        )

    return make


@pytest.fixture
def migrations_dir() -> Path:
    return DEFAULT_MIGRATIONS_DIR


@pytest.fixture
def gateway_env(database_url, seaweed):
    return environment.gateway_env(database_url, seaweed)


# The operator CLI as operators run it: its own process, real Postgres, real S3.
@pytest.fixture
def cli(database_url, seaweed, tmp_path):
    def run(*args, s3=seaweed, expect=0, env=None):
        result = subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=environment.gateway_env(database_url, s3, **(env or {})),
            cwd=tmp_path,  # not the checkout, whose .env would add settings
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == expect, (result.stdout, result.stderr)
        if expect == 2:
            assert result.stderr.startswith("attachments-gateway: error: ")
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        return result

    return run
