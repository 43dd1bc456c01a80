"""Uploads through the API with a declared SHA-256, and above one PUT in parts: against
SeaweedFS, which checks signatures and x-amz-checksum-sha256 (docs/api.md, "Verified
uploads" says what each storage checks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import uuid
from dataclasses import replace

import aiohttp
import pytest
from yarl import URL

from service.core.uploads import MAX_OBJECT_BYTES, MIB, part_size_for, plan_parts
from service.storage.client import PARTS_PER_TURN
from service.web.app import create_app
from service.web.storage import STORAGE
from tests.support.http import assert_problem, fetch
from tests.support.proxy import RecordingHttpProxy
from tests.support.rate_limits import assert_rate_limited
from tests.support.storage import BUCKET


async def call(client, method, path, headers, **kwargs):
    response = await client.request(method, path, headers=headers, allow_redirects=False, **kwargs)
    return response, await response.read()


async def put(url, body, headers):
    # A file-like body: aiohttp streams it, and says exactly its size in Content-Length.
    data = io.BytesIO(body)
    async with aiohttp.ClientSession() as session:
        async with session.put(URL(url, encoded=True), data=data, headers=headers) as response:
            return response.status, await response.read()


async def put_part(part, body, part_size=5 * MIB):
    """A part's own bytes of `body`, PUT to its URL: the status."""
    start = (part["number"] - 1) * part_size
    return (await put(part["url"], body[start : start + part["size"]], {}))[0]


async def create(client, tenant, size, **fields):
    document = {"filename": "data.bin", "content_type": "application/octet-stream"}
    response, raw = await call(
        client,
        "POST",
        "/api/v1/attachments",
        tenant.auth("write"),
        json={**document, "size_bytes": size, **fields},
    )
    return response, json.loads(raw)


async def complete(client, tenant, attachment_id):
    return await call(
        client, "POST", f"/api/v1/attachments/{attachment_id}/complete", tenant.auth("write")
    )


async def downloaded(client, tenant, attachment_id):
    _, raw = await call(
        client,
        "GET",
        f"/api/v1/attachments/{attachment_id}/download",
        tenant.auth(),
        params={"redirect": "false"},
    )
    link = json.loads(raw)
    status, body, _ = await fetch(link["url"])
    assert status == 200
    return link, body


def calls_through(settings, internal, seaweed, **more):
    """Settings whose gateway makes its own S3 calls through `internal` (a recording
    proxy), while the URLs it hands out are signed for SeaweedFS itself."""
    return replace(
        settings, s3_endpoint_url=internal.url, s3_public_endpoint_url=seaweed.endpoint_url, **more
    )


@pytest.fixture
async def multipart_client(serve_app, settings):
    """Parts of 5 MiB (S3's least) above one PUT of 5 MiB: a 12 MiB file is three parts."""
    limits = replace(settings, upload_single_put_max_bytes=5 * MIB, upload_part_bytes=5 * MIB)
    return await serve_app(create_app(limits))


@pytest.mark.parametrize("spelling", ["hex", "HEX", "base64"])
async def test_a_declared_sha256_is_signed_checked_and_shown(client, make_tenant, spelling):
    tenant = await make_tenant()
    body = b"checked bytes\n"
    digest = hashlib.sha256(body)
    declared = {
        "hex": digest.hexdigest(),
        "HEX": digest.hexdigest().upper(),
        "base64": base64.b64encode(digest.digest()).decode(),
    }[spelling]
    response, created = await create(client, tenant, len(body), sha256=declared)
    assert response.status == 201
    assert "digest" not in created  # not known until the upload is checked
    upload = created["upload"]
    checksum = base64.b64encode(digest.digest()).decode()
    assert upload["headers"] == {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(body)),
        "x-amz-checksum-sha256": checksum,
    }
    assert "x-amz-checksum-sha256" in URL(upload["url"]).query["X-Amz-SignedHeaders"]
    headers = {k: v for k, v in upload["headers"].items() if k != "Content-Length"}
    assert (await put(upload["url"], body, headers))[0] == 200
    response, raw = await complete(client, tenant, created["id"])
    assert response.status == 200
    shown = json.loads(raw)
    assert shown["digest"] == "sha256:" + digest.hexdigest()
    response, raw = await call(client, "GET", f"/api/v1/attachments/{created['id']}", tenant.auth())
    assert json.loads(raw)["digest"] == shown["digest"]
    link, fetched = await downloaded(client, tenant, created["id"])
    assert fetched == body and link["digest"] == shown["digest"]


