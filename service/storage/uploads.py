"""Uploading a local file to S3: one PUT for small files, multipart for large ones."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from ..core.errors import StorageUnavailable

# S3's minimum part size is 5 MiB; 8 MiB parts keep memory flat and retries cheap.
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = PART_SIZE

Progress = Callable[[int], None]


async def upload_file(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    progress: Progress | None = None,
) -> int:
    """Upload `path` to `bucket/key`; returns its size. File reads run off the event loop."""
    try:
        return await _upload(client, bucket, key, path, content_type, progress)
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"upload failed: {exc}") from None


async def _upload(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    progress: Progress | None,
) -> int:
    size = (await asyncio.to_thread(path.stat)).st_size
    advance = progress or (lambda _n: None)
    if size < MULTIPART_THRESHOLD:
        body = await asyncio.to_thread(path.read_bytes)
        await client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        advance(size)
        return size
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
    upload_id = upload["UploadId"]
    try:
        parts = []
        with path.open("rb") as file:
            part_number = 1
            while chunk := await asyncio.to_thread(_read, file):
                answer = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=part_number, Body=chunk
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": part_number})
                advance(len(chunk))
                part_number += 1
        await client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        # Never leave billed, invisible parts behind.
        await asyncio.shield(
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        )
        raise
    return size


def _read(file: BinaryIO) -> bytes:
    return file.read(PART_SIZE)


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
