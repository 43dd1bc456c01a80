"""Download options: the URL as JSON, a chosen lifetime, inline display, X-Expires-At.
Every URL is fetched from SeaweedFS, which checks its signature."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from service.web.caches import CACHES
from service.web.metrics import METRICS
from tests.support.http import assert_problem, fetch
from tests.support.waiting import changes_heard, eventually

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def download(client, attachment_id, headers, method="GET", **query):
    response = await client.request(
        method,
        f"/api/v1/attachments/{attachment_id}/download",
        headers=headers,
        params=query,
        allow_redirects=False,
    )
    return response, await response.read()


def parse_time(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ({"redirect": "false"}, None),
        ({}, "application/json"),
        ({}, "application/json; q=1"),
        ({}, "Application/JSON"),
    ],
    ids=["redirect=false", "accept-json", "accept-json-with-params", "accept-json-any-case"],
)
async def test_the_url_as_json(client, make_tenant, make_attachment, query, accept):
    tenant = await make_tenant()
    body = b"json link\n"
    attachment_id = await make_attachment(
        tenant.workspace_id, body=body, filename="notes é.txt", content_type="text/plain"
    )
    headers = {**tenant.auth(), **({"Accept": accept} if accept else {})}
    response, raw = await download(client, attachment_id, headers, **query)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    link = json.loads(raw)
    assert list(link) == ["url", "method", "expires_at", "filename", "content_type", "size_bytes"]
    assert link["method"] == "GET"
    assert link["filename"] == "notes é.txt"
    assert link["content_type"] == "text/plain"
    assert link["size_bytes"] == len(body)
    assert response.headers["X-Expires-At"] == link["expires_at"]
    status, fetched, _ = await fetch(link["url"])
    assert (status, fetched) == (200, body)


async def test_head_for_the_json_link_has_get_s_headers_and_no_body(
    client, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"12345")
    response, raw = await download(client, attachment_id, tenant.auth(), "HEAD", redirect="false")
    assert response.status == 200 and raw == b""
    assert response.headers["Content-Type"].startswith("application/json")
    assert parse_time(response.headers["X-Expires-At"]) > datetime.now(UTC)


@pytest.mark.parametrize(
    "accept",
    [BROWSER_ACCEPT, "application/json, */*", "*/*", "text/html", "application/json;q=0"],
)
async def test_anything_else_still_redirects(client, make_tenant, make_attachment, accept):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, raw = await download(client, attachment_id, {**tenant.auth(), "Accept": accept})
    assert response.status == 307
    assert response.headers["X-Expires-At"] == json.loads(raw)["expires_at"]
    # ?redirect=true wins over an Accept asking for JSON.
    response, _ = await download(
        client, attachment_id, {**tenant.auth(), "Accept": "application/json"}, redirect="true"
    )
    assert response.status == 307


async def test_expires_in_sets_the_lifetime(client, conn, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"brief")
    # URLs are reused only with the listener up and no change of these rows still on its
    # way (one arriving mid-lookup rightly keeps the URL out of the cache).
    await eventually(lambda: client.app[CACHES].live, timeout=15)
    await changes_heard(conn, client.app[CACHES])
    asked_at = datetime.now(UTC).replace(microsecond=0)
    response, raw = await download(client, attachment_id, tenant.auth(), expires_in="240")
    assert response.status == 307
    location = response.headers["Location"]
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["240"]
    expires_at = parse_time(json.loads(raw)["expires_at"])
    assert timedelta(seconds=239) <= expires_at - asked_at <= timedelta(seconds=241)
    assert (await fetch(location))[:2] == (200, b"brief")
    # The same lifetime again reuses the URL; another lifetime never does.
    again, _ = await download(client, attachment_id, tenant.auth(), expires_in="240")
    assert again.headers["Location"] == location
    other, _ = await download(client, attachment_id, tenant.auth(), expires_in="3600")
    assert parse_qs(urlsplit(other.headers["Location"]).query)["X-Amz-Expires"] == ["3600"]
    plain, _ = await download(client, attachment_id, tenant.auth())
    assert parse_qs(urlsplit(plain.headers["Location"]).query)["X-Amz-Expires"] == ["900"]

    # Shorter than four reuse windows (60 s), a URL is signed anew every time: reused, it
    # could reach its holder with under three quarters of the lifetime asked for.
    presigns = client.app[METRICS].counts.presigns
    signed = presigns.get(("GET", "signed"), 0)
    for _ in range(2):
        short, _ = await download(client, attachment_id, tenant.auth(), expires_in="239")
        assert parse_qs(urlsplit(short.headers["Location"]).query)["X-Amz-Expires"] == ["239"]
    assert presigns[("GET", "signed")] == signed + 2
    assert presigns.get(("GET", "reused"), 0) > 0  # (the 240 s one was)


@pytest.mark.parametrize(
    "repeated",
    [
        [("redirect", "false"), ("redirect", "bogus")],
        [("expires_in", "60"), ("expires_in", "60")],
        [("disposition", "inline"), ("disposition", "attachment")],
    ],
    ids=["redirect", "expires_in", "disposition"],
)
async def test_an_option_given_twice_is_400(client, make_tenant, make_attachment, repeated):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    for path, query in (
        (f"/api/v1/attachments/{attachment_id}/download", repeated),
        ("/api/v1/attachments/download-links", [("id", str(attachment_id)), *repeated]),
    ):
        response = await client.get(
            path, headers=tenant.auth(), params=query, allow_redirects=False
        )
        assert_problem(response.status, await response.read(), "invalid_request")
        assert response.status == 400


@pytest.mark.parametrize(
    "query",
    [
        {"expires_in": "0"},
        {"expires_in": "3601"},
        {"expires_in": "-5"},
        {"expires_in": "1e3"},
        {"expires_in": "60s"},
        {"expires_in": "٣٠"},  # Arabic-Indic digits: isdigit() alone would take them
        {"expires_in": "9" * 40},
        {"redirect": "no"},
        {"disposition": "evil"},
    ],
)
async def test_options_out_of_range_are_400(client, make_tenant, make_attachment, query):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, raw = await download(client, attachment_id, tenant.auth(), **query)
    assert response.status == 400
    assert_problem(400, raw, "invalid_request")


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "inline"),
        ("application/pdf", "inline"),
        ("image/png", "inline"),
        ("video/mp4", "inline"),
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
        ("application/octet-stream", "attachment"),
    ],
)
async def test_inline_only_for_types_that_run_nothing(
    client, make_tenant, make_attachment, content_type, shown
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(
        tenant.workspace_id, body=b"<svg/>", filename="f.bin", content_type=content_type
    )
    response, _ = await download(client, attachment_id, tenant.auth(), disposition="inline")
    assert response.status == 307
    status, _, s3_headers = await fetch(response.headers["Location"])
    assert status == 200
    assert s3_headers["Content-Disposition"].startswith(shown + ";")
    assert s3_headers["Content-Type"] == content_type
    # disposition=attachment is the default, spelled out.
    response, _ = await download(client, attachment_id, tenant.auth(), disposition="attachment")
    status, _, s3_headers = await fetch(response.headers["Location"])
    assert s3_headers["Content-Disposition"].startswith("attachment;")
