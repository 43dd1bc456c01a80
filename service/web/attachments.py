"""The attachments resource beside downloads: metadata, a paginated list, uploads, deletion.

Every statement names the caller's workspace (data/attachments.py), so another tenant's
attachment is the same 404 as a missing one. None of this is on the download hot path:
each call is one statement through the request pool (bounded waits, 503 when the
database is away).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web

from ..core.attachment import digest_of
from ..core.errors import InvalidRequest, NotFound
from ..core.ids import canonical_uuid
from ..core.media_types import DEFAULT_CONTENT_TYPE, is_media_type
from ..core.text import is_storable_filename
from ..core.times import epoch_us, from_epoch_us, rfc3339
from ..core.uploads import Part, checksum_header, parse_sha256, part_size_for, plan_parts
from ..data import attachments
from ..storage.objects import (
    StoredObject,
    abort_multipart,
    complete_multipart,
    parts_to_send,
    start_multipart,
    stored_object,
)
from .auth import PRINCIPAL, spend
from .caches import CACHES
from .config import SETTINGS
from .database import DATABASE
from .downloads import UPLOAD_PENDING_RETRY_SECONDS
from .problems import BODY_NOT_WHOLE, Problem
from .storage import READ_BACKS, STORAGE

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

# A page cursor: "<created_at in epoch microseconds>.<id in 32 hex digits>" of the last
# row shown. Documented as opaque (its form may change); it tells the caller nothing the
# page did not.
CURSOR = re.compile(r"([0-9]{1,17})\.([0-9a-f]{32})")

NEW_ATTACHMENT_FIELDS = frozenset({"filename", "content_type", "size_bytes", "sha256"})
# Reading an object back to check its SHA-256 may take this long per GiB (and a minute).
VERIFY_SECONDS_PER_GIB = 120
EDITABLE_FIELDS = frozenset({"filename", "content_type"})


def attachment_json(row: Any) -> dict[str, Any]:
    shown = {
        "id": str(row["id"]),
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size_bytes": row["size_bytes"],
        "status": "upload_pending" if row["upload_pending"] else "available",
        "created_at": rfc3339(row["created_at"]),
    }
    digest = digest_of(row)
    if digest is not None:
        shown["digest"] = digest
    return shown


def requested_id(request: web.Request) -> uuid.UUID:
    """The path's attachment id; one that is not a canonical UUID is simply not found."""
    attachment_id = canonical_uuid(request.match_info["id"])
    if attachment_id is None:
        raise NotFound
    return attachment_id


def forget(request: web.Request, attachment_id: uuid.UUID) -> None:
    """This process drops the attachment at once; the others hear of it by NOTIFY."""
    request.app[CACHES].forget_attachment(str(attachment_id))


async def show(request: web.Request) -> web.Response:
    """GET /api/v1/attachments/{id}: the attachment's metadata."""
    row = await attachments.show(
        request.app[DATABASE], requested_id(request), request[PRINCIPAL].workspace_id
    )
    return web.json_response(attachment_json(row))