async def test_storage_refuses_other_bytes_and_a_missing_checksum_header(client, make_tenant):
    tenant = await make_tenant()
    body = b"the declared bytes"
    _, created = await create(client, tenant, len(body), sha256=hashlib.sha256(body).hexdigest())
    upload = created["upload"]
    headers = {k: v for k, v in upload["headers"].items() if k != "Content-Length"}
    other = b"other bytes, same len"[: len(body)]
    status, answer = await put(upload["url"], other, headers)
    assert status == 400 and b"BadDigest" in answer  # SeaweedFS checked the checksum
    unsigned = {"Content-Type": headers["Content-Type"]}
    status, answer = await put(upload["url"], body, unsigned)
    assert status == 403  # the checksum header is signed: without it, no upload
    response, raw = await complete(client, tenant, created["id"])
    assert_problem(response.status, raw, "upload_incomplete")


@pytest.mark.parametrize(
    "value",
    ["", "abc", "0" * 63, "0" * 65, "g" * 64, "A" * 44, "A" * 43, 7, None, ["0" * 64]],
)
async def test_a_malformed_sha256_is_400(client, make_tenant, value):
    tenant = await make_tenant()
    response, problem = await create(client, tenant, 3, sha256=value)
    assert response.status == 400 and problem["problem"] == "invalid_request"


async def test_complete_reads_back_what_the_storage_did_not_check(
    serve_app, settings, make_tenant, seaweed_client
):
    """Bytes put in place by other means (no checksum stored): `complete` reads them back,
    confirms the right ones and refuses others; above UPLOAD_VERIFY_MAX_BYTES it cannot."""
    tenant = await make_tenant()
    body = b"written by someone else\n"
    declared = hashlib.sha256(body).hexdigest()
    for verify_max, written, problem in (
        (1024, body, None),
        (1024, body.upper(), "upload_incomplete"),
        (len(body) - 1, body, "upload_incomplete"),  # too big to read back: unverifiable
    ):
        client = await serve_app(create_app(replace(settings, upload_verify_max_bytes=verify_max)))
        _, created = await create(client, tenant, len(body), sha256=declared)
        key = f"{tenant.workspace_id}/{created['id']}"
        await asyncio.to_thread(seaweed_client.put_object, Bucket=BUCKET, Key=key, Body=written)
        response, raw = await complete(client, tenant, created["id"])
        if problem is None:
            assert response.status == 200
            assert json.loads(raw)["digest"] == "sha256:" + declared
        else:
            assert_problem(response.status, raw, problem)
            _, raw = await call(
                client, "GET", f"/api/v1/attachments/{created['id']}", tenant.auth()
            )
            assert json.loads(raw)["status"] == "upload_pending"


async def test_a_file_of_several_parts_goes_up_and_comes_back_equal(multipart_client, make_tenant):
    client = multipart_client
    tenant = await make_tenant()
    body = os.urandom(12 * MIB + 12345)
    declared = hashlib.sha256(body).hexdigest()
    response, created = await create(client, tenant, len(body), sha256=declared)
    assert response.status == 201
    upload = created["upload"]
    assert upload["part_size_bytes"] == 5 * MIB
    parts = upload["parts"]
    assert [(p["number"], p["size"]) for p in parts] == [
        (1, 5 * MIB),
        (2, 5 * MIB),
        (3, 2 * MIB + 12345),
    ]
    pieces = [body[i : i + 5 * MIB] for i in range(0, len(body), 5 * MIB)]
    # A part of another size than signed is refused; the parts may go in any order.
    assert (await put(parts[0]["url"], pieces[0][:-1], {}))[0] == 403
    for part in (parts[2], parts[0]):
        assert (await put(part["url"], pieces[part["number"] - 1], {}))[0] == 200
    response, raw = await complete(client, tenant, created["id"])
    assert_problem(response.status, raw, "upload_incomplete")  # part 2 is missing
    assert (await put(parts[1]["url"], pieces[1], {}))[0] == 200
    assert (await put(parts[1]["url"], pieces[1], {}))[0] == 200  # sent twice: counts once
    response, raw = await complete(client, tenant, created["id"])
    assert response.status == 200, raw
    assert json.loads(raw)["digest"] == "sha256:" + declared
    response, raw = await complete(client, tenant, created["id"])  # again: the same answer
    assert response.status == 200 and json.loads(raw)["status"] == "available"
    _, fetched = await downloaded(client, tenant, created["id"])
    assert fetched == body


