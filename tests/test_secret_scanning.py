"""GitHub's secret-scanning reports: a signed report revokes our keys at once, on every
replica, and is recorded; anything unsigned, badly signed, too large or malformed
changes nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import replace

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from service.core.secret_scanning import MAX_REPORT_BYTES, MAX_REPORTED_TOKENS
from service.core.tokens import digest, generate_token
from service.data.admin import key_is_live, revoke_key
from service.web.app import create_app
from service.web.caches import CACHES
from service.web.metrics import METRICS
from tests.support.http import assert_problem, send_and_vanish
from tests.support.rate_limits import assert_rate_limited
from tests.support.secrets_in_logs import SECRETS_IN_LOGS, SUITE_LOG_CHECK
from tests.support.waiting import eventually

PATH = "/api/v1/secret-scanning/reports"
# GitHub names its keys by 64 hex digits.
KEY_ID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"
GITHUB = ec.generate_private_key(ec.SECP256R1())
IMPOSTOR = ec.generate_private_key(ec.SECP256R1())
FOUND_AT = "https://github.com/octocat/Hello-World/blob/1234567/config.env"


def public_pem(private_key: ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


CONFIGURED_KEYS = json.dumps({KEY_ID: public_pem(GITHUB)})


def sign(body: bytes, private_key: ec.EllipticCurvePrivateKey = GITHUB) -> str:
    return base64.b64encode(private_key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


def signed(body: bytes, private_key=GITHUB, key_id=KEY_ID) -> dict[str, str]:
    return {
        "Github-Public-Key-Identifier": key_id,
        "Github-Public-Key-Signature": sign(body, private_key),
        "Content-Type": "application/json",
    }


def report(*tokens: str, source: str = "content") -> bytes:
    return json.dumps(
        [{"token": t, "type": "ixk_api_key", "url": FOUND_AT, "source": source} for t in tokens]
    ).encode()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def scanning_settings(settings):
    return replace(settings, secret_scanning_public_keys=CONFIGURED_KEYS)


@pytest.fixture
async def scanning(serve_app, scanning_settings):
    """A gateway with GitHub's (test) key configured, its caches on."""
    client = await serve_app(create_app(scanning_settings))
    await eventually(lambda: client.app[CACHES].live)
    return client


async def post(client, body: bytes, headers) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await client.post(PATH, data=body, headers=headers)
    return response, await response.read()


async def report_accepted(client, *tokens: str) -> list[dict[str, str]]:
    """Post a report of `tokens` that GitHub signed; its answer."""
    body = report(*tokens)
    response, answer = await post(client, body, signed(body))
    assert response.status == 200
    return json.loads(answer)  # type: ignore[no-any-return]


async def download(client, tenant, attachment_id) -> int:
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download",
        headers=tenant.auth(),
        allow_redirects=False,
    )
    return response.status


async def cache_the_key(client, tenant, attachment_id) -> None:
    """Download until the gateway has cached the tenant's read key: a lookup during which
    any invalidation arrives (other tests change rows too) rightly does not store it."""

    async def cached() -> bool:
        assert await download(client, tenant, attachment_id) == 307
        entry = client.app[CACHES].keys.peek(digest(tenant.read_token))
        return getattr(entry, "key_id", None) == tenant.read_key_id

    await eventually(cached, timeout=5)


async def recorded(conn, key_id):
    return await conn.fetch(
        """SELECT workspace_id, key_prefix, revoked, token_type, url, source,
                  host(client_address) AS client_address
           FROM leaked_key_reports WHERE key_id = $1""",
        key_id,
    )


