"""`Accept: application/problem+json` adds the RFC 9457 members; everyone else gets the
contract's body unchanged."""

from __future__ import annotations

import json
import uuid

import pytest

LEGACY = ["error", "message", "code", "problem", "request_id"]
RFC_9457 = ["type", "title", "status", "detail", "instance"]


@pytest.mark.parametrize(
    ("method", "path", "auth", "status", "problem"),
    [
        ("GET", "/api/v1/attachments/{id}/download", False, 401, "unauthorized"),
        ("GET", "/api/v1/attachments/{id}/download", True, 404, "not_found"),
        ("POST", "/api/v1/attachments/{id}/download", "write", 405, "method_not_allowed"),
        ("GET", "/api/v1/attachments/{id}/download?expires_in=0", True, 400, "invalid_request"),
    ],
)
async def test_problem_details_on_request(client, make_tenant, method, path, auth, status, problem):
    tenant = await make_tenant()
    url = path.format(id=uuid.uuid4())
    headers = tenant.auth("write" if auth == "write" else "read") if auth else {}
    accept = {"Accept": "application/problem+json, application/json;q=0.5"}
    response = await client.request(method, url, headers={**headers, **accept})
    assert response.status == status
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(await response.read())
    assert list(body) == LEGACY + RFC_9457
    assert body["type"] == "urn:attachments-gateway:problem:" + problem
    assert (body["title"], body["status"], body["detail"]) == (
        body["error"],
        status,
        body["message"],
    )
    assert body["instance"] == "urn:attachments-gateway:request:" + response.headers["X-Request-ID"]

    plain = await client.request(method, url, headers=headers)
    assert plain.headers["Content-Type"] == "application/json"
    assert list(json.loads(await plain.read())) == LEGACY


@pytest.mark.parametrize(
    ("accept", "details"),
    [
        ("application/problem+json", True),
        ("Application/Problem+JSON; q=0.2, application/json; q=0.1", True),
        # q=0 is "not acceptable" (RFC 9110 §12.4.2): named, but refused.
        ("application/json, application/problem+json;q=0", False),
        ("application/problem+json; q=0.0", False),
        ("*/*", False),
    ],
)
async def test_problem_details_only_when_acceptable(client, accept, details):
    response = await client.get(
        f"/api/v1/attachments/{uuid.uuid4()}/download", headers={"Accept": accept}
    )
    assert response.status == 401
    expected = "application/problem+json" if details else "application/json"
    assert response.headers["Content-Type"] == expected
    assert list(json.loads(await response.read())) == (LEGACY + RFC_9457 if details else LEGACY)
