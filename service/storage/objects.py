"""The S3 calls the gateway itself makes for uploads through the API, on the internal
endpoint: what is stored (size and checksum), its SHA-256 read back, and the life of a
multipart upload. Each call is bounded in time; an S3 failure is StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ResponseStreamingError

from ..core.errors import StorageUnavailable
from ..core.uploads import Part

log = logging.getLogger(__name__)

# A HEAD or a listing on the request path waits this long at most.
HEAD_TIMEOUT_SECONDS = 10.0
# S3 may take a while to assemble a large object (it answers CompleteMultipartUpload late).
COMPLETE_TIMEOUT_SECONDS = 120.0
# What S3 answers for an object or an upload that is not there.
NOT_THERE = ("404", "NoSuchKey", "NotFound")
NO_SUCH_UPLOAD = "NoSuchUpload"
READ_CHUNK_BYTES = 1024 * 1024
# Objects whose read-back SHA-256 is remembered (by version), each 32 bytes and a key.
READ_BACKS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class StoredObject:
    size: int
    # x-amz-checksum-sha256 of the whole object, when the storage keeps one (a multipart
    # upload's is a checksum of its parts' checksums, "...-N": not the object's).
    sha256_base64: str | None
    # Which version of the object this is: a new upload of the key has a new one.
    etag: str | None = None


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


@asynccontextmanager
async def storage_call(
    what: str, seconds: float, expected: tuple[str, ...] = ()
) -> AsyncIterator[None]:
    """Bounded, and any failure of S3 or of the way there is StorageUnavailable with S3's
    error code, logged by its kind only (S3's messages may carry the request) unless it is
    one of the `expected` answers."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except ClientError as exc:
        code = error_code(exc)
        if code not in expected:
            log.warning("%s failed: %s", what, code)
        raise StorageUnavailable(code) from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        log.warning("%s failed: %s", what, type(exc).__name__)
        raise StorageUnavailable(type(exc).__name__) from exc


async def stored_object(client: Any, bucket: str, key: str) -> StoredObject | None:
    """The object's size and checksum, or None when it is not there."""
    try:
        async with storage_call("HEAD of an upload", HEAD_TIMEOUT_SECONDS, NOT_THERE):
            head = await client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except StorageUnavailable as exc:
        if str(exc) in NOT_THERE:
            return None
        raise
    size = head.get("ContentLength")
    if size is None:  # (an S3-compatible store, or a proxy before it, that left it out)
        raise StorageUnavailable("HEAD of an upload: no Content-Length")
    checksum = head.get("ChecksumSHA256")
    whole = checksum if checksum and "-" not in checksum else None
    return StoredObject(int(size), whole, head.get("ETag"))


async def object_sha256(
    client: Any, bucket: str, key: str, seconds: float
) -> tuple[bytes, str | None]:
    """The SHA-256 of the object's bytes, read in chunks (hashed off the event loop), and
    the ETag of the version read."""
    digest = hashlib.sha256()
    async with storage_call("reading an upload back", seconds):
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            while chunk := await next_chunk(body):
                await asyncio.to_thread(digest.update, chunk)
    return digest.digest(), answer.get("ETag")


async def next_chunk(body: Any) -> bytes:
    """The next chunk of a streamed answer. aiobotocore wraps a connection lost while
    reading as botocore's ResponseStreamingError, but passes on its HTTP client's error
    for a body that ended before its Content-Length as it is: that is the same failure,
    and the storage layer names no HTTP library, so anything but a timeout or a
    cancellation raised by the read is wrapped the same way."""
    try:
        chunk: bytes = await body.read(READ_CHUNK_BYTES)
    except (BotoCoreError, OSError, TimeoutError):
        raise
    except Exception as exc:
        raise ResponseStreamingError(error=exc) from exc
    return chunk


class ReadBacks:
    """The SHA-256s of objects read back to confirm their uploads, by version.

    An upload S3 kept no checksum for is confirmed by reading the whole object (up to
    UPLOAD_VERIFY_MAX_BYTES). A client calling `complete` again, or several times at once,
    on bytes that did not match had it read every time: one read now serves them all, and
    its answer stands for as long as the object keeps its ETag (a new upload of the key
    gets a new one). A read whose GET found another version than the HEAD is not kept."""

    def __init__(self, size: int = READ_BACKS_KEPT) -> None:
        self.size = size
        self._known: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._reading: dict[tuple[str, str, str], asyncio.Task[tuple[bytes, str | None]]] = {}

    async def sha256(
        self, client: Any, bucket: str, key: str, etag: str | None, seconds: float
    ) -> bytes:
        if etag is None:
            return (await object_sha256(client, bucket, key, seconds))[0]
        version = (bucket, key, etag)
        known = self._known.get(version)
        if known is not None:
            self._known.move_to_end(version)
            return known
        reading = self._reading.get(version)
        if reading is None:
            reading = asyncio.create_task(object_sha256(client, bucket, key, seconds))
            self._reading[version] = reading
            reading.add_done_callback(lambda task: self._read(version, task))
        # Shielded: a caller that goes away leaves the read to the others.
        digest, _ = await asyncio.shield(reading)
        return digest

    def _read(
        self, version: tuple[str, str, str], task: asyncio.Task[tuple[bytes, str | None]]
    ) -> None:
        del self._reading[version]
        if task.cancelled() or task.exception() is not None:  # (retrieved: no warning)
            return
        digest, etag_read = task.result()
        if etag_read == version[2]:
            self._known[version] = digest
            while len(self._known) > self.size:
                self._known.popitem(last=False)


async def start_multipart(client: Any, bucket: str, key: str, content_type: str) -> str:
    """A new multipart upload's id."""
    async with storage_call("starting a multipart upload", HEAD_TIMEOUT_SECONDS):
        answer = await client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type
        )
    return str(answer["UploadId"])


