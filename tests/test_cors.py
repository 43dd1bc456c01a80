"""CORS: preflights answered before authentication, the headers on every answer (errors
included), refused origins left without them, and the settings that turn it on."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from service.core.settings import Settings, SettingsError
from service.web.app import create_app
from service.web.limits import RATE_LIMITS
from tests.support.http import assert_problem

PAGE = "http://127.0.0.1:3000"
OTHER_PAGE = "http://127.0.0.1:3001"
EXPOSED = {
    "x-request-id",
    "x-expires-at",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "link",
    "location",
    "www-authenticate",
}


def preflight_headers(method="GET", origin=PAGE, headers="authorization"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def cors_headers(response):
    return [name for name in response.headers if name.lower().startswith("access-control")]


def listed(value):
    return {part.strip().lower() for part in value.split(",")}


@pytest.fixture
async def cors_client(serve_app, settings):
    """A gateway that lets PAGE call it, with tight abuse limits that a preflight must not
    touch."""
    app = create_app(
        replace(
            settings,
            cors_allowed_origins=PAGE,
            cors_max_age=600,
            rate_limit_per_key=0.1,
            rate_limit_burst_per_key=2,
            failed_auth_per_address=0.1,
            failed_auth_burst_per_address=2,
        )
    )
    return await serve_app(app)


@pytest.mark.parametrize(
    ("path", "method", "methods"),
    [
        ("/api/v1/attachments/{id}/download", "GET", {"get", "head"}),
        ("/api/v1/attachments", "POST", {"get", "head", "post"}),
        ("/api/v1/attachments/{id}", "PATCH", {"get", "head", "delete", "patch"}),
        ("/api/v1/attachments/{id}/complete", "POST", {"post"}),
    ],
)
async def test_a_preflight_is_204_without_a_key(cors_client, path, method, methods):
    url = path.format(id=uuid.uuid4())
    response = await cors_client.options(url, headers=preflight_headers(method))
    assert response.status == 204
    assert await response.read() == b""
    assert response.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed(response.headers["Access-Control-Allow-Methods"]) == methods
    allowed_headers = listed(response.headers["Access-Control-Allow-Headers"])
    assert {"authorization", "content-type"} <= allowed_headers  # named: `*` misses Authorization
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in response.headers.getall("Vary")
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers["X-Request-ID"]


async def test_preflights_spend_no_rate_limit_budget(cors_client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    url = f"/api/v1/attachments/{attachment_id}/download"
    for _ in range(10):  # far beyond both bursts of 2
        response = await cors_client.options(url, headers=preflight_headers())
        assert response.status == 204
    limits = cors_client.app[RATE_LIMITS]
    assert not limits.failed_auth.active and not limits.keys.active
    # The key still has its whole burst; then its limit applies as ever.
    for _ in range(2):
        response = await cors_client.get(
            url, headers={**tenant.auth(), "Origin": PAGE}, allow_redirects=False
        )
        assert response.status == 307
        assert response.headers["Access-Control-Allow-Origin"] == PAGE
    response = await cors_client.get(url, headers={**tenant.auth(), "Origin": PAGE})
    assert response.status == 429
    assert response.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed(response.headers["Access-Control-Expose-Headers"]) == EXPOSED


async def test_an_origin_configured_with_its_default_port_matches_what_browsers_send(
    serve_app, settings
):
    """A page at https://app.example.com sends `Origin: https://app.example.com`: allowed
    as `https://app.example.com:443`, it started, and every request was refused."""
    app = create_app(replace(settings, cors_allowed_origins="https://App.example.com:443"))
    client = await serve_app(app)
    url = f"/api/v1/attachments/{uuid.uuid4()}/download"
    origin = "https://app.example.com"
    response = await client.options(url, headers=preflight_headers(origin=origin))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == origin


async def test_a_refused_origin_gets_no_cors_headers(cors_client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    url = f"/api/v1/attachments/{attachment_id}/download"
    response = await cors_client.options(url, headers=preflight_headers(origin=OTHER_PAGE))
    assert response.status == 204
    assert not cors_headers(response)
    response = await cors_client.get(
        url, headers={**tenant.auth(), "Origin": OTHER_PAGE}, allow_redirects=False
    )
    assert response.status == 307  # the gateway answers; the browser is what refuses
    assert not cors_headers(response)
    assert "Origin" in response.headers.getall("Vary")


async def test_an_options_that_is_no_preflight_is_still_refused(
    cors_client, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    url = f"/api/v1/attachments/{attachment_id}/download"
    # No Access-Control-Request-Method: an ordinary OPTIONS, which needs a key ...
    response = await cors_client.options(url, headers={"Origin": PAGE})
    assert_problem(401, await response.read(), "unauthorized")
    assert response.headers["Access-Control-Allow-Origin"] == PAGE
    # ... and then meets the route's methods.
    response = await cors_client.options(url, headers={**tenant.auth("write"), "Origin": PAGE})
    assert_problem(405, await response.read(), "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD"
    # A preflight for a path no route has is no preflight either.
    response = await cors_client.options("/api/v1/nothing-here", headers=preflight_headers())
    assert response.status == 401


async def test_every_error_carries_the_cors_headers(
    serve_app, settings, make_tenant, make_attachment
):
    app = create_app(replace(settings, cors_allowed_origins=PAGE, rate_limit_burst_per_key=3))
    client = await serve_app(app)
    tenant = await make_tenant()
    closed = await make_tenant(api_access=False)
    attachment_id = await make_attachment(tenant.workspace_id)
    origin = {"Origin": PAGE}

    async def answer(method, path, headers, **kwargs):
        response = await client.request(method, path, headers={**origin, **headers}, **kwargs)
        assert response.headers["Access-Control-Allow-Origin"] == PAGE, response.status
        assert listed(response.headers["Access-Control-Expose-Headers"]) == EXPOSED
        return response.status

    download = f"/api/v1/attachments/{attachment_id}/download"
    assert await answer("GET", download, {}) == 401
    assert await answer("GET", download, closed.auth()) == 403
    assert await answer("GET", f"/api/v1/attachments/{uuid.uuid4()}", tenant.auth("write")) == 404
    created = await client.post(
        "/api/v1/attachments",
        json={"filename": "a.txt", "content_type": "text/plain", "size_bytes": 3},
        headers=tenant.auth("write"),
    )
    pending = (await created.json())["id"]
    status = await answer("POST", f"/api/v1/attachments/{pending}/complete", tenant.auth("write"))
    assert status == 409
    for _ in range(3):  # the read key's burst
        assert await answer("GET", download, tenant.auth(), allow_redirects=False) == 307
    assert await answer("GET", download, tenant.auth()) == 429


async def test_storage_trouble_is_readable_by_the_page(
    serve_app, database_url, make_tenant, make_attachment, monkeypatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(Settings(database_url=database_url, cors_allowed_origins="*"))
    client = await serve_app(app)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download",
        headers={**tenant.auth(), "Origin": OTHER_PAGE},
    )
    assert_problem(503, await response.read(), "storage_not_configured")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "retry-after" in listed(response.headers["Access-Control-Expose-Headers"])


async def test_off_by_default(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    url = f"/api/v1/attachments/{attachment_id}/download"
    response = await client.options(url, headers=preflight_headers())
    assert response.status == 401  # as before CORS existed
    response = await client.get(
        url, headers={**tenant.auth(), "Origin": PAGE}, allow_redirects=False
    )
    assert response.status == 307
    assert not cors_headers(response)


async def test_health_routes_are_not_offered_cross_origin(cors_client):
    response = await cors_client.get("/healthz", headers={"Origin": PAGE})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", frozenset()),
        ("*", frozenset({"*"})),
        (
            "https://App.example.com, http://127.0.0.1:3000",
            frozenset({"https://app.example.com", "http://127.0.0.1:3000"}),
        ),
        ("http://[::1]:8000", frozenset({"http://[::1]:8000"})),
        # As browsers send them in Origin (compared as strings, these never matched):
        # no default port, no leading zeros, IPv6 in its shortest form.
        (
            "https://app.example.com:443, http://localhost:80, http://127.0.0.1:03000",
            frozenset({"https://app.example.com", "http://localhost", "http://127.0.0.1:3000"}),
        ),
        ("http://[0:0::1]:8000", frozenset({"http://[::1]:8000"})),
    ],
)
def test_allowed_origins_are_read_from_the_environment(value, origins):
    settings = Settings.from_env({"CORS_ALLOWED_ORIGINS": value, "CORS_MAX_AGE": "60"})
    assert settings.cors_origins == origins
    assert settings.cors_max_age == 60


@pytest.mark.parametrize(
    "value",
    [
        "*, https://a.example",
        "https://a.example/",
        "a.example",
        "ftp://a.example",
        "https://a b",
        "https://a.example:0",
        "https://a.example:70000",
        "http://[1::2::3]",
    ],
)
def test_a_malformed_origin_is_refused_at_start(value):
    with pytest.raises(SettingsError, match="CORS_ALLOWED_ORIGINS"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": value})