def encode_cursor(row: Any) -> str:
    return f"{epoch_us(row['created_at'])}.{row['id'].hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a page ends at. Every string of the cursor's form is a valid
    place to start from (the workspace is never in it), anything else is a 400."""
    found = CURSOR.fullmatch(cursor)
    if found is None:
        raise InvalidRequest("cursor")
    return from_epoch_us(int(found[1])), uuid.UUID(found[2])


def page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # The document's pattern exactly: no sign, no leading zero, 1 to 100.
    if raw.isascii() and raw.isdigit() and raw[0] != "0" and int(raw[:4]) <= MAX_PAGE_SIZE:
        return int(raw)
    raise InvalidRequest("limit")


async def list_attachments(request: web.Request) -> web.Response:
    """GET /api/v1/attachments?limit=&cursor=: the workspace's attachments, newest first,
    a keyset page at a time (stable while rows are added or deleted meanwhile)."""
    limit = page_size(request.query.get("limit"))
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    # One row more than the page: whether there is a next page, without counting.
    rows = await attachments.page(
        request.app[DATABASE], request[PRINCIPAL].workspace_id, limit + 1, after
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    headers = {}
    if next_cursor is not None:
        # The relative URL: the absolute one is built from the Host header, which may
        # not even parse (`Host: x:99999999`), and only the path and query are sent.
        next_url = request.rel_url.with_query(limit=str(limit), cursor=next_cursor)
        headers["Link"] = f'<{next_url.path_qs}>; rel="next"'
    body = {"items": [attachment_json(row) for row in page], "next_cursor": next_cursor}
    return web.json_response(body, headers=headers)


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read())
    # RecursionError: `[[[[...` nested deeper than the parser goes, well inside the body limit.
    except (ValueError, RecursionError, *BODY_NOT_WHOLE):
        raise InvalidRequest("body") from None  # (UnicodeDecodeError is a ValueError)
    if not isinstance(data, dict):
        raise InvalidRequest("body")
    return data


def checked_filename(filename: Any) -> str:
    if not isinstance(filename, str) or not is_storable_filename(filename):
        raise InvalidRequest("filename")
    return filename


def checked_content_type(content_type: Any) -> str:
    if not isinstance(content_type, str) or not is_media_type(content_type):
        raise InvalidRequest("content_type")
    return content_type


async def new_attachment(request: web.Request, max_size: int) -> tuple[str, str, int, bytes | None]:
    """(filename, content_type, size_bytes, sha256) from the body, each checked as the
    columns would."""
    data = await json_object(request)
    if not NEW_ATTACHMENT_FIELDS.issuperset(data):
        raise InvalidRequest("body")
    filename = checked_filename(data.get("filename"))
    content_type = checked_content_type(data.get("content_type", DEFAULT_CONTENT_TYPE))
    size = data.get("size_bytes")
    if isinstance(size, float) and size.is_integer():
        size = int(size)  # 669.0 is an integer to JSON Schema, so to us too
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
        raise InvalidRequest("size_bytes")
    sha256 = parse_sha256(data["sha256"]) if "sha256" in data else None
    return filename, content_type, size, sha256


async def create(request: web.Request) -> web.Response:
    """POST /api/v1/attachments: a new attachment, pending, and a presigned upload for it:
    one PUT, or above UPLOAD_SINGLE_PUT_MAX_BYTES a multipart upload's parts."""
    settings = request.app[SETTINGS]
    filename, content_type, size, sha256 = await new_attachment(request, settings.upload_max_bytes)
    multipart = size > settings.upload_single_put_max_bytes
    # Only S3's own check covers a PUT; parts are checked by reading the object back.
    if sha256 is not None and multipart and size > settings.upload_verify_max_bytes:
        raise InvalidRequest("sha256")
    workspace_id = request[PRINCIPAL].workspace_id
    attachment_id = uuid.uuid4()
    new = attachments.NewUpload(
        attachment_id,
        workspace_id,
        settings.s3_default_bucket,
        f"{workspace_id}/{attachment_id}",
        filename,
        content_type,
        size,
        sha256,
    )
    # Signed first: no row is left behind for an upload that could not be offered.
    if multipart:
        new, upload = await offer_parts(request, new)
    else:
        upload = await offer_put(request, new)
    try:
        row = await attachments.create(request.app[DATABASE], new)
    except BaseException:
        if new.multipart_upload_id is not None:
            client = request.app[STORAGE].internal_client()
            await asyncio.shield(
                abort_multipart(client, new.bucket, new.object_key, new.multipart_upload_id)
            )
        raise
    body = attachment_json(row) | {"upload": upload}
    location = request.app.router["attachment"].url_for(id=str(attachment_id))
    return web.json_response(body, status=201, headers={"Location": str(location)})


