"""Download options: the URL as JSON, a chosen lifetime, inline display, X-Expires-At.
Every URL is fetched from SeaweedFS, which checks its signature."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.http import assert_problem, fetch

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
    [({"redirect": "false"}, None), ({}, "application/json"), ({}, "application/json; q=1")],
    ids=["redirect=false", "accept-json", "accept-json-with-params"],
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


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "application/json, */*", "*/*", "text/html"])
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


async def test_expires_in_sets_the_lifetime(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"brief")
    asked_at = datetime.now(UTC).replace(microsecond=0)
    response, raw = await download(client, attachment_id, tenant.auth(), expires_in="120")
    assert response.status == 307
    location = response.headers["Location"]
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["120"]
    expires_at = parse_time(json.loads(raw)["expires_at"])
    assert timedelta(seconds=119) <= expires_at - asked_at <= timedelta(seconds=121)
    assert (await fetch(location))[:2] == (200, b"brief")
    # The same lifetime again may reuse the URL; another lifetime never does.
    again, _ = await download(client, attachment_id, tenant.auth(), expires_in="120")
    assert again.headers["Location"] == location
    other, _ = await download(client, attachment_id, tenant.auth(), expires_in="3600")
    assert parse_qs(urlsplit(other.headers["Location"]).query)["X-Amz-Expires"] == ["3600"]
    plain, _ = await download(client, attachment_id, tenant.auth())
    assert parse_qs(urlsplit(plain.headers["Location"]).query)["X-Amz-Expires"] == ["900"]


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