async def test_a_signed_report_revokes_our_key_and_labels_every_token(scanning, conn, make_tenant):
    tenant = await make_tenant()
    unknown = generate_token()  # well formed, but no key of ours
    foreign = "ghp_" + "a" * 36
    ill_formed = tenant.write_token[:-1] + "!"
    body = report(tenant.read_token, unknown, foreign, ill_formed)
    response, answer = await post(scanning, body, signed(body))
    assert response.status == 200
    assert response.content_type == "application/json"
    assert json.loads(answer) == [
        {"token_hash": sha256_hex(tenant.read_token), "token_type": "ixk_api_key",
         "label": "true_positive"},
        {"token_hash": sha256_hex(unknown), "token_type": "ixk_api_key",
         "label": "false_positive"},
        {"token_hash": sha256_hex(foreign), "token_type": "ixk_api_key",
         "label": "false_positive"},
        {"token_hash": sha256_hex(ill_formed), "token_type": "ixk_api_key",
         "label": "false_positive"},
    ]  # fmt: skip
    # The hash GitHub gets back is the digest we store.
    assert sha256_hex(tenant.read_token) == digest(tenant.read_token).hex()
    for token in (tenant.read_token, tenant.write_token):
        assert token.encode() not in answer
    assert not await key_is_live(conn, tenant.read_token)
    assert await key_is_live(conn, tenant.write_token)  # near the leak, but not reported
    rows = await recorded(conn, tenant.read_key_id)
    assert [dict(row) for row in rows] == [
        {
            "workspace_id": tenant.workspace_id,
            "key_prefix": tenant.read_token[:12],
            "revoked": True,
            "token_type": "ixk_api_key",
            "url": FOUND_AT,
            "source": "content",
            "client_address": "127.0.0.1",
        }
    ]