async def offer_put(request: web.Request, new: attachments.NewUpload) -> dict[str, Any]:
    """One presigned PUT, with what it signs: S3 refuses it without exactly these headers."""
    url = await request.app[STORAGE].presign_upload(
        new.bucket, new.object_key, new.content_type, new.size, new.sha256
    )
    headers = {"Content-Type": new.content_type, "Content-Length": str(new.size)}
    if new.sha256 is not None:
        headers["x-amz-checksum-sha256"] = checksum_header(new.sha256)
    return {"method": "PUT", "url": url.url, "headers": headers, "expires_at": url.expires_text}


async def offer_parts(
    request: web.Request, new: attachments.NewUpload
) -> tuple[attachments.NewUpload, dict[str, Any]]:
    """A multipart upload begun in S3, and a presigned PUT for each of its parts."""
    settings = request.app[SETTINGS]
    storage = request.app[STORAGE]
    part_size = part_size_for(new.size, settings.upload_part_bytes)
    plan = plan_parts(new.size, part_size)
    await spend(request, len(plan))  # a URL a part
    upload_id = await start_multipart(
        storage.internal_client(), new.bucket, new.object_key, new.content_type
    )
    new = replace(new, multipart_upload_id=upload_id, part_size=part_size)
    try:
        upload = await offer_planned_parts(request, new, plan)
    except BaseException:
        client = storage.internal_client()
        await asyncio.shield(abort_multipart(client, new.bucket, new.object_key, upload_id))
        raise
    return new, upload


async def offer_planned_parts(
    request: web.Request, upload: attachments.NewUpload, plan: list[Part]
) -> dict[str, Any]:
    """A presigned PUT for each part of the multipart upload under way (none, and no
    expiry, when none is left to send)."""
    assert upload.multipart_upload_id is not None and upload.part_size is not None
    urls = await request.app[STORAGE].presign_parts(
        upload.bucket, upload.object_key, upload.multipart_upload_id, plan
    )
    parts = [
        {"number": part.number, "url": url.url, "size": part.size}
        for part, url in zip(plan, urls, strict=True)
    ]
    expires = min(urls, key=lambda url: url.expires_at_us).expires_text if urls else None
    return {
        "method": "PUT",
        "parts": parts,
        "part_size_bytes": upload.part_size,
        "expires_at": expires,
    }


async def renew_upload(request: web.Request) -> web.Response:
    """POST /api/v1/attachments/{id}/upload: the pending upload offered again, with URLs
    signed now. Part URLs live 24 hours, but no longer than the credentials that sign
    them: with a role's temporary credentials (an hour, say) every part of a large file
    had to be begun within that hour. The multipart upload is the same, and only the parts
    S3 does not hold yet at their size are offered (and cost a token each): a client that
    lost track resumes where it stopped. A file sent in one PUT is sent again whole."""
    attachment_id = requested_id(request)
    row = await attachments.upload_of(
        request.app[DATABASE], attachment_id, request[PRINCIPAL].workspace_id
    )
    if not row["upload_pending"]:
        raise Problem("upload_confirmed")
    upload = attachments.NewUpload(
        attachment_id=attachment_id,
        workspace_id=request[PRINCIPAL].workspace_id,
        bucket=row["bucket"],
        object_key=row["object_key"],
        filename=row["filename"],
        content_type=row["content_type"],
        size=row["size_bytes"],
        sha256=row["sha256"],
        multipart_upload_id=row["multipart_upload_id"],
        part_size=row["part_size_bytes"],
    )
    if upload.multipart_upload_id is None:
        offered = await offer_put(request, upload)
    else:
        plan = plan_parts(row["size_bytes"], row["part_size_bytes"])
        client = request.app[STORAGE].internal_client()
        to_send = await parts_to_send(
            client, row["bucket"], row["object_key"], upload.multipart_upload_id, plan
        )
        await spend(request, len(to_send))  # a token per part URL, as at creation
        offered = await offer_planned_parts(request, upload, to_send)
    return web.json_response(attachment_json(row) | {"upload": offered})


