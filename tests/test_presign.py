"""The 307 itself: byte-exact Location, method-bound signatures, filenames, expiry,
checked against SeaweedFS, which verifies SigV4 like S3 does."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.auth
import pytest
from aiobotocore.credentials import AioDeferredRefreshableCredentials, AioRefreshableCredentials
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from service.core.attachment import AttachmentTarget, PresignedUrl
from service.core.disposition import content_disposition
from service.core.errors import CredentialsExpiring
from service.core.settings import Settings
from service.storage import signer as signer_module
from service.storage.client import Storage, signed_at
from service.storage.lifetimes import MARGIN_SECONDS, UrlLifetime
from service.storage.signer import QuerySigner
from service.web.app import create_app
from tests.support.http import fetch
from tests.support.storage import BUCKET

HOSTILE_FILENAMES = [
    'quote".txt',
    "back\\slash.txt",
    "crlf\r\nSet-Cookie: x=1.txt",
    "percent%41.txt",
    "emoji 😀 report.pdf",
    "right-to-left \u202egnp.exe",
    "semi;colon,comma (1).txt",
    "naïve café.txt",
    "x" * 296 + ".txt",
    "1 KB " + "y" * 1015 + ".txt",
    "日本語のファイル名.docx",
    "tab\tand\x01ctl\x7f.txt",  # Postgres text cannot hold NUL at all
]


async def redirect(client, attachment_id, token, method="GET") -> str:
    response = await client.request(
        method,
        f"/api/v1/attachments/{attachment_id}/download",
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
    )
    assert response.status == 307
    return response.headers["Location"]


def botocore_presign(settings: Settings, location: str, operation: str, params: dict) -> str:
    """What botocore itself signs for the same inputs at the same second."""
    client = boto3.client(
        "s3",
        endpoint_url=settings.signing_endpoint_url,
        region_name=settings.s3_region,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style}
        ),
    )
    at = signed_at(location).replace(tzinfo=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda: at)
        return client.generate_presigned_url(
            operation, Params=params, ExpiresIn=settings.presign_expires_seconds
        )


@pytest.mark.parametrize("presigner", ["fast", "botocore"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_location_is_byte_for_byte_what_botocore_signs(
    serve_app, settings, make_tenant, make_attachment, method, presigner
):
    settings = replace(settings, presigner=presigner)
    client = await serve_app(create_app(settings))
    tenant = await make_tenant()
    filename = 'Ünïcødé report ; "quoted" 100%.pdf'
    key = "dir/with space/plus+tilde~/é.pdf"
    attachment_id = await make_attachment(
        tenant.workspace_id, filename=filename, content_type="application/pdf", key=key
    )
    location = await redirect(client, attachment_id, tenant.read_token, method)
    expected = botocore_presign(
        settings,
        location,
        "get_object" if method == "GET" else "head_object",
        {
            "Bucket": BUCKET,
            "Key": key,
            "ResponseContentDisposition": content_disposition(filename),
            "ResponseContentType": "application/pdf",
        },
    )
    assert location == expected


async def test_head_gets_a_head_signed_url_that_storage_accepts(
    client, make_tenant, make_attachment
):
    tenant = await make_tenant()
    body = b"head me" * 100
    attachment_id = await make_attachment(tenant.workspace_id, body=body)
    head_location = await redirect(client, attachment_id, tenant.read_token, "HEAD")
    status, _, headers = await fetch(head_location, "HEAD")
    assert status == 200
    assert headers["Content-Length"] == str(len(body))
    # The GET-signed URL is refused for HEAD, which is why HEAD is signed separately.
    get_location = await redirect(client, attachment_id, tenant.read_token, "GET")
    assert (await fetch(get_location, "HEAD"))[0] == 403
    assert (await fetch(head_location, "GET"))[0] == 403


async def test_storage_refuses_tampered_urls(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    other_id = await make_attachment(tenant.workspace_id, body=b"other")
    location = await redirect(client, attachment_id, tenant.read_token)
    assert (await fetch(location))[0] == 200

    signature = parse_qs(urlsplit(location).query)["X-Amz-Signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    other_location = await redirect(client, other_id, tenant.read_token)
    other_key = urlsplit(other_location).path
    tampered = {
        "signature": location.replace(signature, flipped),
        "expiry": location.replace("X-Amz-Expires=900", "X-Amz-Expires=901"),
        "disposition": location.replace("attachment%3B", "inline%3B"),
        "object": location.replace(urlsplit(location).path, other_key),
    }
    for what, url in tampered.items():
        assert url != location, what
        assert (await fetch(url))[0] == 403, what


async def test_storage_refuses_urls_signed_with_the_wrong_secret(
    serve_app, settings, monkeypatch, make_tenant, make_attachment
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-seaweedfs-knows")
    client = await serve_app(create_app(settings))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    location = await redirect(client, attachment_id, tenant.read_token)
    assert (await fetch(location))[0] == 403


async def test_urls_expire_after_the_configured_lifetime(
    serve_app, settings, make_tenant, make_attachment
):
    short = replace(settings, presign_expires_seconds=1)
    client = await serve_app(create_app(short))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    location = await redirect(client, attachment_id, tenant.read_token)
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["1"]
    await asyncio.sleep(2.2)
    status, body, _ = await fetch(location)
    assert status == 403
    assert b"expired" in body.lower()


async def test_expires_at_in_the_body_is_the_signatures_true_end(
    client, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download",
        headers=tenant.auth(),
        allow_redirects=False,
    )
    payload = await response.json()
    location = response.headers["Location"]
    expected = signed_at(location).timestamp() + 900
    from datetime import datetime

    assert datetime.fromisoformat(payload["expires_at"]).timestamp() == expected
    assert payload["expires_at"].endswith("Z")


@pytest.mark.parametrize("filename", HOSTILE_FILENAMES)
async def test_hostile_filenames_download_with_a_safe_disposition(
    client, make_tenant, make_attachment, filename
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"payload", filename=filename)
    location = await redirect(client, attachment_id, tenant.read_token)
    assert "\r" not in location and "\n" not in location
    status, body, headers = await fetch(location)
    assert status == 200
    assert body == b"payload"
    disposition = headers["Content-Disposition"]
    assert disposition == content_disposition(filename)
    assert disposition.isascii()
    fallback = disposition.split('filename="', 1)[1].split('"; filename*=', 1)[0]
    for forbidden in ('"', "\\", "%", "\r", "\n", "\x00", "\u202e"):
        assert forbidden not in fallback
    assert "Set-Cookie" not in headers


async def test_public_endpoint_is_signed_into_urls(
    serve_app, settings, make_tenant, make_attachment
):
    public = replace(settings, s3_public_endpoint_url="https://files.example.test:8443")
    client = await serve_app(create_app(public))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, key="k/" + str(uuid.uuid4()))
    location = await redirect(client, attachment_id, tenant.read_token)
    assert location.startswith(f"https://files.example.test:8443/{BUCKET}/k/")


async def test_virtual_addressing_puts_the_bucket_in_the_host(
    serve_app, settings, make_tenant, make_attachment
):
    virtual = replace(
        settings, s3_public_endpoint_url="https://s3.example.test", s3_addressing_style="virtual"
    )
    client = await serve_app(create_app(virtual))
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, key="v/obj.txt", filename="a.txt")
    location = await redirect(client, attachment_id, tenant.read_token)
    assert location.startswith(f"https://{BUCKET}.s3.example.test/v/obj.txt?")
    expected = botocore_presign(
        virtual,
        location,
        "get_object",
        {
            "Bucket": BUCKET,
            "Key": "v/obj.txt",
            "ResponseContentDisposition": content_disposition("a.txt"),
            "ResponseContentType": "text/plain",
        },
    )
    assert location == expected


async def test_deferred_credentials_are_loaded_before_a_lifetime_is_judged():
    """A web identity (IRSA), an assumed role or SSO loads on first use: before that it has
    no expiry, and read as static credentials the first URLs were signed for the whole
    lifetime asked, past the end of the credentials that signed them."""
    loads = 0

    async def load():
        nonlocal loads
        loads += 1
        return {
            "access_key": "AKIDEXAMPLE",
            "secret_key": "secret",
            "token": "session",
            "expiry_time": (datetime.now(UTC) + timedelta(seconds=600)).isoformat(),
        }

    credentials = AioDeferredRefreshableCredentials(
        refresh_using=load, method="assume-role-with-web-identity"
    )
    seconds = await UrlLifetime(credentials).seconds(3600)
    assert loads >= 1
    assert 600 - MARGIN_SECONDS - 10 <= seconds <= 600 - MARGIN_SECONDS


async def test_a_failed_first_load_is_not_repeated_by_every_request():
    """While STS does not answer, each of a burst of requests loaded the credentials
    itself (each a call to STS, and a logged traceback): one tries, the others are told
    at once, as a failed refresh is (503)."""
    loads = 0

    async def load():
        nonlocal loads
        loads += 1
        raise RuntimeError("STS did not answer")

    credentials = AioDeferredRefreshableCredentials(
        refresh_using=load, method="assume-role-with-web-identity"
    )
    lifetime = UrlLifetime(credentials)
    results = await asyncio.gather(
        *(lifetime.seconds(900) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(result, CredentialsExpiring) for result in results), results
    assert loads == 1


async def test_a_refresh_that_fails_is_a_503_and_not_a_call_to_sts_per_request(monkeypatch):
    """Inside their last ten minutes, botocore refreshes credentials on every read and
    passes on what STS raised (a ClientError, not a BotoCoreError): the signer's re-read
    made each request of a burst call STS and answer 500. Now a failed refresh is a 503 for
    the request that tried it, and the others sign with the credentials they have, which
    outlive their (shortened) URLs."""
    monkeypatch.setattr(signer_module, "CREDENTIALS_RECHECK_SECONDS", 0.0)  # always due
    refreshes = 0
    sts_answers = True
    access_key, lifetime = "AKIDEXAMPLE", 590  # inside botocore's mandatory window (10 min)

    async def refresh():
        nonlocal refreshes
        refreshes += 1
        if sts_answers:
            return {
                "access_key": access_key,
                "secret_key": "secret",
                "token": "session",
                "expiry_time": (datetime.now(UTC) + timedelta(seconds=lifetime)).isoformat(),
            }
        raise ClientError({"Error": {"Code": "AccessDenied"}}, "AssumeRoleWithWebIdentity")

    credentials = AioDeferredRefreshableCredentials(
        refresh_using=refresh, method="assume-role-with-web-identity"
    )
    session = get_session()
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # presigning sends nothing
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(signature_version="s3v4"),
    ) as client:
        signer = QuerySigner(client, credentials)
        storage = Storage(client, None, 900, signer, UrlLifetime(credentials))
        target = AttachmentTarget("attachments", "w/a", "attachment", "text/plain", "a", 1)
        await storage.presign("GET", target)  # loads them
        sts_answers, refreshes = False, 0
        results = await asyncio.gather(
            *(storage.presign("GET", target) for _ in range(50)), return_exceptions=True
        )
        # STS answers again, and the chain refreshes (asked by anyone): the next URL is
        # signed with the new credentials, though the signer's own retry is not due yet.
        sts_answers, access_key, lifetime = True, "AKIDNEWER", 3600
        await credentials.get_frozen_credentials()
        renewed = await storage.presign("GET", target)
        assert "AKIDNEWER" in renewed.url and not renewed.shortened
    refused = [result for result in results if isinstance(result, Exception)]
    assert refused and all(isinstance(result, CredentialsExpiring) for result in refused)
    assert len(refused) <= 2  # UrlLifetime's refresh, and the signer's re-read
    assert refreshes <= 2
    latest = (datetime.now(UTC) + timedelta(seconds=590 - MARGIN_SECONDS)).timestamp()
    signed = [url for url in results if isinstance(url, PresignedUrl)]
    assert len(signed) >= 48
    assert all(url.shortened and url.expires_at_us <= latest * 1e6 for url in signed)


async def test_a_signer_whose_first_read_fails_asks_sts_once_a_retry_window():
    """Credentials inside botocore's last ten minutes when the process starts (a container
    role's), and STS down: each request of a burst read them in turn, each a call to STS,
    because the signer had no frozen ones to compare the chain with."""
    refreshes = 0

    async def refresh():
        nonlocal refreshes
        refreshes += 1
        raise ClientError({"Error": {"Code": "AccessDenied"}}, "AssumeRoleWithWebIdentity")

    expiry = (datetime.now(UTC) + timedelta(seconds=590)).isoformat()
    metadata = {"access_key": "AKID", "secret_key": "s", "token": "t", "expiry_time": expiry}
    credentials = AioRefreshableCredentials.create_from_metadata(metadata, refresh, "test")
    signer = QuerySigner(client=None, credentials=credentials)
    results = await asyncio.gather(
        *(signer.credentials() for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(result, CredentialsExpiring) for result in results), results
    assert refreshes == 1
