"""Rules 6 and 7 and the 500 path: storage or database missing, and our own bugs."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from dataclasses import replace

import pytest

from service.core.settings import Settings
from service.web.app import create_app
from service.web.database import DATABASE
from tests.support.http import assert_problem


async def download(client, attachment_id, headers, method="GET"):
    response = await client.request(
        method,
        f"/api/v1/attachments/{attachment_id}/download",
        headers=headers,
        allow_redirects=False,
    )
    return response, await response.read()


def assert_retry_after(response):
    assert int(response.headers["Retry-After"]) > 0


@pytest.fixture
def no_aws_credentials(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "storage",
    [
        {},  # nothing at all
        {"s3_region": "eu-west-1"},  # a region but no credentials
        {"s3_endpoint_url": "http://127.0.0.1:9"},  # an endpoint but no credentials
    ],
    ids=["nothing", "region-only", "endpoint-only"],
)
async def test_without_storage_it_starts_and_answers_503_only_where_storage_is_needed(
    serve_app, database_url, no_aws_credentials, make_tenant, make_attachment, storage
):
    client = await serve_app(create_app(Settings(database_url=database_url, **storage)))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)

    response, body = await download(client, attachment_id, tenant.auth())
    assert response.status == 503
    assert_retry_after(response)
    assert response.headers["Cache-Control"] == "no-store"
    payload = assert_problem(503, body, "storage_not_configured")
    assert payload["message"] == "The service is temporarily unavailable. Please try again later"
    assert (await download(client, attachment_id, tenant.auth(), "HEAD"))[0].status == 503

    # The rules before storage still hold.
    assert (await download(client, attachment_id, {}))[0].status == 401
    assert (await download(client, uuid.uuid4(), tenant.auth()))[0].status == 404
    blocked = await make_tenant(api_access=False)
    assert (await download(client, attachment_id, blocked.auth()))[0].status == 403


async def test_database_refusing_connections_is_503(serve_app, settings, make_tenant):
    tenant = await make_tenant()
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    offline = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres",
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
    )
    client = await serve_app(create_app(offline))
    response, body = await download(client, uuid.uuid4(), tenant.auth())
    assert response.status == 503
    assert_retry_after(response)
    assert_problem(503, body, "service_unavailable")


async def test_a_database_that_never_answers_is_503_within_the_timeouts(serve_app, make_tenant):
    """A listener that accepts TCP and then says nothing: connect must not hang."""
    tenant = await make_tenant()
    accepted = []
    silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    blackholed = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        db_connect_timeout=0.5,
        db_acquire_timeout=1.0,
    )
    async with silent:
        client = await serve_app(create_app(blackholed))
        started = time.monotonic()
        response, body = await download(client, uuid.uuid4(), tenant.auth())
        elapsed = time.monotonic() - started
        for writer in accepted:
            writer.close()
    assert response.status == 503
    assert_problem(503, body, "service_unavailable")
    assert elapsed < 2.0


async def test_pool_acquire_timeout_is_503(serve_app, settings, make_tenant):
    tenant = await make_tenant()
    app = create_app(replace(settings, db_pool_max_size=1, db_acquire_timeout=0.3))
    client = await serve_app(app)
    async with app[DATABASE].pool.acquire():  # every connection of the pool is busy
        started = time.monotonic()
        response, body = await download(client, uuid.uuid4(), tenant.auth())
        assert time.monotonic() - started < 1.5
    assert response.status == 503
    assert_retry_after(response)
    assert_problem(503, body, "service_unavailable")
    # The pool is whole again afterwards.
    assert (await download(client, uuid.uuid4(), tenant.auth()))[0].status == 404


async def test_a_database_error_of_any_kind_is_503_and_its_class_is_logged(
    serve_app, unmigrated_database, settings, make_tenant, caplog
):
    """A database that refuses a statement for a reason of its own (here: no schema, the
    migrations never ran) is unusable to the request: 503, never a 500."""
    tenant = await make_tenant()
    unmigrated = replace(settings, database_url=unmigrated_database)
    client = await serve_app(create_app(unmigrated))
    caplog.set_level(logging.WARNING)
    response = await client.get(
        f"/api/v1/attachments/{uuid.uuid4()}/download",
        headers={**tenant.auth(), "X-Request-ID": "trace-503"},
        allow_redirects=False,
    )
    body = await response.read()
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    payload = assert_problem(503, body, "service_unavailable")
    assert payload["request_id"] == "trace-503"
    assert b"api_keys" not in body and b"Traceback" not in body and b"asyncpg" not in body
    logged = [r.getMessage() for r in caplog.records]
    assert "database error: UndefinedTableError" in logged


async def test_unexpected_errors_are_500_without_internals_and_logged_with_the_request_id(
    serve_app, settings, make_tenant, make_attachment, caplog, monkeypatch
):
    """An error nobody planned for (here the credential chain, a library's, failing in a way
    it never should) is a 500 with no detail, logged with the request id."""
    from aiobotocore.credentials import AioCredentials

    async def broken(self):
        raise KeyError("internal detail: api_keys")

    monkeypatch.setattr(AioCredentials, "get_frozen_credentials", broken)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    client = await serve_app(create_app(settings))
    caplog.set_level(logging.ERROR)
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download",
        headers={**tenant.auth(), "X-Request-ID": "trace-500"},
        allow_redirects=False,
    )
    body = await response.read()
    assert response.status == 500
    payload = assert_problem(500, body, "internal_error")
    assert payload["request_id"] == "trace-500"
    assert b"api_keys" not in body and b"Traceback" not in body and b"KeyError" not in body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(getattr(r, "request_id", None) == "trace-500" and r.exc_info for r in errors)


@pytest.fixture
def unmigrated_database(fresh_database) -> str:
    return fresh_database()
