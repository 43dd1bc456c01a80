"""Rules 3 and 5: the entitlement, and tenant-bound lookups that never leak existence."""

from __future__ import annotations

import asyncio
import time
import uuid

from service.data.admin import delete_attachment, set_api_access
from tests.support.http import assert_problem

SAME_ID = {"X-Request-ID": "fixed-request-id"}


async def download(client, attachment_id, headers, method="GET"):
    response = await client.request(
        method,
        f"/api/v1/attachments/{attachment_id}/download",
        headers={**SAME_ID, **headers},
        allow_redirects=False,
    )
    return response, await response.read()


async def test_no_api_access_is_403_whatever_the_id(client, make_tenant, make_attachment):
    blocked = await make_tenant(api_access=False)
    other = await make_tenant()
    own = await make_attachment(blocked.workspace_id)
    foreign = await make_attachment(other.workspace_id)
    bodies = set()
    for attachment_id in (own, foreign, uuid.uuid4(), "not-a-uuid"):
        for scope in ("read", "write"):
            response, body = await download(client, attachment_id, blocked.auth(scope))
            assert response.status == 403
            assert "WWW-Authenticate" not in response.headers
            assert response.headers["Cache-Control"] == "no-store"
            payload = assert_problem(403, body, "forbidden")
            assert payload["message"] == "You don't have permission to access this resource"
            bodies.add(body)
    assert len(bodies) == 1


async def test_entitlement_is_checked_before_scope(client, make_tenant):
    blocked = await make_tenant(api_access=False)
    response, body = await download(client, uuid.uuid4(), blocked.auth("read"), "DELETE")
    assert response.status == 403
    assert_problem(403, body, "forbidden")


async def test_turning_api_access_back_on_restores_downloads(
    client, conn, make_tenant, make_attachment
):
    tenant = await make_tenant(api_access=False)
    attachment_id = await make_attachment(tenant.workspace_id)
    assert (await download(client, attachment_id, tenant.auth()))[0].status == 403
    assert await set_api_access(conn, tenant.workspace_id, True)
    await answers_within_a_second(client, attachment_id, tenant.auth(), 307)


async def test_missing_deleted_foreign_and_malformed_ids_are_byte_identical_404s(
    client, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    other = await make_tenant()
    deleted = await make_attachment(tenant.workspace_id)
    assert await delete_attachment(conn, deleted)
    foreign = await make_attachment(other.workspace_id)
    cases = {
        "missing": uuid.uuid4(),
        "deleted": deleted,
        "foreign": foreign,
        "not a uuid": "12345",
        "braces": "{" + str(uuid.uuid4()) + "}",
        "bare hex": uuid.uuid4().hex,
        "sql": "1' OR '1'='1",
        "long": "a" * 4000,
        "nul": "%00",
    }
    bodies = {}
    for case, attachment_id in cases.items():
        response, body = await download(client, attachment_id, tenant.auth())
        assert response.status == 404, case
        assert "Location" not in response.headers
        assert response.headers["Cache-Control"] == "no-store"
        assert_problem(404, body, "not_found")
        bodies[case] = body
    assert len(set(bodies.values())) == 1, bodies


async def test_each_tenant_reaches_only_its_own_attachments(client, make_tenant, make_attachment):
    alice, bob = await make_tenant(), await make_tenant()
    alices = await make_attachment(alice.workspace_id, body=b"alice's")
    bobs = await make_attachment(bob.workspace_id, body=b"bob's")
    assert (await download(client, alices, alice.auth()))[0].status == 307
    assert (await download(client, bobs, bob.auth()))[0].status == 307
    for attachment_id, intruder in ((alices, bob), (bobs, alice)):
        for method in ("GET", "HEAD"):
            response, _ = await download(client, attachment_id, intruder.auth(), method)
            assert response.status == 404
            assert "Location" not in response.headers


async def test_uppercase_uuid_names_the_same_attachment(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, _ = await download(client, str(attachment_id).upper(), tenant.auth())
    assert response.status == 307


async def test_soft_delete_stops_downloads(client, conn, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    assert (await download(client, attachment_id, tenant.auth()))[0].status == 307
    assert await delete_attachment(conn, attachment_id)
    await answers_within_a_second(client, attachment_id, tenant.auth(), 404)


async def answers_within_a_second(client, attachment_id, headers, expected):
    """Cached answers change when the change's notification arrives: within a second of
    the commit (README, Performance), in practice milliseconds."""
    deadline = time.monotonic() + 1.0
    while (status := (await download(client, attachment_id, headers))[0].status) != expected:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)
