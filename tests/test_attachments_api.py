"""The attachments API beside downloads: metadata, keyset pages, uploads through presigned
PUTs to SeaweedFS (which checks their signatures), confirmation, soft delete, scopes."""

from __future__ import annotations

import io
import json
import re
import uuid

import aiohttp
import pytest
from yarl import URL

from service.core.disposition import content_disposition
from service.data.admin import register_attachment
from service.data.attachments import NEXT_PAGE
from service.data.caches import MISSING
from service.web.app import create_app
from service.web.caches import CACHES
from tests.support.http import assert_problem, fetch, signed_response_headers
from tests.support.storage import BUCKET
from tests.support.waiting import changes_heard, eventually

ATTACHMENT_FIELDS = ["id", "filename", "content_type", "size_bytes", "status", "created_at"]
RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def call(client, method, path, headers, **kwargs):
    response = await client.request(method, path, headers=headers, allow_redirects=False, **kwargs)
    return response, await response.read()


async def put_upload(upload, body, **header_overrides):
    """The client's side of an upload: PUT to the URL with the Content-Type it was given
    (aiohttp sends the body's true Content-Length, as any HTTP client does)."""
    headers = {"Content-Type": upload["headers"]["Content-Type"], **header_overrides}
    async with aiohttp.ClientSession() as session:
        async with session.put(URL(upload["url"], encoded=True), data=body, headers=headers) as r:
            return r.status, await r.read()


async def new_attachment(client, tenant, body=b"uploaded bytes\n", **fields):
    document = {"filename": "upload.txt", "content_type": "text/plain", "size_bytes": len(body)}
    document |= fields
    response, raw = await call(
        client, "POST", "/api/v1/attachments", tenant.auth("write"), json=document
    )
    assert response.status == 201, raw
    return response, json.loads(raw)


async def cached_by_downloads(client, conn, tenant, attachment_id):
    """Download until the attachment and its URL are cached, so that what follows cannot
    pass by reading the database. A lookup that any invalidation overlaps rightly stores
    nothing: the listener must be up and the rows' own notifications heard first."""
    caches = client.app[CACHES]
    await eventually(lambda: caches.live, timeout=15)
    await changes_heard(conn, caches)
    for _ in range(2):
        response, _ = await call(
            client, "GET", f"/api/v1/attachments/{attachment_id}/download", tenant.auth()
        )
        assert response.status == 307
    assert caches.attachment(str(attachment_id), tenant.workspace_id) is not MISSING
    assert caches.url(str(attachment_id), "GET") is not MISSING
    return response


# --- metadata -------------------------------------------------------------------------


