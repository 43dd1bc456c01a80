"""Rules 1, 2 and 4 of the contract: who may call, and with which methods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.core.settings import Settings
from service.core.tokens import generate_token
from service.data.admin import create_key, revoke_key
from service.web.app import create_app
from tests.support.http import assert_problem, raw_get, raw_request

BARE = 'Bearer realm="api"'
INVALID_REQUEST = 'Bearer realm="api", error="invalid_request"'
INVALID_TOKEN = 'Bearer realm="api", error="invalid_token"'
SAME_ID = {"X-Request-ID": "fixed-request-id"}


def path(attachment_id: object = None) -> str:
    return f"/api/v1/attachments/{attachment_id or uuid.uuid4()}/download"


async def get(client, headers=None, attachment_id=None, method="GET"):
    response = await client.request(
        method, path(attachment_id), headers={**SAME_ID, **(headers or {})}, allow_redirects=False
    )
    return response, await response.read()


async def test_missing_authorization_is_401_with_a_bare_challenge(client):
    response, body = await get(client)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == BARE
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "application/json"
    payload = assert_problem(401, body, "unauthorized")
    assert payload == {
        "error": "Unauthorized",
        "message": "Authentication required. Please provide a valid API token",
        "code": 401,
        "problem": "unauthorized",
        "request_id": "fixed-request-id",
    }


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Token abc", "Digest x=1", "ixk_abc"])
async def test_other_schemes_get_the_bare_challenge(client, value):
    response, body = await get(client, {"Authorization": value})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == BARE
    assert_problem(401, body, "unauthorized")


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer   ", "Bearer a b", "bearer  x  y"])
async def test_malformed_bearer_headers_are_invalid_request(client, value):
    response, body = await get(client, {"Authorization": value})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == INVALID_REQUEST
    assert_problem(401, body, "unauthorized")


async def test_two_authorization_headers_are_invalid_request(client, make_tenant):
    tenant = await make_tenant()
    request = raw_get(
        path(),
        f"Authorization: Bearer {tenant.read_token}".encode(),
        f"Authorization: Bearer {tenant.read_token}".encode(),
    )
    response = await raw_request(client.host, client.port, request)
    assert response.status == 401
    assert response.headers["www-authenticate"] == INVALID_REQUEST
    assert_problem(401, response.body, "unauthorized")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_scheme_is_case_insensitive(client, make_tenant, make_attachment, scheme):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, _ = await get(
        client, {"Authorization": f"{scheme} {tenant.read_token}"}, attachment_id
    )
    assert response.status == 307


def malformed_variants(token: str) -> dict[str, str]:
    flipped_checksum = token[:-1] + ("A" if token[-1] != "A" else "B")
    return {
        "wrong prefix": "ixa_" + token[4:],
        "github prefix": "ghp_" + token[4:],
        "stripe key": "sk_live_" + token[4:],
        "too short": token[:-1],
        "too long": token + "0",
        "bad checksum": flipped_checksum,
        "not base62": token[:10] + "-" + token[11:],
        "empty body": "ixk_",
    }


async def test_every_bad_token_gets_the_same_invalid_token_answer(client, conn, make_tenant):
    tenant = await make_tenant()
    revoked = await create_key(conn, tenant.workspace_id)
    await revoke_key(conn, revoked.id)
    expired = await create_key(
        conn, tenant.workspace_id, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    bad_tokens = {
        **malformed_variants(tenant.read_token),
        "unknown": generate_token(),
        "revoked": revoked.token,
        "expired": expired.token,
    }
    bodies = set()
    for reason, token in bad_tokens.items():
        response, body = await get(client, {"Authorization": f"Bearer {token}"})
        assert response.status == 401, reason
        assert response.headers["WWW-Authenticate"] == INVALID_TOKEN, reason
        assert_problem(401, body, "unauthorized")
        bodies.add(body)
    assert len(bodies) == 1


async def test_malformed_tokens_are_refused_without_the_database(serve_app, make_tenant):
    """With the database unreachable, a malformed token is still a 401 (no query was
    needed), while a well-formed one has to ask and gets 503."""
    tenant = await make_tenant()
    offline = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", db_connect_timeout=1)
    client = await serve_app(create_app(offline))
    for token in malformed_variants(tenant.read_token).values():
        response, body = await get(client, {"Authorization": f"Bearer {token}"})
        assert response.status == 401
        assert_problem(401, body, "unauthorized")
    response, body = await get(client, tenant.auth())
    assert response.status == 503
    assert_problem(503, body, "service_unavailable")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer ixk_\xc3\xa9tokenwithutf8".encode("latin-1"),
        b"Bearer \xff\xfe\xfd",
        b"Bearer ixk_\x80\x81\x82" + b"A" * 36,
        b"Bearer " + b"A" * 4096,
        b"Bearer ixk_" + b"Z" * 8000,
        "Bearer ixk_" + "\u00e9" * 38,
    ],
    ids=["utf8", "invalid-utf8", "high-bytes", "4k", "8k", "latin1"],
)
async def test_hostile_header_bytes_get_401_not_500(client, value):
    if isinstance(value, str):
        value = value.encode("latin-1")
    response = await raw_request(
        client.host, client.port, raw_get(path(), b"Authorization: " + value)
    )
    assert response.status == 401
    assert response.headers["www-authenticate"] == INVALID_TOKEN
    assert_problem(401, response.body, "unauthorized")
    assert value[7:] not in response.body


async def test_nul_in_the_header_is_refused_by_the_parser_and_not_logged(client, caplog):
    """RFC 9110 §5.5: a NUL in a field value makes the message invalid. llhttp refuses
    it before the app runs (400, never 500), and the refused bytes stay out of the log."""
    response = await raw_request(
        client.host, client.port, raw_get(path(), b"Authorization: Bearer ixk_\x00sekrit")
    )
    assert response.status == 400
    assert "sekrit" not in caplog.text
    assert "unparseable HTTP request" in caplog.text


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_read_keys_may_not_use_unsafe_methods(client, make_tenant, make_attachment, method):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, body = await get(client, tenant.auth("read"), attachment_id, method)
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", scope="write"'
    )
    payload = assert_problem(403, body, "insufficient_scope")
    assert payload["error"] == "Forbidden"
    assert payload["message"] == "You don't have permission to access this resource"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_on_the_download_route_are_405(client, make_tenant, method):
    tenant = await make_tenant()
    response, body = await get(client, tenant.auth("write"), None, method)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert_problem(405, body, "method_not_allowed")


async def test_unauthenticated_405_candidates_are_401_first(client):
    response, body = await get(client, None, None, "DELETE")
    assert response.status == 401
    assert_problem(401, body, "unauthorized")


async def test_read_and_write_keys_may_get_and_head(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    for scope in ("read", "write"):
        for method in ("GET", "HEAD"):
            response, _ = await get(client, tenant.auth(scope), attachment_id, method)
            assert response.status == 307, (scope, method)


async def test_unknown_paths_are_denied_by_default(client, make_tenant):
    response, _ = await get(client)
    assert response.status == 401
    response = await client.get("/api/v1/nothing-here", headers=SAME_ID)
    assert response.status == 401
    tenant = await make_tenant()
    response = await client.get("/api/v1/nothing-here", headers=tenant.auth())
    assert response.status == 404
    assert_problem(404, await response.read(), "not_found")