async def test_parts_of_other_bytes_are_refused_at_complete(multipart_client, make_tenant):
    client = multipart_client
    tenant = await make_tenant()
    body = os.urandom(6 * MIB)
    _, created = await create(client, tenant, len(body), sha256=hashlib.sha256(body).hexdigest())
    parts = created["upload"]["parts"]
    tampered = body[: 5 * MIB] + bytes(MIB)
    for part in parts:
        offset = (part["number"] - 1) * 5 * MIB
        assert (await put(part["url"], tampered[offset : offset + part["size"]], {}))[0] == 200
    response, raw = await complete(client, tenant, created["id"])
    assert_problem(response.status, raw, "upload_incomplete")


async def test_a_multipart_sha256_beyond_what_can_be_read_back_is_400(
    serve_app, settings, make_tenant
):
    limits = replace(
        settings,
        upload_single_put_max_bytes=5 * MIB,
        upload_part_bytes=5 * MIB,
        upload_verify_max_bytes=8 * MIB,
    )
    client = await serve_app(create_app(limits))
    tenant = await make_tenant()
    response, problem = await create(client, tenant, 9 * MIB, sha256="0" * 64)
    assert response.status == 400 and problem["problem"] == "invalid_request"
    response, created = await create(client, tenant, 9 * MIB)  # without one: parts
    assert response.status == 201 and len(created["upload"]["parts"]) == 2


async def test_purge_aborts_multipart_uploads_never_confirmed(
    multipart_client, make_tenant, conn, cli, seaweed_client
):
    client = multipart_client
    tenant = await make_tenant()
    _, created = await create(client, tenant, 6 * MIB)
    key = f"{tenant.workspace_id}/{created['id']}"
    part = created["upload"]["parts"][0]
    assert (await put(part["url"], os.urandom(part["size"]), {}))[0] == 200

    def uploads_of_key():
        listed = seaweed_client.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
        return [upload["UploadId"] for upload in listed.get("Uploads", [])]

    assert len(await asyncio.to_thread(uploads_of_key)) == 1
    await conn.execute(
        "UPDATE attachments SET created_at = now() - interval '2 days' WHERE id = $1",
        uuid.UUID(created["id"]),
    )
    await asyncio.to_thread(cli, "purge", "--older-than", "1d")
    assert await asyncio.to_thread(uploads_of_key) == []
    response, _ = await complete(client, tenant, created["id"])
    assert response.status == 404


async def test_signing_ten_thousand_part_urls_lets_other_requests_run(client):
    """The largest upload signs 10,000 part URLs, and the fast signer never waits: in one
    go it held the loop, and every other request of the process, for over a second."""
    parts = plan_parts(MAX_OBJECT_BYTES, part_size_for(MAX_OBJECT_BYTES, 5 * MIB))
    assert len(parts) > 9_900
    turns = 0
    signing = True

    async def other_requests():
        nonlocal turns
        while signing:
            turns += 1
            await asyncio.sleep(0)

    others = asyncio.create_task(other_requests())
    await asyncio.sleep(0)
    started = turns
    try:
        urls = await client.app[STORAGE].presign_parts(BUCKET, "big/object", "upload-id", parts)
    finally:
        signing = False
        await others
    assert len(urls) == len(parts)
    assert [URL(url.url, encoded=True).query["partNumber"] for url in urls[:2]] == ["1", "2"]
    # The loop turned at least once every PARTS_PER_TURN parts.
    assert turns - started >= len(parts) // PARTS_PER_TURN - 1


async def test_confirming_bytes_that_do_not_match_reads_them_once(
    serve_app, settings, seaweed, make_tenant
):
    """Each `complete` of a multipart upload whose bytes did not match read the whole object
    back again (up to 1 GiB a call): three at once and one more read it once."""
    async with RecordingHttpProxy(seaweed.endpoint_url) as internal:
        limits = calls_through(
            settings,
            internal,
            seaweed,
            upload_single_put_max_bytes=5 * MIB,
            upload_part_bytes=5 * MIB,
        )
        client = await serve_app(create_app(limits))
        tenant = await make_tenant()
        body = os.urandom(6 * MIB)
        _, created = await create(
            client, tenant, len(body), sha256=hashlib.sha256(body).hexdigest()
        )
        tampered = body[: 5 * MIB] + bytes(MIB)
        for part in created["upload"]["parts"]:
            assert await put_part(part, tampered) == 200
        answers = await asyncio.gather(*(complete(client, tenant, created["id"]) for _ in range(3)))
        answers.append(await complete(client, tenant, created["id"]))
        for response, raw in answers:
            assert_problem(response.status, raw, "upload_incomplete")  # (the checksum)
    key = f"/{BUCKET}/{tenant.workspace_id}/{created['id']}"
    reads = [
        path
        for method, path, _ in internal.requests
        if method == "GET" and path.split("?")[0] == key and "uploadId" not in path
    ]
    assert len(reads) == 1, internal.requests