async def test_metadata_of_an_attachment(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(
        tenant.workspace_id, body=b"12345", filename="Résumé.pdf", content_type="application/pdf"
    )
    response, raw = await call(client, "GET", f"/api/v1/attachments/{attachment_id}", tenant.auth())
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    document = json.loads(raw)
    assert list(document) == ATTACHMENT_FIELDS
    assert document["id"] == str(attachment_id)
    assert document["filename"] == "Résumé.pdf"
    assert document["content_type"] == "application/pdf"
    assert document["size_bytes"] == 5
    assert document["status"] == "available"
    assert RFC3339_SECONDS.match(document["created_at"])
    # The bucket and the object key are ours: never shown.
    assert b"objects/" not in raw and BUCKET.encode() not in raw

    head, body = await call(client, "HEAD", f"/api/v1/attachments/{attachment_id}", tenant.auth())
    assert head.status == 200 and body == b""


@pytest.mark.parametrize("how", ["other tenant", "deleted", "missing", "not a uuid", "braces"])
async def test_metadata_is_404_for_what_the_caller_cannot_see(
    client, conn, make_tenant, make_attachment, how
):
    tenant = await make_tenant()
    owner = await make_tenant() if how == "other tenant" else tenant
    attachment_id = await make_attachment(owner.workspace_id)
    if how == "deleted":
        await conn.execute("UPDATE attachments SET deleted_at = now() WHERE id = $1", attachment_id)
    path_id = {
        "missing": str(uuid.uuid4()),
        "not a uuid": "report.txt",
        "braces": "{" + str(attachment_id) + "}",
    }.get(how, str(attachment_id))
    response, raw = await call(client, "GET", f"/api/v1/attachments/{path_id}", tenant.auth())
    assert_problem(response.status, raw, "not_found")


# --- listing --------------------------------------------------------------------------


async def list_all(client, tenant, limit):
    """Every page, following next_cursor; also checks each page's Link header."""
    pages, cursor = [], None
    while True:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response, raw = await call(
            client, "GET", "/api/v1/attachments", tenant.auth(), params=params
        )
        assert response.status == 200, raw
        page = json.loads(raw)
        assert list(page) == ["items", "next_cursor"]
        assert len(page["items"]) <= limit
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            assert "Link" not in response.headers
            return pages
        assert response.headers["Link"] == (
            f'</api/v1/attachments?limit={limit}&cursor={cursor}>; rel="next"'
        )


async def test_pages_cover_the_workspace_newest_first_and_nothing_else(
    client, conn, make_tenant, make_attachment
):
    tenant, other = await make_tenant(), await make_tenant()
    ids = [await make_attachment(tenant.workspace_id) for _ in range(5)]
    # Three made in one transaction share created_at: the id breaks the tie.
    async with conn.transaction():
        ids += [
            await register_attachment(
                conn, tenant.workspace_id, bucket=BUCKET, object_key=f"tie/{n}", filename="t.txt"
            )
            for n in range(3)
        ]
    deleted = await make_attachment(tenant.workspace_id)
    await conn.execute("UPDATE attachments SET deleted_at = now() WHERE id = $1", deleted)
    await make_attachment(other.workspace_id)
    expected = [
        str(row["id"])
        for row in await conn.fetch(
            "SELECT id FROM attachments WHERE workspace_id = $1 AND deleted_at IS NULL"
            " ORDER BY created_at DESC, id",
            tenant.workspace_id,
        )
    ]
    assert sorted(expected) == sorted(str(i) for i in ids)
    for limit in (1, 2, 3, 100):
        pages = await list_all(client, tenant, limit)
        assert [item for page in pages for item in page] == expected
        assert len(pages) == max(1, -(-len(expected) // limit))


async def test_a_page_does_not_shift_when_rows_come_and_go(
    client, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    ids = [await make_attachment(tenant.workspace_id) for _ in range(4)]
    _, raw = await call(client, "GET", "/api/v1/attachments?limit=2", tenant.auth())
    first = json.loads(raw)
    assert [item["id"] for item in first["items"]] == [str(ids[3]), str(ids[2])]
    # A new attachment and a deleted one of the first page: the next page goes on from
    # where the first ended (offset pagination would repeat or skip one here).
    await make_attachment(tenant.workspace_id)
    await conn.execute("UPDATE attachments SET deleted_at = now() WHERE id = $1", ids[3])
    _, raw = await call(
        client,
        "GET",
        "/api/v1/attachments",
        tenant.auth(),
        params={"limit": "2", "cursor": first["next_cursor"]},
    )
    assert [item["id"] for item in json.loads(raw)["items"]] == [str(ids[1]), str(ids[0])]


async def test_the_default_page_size_is_50(client, conn, make_tenant):
    tenant = await make_tenant()
    response, raw = await call(client, "GET", "/api/v1/attachments", tenant.auth())
    assert response.status == 200
    assert json.loads(raw) == {"items": [], "next_cursor": None}
    # Listing reads rows only: registered rows need no bytes behind them.
    for n in range(51):
        await register_attachment(
            conn, tenant.workspace_id, bucket=BUCKET, object_key=f"page/{n}", filename="p.txt"
        )
    response, raw = await call(client, "GET", "/api/v1/attachments", tenant.auth())
    first = json.loads(raw)
    assert len(first["items"]) == 50
    assert first["next_cursor"] is not None
    assert 'rel="next"' in response.headers["Link"]
    response, raw = await call(
        client, "GET", "/api/v1/attachments", tenant.auth(), params={"cursor": first["next_cursor"]}
    )
    rest = json.loads(raw)
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert "Link" not in response.headers


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "010"},
        {"limit": "1000"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "١٢"},
        {"limit": ""},
        {"cursor": "not-a-cursor"},
        {"cursor": "123"},
        {"cursor": ""},
        {"cursor": "1" * 18 + "." + "a" * 32},
        {"cursor": "12." + "A" * 32},
        {"cursor": "12." + "a" * 32 + "\n"},
        {"cursor": "-1." + "a" * 32},
    ],
)
async def test_bad_page_parameters_are_400(client, make_tenant, query):
    tenant = await make_tenant()
    response, raw = await call(client, "GET", "/api/v1/attachments", tenant.auth(), params=query)
    assert_problem(response.status, raw, "invalid_request")


async def test_a_cursor_from_another_workspace_still_lists_only_your_own(
    client, make_tenant, make_attachment
):
    tenant, other = await make_tenant(), await make_tenant()
    for _ in range(3):
        await make_attachment(other.workspace_id)
    mine = await make_attachment(tenant.workspace_id)
    _, raw = await call(client, "GET", "/api/v1/attachments?limit=1", other.auth())
    cursor = json.loads(raw)["next_cursor"]
    response, raw = await call(
        client, "GET", "/api/v1/attachments", tenant.auth(), params={"cursor": cursor}
    )
    assert response.status == 200
    assert [item["id"] for item in json.loads(raw)["items"]] in ([], [str(mine)])


# --- uploads --------------------------------------------------------------------------


async def test_upload_confirm_and_download_the_same_bytes(client, make_tenant):
    tenant = await make_tenant()
    body = bytes(range(256)) * 40 + "é, +~%/ \n".encode()
    response, created = await new_attachment(
        client, tenant, body, filename="data ü.bin", content_type="application/octet-stream"
    )
    attachment_id = created["id"]
    assert response.headers["Location"] == f"/api/v1/attachments/{attachment_id}"
    assert list(created) == [*ATTACHMENT_FIELDS, "upload"]
    assert created["status"] == "upload_pending"
    assert created["size_bytes"] == len(body)
    upload = created["upload"]
    assert upload["method"] == "PUT"
    assert upload["headers"] == {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(body)),
    }
    assert RFC3339_SECONDS.match(upload["expires_at"])

    # Not downloadable, not confirmable, until the bytes are there.
    response, raw = await call(
        client, "GET", f"/api/v1/attachments/{attachment_id}/download", tenant.auth()
    )
    assert_problem(response.status, raw, "upload_pending")
    assert response.headers["Retry-After"] == "5"
    complete = f"/api/v1/attachments/{attachment_id}/complete"
    response, raw = await call(client, "POST", complete, tenant.auth("write"))
    assert_problem(response.status, raw, "upload_incomplete")

    assert await put_upload(upload, body) == (200, b"")
    response, raw = await call(client, "POST", complete, tenant.auth("write"))
    assert response.status == 200, raw
    confirmed = json.loads(raw)
    assert {k: confirmed[k] for k in ATTACHMENT_FIELDS} == {
        **{k: created[k] for k in ATTACHMENT_FIELDS},
        "status": "available",
    }
    # Confirming again answers the same.
    response, raw = await call(client, "POST", complete, tenant.auth("write"))
    assert (response.status, json.loads(raw)) == (200, confirmed)

    response, _ = await call(
        client, "GET", f"/api/v1/attachments/{attachment_id}/download", tenant.auth()
    )
    assert response.status == 307
    status, fetched, headers = await fetch(response.headers["Location"])
    assert (status, fetched) == (200, body)
    assert "filename*=UTF-8''data%20%C3%BC.bin" in headers["Content-Disposition"]


