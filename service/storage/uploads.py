"""Uploading a local file to S3: one PUT for small files, multipart for large ones.

S3 verifies every byte: the file's SHA-256 is computed while it is read, and each PUT
and part carries its own `ChecksumSHA256`, so a body damaged on the way is refused
(400 BadDigest) instead of stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from ..core.errors import ObjectTooLarge, StorageUnavailable
from ..core.uploads import MAX_OBJECT_BYTES, MIB
from ..core.uploads import part_size_for as planned_part_size

# S3's minimum part size is 5 MiB; 8 MiB parts keep memory flat and retries cheap. S3's
# own limits (10,000 parts, 5 TiB, core/uploads.py) make them larger for larger files.
PART_SIZE = 8 * MIB
MULTIPART_THRESHOLD = PART_SIZE
MAX_OBJECT_SIZE = MAX_OBJECT_BYTES
# Parts in flight at once: each holds its part in memory until S3 has taken it.
DEFAULT_PARALLEL_PARTS = 4
MAX_PARALLEL_PARTS = 16

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What went up: the bytes read and the SHA-256 of exactly those bytes (hex)."""

    size: int
    sha256_hex: str


@dataclass(frozen=True, slots=True)
class _Part:
    body: bytes
    checksum: str  # base64 of the part's SHA-256, as S3 takes it


def part_size_for(size: int) -> int:
    """PART_SIZE, or the smallest whole number of MiB that keeps `size` within 10,000 parts."""
    if size > MAX_OBJECT_SIZE:
        raise ObjectTooLarge(f"{size} bytes: S3 stores at most 5 TiB in one object")
    return planned_part_size(size, PART_SIZE)


async def upload_file(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    progress: Progress | None = None,
    parallel: int = DEFAULT_PARALLEL_PARTS,
) -> Uploaded:
    """Upload `path` to `bucket/key`, up to `parallel` parts at once. File reads and
    hashing run off the event loop."""
    try:
        return await _upload(client, bucket, key, path, content_type, progress, parallel)
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"upload failed: {exc}") from None


async def _upload(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    progress: Progress | None,
    parallel: int,
) -> Uploaded:
    size = (await asyncio.to_thread(path.stat)).st_size
    advance = progress or (lambda _n: None)
    if size < MULTIPART_THRESHOLD:
        whole = hashlib.sha256()
        with path.open("rb") as file:
            part = await asyncio.to_thread(_read_part, file, size, whole)
        await client.put_object(
            Bucket=bucket,
            Key=key,
            Body=part.body,
            ContentType=content_type,
            ChecksumSHA256=part.checksum,
        )
        advance(len(part.body))
        return Uploaded(len(part.body), whole.hexdigest())
    part_size = part_size_for(size)  # before the upload: a file S3 cannot store opens none
    upload = await client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
    )
    upload_id = upload["UploadId"]
    target = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    try:
        whole = hashlib.sha256()
        with path.open("rb") as file:
            parts, sent_bytes = await _send_parts(
                client, target, file, part_size, whole, parallel, advance
            )
        await client.complete_multipart_upload(**target, MultipartUpload={"Parts": parts})
    except BaseException:
        # Never leave billed, invisible parts behind (no part task is running by now).
        await asyncio.shield(client.abort_multipart_upload(**target))
        raise
    return Uploaded(sent_bytes, whole.hexdigest())


async def _send_parts(
    client: Any,
    target: dict[str, str],
    file: BinaryIO,
    part_size: int,
    whole: Any,
    parallel: int,
    advance: Progress,
) -> tuple[list[dict[str, Any]], int]:
    """Read `file` in order, hashing it into `whole`, and send up to `parallel` parts at
    once; returns the Parts list for complete, in part-number order, and the bytes sent.

    A slot is taken before a part is read and given back once S3 has it, so at most
    `parallel` parts are in memory. The first failure cancels every other part, and the
    task group waits until none runs."""
    slots = asyncio.Semaphore(parallel)
    sent: dict[int, dict[str, Any]] = {}
    read_bytes = 0

    async def send(number: int, part: _Part) -> None:
        try:
            answer = await client.upload_part(
                **target, PartNumber=number, Body=part.body, ChecksumSHA256=part.checksum
            )
        finally:
            slots.release()
        # complete needs each checksum again: list_parts does not return them.
        sent[number] = {
            "PartNumber": number,
            "ETag": answer["ETag"],
            "ChecksumSHA256": part.checksum,
        }
        advance(len(part.body))

    try:
        async with asyncio.TaskGroup() as sending:
            number = 1
            while True:
                await slots.acquire()
                part = await asyncio.to_thread(_read_part, file, part_size, whole)
                if not part.body:
                    slots.release()
                    break
                read_bytes += len(part.body)
                sending.create_task(send(number, part))
                number += 1
    except BaseExceptionGroup as failed:
        # One part's refusal says what went wrong; the others failing with it add nothing.
        raise failed.exceptions[0] from None
    return [sent[number] for number in sorted(sent)], read_bytes


def _read_part(file: BinaryIO, part_size: int, whole: Any) -> _Part:
    """The next part of `file`, its checksum, and `whole` advanced over it: one reader at
    a time, so the whole file's hash sees the bytes in order."""
    body = file.read(part_size)
    whole.update(body)
    return _Part(body, base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"))


class TerminalProgress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, amount: int) -> None:
        self.done += amount
        if not self.enabled:
            return
        share = self.done / self.total
        bar = "#" * int(share * 30)
        mib = 1024 * 1024
        self.stream.write(
            f"\r[{bar:<30}] {share:6.1%} {self.done / mib:.1f}/{self.total / mib:.1f} MiB"
        )
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