async def test_a_head_without_content_length_is_503_not_500(
    serve_app, settings, seaweed, make_tenant
):
    """A store (or a proxy before it) that answers HEAD without Content-Length: `complete`
    cannot tell the size, which is the storage's failure, not ours."""
    async with RecordingHttpProxy(seaweed.endpoint_url, head_without_length=True) as internal:
        limits = calls_through(settings, internal, seaweed)
        client = await serve_app(create_app(limits))
        tenant = await make_tenant()
        body = b"sized\n"
        _, created = await create(client, tenant, len(body))
        upload = created["upload"]
        headers = {k: v for k, v in upload["headers"].items() if k != "Content-Length"}
        assert (await put(upload["url"], body, headers))[0] == 200
        response, raw = await complete(client, tenant, created["id"])
    assert_problem(response.status, raw, "service_unavailable")
    assert int(response.headers["Retry-After"]) > 0


async def test_a_read_back_cut_short_is_503_not_500(
    serve_app, settings, seaweed, seaweed_client, make_tenant
):
    """The storage closing the connection in the middle of the object `complete` reads
    back: aiobotocore passes on aiohttp's payload error as it is, which was a 500."""
    async with RecordingHttpProxy(seaweed.endpoint_url, cut_bodies=True) as internal:
        limits = calls_through(settings, internal, seaweed)
        client = await serve_app(create_app(limits))
        tenant = await make_tenant()
        body = b"read back, but only half of it arrives\n"
        _, created = await create(
            client, tenant, len(body), sha256=hashlib.sha256(body).hexdigest()
        )
        key = f"{tenant.workspace_id}/{created['id']}"
        # Put in place by other means: no checksum stored, so `complete` reads it back.
        await asyncio.to_thread(seaweed_client.put_object, Bucket=BUCKET, Key=key, Body=body)
        response, raw = await complete(client, tenant, created["id"])
    assert_problem(response.status, raw, "service_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert any(method == "GET" for method, _, _ in internal.requests)


async def renew(client, tenant, attachment_id, scope="write"):
    return await call(
        client, "POST", f"/api/v1/attachments/{attachment_id}/upload", tenant.auth(scope)
    )


async def test_a_multipart_upload_is_offered_again_with_new_urls_for_the_parts_not_sent(
    multipart_client, make_tenant
):
    """Part URLs cannot outlive the credentials that sign them (an hour, with a role's):
    a large file's later parts are sent with URLs asked for again, into the same
    multipart upload, whose parts already sent stay and are not offered again."""
    client = multipart_client
    tenant = await make_tenant()
    body = os.urandom(8 * MIB + 7)  # two parts: 5 MiB, and the rest
    declared = hashlib.sha256(body).hexdigest()
    _, created = await create(client, tenant, len(body), sha256=declared)
    first = created["upload"]["parts"]
    assert (await put(first[0]["url"], body[: 5 * MIB], {}))[0] == 200
    response, raw = await renew(client, tenant, created["id"])
    assert response.status == 200, raw
    renewed = json.loads(raw)
    assert renewed["id"] == created["id"] and renewed["status"] == "upload_pending"
    again = renewed["upload"]
    assert again["part_size_bytes"] == 5 * MIB and again["expires_at"]
    assert [(p["number"], p["size"]) for p in again["parts"]] == [(2, 3 * MIB + 7)]
    first_upload_id = URL(first[1]["url"], encoded=True).query["uploadId"]
    assert URL(again["parts"][0]["url"], encoded=True).query["uploadId"] == first_upload_id
    assert (await put(again["parts"][0]["url"], body[5 * MIB :], {}))[0] == 200
    # Every part held: nothing to send, and nothing that expires; `complete` is next.
    response, raw = await renew(client, tenant, created["id"])
    assert response.status == 200, raw
    assert json.loads(raw)["upload"] == {
        "method": "PUT",
        "parts": [],
        "part_size_bytes": 5 * MIB,
        "expires_at": None,
    }
    response, raw = await complete(client, tenant, created["id"])
    assert response.status == 200, raw
    assert json.loads(raw)["digest"] == "sha256:" + declared
    assert (await downloaded(client, tenant, created["id"]))[1] == body


async def test_an_upload_completed_in_storage_but_not_confirmed_offers_nothing_to_send(
    multipart_client, make_tenant, seaweed_client
):
    """S3 no longer knows the multipart upload once it was completed there (a `complete`
    whose confirmation then failed): no part is offered, for a PUT could only fail, and
    `complete` confirms from the object."""
    client = multipart_client
    tenant = await make_tenant()
    body = os.urandom(8 * MIB)
    _, created = await create(client, tenant, len(body))
    for part in created["upload"]["parts"]:
        assert await put_part(part, body) == 200
    key = f"{tenant.workspace_id}/{created['id']}"
    upload_id = URL(created["upload"]["parts"][0]["url"], encoded=True).query["uploadId"]

    def complete_in_storage():
        listed = seaweed_client.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id)
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed["Parts"]]
        seaweed_client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    await asyncio.to_thread(complete_in_storage)
    response, raw = await renew(client, tenant, created["id"])
    assert response.status == 200, raw
    assert json.loads(raw)["upload"]["parts"] == []
    response, raw = await complete(client, tenant, created["id"])
    assert response.status == 200 and json.loads(raw)["status"] == "available", raw
    assert (await downloaded(client, tenant, created["id"]))[1] == body


