"""Hostile input, table-driven: every case gets its documented status and problem, none a
500, and no answer echoes a secret or another tenant's data."""

from __future__ import annotations

import json
import logging
import uuid

from service.core.tokens import generate_token
from service.data.admin import delete_attachment
from service.web.metrics import METRICS
from tests.support.http import raw_request, send_and_vanish
from tests.support.waiting import eventually

READ = "read"


def request(
    method: str, path: str, *headers: bytes, body: bytes = b"", host: bytes = b"test"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host, b"Connection: close"]
    if body:
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join([*lines, *headers, b"", b""]) + body


def bearer(token: str) -> bytes:
    return f"Authorization: Bearer {token}".encode()


def cases(token: str, write_token: str, own: str, foreign: str, deleted: str):
    """(name, raw request, status, problem or None when the HTTP parser answers)."""
    good = bearer(token)
    writer, as_json = bearer(write_token), b"Content-Type: application/json"
    download = f"/api/v1/attachments/{own}/download"
    missing = f"/api/v1/attachments/{uuid.uuid4()}/download"
    crc_flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    # Not formatted: a table, one case per row (name, request, status, problem).
    table = [
        # Authorization
        ("no authorization", request("GET", download), 401, "unauthorized"),
        ("basic scheme", request("GET", download, b"Authorization: Basic dXNlcjpwYXNz"), 401,
         "unauthorized"),
        ("lowercase bearer", request("GET", download, f"Authorization: bearer {token}".encode()),
         307, None),
        ("bearer alone", request("GET", download, b"Authorization: Bearer"), 401, "unauthorized"),
        ("bearer and spaces", request("GET", download, b"Authorization: Bearer    "), 401,
         "unauthorized"),
        ("empty authorization", request("GET", download, b"Authorization: "), 401,
         "unauthorized"),
        ("two tokens", request("GET", download, f"Authorization: Bearer {token} {token}".encode()),
         401, "unauthorized"),
        ("two headers", request("GET", download, good, good), 401, "unauthorized"),
        ("github token", request("GET", download, bearer("ghp_" + "a" * 36)), 401,
         "unauthorized"),
        ("stripe key", request("GET", download, bearer("sk_live_" + "a" * 24)), 401,
         "unauthorized"),
        ("bad checksum", request("GET", download, bearer(crc_flipped)), 401, "unauthorized"),
        ("unknown token", request("GET", download, bearer(generate_token())), 401,
         "unauthorized"),
        ("non-ascii token", request("GET", download, "Authorization: Bearer ixk_é".encode()),
         401, "unauthorized"),
        ("invalid utf-8", request("GET", download, b"Authorization: Bearer ixk_\xff\xfe"), 401,
         "unauthorized"),
        ("nul in header", request("GET", download, b"Authorization: Bearer ixk_\x00"), 400, None),
        ("8000-byte token", request("GET", download, bearer("A" * 8000)), 401, "unauthorized"),
        ("20 KB header", request("GET", download, bearer("A" * 20_000)), 400, None),
        ("access_token in query", request("GET", download + f"?access_token={token}"), 401,
         "unauthorized"),
        ("api_key in query with header", request("GET", download + f"?api_key={token}", good),
         401, "unauthorized"),
        ("ixk token in any query value", request("GET", download + f"?t={token}", good), 401,
         "unauthorized"),
        ("ixk token as a query name", request("GET", download + f"?{token}", good), 401,
         "unauthorized"),
        ("tab separator", request("GET", download, f"Authorization: Bearer\t{token}".encode()),
         401, "unauthorized"),
        # Ids
        ("not a uuid", request("GET", "/api/v1/attachments/abc/download", good), 404,
         "not_found"),
        ("uppercase uuid", request("GET", download.upper().replace("/API/V1/ATTACHMENTS/",
         "/api/v1/attachments/").replace("/DOWNLOAD", "/download"), good), 307, None),
        ("braces", request("GET", f"/api/v1/attachments/{{{own}}}/download", good), 404,
         "not_found"),
        ("urn form", request("GET", f"/api/v1/attachments/urn:uuid:{own}/download", good), 404,
         "not_found"),
        ("bare hex", request("GET", f"/api/v1/attachments/{uuid.UUID(own).hex}/download", good),
         404, "not_found"),
        ("dot dot", request("GET", "/api/v1/attachments/../download", good), 404, "not_found"),
        ("encoded slash", request("GET", "/api/v1/attachments/a%2Fb/download", good), 404,
         "not_found"),
        ("percent nul", request("GET", "/api/v1/attachments/%00/download", good), 404,
         "not_found"),
        # A regex's "$" also matches before a final newline: such an id once passed the
        # canonical-form check and crashed the UUID parser (500), or poisoned an audit batch.
        ("id and a newline", request("GET", f"/api/v1/attachments/{own}%0A/download", good),
         404, "not_found"),
        ("id and CRLF", request("GET", f"/api/v1/attachments/{own}%0D%0A/download", good),
         404, "not_found"),
        ("metadata id and a newline", request("GET", f"/api/v1/attachments/{own}%0A", good),
         404, "not_found"),
        ("delete id and a newline", request("DELETE", f"/api/v1/attachments/{own}%0A",
         bearer(write_token)), 404, "not_found"),
        ("4 KB id", request("GET", "/api/v1/attachments/" + "a" * 4_000 + "/download", good),
         404, "not_found"),
        # Over aiohttp's 8190-byte request-line limit: its parser answers, before the app.
        ("10 KB id", request("GET", "/api/v1/attachments/" + "a" * 10_000 + "/download", good),
         400, None),
        ("sql fragment", request("GET", "/api/v1/attachments/1'%20OR%20'1'='1/download", good),
         404, "not_found"),
        ("integer overflow", request("GET", "/api/v1/attachments/99999999999999999999/download",
         good), 404, "not_found"),
        ("another tenant's id", request("GET", f"/api/v1/attachments/{foreign}/download", good),
         404, "not_found"),
        ("deleted id", request("GET", f"/api/v1/attachments/{deleted}/download", good), 404,
         "not_found"),
        ("missing id", request("GET", missing, good), 404, "not_found"),
        ("no such route", request("GET", "/api/v1/attachment", good), 404, "not_found"),
        ("no such route, no key", request("GET", "/api/v1/attachment"), 401, "unauthorized"),
        ("a public path with %2F, no key", request("GET", "/api/v1%2Fopenapi.json"), 401,
         "unauthorized"),
        # Methods
        ("HEAD", request("HEAD", download, good), 307, None),
        ("POST with read key", request("POST", download, good), 403, "insufficient_scope"),
        ("PUT with read key", request("PUT", download, good), 403, "insufficient_scope"),
        ("PATCH with read key", request("PATCH", download, good), 403, "insufficient_scope"),
        ("DELETE with read key", request("DELETE", download, good), 403, "insufficient_scope"),
        ("OPTIONS with read key", request("OPTIONS", download, good), 403, "insufficient_scope"),
        ("POST with write key", request("POST", download, bearer(write_token)), 405,
         "method_not_allowed"),
        ("DELETE with write key", request("DELETE", download, bearer(write_token)), 405,
         "method_not_allowed"),
        ("TRACE with write key", request("TRACE", download, bearer(write_token)), 405,
         "method_not_allowed"),
        ("PROPFIND with write key", request("PROPFIND", download, bearer(write_token)), 405,
         "method_not_allowed"),
        ("POST without a key", request("POST", download), 401, "unauthorized"),
        ("POST healthz (public path)", request("POST", "/healthz"), 405, "method_not_allowed"),
        # Headers and bodies
        ("body on GET", request("GET", download, good, body=b'{"x": 1}'), 307, None),
        ("expect 100-continue", request("GET", download, good, b"Expect: 100-continue"), 307,
         None),
        ("absurd request id", request("GET", download, good, b"X-Request-ID: " + b"<x>" * 100),
         307, None),
        ("request id with a token", request("GET", missing, good,
         f"X-Request-ID: {token}".encode()), 404, "not_found"),
        ("many headers", request("GET", download, good, *(f"X-F{i}: v".encode()
         for i in range(90))), 307, None),
        ("huge header value", request("GET", download, good, b"X-Big: " + b"v" * 8000), 307,
         None),
        ("content-length on GET", request("GET", download, good, b"Content-Length: 0"), 307,
         None),
        # aiohttp decompresses request bodies itself; one that does not decompress once
        # crashed the handler reading it (500).
        ("gzip body that is not gzip", request("POST", "/api/v1/attachments", writer,
         as_json, b"Content-Encoding: gzip", body=b'{"filename": "a.txt", "size_bytes": 3}'), 400,
         "invalid_request"),
        ("gzip edit that is not gzip", request("PATCH", f"/api/v1/attachments/{own}", writer,
         as_json, b"Content-Encoding: gzip", body=b'{"filename": "b.txt"}'), 400,
         "invalid_request"),
        ("deflate body that is not deflate", request("POST", "/api/v1/attachments", writer,
         as_json, b"Content-Encoding: deflate", body=b'{"filename": "a.txt"}'), 400, None),
        # The list's next-page link once came from the absolute URL, built from Host (500).
        ("port out of range in Host", request("GET", "/api/v1/attachments?limit=1", good,
         host=b"x:99999999"), 200, None),
        ("two colons in Host", request("GET", "/api/v1/attachments?limit=1", good,
         host=b"a:b:c"), 200, None),
    ]  # fmt: skip
    return table