async def test_a_key_this_gateway_cached_is_refused_right_after_the_report(
    scanning, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    await cache_the_key(scanning, tenant, attachment_id)
    await report_accepted(scanning, tenant.read_token)
    assert await download(scanning, tenant, attachment_id) == 401


async def test_every_replica_forgets_the_key_by_notify(
    scanning, serve_app, scanning_settings, make_tenant, make_attachment
):
    """Another gateway on the same database, which never saw the report: only the
    NOTIFY of the revocation can tell it (its cache would trust the key for 30 s)."""
    replica = await serve_app(create_app(scanning_settings))
    await eventually(lambda: replica.app[CACHES].live)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    await cache_the_key(replica, tenant, attachment_id)
    await report_accepted(scanning, tenant.read_token)

    async def refused() -> bool:
        return await download(replica, tenant, attachment_id) == 401

    await eventually(refused, timeout=5)


async def test_a_key_revoked_before_is_a_true_positive_and_stays_as_it_was(
    scanning, conn, make_tenant
):
    tenant = await make_tenant()
    await revoke_key(conn, tenant.read_key_id)
    revoked_at = await conn.fetchval(
        "SELECT revoked_at FROM api_keys WHERE id = $1", tenant.read_key_id
    )
    body = report(tenant.read_token, source="commit")
    response, answer = await post(scanning, body, signed(body))
    assert response.status == 200
    assert json.loads(answer)[0]["label"] == "true_positive"
    assert revoked_at == await conn.fetchval(
        "SELECT revoked_at FROM api_keys WHERE id = $1", tenant.read_key_id
    )
    rows = await recorded(conn, tenant.read_key_id)
    assert [(row["revoked"], row["source"]) for row in rows] == [(False, "commit")]


async def test_a_report_of_nothing_of_ours_changes_nothing(scanning, conn):
    before = await conn.fetchval("SELECT count(*) FROM leaked_key_reports")
    body = report(generate_token(), "sk_live_" + "x" * 24)
    response, answer = await post(scanning, body, signed(body))
    assert response.status == 200
    assert [entry["label"] for entry in json.loads(answer)] == ["false_positive"] * 2
    assert await conn.fetchval("SELECT count(*) FROM leaked_key_reports") == before


def unsigned(body):
    return {"Content-Type": "application/json"}


def identifier_only(body):
    return {"Github-Public-Key-Identifier": KEY_ID}


def signature_only(body):
    return {"Github-Public-Key-Signature": sign(body)}


def empty_signature(body):
    return {**signed(body), "Github-Public-Key-Signature": " "}


def two_signatures(body):
    headers = aiohttp.client.CIMultiDict(signed(body))  # type: ignore[attr-defined]
    headers.add("Github-Public-Key-Signature", sign(body))
    return headers


def by_another_key(body):
    return signed(body, IMPOSTOR)


def by_another_key_under_ours(body):
    return signed(body, IMPOSTOR, KEY_ID)


def unknown_identifier(body):
    return signed(body, GITHUB, "f" * 64)


def not_base64(body):
    return {**signed(body), "Github-Public-Key-Signature": "not base64!"}


def not_der(body):
    return {**signed(body), "Github-Public-Key-Signature": base64.b64encode(b"x" * 70).decode()}


def non_ascii_signature(body):
    return {**signed(body), "Github-Public-Key-Signature": "MEUCIQ\u00e9"}


def signed_before_tampering(body):
    tampered = body.replace(b"content", b"commits")
    assert tampered != body
    return signed(tampered)


@pytest.mark.parametrize(
    ("headers", "status", "problem"),
    [
        (unsigned, 400, "signature_missing"),
        (identifier_only, 400, "signature_missing"),
        (signature_only, 400, "signature_missing"),
        (empty_signature, 400, "signature_missing"),
        (two_signatures, 400, "signature_missing"),
        (by_another_key, 403, "signature_invalid"),
        (unknown_identifier, 403, "signature_invalid"),
        (not_base64, 403, "signature_invalid"),
        (not_der, 403, "signature_invalid"),
        (non_ascii_signature, 403, "signature_invalid"),
        (signed_before_tampering, 403, "signature_invalid"),
    ],
)
async def test_a_report_not_signed_by_a_configured_key_changes_nothing(
    scanning, conn, make_tenant, headers, status, problem
):
    tenant = await make_tenant()
    body = report(tenant.read_token)
    response, answer = await post(scanning, body, headers(body))
    assert response.status == status
    assert_problem(status, answer, problem)
    assert await key_is_live(conn, tenant.read_token)
    assert await recorded(conn, tenant.read_key_id) == []


async def test_another_key_under_our_identifier_is_refused(scanning, conn, make_tenant):
    tenant = await make_tenant()
    body = report(tenant.read_token)
    _, answer = await post(scanning, body, by_another_key_under_ours(body))
    assert_problem(403, answer, "signature_invalid")
    assert await key_is_live(conn, tenant.read_token)


async def test_an_oversized_report_is_413_signed_or_not(scanning, conn, make_tenant):
    tenant = await make_tenant()
    padding = "x" * MAX_REPORT_BYTES
    body = json.dumps([{"token": tenant.read_token, "type": "t", "url": padding}]).encode()
    response, answer = await post(scanning, body, signed(body))
    assert response.status == 413
    assert_problem(413, answer, "payload_too_large")

    async def chunks():  # no Content-Length: refused while it arrives
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response, answer = await post(scanning, chunks(), signed(body))
    assert response.status == 413
    assert_problem(413, answer, "payload_too_large")
    assert await key_is_live(conn, tenant.read_token)


def malformed_reports(token: str) -> dict[str, bytes]:
    item = {"token": token, "type": "ixk_api_key", "url": FOUND_AT, "source": "content"}
    return {
        "not json": b"[{token",
        "not utf-8": b'[{"token": "\xff"}]',
        "an object": json.dumps(item).encode(),
        "empty": b"[]",
        "not objects": json.dumps([item, 1]).encode(),
        "no token": json.dumps([item, {"type": "t"}]).encode(),
        "no type": json.dumps([item, {"token": token}]).encode(),
        "token a number": json.dumps([item, {"token": 1, "type": "t"}]).encode(),
        "empty token": json.dumps([item, {"token": "", "type": "t"}]).encode(),
        "url a number": json.dumps([item, {**item, "url": 5}]).encode(),
        "lone surrogate": json.dumps([item, {**item, "type": "\ud800"}]).encode(),
        "nul": json.dumps([item, {**item, "source": "a\x00b"}]).encode(),
        "too many": json.dumps([item] * (MAX_REPORTED_TOKENS + 1)).encode(),
        "nested too deep": b"[" * 30_000 + b"]" * 30_000,
    }


@pytest.mark.parametrize("case", list(malformed_reports("ixk_")))
async def test_a_malformed_signed_report_is_400_and_changes_nothing(
    scanning, conn, make_tenant, case
):
    tenant = await make_tenant()
    body = malformed_reports(tenant.read_token)[case]
    response, answer = await post(scanning, body, signed(body))
    assert response.status == 400, answer
    assert_problem(400, answer, "invalid_request")
    assert await key_is_live(conn, tenant.read_token)
    assert await recorded(conn, tenant.read_key_id) == []


async def test_a_report_that_does_not_decompress_is_400_and_changes_nothing(
    scanning, conn, make_tenant
):
    """aiohttp inflates a `Content-Encoding: gzip` body itself: one that is not gzip is
    the sender's error (400), not the gateway's (500)."""
    tenant = await make_tenant()
    body = report(tenant.read_token)
    headers = {**signed(body), "Content-Encoding": "gzip"}
    response, answer = await post(scanning, body, headers)
    assert_problem(response.status, answer, "invalid_request")
    assert await key_is_live(conn, tenant.read_token)
    assert await recorded(conn, tenant.read_key_id) == []


async def test_reports_are_limited_per_address(serve_app, scanning_settings):
    limited = replace(
        scanning_settings, secret_scanning_per_address=0.01, secret_scanning_burst_per_address=3
    )
    client = await serve_app(create_app(limited))
    body = report(generate_token())
    statuses = []
    for _ in range(3):
        response, _ = await post(client, body, signed(body))
        statuses.append(response.status)
    assert statuses == [200, 200, 200]
    # Signed or not, every report counts.
    response, answer = await post(client, body, signed(body))
    assert_rate_limited(response, answer, "secret-scanning", 3)
    response, answer = await post(client, body, unsigned(body))
    assert_rate_limited(response, answer, "secret-scanning", 3)


async def test_unconfigured_the_route_is_as_unknown_as_any_path(client, make_tenant):
    tenant = await make_tenant()
    body = report(tenant.read_token)
    for path in (PATH, "/api/v1/nothing-here"):
        response = await client.post(path, data=body, headers=signed(body))
        assert_problem(401, await response.read(), "unauthorized")
        response = await client.post(
            path, data=body, headers={**signed(body), **tenant.auth("write")}
        )
        assert response.status == 404
        assert_problem(404, await response.read(), "not_found")


async def test_other_methods_are_405_without_a_key(scanning):
    response = await scanning.get(PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert_problem(405, await response.read(), "method_not_allowed")


async def test_no_reported_token_reaches_any_log_line(scanning, make_tenant):
    tenant = await make_tenant()
    body = report(tenant.read_token, generate_token())
    with SUITE_LOG_CHECK.watching() as lines:
        response, _ = await post(scanning, body, {**signed(body), "X-Request-ID": "leak-1"})
        assert response.status == 200
        response, _ = await post(scanning, body, {**unsigned(body), "X-Request-ID": "leak-2"})
        assert response.status == 400

        def answered() -> list[int]:
            parsed = [json.loads(line) for line in lines]
            return [
                line["status"]
                for line in parsed
                if line["logger"] == "aiohttp.access"
                and line.get("request_id") in ("leak-1", "leak-2")
            ]

        await eventually(lambda: answered() == [200, 400], timeout=5)
    assert any("secret-scanning report: 2 tokens, 1 of them" in line for line in lines)
    for line in lines:
        assert not SECRETS_IN_LOGS.search(line), line
        assert tenant.read_token not in line, line


async def test_a_reporter_gone_in_the_middle_of_its_body_is_not_an_error_of_ours(scanning, caplog):
    counts = scanning.app[METRICS].counts.requests
    head = "\r\n".join(
        [
            f"POST {PATH} HTTP/1.1",
            "Host: test",
            *(f"{name}: {value}" for name, value in signed(b"[]").items()),
            "Content-Length: 1000",
            "",
            "",
        ]
    )
    await send_and_vanish(scanning.host, scanning.port, head.encode() + b'[{"token": "ixk_')
    await eventually(lambda: any(method == "POST" for (_, method, _) in counts))
    assert {status for (_, method, status) in counts if method == "POST"} == {400}, counts
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
