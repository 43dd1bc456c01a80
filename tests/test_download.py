"""The happy path end to end: 307 to a URL that SeaweedFS serves with the exact bytes."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import aiohttp
from yarl import URL


async def follow(location: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    """Fetch a presigned URL exactly as signed (encoded=True: no re-quoting by yarl)."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, URL(location, encoded=True)) as response:
            return response.status, await response.read(), dict(response.headers)


async def test_get_redirects_to_the_objects_exact_bytes(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    body = bytes(range(256)) * 1000
    attachment_id = await make_attachment(
        tenant.workspace_id, body=body, filename="data.bin", content_type="application/x-demo"
    )

    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download",
        headers=tenant.auth(),
        allow_redirects=False,
    )

    assert response.status == 307
    location = response.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["900"]
    assert query["response-content-type"] == ["application/x-demo"]
    assert query["response-content-disposition"] == [
        "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    ]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]
    payload = json.loads(await response.read())
    assert set(payload) == {"expires_at"}
    assert "X-Amz-Signature" not in json.dumps(payload)

    status, downloaded, headers = await follow(location)
    assert status == 200
    assert downloaded == body
    assert headers["Content-Type"] == "application/x-demo"
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    )