async def uploaded_parts(
    client: Any, bucket: str, key: str, upload_id: str
) -> dict[int, Any] | None:
    """The parts S3 holds, by number; a part sent twice counts once, as its last copy
    (some S3s list both). None when S3 no longer knows the upload: it was completed (or
    aborted) before, and only the object can tell which."""
    parts: dict[int, Any] = {}
    marker = 0
    try:
        async with storage_call(
            "listing an upload's parts", HEAD_TIMEOUT_SECONDS, (NO_SUCH_UPLOAD,)
        ):
            while True:
                page = await client.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                )
                for part in page.get("Parts", []):
                    parts[int(part["PartNumber"])] = part
                if not page.get("IsTruncated"):
                    return parts
                marker = int(page["NextPartNumberMarker"])
    except StorageUnavailable as exc:
        if str(exc) != NO_SUCH_UPLOAD:
            raise
        return None


async def parts_to_send(
    client: Any, bucket: str, key: str, upload_id: str, plan: Sequence[Part]
) -> list[Part]:
    """The parts of `plan` that S3 does not hold at their planned size. None when it no
    longer knows the upload: a part's PUT could only fail, and `complete` decides by the
    object, as `complete_multipart` does."""
    held = await uploaded_parts(client, bucket, key, upload_id)
    if held is None:
        return []
    return [part for part in plan if int(held.get(part.number, {}).get("Size", -1)) != part.size]


async def complete_multipart(
    client: Any, bucket: str, key: str, upload_id: str, plan: Sequence[Part]
) -> bool:
    """Complete the upload from what S3 itself lists (the client sends no ETags). False,
    and nothing done, while a part of the plan is missing or of another size. An upload S3
    no longer knows is True: it was completed (or aborted) before, and the object decides."""
    parts = await uploaded_parts(client, bucket, key, upload_id)
    if parts is None:
        return True
    if [(n, int(parts[n]["Size"])) for n in sorted(parts)] != [tuple(p) for p in plan]:
        return False
    listed = [{"PartNumber": p.number, "ETag": parts[p.number]["ETag"]} for p in plan]
    try:
        async with storage_call(
            "completing a multipart upload", COMPLETE_TIMEOUT_SECONDS, (NO_SUCH_UPLOAD,)
        ):
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed}
            )
    except StorageUnavailable as exc:
        if str(exc) != NO_SUCH_UPLOAD:
            raise
    return True


async def abort_multipart(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Drop an upload's parts; one S3 no longer knows is already gone."""
    try:
        async with storage_call(
            "aborting a multipart upload", HEAD_TIMEOUT_SECONDS, (NO_SUCH_UPLOAD,)
        ):
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except StorageUnavailable as exc:
        if str(exc) != NO_SUCH_UPLOAD:
            raise