@pytest.mark.parametrize(
    "tamper",
    [
        {"body": b"one byte more!!"},
        {"body": b"short"},
        {"headers": {"Content-Type": "text/html"}},
    ],
    ids=["longer", "shorter", "other-type"],
)
async def test_storage_refuses_an_upload_unlike_the_declared_one(client, make_tenant, tamper):
    tenant = await make_tenant()
    _, created = await new_attachment(client, tenant, b"fourteen bytes")
    status, _ = await put_upload(
        created["upload"], tamper.get("body", b"fourteen bytes"), **tamper.get("headers", {})
    )
    assert status == 403  # SignatureDoesNotMatch: Content-Length and Content-Type are signed
    response, raw = await call(
        client, "POST", f"/api/v1/attachments/{created['id']}/complete", tenant.auth("write")
    )
    assert_problem(response.status, raw, "upload_incomplete")


async def test_an_object_of_another_size_is_not_confirmed(client, make_tenant, seaweed, conn):
    tenant = await make_tenant()
    _, created = await new_attachment(client, tenant, b"declared")
    key = await conn.fetchval(
        "SELECT object_key FROM attachments WHERE id = $1", uuid.UUID(created["id"])
    )
    # Written behind the gateway's back (someone holding storage credentials).
    seaweed.client().put_object(Bucket=BUCKET, Key=key, Body=b"something else entirely")
    response, raw = await call(
        client, "POST", f"/api/v1/attachments/{created['id']}/complete", tenant.auth("write")
    )
    assert_problem(response.status, raw, "upload_incomplete")
    pending = await conn.fetchval(
        "SELECT upload_pending FROM attachments WHERE id = $1", uuid.UUID(created["id"])
    )
    assert pending is True


