"""GET /api/v1/attachments/download-links: a link or a problem code per id, in order; one
workspace-bound read; the rate limits charged per id; an audit row per id. Every URL is
fetched from SeaweedFS, which checks its signature."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest

from service.core.options import MAX_LINKS_PER_REQUEST
from service.devstack.ports import free_port
from service.web.app import create_app
from service.web.audit import AUDIT
from service.web.storage import STORAGE
from tests.support.http import assert_problem, fetch
from tests.support.rate_limits import POLICY, REMAINING
from tests.support.waiting import eventually

PATH = "/api/v1/attachments/download-links"
LINK_MEMBERS = ["id", "url", "method", "expires_at", "filename", "content_type", "size_bytes"]


async def links(client, headers, ids, method="GET", **options):
    response = await client.request(
        method, PATH, headers=headers, params=[("id", str(i)) for i in ids] + list(options.items())
    )
    return response, await response.read()


async def pending_attachment(client, tenant):
    response = await client.post(
        "/api/v1/attachments",
        headers=tenant.auth("write"),
        json={"filename": "later.bin", "size_bytes": 3},
    )
    assert response.status == 201
    return (await response.json())["id"]


async def test_one_item_per_id_in_order_links_or_problems(
    client, conn, make_tenant, make_attachment
):
    tenant, other = await make_tenant(), await make_tenant()
    first = await make_attachment(tenant.workspace_id, body=b"first\n", filename="één.txt")
    second = await make_attachment(
        tenant.workspace_id, body=b"%PDF second", filename="b.pdf", content_type="application/pdf"
    )
    deleted = await make_attachment(tenant.workspace_id)
    await conn.execute("UPDATE attachments SET deleted_at = now() WHERE id = $1", deleted)
    theirs = await make_attachment(other.workspace_id)
    pending = await pending_attachment(client, tenant)
    asked = [
        str(second),
        str(theirs),
        str(first).upper(),  # either case, echoed as asked
        str(uuid.uuid4()),
        pending,
        str(deleted),
        str(second),  # twice: an item each time
    ]
    response, raw = await links(client, tenant.auth(), asked)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    items = json.loads(raw)["items"]
    assert [item["id"] for item in items] == asked
    assert [item.get("problem") for item in items] == [
        None,
        "not_found",  # another tenant's: the same as a missing one
        None,
        "not_found",
        "upload_pending",
        "not_found",
        None,
    ]
    for item in (items[1], items[3], items[5]):
        assert list(item) == ["id", "problem"]
    expected = {
        0: (b"%PDF second", "b.pdf"),
        2: (b"first\n", "één.txt"),
        6: (b"%PDF second", "b.pdf"),
    }
    for position, (body, filename) in expected.items():
        item = items[position]
        assert list(item) == LINK_MEMBERS
        assert (item["method"], item["filename"], item["size_bytes"]) == (
            "GET",
            filename,
            len(body),
        )
        status, fetched, headers = await fetch(item["url"])
        assert (status, fetched) == (200, body)
        assert "attachment" in headers["Content-Disposition"]
    assert items[0]["content_type"] == "application/pdf"


async def test_the_download_options_apply_to_every_link(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    ids = [await make_attachment(tenant.workspace_id, filename=f"{n}.txt") for n in range(3)]
    response, raw = await links(client, tenant.auth(), ids, expires_in="60", disposition="inline")
    assert response.status == 200
    items = json.loads(raw)["items"]
    assert [item["id"] for item in items] == [str(i) for i in ids]
    for item in items:
        query = parse_qs(urlsplit(item["url"]).query)
        assert query["X-Amz-Expires"] == ["60"]
        assert query["response-content-disposition"][0].startswith("inline")
        status, _, headers = await fetch(item["url"])
        assert status == 200 and headers["Content-Disposition"].startswith("inline")


async def test_a_hundred_ids_fit_and_a_hundred_and_one_do_not(client, make_tenant):
    tenant = await make_tenant()
    hundred = [uuid.uuid4() for _ in range(MAX_LINKS_PER_REQUEST)]
    response, raw = await links(client, tenant.auth(), hundred)
    assert response.status == 200
    assert [item["problem"] for item in json.loads(raw)["items"]] == ["not_found"] * 100
    # (The hundred spent the key's whole burst; a refused batch costs one request.)
    tenant = await make_tenant()
    response, raw = await links(client, tenant.auth(), [*hundred, uuid.uuid4()])
    assert_problem(response.status, raw, "invalid_request")
    response, raw = await links(client, tenant.auth(), hundred[:99])
    assert response.status == 200


async def test_bad_requests_are_400s(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    for options in ({}, {"expires_in": "0"}, {"disposition": "sideways"}, {"redirect": "maybe"}):
        ids = [attachment_id] if options else []
        response, raw = await links(client, tenant.auth(), ids, **options)
        assert_problem(response.status, raw, "invalid_request")
    # Unlike in a path, an id that is not a canonical UUID makes the request malformed.
    for malformed in ("not-a-uuid", f"{{{attachment_id}}}", f"urn:uuid:{attachment_id}", ""):
        response, raw = await links(client, tenant.auth(), [attachment_id, malformed])
        assert_problem(response.status, raw, "invalid_request")


async def test_keys_scopes_and_methods(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, raw = await links(client, {}, [attachment_id])
    assert_problem(response.status, raw, "unauthorized")
    response, raw = await links(client, tenant.auth(), [attachment_id], "HEAD")
    assert (response.status, raw) == (200, b"")
    for method in ("POST", "PATCH", "DELETE", "PUT"):
        response, raw = await links(client, tenant.auth(), [attachment_id], method)
        assert_problem(response.status, raw, "insufficient_scope")
        response, raw = await links(client, tenant.auth("write"), [attachment_id], method)
        assert_problem(response.status, raw, "method_not_allowed")
        assert response.headers["Allow"] == "GET, HEAD"


@pytest.fixture
def key_limited(serve_app, settings, make_tenant, make_attachment):
    """A gateway whose keys refill at 0.1 requests a second, a tenant and its file."""

    async def start(burst):
        limits = replace(settings, rate_limit_per_key=0.1, rate_limit_burst_per_key=burst)
        client = await serve_app(create_app(limits))
        tenant = await make_tenant()
        return client, tenant, await make_attachment(tenant.workspace_id)

    return start


async def test_the_rate_limits_count_one_request_per_id(key_limited):
    client, tenant, attachment_id = await key_limited(burst=5)
    response, _ = await links(client, tenant.auth(), [attachment_id] * 3)
    assert response.status == 200
    response, raw = await links(client, tenant.auth(), [attachment_id] * 3)  # 2 left
    assert_problem(response.status, raw, "rate_limited")
    assert POLICY.match(response.headers["RateLimit-Policy"])["q"] == "5"
    assert REMAINING.match(response.headers["RateLimit"])["r"] == "2"
    assert int(response.headers["Retry-After"]) == 10  # one more token at 0.1 per second
    response, _ = await links(client, tenant.auth(), [attachment_id] * 2)
    assert response.status == 200
    response, raw = await links(client, tenant.auth(), [attachment_id])
    assert_problem(response.status, raw, "rate_limited")


async def test_a_batch_bigger_than_the_burst_costs_the_whole_burst(key_limited):
    client, tenant, attachment_id = await key_limited(burst=4)
    response, raw = await links(client, tenant.auth(), [attachment_id] * 10)
    assert response.status == 200 and len(json.loads(raw)["items"]) == 10
    response, raw = await links(client, tenant.auth(), [attachment_id])
    assert_problem(response.status, raw, "rate_limited")


async def test_every_id_gets_its_audit_row(serve_app, settings, conn, make_tenant, make_attachment):
    app = create_app(replace(settings, audit_enabled=True))
    client = await serve_app(app)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    missing = uuid.uuid4()
    response, _ = await links(client, tenant.auth(), [attachment_id, missing, attachment_id])
    assert response.status == 200
    await app[AUDIT].flush()
    rows = await conn.fetch(
        "SELECT * FROM download_audit WHERE workspace_id = $1 ORDER BY at", tenant.workspace_id
    )
    assert [(r["attachment_id"], r["method"], r["outcome"], r["status"]) for r in rows] == [
        (attachment_id, "GET", "issued", 200),
        (missing, "GET", "not_found", 404),
        (attachment_id, "GET", "issued", 200),
    ]
    assert all(r["key_id"] == tenant.read_key_id for r in rows)
    assert rows[0]["expires_at"] is not None and rows[1]["expires_at"] is None


async def test_a_batch_refused_whole_leaves_that_refusal_for_every_id(
    serve_app, settings, conn, make_tenant, make_attachment
):
    """Storage unreachable: the batch is a 503, and no row says an id was `not_found` (or
    `issued`) to a caller who was sent neither."""
    nowhere = replace(
        settings,
        audit_enabled=True,
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_probe_interval_seconds=0.1,
    )
    app = create_app(nowhere)
    client = await serve_app(app)
    await eventually(lambda: not app[STORAGE].reachable, timeout=5)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    missing = uuid.uuid4()
    response, body = await links(client, tenant.auth(), [missing, attachment_id])
    assert_problem(response.status, body, "service_unavailable")
    await app[AUDIT].flush()
    rows = await conn.fetch(
        "SELECT * FROM download_audit WHERE workspace_id = $1 ORDER BY at", tenant.workspace_id
    )
    assert [(r["attachment_id"], r["outcome"], r["status"]) for r in rows] == [
        (missing, "service_unavailable", 503),
        (attachment_id, "service_unavailable", 503),
    ]


async def test_a_renamed_attachment_s_next_batch_carries_the_new_name(
    client, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="old.txt")
    response, raw = await links(client, tenant.auth(), [attachment_id])
    (before,) = json.loads(raw)["items"]
    response = await client.patch(
        f"/api/v1/attachments/{attachment_id}",
        headers=tenant.auth("write"),
        json={"filename": "new.txt"},
    )
    assert response.status == 200
    response, raw = await links(client, tenant.auth(), [attachment_id])
    (after,) = json.loads(raw)["items"]
    assert after["filename"] == "new.txt" and after["url"] != before["url"]
    _, _, headers = await fetch(after["url"])
    assert 'filename="new.txt"' in headers["Content-Disposition"]