async def complete(request: web.Request) -> web.Response:
    """POST /api/v1/attachments/{id}/complete: confirm the upload (complete its parts, then
    HEAD the object: its size, and its SHA-256 when declared). Confirming twice answers the
    same; a missing part, a missing object, another size or other bytes is 409."""
    attachment_id = requested_id(request)
    workspace_id = request[PRINCIPAL].workspace_id
    db = request.app[DATABASE]
    row = await attachments.upload_of(db, attachment_id, workspace_id)
    if row["upload_pending"]:
        client = request.app[STORAGE].internal_client()
        bucket, key = row["bucket"], row["object_key"]
        if row["multipart_upload_id"] is not None:
            plan = plan_parts(row["size_bytes"], row["part_size_bytes"])
            if not await complete_multipart(client, bucket, key, row["multipart_upload_id"], plan):
                raise Problem("upload_incomplete", reason="upload_parts")
        stored = await stored_object(client, bucket, key)
        if stored is None:
            raise Problem("upload_incomplete", reason="upload_missing")
        if stored.size != row["size_bytes"]:
            raise Problem("upload_incomplete", reason="upload_size")
        if row["sha256"] is not None:
            await check_sha256(request, row, stored)
        row = await attachments.confirm(db, attachment_id, workspace_id, stored.size)
        forget(request, attachment_id)
    return web.json_response(attachment_json(row))


async def check_sha256(request: web.Request, row: Any, stored: StoredObject) -> None:
    """The stored bytes are those declared: by the checksum S3 verified when it took them,
    else by reading them back (up to UPLOAD_VERIFY_MAX_BYTES)."""
    declared: bytes = row["sha256"]
    if stored.sha256_base64 is not None:
        same = stored.sha256_base64 == checksum_header(declared)
    elif stored.size <= request.app[SETTINGS].upload_verify_max_bytes:
        seconds = 60 + VERIFY_SECONDS_PER_GIB * stored.size / 1024**3
        storage = request.app[STORAGE]
        read = await request.app[READ_BACKS].sha256(
            storage.internal_client(), row["bucket"], row["object_key"], stored.etag, seconds
        )
        same = read == declared
    else:
        raise Problem("upload_incomplete", reason="checksum_unverifiable")
    if not same:
        raise Problem("upload_incomplete", reason="upload_checksum")


async def update(request: web.Request) -> web.Response:
    """PATCH /api/v1/attachments/{id}: a new filename and/or content type, under create's
    rules. Every instance forgets the attachment (NOTIFY), so the next download's URL
    carries them; a URL signed before is never handed out again."""
    attachment_id = requested_id(request)
    data = await json_object(request)
    if not data or not EDITABLE_FIELDS.issuperset(data):
        raise InvalidRequest("body")
    filename = checked_filename(data["filename"]) if "filename" in data else None
    content_type = checked_content_type(data["content_type"]) if "content_type" in data else None
    row = await attachments.update(
        request.app[DATABASE],
        attachment_id,
        request[PRINCIPAL].workspace_id,
        filename,
        content_type,
    )
    if row is None:
        raise Problem("upload_pending", {"Retry-After": str(UPLOAD_PENDING_RETRY_SECONDS)})
    forget(request, attachment_id)
    return web.json_response(attachment_json(row))


async def delete(request: web.Request) -> web.Response:
    """DELETE /api/v1/attachments/{id}: soft delete; `attachments-gateway purge` removes
    the object later. URLs already handed out work until they expire."""
    attachment_id = requested_id(request)
    await attachments.soft_delete(
        request.app[DATABASE], attachment_id, request[PRINCIPAL].workspace_id
    )
    forget(request, attachment_id)
    return web.Response(status=204)