async def test_a_single_put_is_offered_again_and_a_confirmed_upload_is_not(client, make_tenant):
    tenant = await make_tenant()
    body = b"sent with the second URL\n"
    declared = hashlib.sha256(body).hexdigest()
    _, created = await create(client, tenant, len(body), sha256=declared)
    response, raw = await renew(client, tenant, created["id"])
    assert response.status == 200, raw
    upload = json.loads(raw)["upload"]
    assert upload["headers"] == created["upload"]["headers"]  # the same signed headers
    assert (await put(upload["url"], body, upload["headers"]))[0] == 200
    assert (await complete(client, tenant, created["id"]))[0].status == 200
    response, raw = await renew(client, tenant, created["id"])
    assert_problem(response.status, raw, "upload_confirmed")
    assert b"X-Amz-" not in raw


async def test_part_urls_cost_a_rate_limit_token_each(serve_app, settings, make_tenant):
    """Signing thousands of part URLs takes the process a third of a second: counted as
    one request, a key could have it repeated as fast as its limit allows."""
    client = await serve_app(create_app(limited_parts(settings, burst=4)))
    tenant = await make_tenant()
    response, created = await create(client, tenant, 12 * MIB)  # three parts: 3 of 4
    assert response.status == 201 and len(created["upload"]["parts"]) == 3
    response, raw = await renew(client, tenant, created["id"])  # 3 more: 1 was left
    assert_rate_limited(response, raw, "key", quota=4)
    # The wait is for the whole request (the token it was counted as is spent again).
    assert 290 <= int(response.headers["Retry-After"]) <= 300  # 3 tokens at 0.01/s, not 2
    # More parts than the bucket holds cost the whole bucket, and no more.
    client = await serve_app(create_app(limited_parts(settings, burst=2)))
    response, created = await create(client, tenant, 12 * MIB)
    assert response.status == 201 and len(created["upload"]["parts"]) == 3


def limited_parts(settings, burst):
    """Parts of 5 MiB above one PUT of 5 MiB, and a key's bucket of `burst` tokens that
    hardly refills (0.01 a second)."""
    return replace(
        settings,
        upload_single_put_max_bytes=5 * MIB,
        upload_part_bytes=5 * MIB,
        rate_limit_per_key=0.01,
        rate_limit_burst_per_key=burst,
    )


async def test_parts_already_sent_cost_no_token_when_offered_again(
    serve_app, settings, make_tenant
):
    client = await serve_app(create_app(limited_parts(settings, burst=4)))
    tenant = await make_tenant()
    body = os.urandom(12 * MIB)
    response, created = await create(client, tenant, len(body))  # three parts: 3 of 4
    parts = created["upload"]["parts"]
    for part in parts[:2]:
        assert await put_part(part, body) == 200
    response, raw = await renew(client, tenant, created["id"])  # the last token: one part
    assert response.status == 200, raw
    assert [p["number"] for p in json.loads(raw)["upload"]["parts"]] == [3]


async def test_only_a_write_key_of_the_workspace_is_offered_an_upload(client, make_tenant):
    tenant, other = await make_tenant(), await make_tenant()
    _, created = await create(client, tenant, 5)
    response, raw = await renew(client, tenant, created["id"], scope="read")
    assert_problem(response.status, raw, "insufficient_scope")
    response, raw = await renew(client, other, created["id"])
    assert_problem(response.status, raw, "not_found")
    response, raw = await renew(client, tenant, "not-a-uuid")
    assert_problem(response.status, raw, "not_found")
    response, _ = await call(
        client, "DELETE", f"/api/v1/attachments/{created['id']}", tenant.auth("write")
    )
    assert response.status == 204
    response, raw = await renew(client, tenant, created["id"])
    assert_problem(response.status, raw, "not_found")