async def test_an_empty_file_can_be_uploaded(client, make_tenant):
    tenant = await make_tenant()
    _, created = await new_attachment(client, tenant, b"", filename="empty.txt")
    assert await put_upload(created["upload"], b"") == (200, b"")
    response, raw = await call(
        client, "POST", f"/api/v1/attachments/{created['id']}/complete", tenant.auth("write")
    )
    assert response.status == 200 and json.loads(raw)["size_bytes"] == 0


async def test_the_content_type_defaults_to_octet_stream(client, make_tenant):
    tenant = await make_tenant()
    response, raw = await call(
        client,
        "POST",
        "/api/v1/attachments",
        tenant.auth("write"),
        json={"filename": "blob", "size_bytes": 3},
    )
    assert response.status == 201
    assert json.loads(raw)["content_type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'"x"',
        b'{"filename": "a.txt"}',
        b'{"size_bytes": 3}',
        b'{"filename": "", "size_bytes": 3}',
        b'{"filename": "a\\nb.txt", "size_bytes": 3}',
        b'{"filename": "a\\u0000b", "size_bytes": 3}',
        b'{"filename": "a\\u0085b", "size_bytes": 3}',
        b'{"filename": "\\ud800.txt", "size_bytes": 3}',
        b'{"filename": 7, "size_bytes": 3}',
        b'{"filename": "a.txt", "size_bytes": -1}',
        b'{"filename": "a.txt", "size_bytes": 1.5}',
        b'{"filename": "a.txt", "size_bytes": 1e400}',
        b'{"filename": "a.txt", "size_bytes": NaN}',
        b'{"filename": "a.txt", "size_bytes": true}',
        b'{"filename": "a.txt", "size_bytes": "3"}',
        b'{"filename": "a.txt", "size_bytes": 5497558138881}',
        b'{"filename": "a.txt", "size_bytes": 3, "content_type": "text"}',
        b'{"filename": "a.txt", "size_bytes": 3, "content_type": "text/plain\\n"}',
        b'{"filename": "a.txt", "size_bytes": 3, "content_type": "text/pl ain"}',
        b'{"filename": "a.txt", "size_bytes": 3, "content_type": null}',
        b'{"filename": "a.txt", "size_bytes": 3, "bucket": "elsewhere"}',
        b'{"filename": "a.txt", "size_bytes": 3, "object_key": "../x"}',
        b"[" * 30_000 + b"]" * 30_000,  # nested too deep for the parser
    ],
)
async def test_a_bad_new_attachment_is_400_and_creates_nothing(client, conn, make_tenant, body):
    tenant = await make_tenant()
    response, raw = await call(
        client,
        "POST",
        "/api/v1/attachments",
        {**tenant.auth("write"), "Content-Type": "application/json"},
        data=body,
    )
    assert_problem(response.status, raw, "invalid_request")
    count = await conn.fetchval(
        "SELECT count(*) FROM attachments WHERE workspace_id = $1", tenant.workspace_id
    )
    assert count == 0


async def test_a_filename_of_1025_characters_is_refused_and_1024_taken(client, make_tenant):
    tenant = await make_tenant()
    for length, status in ((1025, 400), (1024, 201)):
        response, _ = await call(
            client,
            "POST",
            "/api/v1/attachments",
            tenant.auth("write"),
            json={"filename": "é" * length, "size_bytes": 1},
        )
        assert response.status == status


async def test_a_huge_body_is_413(client, make_tenant):
    tenant = await make_tenant()
    response, raw = await call(
        client,
        "POST",
        "/api/v1/attachments",
        tenant.auth("write"),
        data=io.BytesIO(b'{"filename": "' + b"a" * (2 * 1024 * 1024) + b'", "size_bytes": 1}'),
    )
    assert_problem(response.status, raw, "payload_too_large")