async def test_hostile_inputs_get_their_documented_answers(
    client, conn, make_tenant, make_attachment, caplog
):
    tenant, other = await make_tenant(), await make_tenant()
    own = str(await make_attachment(tenant.workspace_id))
    await make_attachment(tenant.workspace_id)  # so that a page of one has a next page
    foreign = str(await make_attachment(other.workspace_id))
    deleted_id = await make_attachment(tenant.workspace_id)
    assert await delete_attachment(conn, deleted_id)
    table = cases(tenant.read_token, tenant.write_token, own, foreign, str(deleted_id))
    assert len(table) >= 50
    failures = []
    for name, raw, status, problem in table:
        response = await raw_request(client.host, client.port, raw)
        body = response.body
        if response.status != status:
            failures.append((name, response.status, body[:200]))
            continue
        assert response.status != 500, name
        assert tenant.read_token.encode() not in body, name
        assert foreign.encode() not in body, name
        if problem is not None:
            payload = json.loads(body)
            assert payload["problem"] == problem, name
            assert payload["code"] == status, name
            assert response.headers["cache-control"] == "no-store", name
        if status == 307:
            assert "x-amz-signature=" in response.headers["location"].lower(), name
        if b"?limit=1 " in raw:
            assert response.headers["link"].startswith("</api/v1/attachments?limit=1&cursor=")
        if "x-request-id" in response.headers:
            echoed = response.headers["x-request-id"]
            assert tenant.read_token not in echoed and "<" not in echoed, name
    assert failures == [], "\n".join(f"{n}: {s} {b[:120]!r}" for n, s, b in failures)
    # The client's mistakes are not the service's errors: nothing logged as one.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_client_gone_in_the_middle_of_its_body_is_not_an_error_of_ours(
    client, make_tenant, make_attachment, caplog
):
    """aiohttp lets the handler run on after the connection drops and fails its next read
    of the body: that is the client's doing, answered (to nobody) as a 400, not a 500
    logged with its traceback."""
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    counts = client.app[METRICS].counts.requests

    def answered(method: str) -> int:
        return sum(n for (_, seen, _), n in counts.items() if seen == method)

    for method, path in (
        ("POST", "/api/v1/attachments"),
        ("PATCH", f"/api/v1/attachments/{attachment_id}"),
    ):
        head = request(
            method,
            path,
            bearer(tenant.write_token),
            b"Content-Type: application/json",
            b"Content-Length: 1000",
        )
        before = answered(method)
        await send_and_vanish(client.host, client.port, head + b'{"filename": "a')
        await eventually(lambda method=method, before=before: answered(method) > before)
        assert {status for (_, seen, status) in counts if seen == method} == {400}, counts
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
