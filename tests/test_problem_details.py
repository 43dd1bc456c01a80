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