# --- scopes and tenants ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/attachments"),
        ("DELETE", "/api/v1/attachments/{id}"),
        ("POST", "/api/v1/attachments/{id}/complete"),
    ],
)
async def test_read_keys_may_not_write(client, conn, make_tenant, make_attachment, method, path):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, raw = await call(
        client,
        method,
        path.format(id=attachment_id),
        tenant.auth("read"),
        json={"filename": "a.txt", "size_bytes": 1},
    )
    assert_problem(response.status, raw, "insufficient_scope")
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    rows = await conn.fetch(
        "SELECT deleted_at FROM attachments WHERE workspace_id = $1", tenant.workspace_id
    )
    assert [row["deleted_at"] for row in rows] == [None]


async def test_write_keys_may_read(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    for path in (f"/api/v1/attachments/{attachment_id}", "/api/v1/attachments"):
        response, _ = await call(client, "GET", path, tenant.auth("write"))
        assert response.status == 200


async def test_another_tenant_cannot_confirm_or_delete(client, conn, make_tenant):
    owner, other = await make_tenant(), await make_tenant()
    _, created = await new_attachment(client, owner, b"mine")
    assert await put_upload(created["upload"], b"mine") == (200, b"")
    for method, path in (
        ("POST", f"/api/v1/attachments/{created['id']}/complete"),
        ("DELETE", f"/api/v1/attachments/{created['id']}"),
    ):
        response, raw = await call(client, method, path, other.auth("write"))
        assert_problem(response.status, raw, "not_found")
    row = await conn.fetchrow(
        "SELECT upload_pending, deleted_at FROM attachments WHERE id = $1",
        uuid.UUID(created["id"]),
    )
    assert (row["upload_pending"], row["deleted_at"]) == (True, None)


# --- metadata edits -------------------------------------------------------------------


async def test_patch_renames_and_retypes_and_the_next_url_says_so(
    client, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="draft.txt")
    path = f"/api/v1/attachments/{attachment_id}"
    # Cached (attachment and URL) by a download first: the edit must not wait for NOTIFY.
    response = await cached_by_downloads(client, conn, tenant, attachment_id)
    old_location = response.headers["Location"]

    edit = {"filename": "Q3 report (final).pdf", "content_type": "application/pdf"}
    response, raw = await call(client, "PATCH", path, tenant.auth("write"), json=edit)
    assert response.status == 200, raw
    changed = json.loads(raw)
    assert list(changed) == ATTACHMENT_FIELDS
    assert (changed["filename"], changed["content_type"]) == (
        edit["filename"],
        edit["content_type"],
    )
    response, raw = await call(client, "GET", path, tenant.auth())
    assert json.loads(raw) == changed

    response, _ = await call(client, "GET", f"{path}/download", tenant.auth())
    assert response.headers["Location"] != old_location  # never the URL signed before
    assert signed_response_headers(response.headers["Location"]) == (
        content_disposition(edit["filename"]),
        "application/pdf",
    )
    status, _, headers = await fetch(response.headers["Location"])  # S3 agrees, signed
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == content_disposition(edit["filename"])

    # One member alone changes only itself.
    response, raw = await call(
        client, "PATCH", path, tenant.auth("write"), json={"content_type": "text/plain"}
    )
    assert (json.loads(raw)["filename"], json.loads(raw)["content_type"]) == (
        edit["filename"],
        "text/plain",
    )


async def test_an_edit_reaches_the_other_instances_caches(
    serve_app, settings, conn, make_tenant, make_attachment
):
    first = await serve_app(create_app(settings))
    second = await serve_app(create_app(settings))
    for instance in (first, second):
        await eventually(lambda instance=instance: instance.app[CACHES].live)
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="old.txt")
    download = f"/api/v1/attachments/{attachment_id}/download"
    response = await cached_by_downloads(second, conn, tenant, attachment_id)  # cached there
    assert "old.txt" in signed_response_headers(response.headers["Location"])[0]
    response, _ = await call(
        first,
        "PATCH",
        f"/api/v1/attachments/{attachment_id}",
        tenant.auth("write"),
        json={"filename": "new.txt"},
    )
    assert response.status == 200

    async def renamed_there():
        response, _ = await call(second, "GET", download, tenant.auth())
        return "new.txt" in signed_response_headers(response.headers["Location"])[0]

    await eventually(renamed_there, timeout=1.0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "body"),
        ({"filename": "a.txt", "size_bytes": 3}, "body"),
        ({"name": "a.txt"}, "body"),
        ({"filename": ""}, "filename"),
        ({"filename": "a\nb.txt"}, "filename"),
        ({"filename": None}, "filename"),
        ({"content_type": "not a type"}, "content_type"),
        ([], "body"),
    ],
)
async def test_bad_edits_are_400_and_change_nothing(
    client, make_tenant, make_attachment, body, reason
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, filename="kept.txt")
    path = f"/api/v1/attachments/{attachment_id}"
    response, raw = await call(client, "PATCH", path, tenant.auth("write"), json=body)
    assert_problem(response.status, raw, "invalid_request")
    response, raw = await call(client, "GET", path, tenant.auth())
    assert json.loads(raw)["filename"] == "kept.txt"


async def test_an_edit_nested_too_deep_is_400(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    response, raw = await call(
        client,
        "PATCH",
        f"/api/v1/attachments/{attachment_id}",
        {**tenant.auth("write"), "Content-Type": "application/json"},
        data=b'{"filename": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    )
    assert_problem(response.status, raw, "invalid_request")


async def test_edits_of_pending_deleted_foreign_or_read_keyed_attachments_are_refused(
    client, make_tenant, make_attachment
):
    tenant, other = await make_tenant(), await make_tenant()
    edit = {"filename": "x.txt"}
    _, pending = await new_attachment(client, tenant)
    response, raw = await call(
        client, "PATCH", f"/api/v1/attachments/{pending['id']}", tenant.auth("write"), json=edit
    )
    assert_problem(response.status, raw, "upload_pending")
    assert response.headers["Retry-After"] == "5"

    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}"
    response, raw = await call(client, "PATCH", path, other.auth("write"), json=edit)
    assert_problem(response.status, raw, "not_found")
    response, raw = await call(client, "PATCH", path, tenant.auth("read"), json=edit)
    assert_problem(response.status, raw, "insufficient_scope")
    response, _ = await call(client, "DELETE", path, tenant.auth("write"))
    assert response.status == 204
    response, raw = await call(client, "PATCH", path, tenant.auth("write"), json=edit)
    assert_problem(response.status, raw, "not_found")
    response, raw = await call(
        client, "PATCH", "/api/v1/attachments/not-a-uuid", tenant.auth("write"), json=edit
    )
    assert_problem(response.status, raw, "not_found")


# --- deletion -------------------------------------------------------------------------


async def test_delete_is_204_then_gone_at_once(client, conn, make_tenant, make_attachment):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    download = f"/api/v1/attachments/{attachment_id}/download"
    # Cached (attachment and URL) by a download first: deletion must not wait for NOTIFY.
    await cached_by_downloads(client, conn, tenant, attachment_id)
    response, raw = await call(
        client, "DELETE", f"/api/v1/attachments/{attachment_id}", tenant.auth("write")
    )
    assert (response.status, raw) == (204, b"")
    assert response.headers["Cache-Control"] == "no-store"
    response, raw = await call(client, "GET", download, tenant.auth())
    assert_problem(response.status, raw, "not_found")
    response, raw = await call(client, "GET", f"/api/v1/attachments/{attachment_id}", tenant.auth())
    assert_problem(response.status, raw, "not_found")
    response, raw = await call(
        client, "DELETE", f"/api/v1/attachments/{attachment_id}", tenant.auth("write")
    )
    assert_problem(response.status, raw, "not_found")
    # Soft: the row (and the object) stay until purge.
    assert await conn.fetchval(
        "SELECT deleted_at IS NOT NULL FROM attachments WHERE id = $1", attachment_id
    )


async def test_a_later_page_starts_its_index_scan_at_the_cursor(conn):
    """Page N read the whole workspace down to its cursor (N times the limit): the OR alone
    gives the index only `workspace_id`. Planned as asyncpg runs it, generic."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute("SET enable_seqscan = off")  # the suite's table is small
    await conn.execute(f"PREPARE next_page AS {NEXT_PAGE}")
    try:
        workspace, cursor_id = uuid.uuid4(), uuid.uuid4()
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE next_page('{workspace}', now(), '{cursor_id}', 10)"
        )
    finally:
        await conn.execute("DEALLOCATE next_page")

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    (scan,) = [n for n in nodes(json.loads(plan)[0]["Plan"]) if "Index Name" in n]
    assert scan["Index Name"] == "attachments_workspace_created_idx"
    assert "created_at <=" in scan["Index Cond"], scan["Index Cond"]
